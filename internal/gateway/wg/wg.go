package wg

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/sharespot/sharespot/internal/atomicfile"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
)

// Kind is the gateway kind guests are told (sharespotv1.Gateway.Kind).
const Kind = "wireguard"

// Defaults for Config's zero fields.
const (
	DefaultListen       = "0.0.0.0:51820"
	DefaultMTU          = 1420
	DefaultIdleAfter    = time.Minute
	DefaultPersistAhead = 256 << 10
	DefaultDialTimeout  = 10 * time.Second
	DefaultUDPTimeout   = time.Minute
	// ControlPort is the port of the control stream at the gateway's
	// address in the tunnel (HTTP CONNECT to protocol.ControlAuthority).
	ControlPort = protocol.TunnelControlPort
	// DNSPort is where the gateway answers DNS in the tunnel.
	DNSPort = protocol.TunnelDNSPort
)

// DefaultNetwork is the tunnel's network: the gateway at its first
// address, guests from the second.
var DefaultNetwork = netip.MustParsePrefix("10.77.0.0/16")

const (
	maxLeadFactor = 256
	leadTime      = 250 * time.Millisecond
	saveEvery     = time.Second
	saveRetry     = 250 * time.Millisecond
	// activeFor: a session that moved a byte this recently keeps its
	// bound saved a lead ahead; an idle one is saved exact.
	activeFor = 2 * time.Second
)

// Config configures a Gateway. Zero fields take the defaults.
type Config struct {
	// Listen is the UDP address WireGuard listens on; its port is what
	// matters (wireguard-go listens on every address). Port 0: any free
	// one.
	Listen string
	// Advertise is the endpoint guests are told (host:port); default the
	// listen address, which must then name a host.
	Advertise string
	// Key is the gateway's WireGuard private key (NewKey, kept by the
	// caller: guests' configurations name its public key).
	Key [32]byte
	// Network is the tunnel's network (default DefaultNetwork).
	Network netip.Prefix
	// DNS are the resolvers the gateway relays its guests' DNS to
	// (default: the host's, from /etc/resolv.conf).
	DNS []netip.AddrPort
	// MTU of the tunnel (default DefaultMTU).
	MTU int
	// Store keeps usage across restarts; nil keeps it only in memory.
	Store gateway.Store
	Log   *slog.Logger
	// AllowDestination and AllowNetworks are the destination policy, as
	// the proxy's (gateway.NewPolicy).
	AllowDestination func(netip.AddrPort) bool
	AllowNetworks    []netip.Prefix
	// IdleAfter: how long a session goes without traffic before Idle.
	IdleAfter time.Duration
	// TopUpTime, PersistAhead: as the proxy's.
	TopUpTime    time.Duration
	PersistAhead int64
	// DialTimeout bounds connecting to a destination; UDPTimeout closes
	// a UDP flow idle this long.
	DialTimeout, UDPTimeout time.Duration
}

// NewKey makes a WireGuard private key.
func NewKey() ([32]byte, error) {
	var k [32]byte
	if _, err := randRead(k[:]); err != nil {
		return k, err
	}
	return k, nil
}

// PublicKey is the X25519 public key of a private key (a gateway's, or a
// guest's: the access code).
func PublicKey(priv []byte) ([32]byte, error) {
	var pub [32]byte
	p, err := curve25519.X25519(priv, curve25519.Basepoint)
	if err != nil {
		return pub, err
	}
	copy(pub[:], p)
	return pub, nil
}

// Gateway is the WireGuard metering gateway.
//
// Lock order: saveMu, then mu, then a session's mu, then the event queue's.
type Gateway struct {
	cfg    Config
	log    *slog.Logger
	meter  gateway.MeterConfig
	store  gateway.Store
	policy gateway.Policy
	self   netip.Addr
	pub    [32]byte

	dev  *device.Device
	net  *netstackNet
	port atomic.Uint32

	saveMu sync.Mutex

	mu       sync.Mutex
	sessions map[string]*session
	byAddr   atomic.Pointer[map[netip.Addr]*session] // copy on write: read per packet

	events  *gateway.EventQueue
	saveReq chan struct{}
	running atomic.Bool
}

var (
	_ gateway.Gateway = (*Gateway)(nil)
	_ gateway.Tunnel  = (*Gateway)(nil)
)

// session is one admitted session: its meter and its peer.
type session struct {
	g    *Gateway
	id   string
	hash [32]byte
	pub  [32]byte
	addr netip.Addr

	mu    sync.Mutex
	m     *gateway.Meter
	flows map[closer]struct{} // forwarded TCP and UDP flows
	// wanted is when a packet within the quota last waited for the saved
	// bound: the session is active although no byte passed (an idle
	// session is saved exact, and must be saved ahead again to move).
	wanted time.Time
}

type closer interface{ Close() error }

// New loads the store and makes the device and the netstack; Run brings
// them up.
func New(cfg Config) (*Gateway, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if !cfg.Network.IsValid() {
		cfg.Network = DefaultNetwork
	}
	cfg.Network = cfg.Network.Masked()
	if !cfg.Network.Addr().Is4() || cfg.Network.Bits() > 30 {
		return nil, fmt.Errorf("wireguard: network %s: want an IPv4 network of at least 4 addresses: %w", cfg.Network, gateway.ErrInvalid)
	}
	setDefault(&cfg.MTU, DefaultMTU)
	setDefault(&cfg.IdleAfter, DefaultIdleAfter)
	setDefault(&cfg.PersistAhead, DefaultPersistAhead)
	setDefault(&cfg.TopUpTime, gateway.DefaultTopUpTime)
	setDefault(&cfg.DialTimeout, DefaultDialTimeout)
	setDefault(&cfg.UDPTimeout, DefaultUDPTimeout)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DNS == nil {
		cfg.DNS = systemResolvers()
	}
	if cfg.Key == ([32]byte{}) {
		return nil, fmt.Errorf("wireguard: no private key: %w", gateway.ErrInvalid)
	}
	pub, err := PublicKey(cfg.Key[:])
	if err != nil {
		return nil, fmt.Errorf("wireguard: private key: %w", err)
	}
	g := &Gateway{
		cfg: cfg, log: cfg.Log, store: cfg.Store, pub: pub, self: cfg.Network.Addr().Next(),
		policy:   gateway.NewPolicy(cfg.AllowDestination, cfg.AllowNetworks),
		sessions: map[string]*session{}, events: gateway.NewEventQueue(64), saveReq: make(chan struct{}, 1),
		meter: gateway.MeterConfig{Persist: cfg.Store != nil, PersistAhead: cfg.PersistAhead, MaxLead: maxLeadFactor * cfg.PersistAhead,
			LeadTime: leadTime, TopUpTime: max(cfg.TopUpTime, 0)},
	}
	g.byAddr.Store(&map[netip.Addr]*session{})
	if g.net, err = newNetstack(g); err != nil {
		return nil, err
	}
	g.dev = device.NewDevice(g.net.dev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	_, port, err := splitPort(cfg.Listen)
	if err != nil {
		g.dev.Close()
		return nil, err
	}
	if err := g.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.Key[:]), port)); err != nil {
		g.dev.Close()
		return nil, fmt.Errorf("wireguard: configure: %w", err)
	}
	if g.store != nil {
		recs, err := g.store.Load()
		if err != nil {
			g.dev.Close()
			return nil, fmt.Errorf("wireguard: load usage: %w", err)
		}
		for _, r := range recs {
			pub, addr, err := parsePeer(r.Peer)
			if err != nil {
				g.dev.Close()
				return nil, fmt.Errorf("wireguard: session %s in the store: %w", r.SessionID, err)
			}
			s := g.newSession(gateway.RestoreMeter(g.meter, r, r.Used, false, time.Now()), pub, addr)
			g.sessions[s.id] = s
		}
		g.publish()
		for _, s := range g.sessions {
			if err := g.addPeer(s); err != nil {
				g.dev.Close()
				return nil, err
			}
		}
	}
	return g, nil
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

func splitPort(hostport string) (string, uint16, error) {
	i := strings.LastIndexByte(hostport, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("wireguard: listen address %q: want host:port", hostport)
	}
	p, err := strconv.ParseUint(hostport[i+1:], 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("wireguard: listen address %q: bad port", hostport)
	}
	return strings.Trim(hostport[:i], "[]"), uint16(p), nil
}

func (g *Gateway) newSession(m *gateway.Meter, pub [32]byte, addr netip.Addr) *session {
	return &session{g: g, id: m.ID(), hash: m.Hash(), pub: pub, addr: addr, m: m, flows: map[closer]struct{}{}}
}

// peerString is Record.Peer: the guest's public key and its address.
func peerString(pub [32]byte, addr netip.Addr) string {
	return hex.EncodeToString(pub[:]) + "@" + addr.String()
}

func parsePeer(s string) (pub [32]byte, addr netip.Addr, err error) {
	k, a, ok := strings.Cut(s, "@")
	b, kerr := hex.DecodeString(k)
	if !ok || kerr != nil || len(b) != 32 {
		return pub, addr, fmt.Errorf("peer %q: want hex key@address", s)
	}
	copy(pub[:], b)
	if addr, err = netip.ParseAddr(a); err != nil {
		return pub, addr, fmt.Errorf("peer %q: %w", s, err)
	}
	return pub, addr, nil
}

// publish makes the address index match the live sessions (under mu).
func (g *Gateway) publish() {
	idx := make(map[netip.Addr]*session, len(g.sessions))
	for _, s := range g.sessions {
		s.mu.Lock()
		revoked := s.m.Revoked()
		s.mu.Unlock()
		if !revoked {
			idx[s.addr] = s
		}
	}
	g.byAddr.Store(&idx)
}

// bySource is the session whose peer has address a in the tunnel.
func (g *Gateway) bySource(a netip.Addr) *session { return (*g.byAddr.Load())[a] }

func (g *Gateway) addPeer(s *session) error {
	err := g.dev.IpcSet(fmt.Sprintf("public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\n", hex.EncodeToString(s.pub[:]), s.addr))
	if err != nil {
		return fmt.Errorf("wireguard: add the peer of %s: %w", s.id, err)
	}
	return nil
}

func (g *Gateway) removePeer(s *session) error {
	if err := g.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", hex.EncodeToString(s.pub[:]))); err != nil {
		return fmt.Errorf("wireguard: remove the peer of %s: %w", s.id, err)
	}
	return nil
}

// Addr implements gateway.Gateway: the endpoint guests' WireGuard reaches.
// An advertised port 0 (the listen address given as the advertised one)
// is the port WireGuard listens on, once Run has it up.
func (g *Gateway) Addr() string {
	adv := cmp.Or(g.cfg.Advertise, g.cfg.Listen)
	host, port, err := splitPort(adv)
	if err != nil || port != 0 {
		return adv
	}
	return net.JoinHostPort(cmp.Or(host, "0.0.0.0"), strconv.Itoa(int(g.port.Load())))
}

// PublicKey is the gateway's public key.
func (g *Gateway) PublicKey() [32]byte { return g.pub }

// TunnelPeer implements gateway.Tunnel: what the guest of sessionID
// needs to configure its WireGuard.
func (g *Gateway) TunnelPeer(sessionID string) (gateway.TunnelPeer, error) {
	s, err := g.session(sessionID)
	if err != nil {
		return gateway.TunnelPeer{}, err
	}
	return gateway.TunnelPeer{PublicKey: g.pub, Endpoint: g.Addr(), Address: s.addr, Gateway: g.self}, nil
}

// Events implements gateway.Gateway.
func (g *Gateway) Events() <-chan gateway.Event { return g.events.C() }

func (g *Gateway) session(id string) (*session, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sessions[id]
	if s == nil {
		return nil, fmt.Errorf("wireguard: session %s: %w", id, gateway.ErrUnknownSession)
	}
	return s, nil
}

// Admit implements gateway.Gateway. The access code is the peer's private
// key; the peer is let in once the grant is durable.
func (g *Gateway) Admit(ctx context.Context, gr gateway.Grant) error {
	if err := gr.Check(); err != nil {
		return fmt.Errorf("wireguard: admit: %w", err)
	}
	hash := sha256.Sum256(gr.Credential)
	pub, err := PublicKey(gr.Credential)
	if err != nil {
		return fmt.Errorf("wireguard: admit %s: %v: %w", gr.SessionID, err, gateway.ErrInvalid)
	}
	g.mu.Lock()
	if s := g.sessions[gr.SessionID]; s != nil {
		g.mu.Unlock()
		s.mu.Lock()
		err := s.m.CheckAdmit(hash)
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("wireguard: admit %s: %w", gr.SessionID, err)
		}
		return g.save()
	}
	addr, ok := g.freeAddrLocked()
	if !ok {
		g.mu.Unlock()
		return fmt.Errorf("wireguard: admit %s: every address of %s is taken: %w", gr.SessionID, g.cfg.Network, gateway.ErrInvalid)
	}
	m := gateway.NewMeter(g.meter, gr.SessionID, hash, gr.Quota, gr.Threshold, time.Now())
	if gr.Verified {
		m.SetVerified(gr.GuestKey)
	}
	m.SetPeer(peerString(pub, addr))
	s := g.newSession(m, pub, addr)
	g.sessions[gr.SessionID] = s
	g.mu.Unlock()
	if err := g.save(); err == nil {
		err = g.addPeer(s)
	}
	if err != nil {
		g.mu.Lock()
		delete(g.sessions, gr.SessionID)
		g.publish()
		g.mu.Unlock()
		return fmt.Errorf("wireguard: admit %s: %w", gr.SessionID, err)
	}
	g.mu.Lock()
	g.publish()
	g.mu.Unlock()
	g.log.Info("session admitted", "session", gr.SessionID, "quota", gr.Quota, "address", addr)
	return nil
}

// freeAddrLocked is the lowest address of the network no live session
// holds, nor the gateway.
func (g *Gateway) freeAddrLocked() (netip.Addr, bool) {
	taken := make(map[netip.Addr]bool, len(g.sessions))
	for _, s := range g.sessions {
		s.mu.Lock()
		if !s.m.Revoked() { // a revoked peer's address is free again: its keys open nothing
			taken[s.addr] = true
		}
		s.mu.Unlock()
	}
	for a := g.self.Next(); g.cfg.Network.Contains(a); a = a.Next() {
		if !taken[a] && g.cfg.Network.Contains(a.Next()) { // not the broadcast address
			return a, true
		}
	}
	return netip.Addr{}, false
}

// Extend implements gateway.Gateway.
func (g *Gateway) Extend(ctx context.Context, sessionID string, bytes int64) error {
	s, err := g.session(sessionID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	err = s.m.Extend(bytes)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("wireguard: extend %s: %w", sessionID, err)
	}
	if err := g.save(); err != nil {
		s.mu.Lock()
		s.m.UndoExtend(bytes)
		s.mu.Unlock()
		return fmt.Errorf("wireguard: extend %s: %w", sessionID, err)
	}
	return nil
}

// Revoke implements gateway.Gateway: the peer is removed (its keys no
// longer open a handshake) and its forwarded flows closed. Its usage
// stays readable.
func (g *Gateway) Revoke(ctx context.Context, sessionID string) error {
	s, err := g.session(sessionID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.m.Revoke()
	flows := slices.Collect(maps.Keys(s.flows))
	clear(s.flows)
	s.mu.Unlock()
	g.mu.Lock()
	g.publish()
	g.mu.Unlock()
	rerr := g.removePeer(s)
	for _, f := range flows {
		f.Close()
	}
	if err := g.save(); err != nil {
		return fmt.Errorf("wireguard: revoke %s: %w", sessionID, err)
	}
	return rerr
}

// Acknowledge implements gateway.Gateway.
func (g *Gateway) Acknowledge(ctx context.Context, sessionID string, received int64, sig []byte) error {
	s, err := g.session(sessionID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	_, err = s.m.Acknowledge(received, sig)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("wireguard: acknowledge %s: %w", sessionID, err)
	}
	if err := g.save(); err != nil {
		return fmt.Errorf("wireguard: acknowledge %s: %w", sessionID, err)
	}
	return nil
}

// Evidence implements gateway.Gateway.
func (g *Gateway) Evidence(sessionID string) (gateway.Evidence, error) {
	s, err := g.session(sessionID)
	if err != nil {
		return gateway.Evidence{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	acked, sig := s.m.Acked()
	return gateway.Evidence{Verified: s.m.Verified(), Acked: acked, Signature: sig, Held: s.m.Held()}, nil
}

// Usage implements gateway.Gateway. For a session restored from the store,
// used includes the bound saved ahead of use before the restart.
func (g *Gateway) Usage(sessionID string) (used, quota int64, err error) {
	s, err := g.session(sessionID)
	if err != nil {
		return 0, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.Used(), s.m.Quota(), nil
}

// controlOf is a session's side of its guest's control stream.
func (g *Gateway) controlOf(s *session) gateway.Control {
	return gateway.Control{
		Acknowledge: func(ctx context.Context, received int64, sig []byte) error {
			return g.Acknowledge(ctx, s.id, received, sig)
		},
		State: func() (protocol.GatewayState, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.m.Revoked() {
				return protocol.GatewayState{}, gateway.ErrRevoked
			}
			return s.m.State(), nil
		},
	}
}

// take counts a packet of n bytes against s and reports whether it may
// pass: only within the meter's limit (the quota, the bound saved ahead,
// and a verified session's credit window). A packet that does not fit is
// dropped whole.
//
// A packet that waits only for the saved bound (the saver fell behind a
// fast transfer, or the session was idle and saved exact) waits for a
// save here, once, rather than being dropped: a dropped packet costs TCP
// a retransmission timeout (a guest's first packet after a pause, a SYN,
// a second; a download under 16 flows fell to a few MB/s). From the guest
// only its own peer's goroutine waits; to a guest, the netstack's output
// waits (gvnet holds the stack's sender meanwhile), for every guest, for
// one save, which lets this one's bound a lead ahead.
func (s *session) take(n int64, now time.Time) bool {
	for try := 0; ; try++ {
		pass, wait := s.takeOnce(n, now)
		if pass || !wait || try > 0 {
			return pass
		}
		if err := s.g.save(); err != nil {
			s.g.log.Error("cannot save usage; traffic waits", "err", err)
			return false
		}
	}
}

// takeOnce is take without waiting: wait reports that the packet fits the
// quota and waits only for the saved bound.
func (s *session) takeOnce(n int64, now time.Time) (pass, wait bool) {
	s.mu.Lock()
	m := s.m
	if m.Revoked() {
		s.mu.Unlock()
		return false, false
	}
	used := m.Used() + n
	if used > m.Limit() {
		var evs []gateway.Event
		if used <= m.Quota() {
			s.wanted = now
			wait = m.Limit() == m.Bound() // the saved bound stops it, not a credit window
		}
		if m.SaveDue(m.Used()) || m.Durable() < used {
			s.g.requestSave()
		}
		if used > m.Quota() && m.Quota()-m.Used() < int64(s.g.cfg.MTU) {
			evs = m.Exhaust() // what is left is less than a packet
		}
		s.mu.Unlock()
		s.g.events.Emit(evs...)
		return false, wait
	}
	m.Advance(used, now)
	evs := m.Events()
	if m.SaveDue(used) {
		s.g.requestSave()
	}
	s.mu.Unlock()
	if len(evs) > 0 {
		s.g.events.Emit(evs...)
	}
	return true, false
}

// track adds a forwarded flow to s, or reports false when s is revoked.
func (s *session) track(c closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m.Revoked() {
		return false
	}
	s.flows[c] = struct{}{}
	return true
}

func (s *session) untrack(c closer) {
	s.mu.Lock()
	delete(s.flows, c)
	s.mu.Unlock()
}

// Run implements gateway.Gateway: it brings the device up and serves
// guests until ctx ends, then saves exact usage and closes the device.
func (g *Gateway) Run(ctx context.Context) error {
	if !g.running.CompareAndSwap(false, true) {
		return errors.New("wireguard: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := g.dev.Up(); err != nil {
		return fmt.Errorf("wireguard: up: %w", err)
	}
	if port, err := g.listenPort(); err == nil {
		g.port.Store(uint32(port))
	}
	var bg sync.WaitGroup
	bg.Go(func() { g.events.Run(ctx) })
	bg.Go(func() { g.saver(ctx) })
	bg.Go(func() { g.idler(ctx) })
	bg.Go(func() { g.net.serve(ctx) })
	<-ctx.Done()
	g.mu.Lock()
	all := slices.Collect(maps.Values(g.sessions))
	g.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		flows := slices.Collect(maps.Keys(s.flows))
		s.mu.Unlock()
		for _, f := range flows {
			f.Close()
		}
	}
	g.dev.Close()
	g.net.close()
	bg.Wait()
	err := g.save() // exact usage: nothing passes any more
	g.events.Close()
	return err
}

// Close stops the device (Run returns when its context ends).
func (g *Gateway) Close() { g.dev.Close() }

func (g *Gateway) listenPort() (int, error) {
	cfg, err := g.dev.IpcGet()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(cfg, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("wireguard: no listen port")
}

// Retransmitted is the TCP segments the gateway's netstack has sent
// again to its guests since it started. Each crosses the tunnel again and
// is metered again, on the gateway and on the guest's own interface alike,
// so a lossy or loaded link makes a transfer cost more than its payload.
func (g *Gateway) Retransmitted() uint64 { return g.net.dev.Stack.Stats().TCP.Retransmits.Value() }

// Ready reports whether Run has brought the device up (Addr has its port).
func (g *Gateway) Ready() bool { return g.port.Load() != 0 }

// requestSave asks the saver for a save soon, without waiting.
func (g *Gateway) requestSave() {
	select {
	case g.saveReq <- struct{}{}:
	default:
	}
}

// saver saves on request and every saveEvery while Run runs.
func (g *Gateway) saver(ctx context.Context) {
	if g.store == nil {
		return
	}
	t := time.NewTicker(saveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.saveReq:
		case <-t.C:
		}
		if err := g.save(); err != nil {
			g.log.Error("cannot save usage; traffic waits", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(saveRetry):
			}
		}
	}
}

// save writes every session whose record changed: a session that moved
// bytes lately with its bound a lead ahead of use, an idle one exact.
func (g *Gateway) save() error {
	if g.store == nil {
		return nil
	}
	g.saveMu.Lock()
	defer g.saveMu.Unlock()
	g.mu.Lock()
	all := slices.Collect(maps.Values(g.sessions))
	g.mu.Unlock()
	var (
		b       gateway.SaveBatch
		changed []*session
	)
	now := time.Now()
	for _, s := range all {
		s.mu.Lock()
		active := now.Sub(s.m.Last()) < activeFor || now.Sub(s.wanted) < activeFor
		if b.Add(s.m, s.m.Used(), g.running.Load() && active) {
			changed = append(changed, s)
		}
		s.mu.Unlock()
	}
	if err := b.Write(g.store); err != nil {
		return err
	}
	for i, s := range changed {
		s.mu.Lock()
		b.Done(i)
		s.mu.Unlock()
	}
	return nil
}

// idler sends Idle for sessions quiet for IdleAfter.
func (g *Gateway) idler(ctx context.Context) {
	t := time.NewTicker(min(g.cfg.IdleAfter/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			g.mu.Lock()
			all := slices.Collect(maps.Values(g.sessions))
			g.mu.Unlock()
			for _, s := range all {
				s.mu.Lock()
				ev, ok, _ := s.m.IdleEvent(now, g.cfg.IdleAfter)
				s.mu.Unlock()
				if ok {
					g.events.Emit(ev)
				}
			}
		}
	}
}

// credential reports whether pass (seal.FormatCode form) is s's access
// code, compared as a hash in constant time.
func (s *session) credential(pass string) bool {
	s.mu.Lock()
	revoked := s.m.Revoked()
	s.mu.Unlock()
	return gateway.CodeMatches(s.hash, pass) && !revoked
}

var randRead = rand.Read

// LoadOrCreateKey reads the gateway's private key from path (32 bytes,
// hex), or makes one and writes it there (0600) when the file does not
// exist.
func LoadOrCreateKey(path string) ([32]byte, error) {
	var k [32]byte
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if k, err = NewKey(); err != nil {
			return k, err
		}
		if err := atomicfile.Write(path, []byte(hex.EncodeToString(k[:])+"\n"), 0o600); err != nil {
			return k, fmt.Errorf("wireguard: write key: %w", err)
		}
		return k, nil
	}
	if err != nil {
		return k, fmt.Errorf("wireguard: read key: %w", err)
	}
	d, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(d) != 32 {
		return k, fmt.Errorf("wireguard: key file %s: want 32 bytes in hex", path)
	}
	copy(k[:], d)
	return k, nil
}

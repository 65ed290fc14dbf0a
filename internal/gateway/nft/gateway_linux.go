package nft

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
)

// Gateway is the kernel metering gateway. See the package documentation.
//
// Lock order: saveMu, limMu, mu, nftMu, then the event queue's.
type Gateway struct {
	cfg   Config
	meter gateway.MeterConfig
	log   *slog.Logger
	store gateway.Store
	ln    net.Listener
	nl    *netlink.Handle
	lay   *layout
	dummy [32]byte

	saveMu sync.Mutex
	limMu  sync.Mutex // serialises setLimits

	mu       sync.Mutex
	sessions map[string]*session
	byAddr   map[netip.Addr]*session

	nftMu sync.Mutex
	nc    *nftables.Conn

	events *gateway.EventQueue

	running   atomic.Bool
	closeOnce sync.Once
}

var _ gateway.Gateway = (*Gateway)(nil)

// session is one admitted session (under Gateway.mu): its meter (quota,
// usage as the kernel counter last read, events, the usage bound saved
// ahead of use) and its kernel objects.
//
// Budget invariant: the kernel quota's limit is limitSet ≤ bound() =
// m.Limit(), which is never above the bound saved in the store: a save
// comes before the limit is raised. The quota object's consumed bytes are
// never below the counter's (see setLimits), so the kernel passes at most
// bound() bytes.
type session struct {
	id   string
	tag  string
	hash [32]byte
	m    *gateway.Meter

	limitSet   int64 // the kernel quota's limit
	frozen     bool  // at the last poll the quota was used up: packets are dropped
	shrink     bool  // idle: lower the limit and the saved bound to near use
	resetAt    int64 // the counter when the quota object was last replaced
	kernelGone bool  // revoked and its chain, objects and bindings removed
	bindings   []binding
}

func newSession(m *gateway.Meter) *session {
	return &session{id: m.ID(), tag: tagOf(m.ID()), hash: m.Hash(), m: m}
}

// bound is what the kernel limit may be raised to: the meter's Limit,
// which for a verified session holds the guest to its last acknowledgment
// plus the credit window. It only rises (acknowledgments, extensions and
// saves only raise it), as setLimits needs.
func (s *session) bound() int64 { return s.m.Limit() }

// tagOf names a session's kernel objects: 16 hex digits of the SHA-256 of
// its ID (IDs may hold characters nftables names should not).
func tagOf(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:8])
}

// New reconciles the table with the store and opens the admission
// endpoint; Run serves it.
func New(cfg Config) (*Gateway, error) {
	if cfg.LAN == "" || cfg.Uplink == "" {
		return nil, fmt.Errorf("nft: the LAN and uplink interfaces are required: %w", gateway.ErrInvalid)
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	setDefault(&cfg.PollInterval, DefaultPollInterval)
	setDefault(&cfg.IdleAfter, DefaultIdleAfter)
	setDefault(&cfg.PersistAhead, DefaultPersistAhead)
	setDefault(&cfg.MaxBindings, DefaultMaxBindings)
	setDefault(&cfg.TopUpTime, gateway.DefaultTopUpTime)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, log: cfg.Log, store: cfg.Store,
		sessions: map[string]*session{}, byAddr: map[netip.Addr]*session{}, events: gateway.NewEventQueue(64),
		meter: gateway.MeterConfig{Persist: cfg.Store != nil, PersistAhead: cfg.PersistAhead, MaxLead: maxLeadFactor * cfg.PersistAhead,
			TopUpTime: max(cfg.TopUpTime, 0), Sampling: cfg.PollInterval}}
	rand.Read(g.dummy[:])
	ok := false
	defer func() {
		if !ok {
			g.closeAll()
		}
	}()
	var opts []nftables.ConnOption
	if cfg.NetNS > 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNS))
		h, err := netlink.NewHandleAt(netns.NsHandle(cfg.NetNS))
		if err != nil {
			return nil, fmt.Errorf("nft: netlink in namespace: %w", err)
		}
		g.nl = h
	} else {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("nft: netlink: %w", err)
		}
		g.nl = h
	}
	nc, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		return nil, fmt.Errorf("nft: open nftables: %w", err)
	}
	g.nc = nc
	if cfg.Listener != nil {
		g.ln = cfg.Listener
	} else {
		if cfg.Listen == "" {
			return nil, fmt.Errorf("nft: no admission address (Config.Listen): %w", gateway.ErrInvalid)
		}
		if g.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("nft: listen on %s: %w", cfg.Listen, err)
		}
	}
	port := g.ln.Addr().(*net.TCPAddr).Port
	g.lay = newLayout(cfg.Table, cfg.LAN, cfg.Uplink, uint16(port), walledGarden{garden: cfg.Garden, intercept: cfg.PortalURL != "", dns: cfg.AllowDNS})
	if err := g.reconcile(); err != nil {
		return nil, err
	}
	ok = true
	return g, nil
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

func (g *Gateway) closeAll() {
	g.closeOnce.Do(func() {
		if g.ln != nil {
			g.ln.Close()
		}
	})
	if g.nc != nil {
		g.nc.CloseLasting()
	}
	if g.nl != nil {
		g.nl.Close()
	}
}

// Addr implements gateway.Gateway: the admission endpoint's host:port.
func (g *Gateway) Addr() string {
	if g.cfg.Advertise != "" {
		return g.cfg.Advertise
	}
	return g.ln.Addr().String()
}

// Events implements gateway.Gateway. The channel is closed when Run
// returns.
func (g *Gateway) Events() <-chan gateway.Event { return g.events.C() }

// Admit implements gateway.Gateway. The session's kernel objects are made
// at once; its guest gets through once it presents its code at the
// admission endpoint.
func (g *Gateway) Admit(ctx context.Context, gr gateway.Grant) error {
	if err := gr.Check(); err != nil {
		return fmt.Errorf("nft: admit: %w", err)
	}
	hash := sha256.Sum256(gr.Credential)
	g.mu.Lock()
	if s := g.sessions[gr.SessionID]; s != nil {
		err := s.m.CheckAdmit(hash)
		g.mu.Unlock()
		if err != nil {
			return fmt.Errorf("nft: admit %s: %w", gr.SessionID, err)
		}
		return g.save()
	}
	m := gateway.NewMeter(g.meter, gr.SessionID, hash, gr.Quota, gr.Threshold, time.Now())
	if gr.Verified {
		m.SetVerified(gr.GuestKey)
	}
	s := newSession(m)
	g.sessions[gr.SessionID] = s
	g.mu.Unlock()
	if err := g.save(); err != nil {
		g.mu.Lock()
		delete(g.sessions, gr.SessionID)
		g.mu.Unlock()
		return fmt.Errorf("nft: admit %s: %w", gr.SessionID, err)
	}
	g.mu.Lock()
	limit := s.bound()
	s.limitSet = limit
	g.mu.Unlock()
	g.nftMu.Lock()
	g.lay.addGuest(g.nc, s.tag, uint64(limit), 0, create)
	err := g.nc.Flush()
	g.nftMu.Unlock()
	if err != nil {
		// Forget the session (its record too), so that a retry starts
		// afresh; the failed batch changed nothing in the kernel.
		g.mu.Lock()
		s.m.Revoke()
		s.kernelGone = true
		g.mu.Unlock()
		serr := g.save()
		g.mu.Lock()
		if serr == nil {
			delete(g.sessions, gr.SessionID)
		}
		g.mu.Unlock()
		return fmt.Errorf("nft: admit %s: add kernel objects: %w", gr.SessionID, errors.Join(err, serr))
	}
	g.log.Info("session admitted", "session", gr.SessionID, "quota", gr.Quota)
	return nil
}

func (g *Gateway) session(id string) (*session, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sessions[id]
	if s == nil {
		return nil, fmt.Errorf("nft: session %s: %w", id, gateway.ErrUnknownSession)
	}
	return s, nil
}

// Extend implements gateway.Gateway. The new volume is saved first, then
// the kernel quota's limit is raised in place: the kernel keeps the bytes
// the quota consumed and the counter is untouched, so traffic never stops
// and usage is never reset.
func (g *Gateway) Extend(ctx context.Context, sessionID string, bytes int64) error {
	s, err := g.session(sessionID)
	if err != nil {
		return err
	}
	g.mu.Lock()
	err = s.m.Extend(bytes)
	g.mu.Unlock()
	if err != nil {
		return fmt.Errorf("nft: extend %s: %w", sessionID, err)
	}
	if err := g.save(); err != nil {
		g.mu.Lock()
		s.m.UndoExtend(bytes)
		g.mu.Unlock()
		return fmt.Errorf("nft: extend %s: %w", sessionID, err)
	}
	if err := g.setLimits(); err != nil {
		return fmt.Errorf("nft: extend %s: %w", sessionID, err)
	}
	return nil
}

// Acknowledge implements gateway.Gateway. A verified session's kernel
// quota is held to its guest's last acknowledgment plus the credit window
// from the first byte, and grows in window steps as acknowledgments
// arrive: each one, once saved, raises the limit at once (setLimits), not
// at the next poll. A guest that stops acknowledging is held: the kernel
// drops its packets at the limit until it acknowledges again. The guest
// counts what its interface passes (headers included), so its count runs
// at or above the kernel's (IP packet lengths): an honest guest is never
// held for the difference (docs/gateways.md).
func (g *Gateway) Acknowledge(ctx context.Context, sessionID string, received int64, sig []byte) error {
	s, err := g.session(sessionID)
	if err != nil {
		return err
	}
	g.mu.Lock()
	raised, err := s.m.Acknowledge(received, sig)
	g.mu.Unlock()
	if err != nil {
		return fmt.Errorf("nft: acknowledge %s: %w", sessionID, err)
	}
	if err := g.save(); err != nil {
		return fmt.Errorf("nft: acknowledge %s: %w", sessionID, err)
	}
	if raised {
		if err := g.setLimits(); err != nil {
			return fmt.Errorf("nft: acknowledge %s: %w", sessionID, err)
		}
	}
	return nil
}

// Evidence implements gateway.Gateway.
func (g *Gateway) Evidence(sessionID string) (gateway.Evidence, error) {
	s, err := g.session(sessionID)
	if err != nil {
		return gateway.Evidence{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	acked, sig := s.m.Acked()
	return gateway.Evidence{Verified: s.m.Verified(), Acked: acked, Signature: sig, Held: s.m.Held()}, nil
}

// controlOf is a session's side of its guest's control stream.
func (g *Gateway) controlOf(s *session) gateway.Control {
	return gateway.Control{
		Acknowledge: func(ctx context.Context, received int64, sig []byte) error {
			return g.Acknowledge(ctx, s.id, received, sig)
		},
		State: func() (protocol.GatewayState, error) {
			g.mu.Lock()
			defer g.mu.Unlock()
			if s.m.Revoked() {
				return protocol.GatewayState{}, gateway.ErrRevoked
			}
			return s.m.State(), nil
		},
	}
}

// Revoke implements gateway.Gateway: the session's bindings leave the
// maps and its chain and objects go, in one transaction. The forward rules
// look every packet up, established flows included, so a running transfer
// stops at the next packet. Usage stays readable until the process ends.
func (g *Gateway) Revoke(ctx context.Context, sessionID string) error {
	s, err := g.session(sessionID)
	if err != nil {
		return err
	}
	g.mu.Lock()
	if !s.m.Revoked() {
		g.readCounterLocked(s)
		s.m.Revoke()
	}
	if !s.kernelGone {
		g.nftMu.Lock()
		for _, b := range s.bindings {
			if err = g.delBindingLocked(b, s.tag); err != nil {
				break
			}
		}
		if err == nil {
			g.lay.delGuest(g.nc, s.tag)
			err = g.nc.Flush()
		}
		g.nftMu.Unlock()
		if err != nil {
			g.mu.Unlock()
			return fmt.Errorf("nft: revoke %s: remove kernel objects: %w", sessionID, err)
		}
		for _, b := range s.bindings {
			delete(g.byAddr, b.addr)
		}
		s.bindings, s.kernelGone = nil, true
	}
	g.mu.Unlock()
	if err := g.save(); err != nil {
		return fmt.Errorf("nft: revoke %s: %w", sessionID, err)
	}
	g.log.Info("session revoked", "session", sessionID)
	return nil
}

// readCounterLocked refreshes s.used from the kernel (under g.mu).
func (g *Gateway) readCounterLocked(s *session) {
	if s.m.Revoked() {
		return
	}
	g.nftMu.Lock()
	o, err := g.nc.GetObject(g.lay.counterObj(s.tag, 0))
	g.nftMu.Unlock()
	if err != nil {
		return
	}
	if c, ok := o.(*nftables.CounterObj); ok {
		s.m.Advance(int64(c.Bytes), time.Now())
	}
}

// Usage implements gateway.Gateway: the bytes the kernel counted for the
// session (read now), and its quota.
func (g *Gateway) Usage(sessionID string) (used, quota int64, err error) {
	s, err := g.session(sessionID)
	if err != nil {
		return 0, 0, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.readCounterLocked(s)
	return s.m.Used(), s.m.Quota(), nil
}

// Bindings returns the addresses a session's guest is admitted from.
func (g *Gateway) Bindings(sessionID string) ([]netip.Addr, error) {
	s, err := g.session(sessionID)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]netip.Addr, 0, len(s.bindings))
	for _, b := range s.bindings {
		out = append(out, b.addr)
	}
	return out, nil
}

// Run implements gateway.Gateway: it serves the admission endpoint and
// polls the kernel counters until ctx ends. The table stays when Run
// returns: admitted guests stay metered by the kernel, within the bound
// the store holds, until the next start reconciles it (or Teardown).
func (g *Gateway) Run(ctx context.Context) error {
	if !g.running.CompareAndSwap(false, true) {
		return errors.New("nft: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: g.handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, MaxHeaderBytes: 8 << 10}
	var bg sync.WaitGroup
	bg.Go(func() { g.events.Run(ctx) })
	bg.Go(func() { g.pollLoop(ctx) })
	served := make(chan error, 1)
	go func() { served <- srv.Serve(g.ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		cancel()
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	srv.Shutdown(sctx)
	scancel()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		err = nil // Close was called
	}
	bg.Wait()
	g.events.Close()
	if serr := g.save(); serr != nil {
		err = errors.Join(err, serr)
	}
	g.closeAll()
	return err
}

// Close stops the admission endpoint; safe before Run and more than once.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() { g.ln.Close() })
	return nil
}

// Teardown deletes the table: every guest loses access. For a host that
// stops sharing for good, and for tests.
func Teardown(netnsFD int, table string) error {
	var opts []nftables.ConnOption
	if netnsFD > 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	if table == "" {
		table = DefaultTable
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nft: teardown: %w", err)
	}
	c.DelTable(&nftables.Table{Name: table, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("nft: teardown table %s: %w", table, err)
	}
	return nil
}

// save writes every session whose record changed. A live session's record
// holds min(quota, used + lead): the bound the kernel limit may be raised
// to once the save returned.
func (g *Gateway) save() error {
	if g.store == nil {
		return nil
	}
	g.saveMu.Lock()
	defer g.saveMu.Unlock()
	var b gateway.SaveBatch
	g.mu.Lock()
	for _, s := range g.sessions {
		b.Add(s.m, s.m.Used(), true)
	}
	g.mu.Unlock()
	if err := b.Write(g.store); err != nil {
		return err
	}
	g.mu.Lock()
	for i := range b.Len() {
		b.Done(i)
	}
	g.mu.Unlock()
	return nil
}

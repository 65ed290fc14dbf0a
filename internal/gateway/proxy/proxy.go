package proxy

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
)

// Defaults for Config's zero fields.
const (
	DefaultAddr                 = "127.0.0.1:0"
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultAuthTimeout          = 5 * time.Second
	DefaultDialTimeout          = 10 * time.Second
	DefaultIdleTimeout          = 5 * time.Minute
	DefaultIdleAfter            = time.Minute
	DefaultMaxConns             = 1024
	DefaultMaxConnsPerSession   = 64
	DefaultMaxHandshakes        = 256
	DefaultMaxHandshakesPerAddr = 32
	DefaultPersistAhead         = 256 << 10
	DefaultGrace                = time.Minute
)

const (
	// maxLeadFactor bounds the save-ahead lead at this many PersistAhead.
	maxLeadFactor = 256
	// leadTime: the save-ahead lead is kept at least this long's worth of
	// a session's current rate, so a save is asked for half of it (125 ms
	// of traffic) before the transfer would reach the saved bound.
	leadTime = 250 * time.Millisecond
	// copyChunk is the largest reservation of one splice step.
	copyChunk = 256 << 10
	// bufSize is the buffer of the userspace copy.
	bufSize = 32 << 10
	// holdTimeout: a splice step whose source pauses this long gives its
	// unused reservation back.
	holdTimeout = 200 * time.Millisecond
	// maxHandshake bounds the bytes read before a handshake completes.
	maxHandshake = 16 << 10
	// lingerTimeout bounds how long a refused connection lingers.
	lingerTimeout = 500 * time.Millisecond
	// saveRetry is the pause after a failed save.
	saveRetry = 250 * time.Millisecond
	// saveEvery is the period of the background save.
	saveEvery = time.Second
)

// Config configures a Proxy. Zero fields take the defaults above.
type Config struct {
	// Addr is the TCP address to listen on.
	Addr string
	// Advertise is the host:port guests are told to use (Addr()); default
	// the listener's address.
	Advertise string
	// Store keeps usage across restarts; nil keeps it only in memory.
	Store gateway.Store
	// Log receives diagnostics; never a secret.
	Log *slog.Logger

	// HandshakeTimeout bounds the time from accept to a relayed connection.
	HandshakeTimeout time.Duration
	// AuthTimeout bounds the time from accept to valid credentials (at
	// most HandshakeTimeout); a connection without them by then is closed.
	AuthTimeout time.Duration
	// DialTimeout bounds connecting to the destination.
	DialTimeout time.Duration
	// IdleTimeout closes a connection with no byte in either direction for
	// this long; it is also the write deadline of each copy step.
	IdleTimeout time.Duration
	// IdleAfter is how long a session goes without traffic before the
	// Idle event.
	IdleAfter time.Duration
	// MaxConns bounds authenticated connections (relayed, or being
	// dialled). Connections not yet authenticated have a budget of their
	// own, so that they never take a paying guest's place.
	MaxConns int
	// MaxHandshakes bounds connections not yet authenticated; when it is
	// reached, the oldest of them is closed to make room for a new one.
	MaxHandshakes int
	// MaxHandshakesPerAddr bounds one source address's connections not
	// yet authenticated; more are closed as they are accepted.
	MaxHandshakesPerAddr int
	// MaxConnsPerSession bounds one session's relayed connections.
	MaxConnsPerSession int
	// RateLimit, if > 0, bounds each session to this many bytes per
	// second, both directions together.
	RateLimit int64
	// PersistAhead is the initial lead of the usage bound saved ahead of
	// use; see the package documentation.
	PersistAhead int64
	// TopUpTime is how long a top-up takes: ThresholdCrossed comes when a
	// session's remaining volume would last less than that at its current
	// rate, if that is before its threshold. Default
	// gateway.DefaultTopUpTime; negative: at the threshold only.
	TopUpTime time.Duration
	// Grace is how long a session that used up its quota keeps its
	// connections, stalled, for a top-up (Extend) to resume them; then
	// they are closed. Negative: they are closed at once.
	Grace time.Duration
	// AllowDestination says whether guests may connect to an address;
	// default gateway.DefaultDestinations, and then also none of this machine's
	// own addresses, on any port (read from its interfaces on every dial,
	// so an address that comes or goes counts at once). The gateway's own
	// listening address is always refused.
	AllowDestination func(netip.AddrPort) bool
	// AllowNetworks are private networks the host shares with its guests
	// (a LAN it wants them to reach): destinations in them are allowed
	// although the default policy refuses private networks. Loopback,
	// link-local, cloud metadata and the host's own addresses stay
	// refused.
	AllowNetworks []netip.Prefix

	noSplice bool // tests: force the userspace copy
}

// Proxy is the userspace metering gateway.
//
// Lock order: saveMu, then mu, then a session's mu, then the event queue's.
type Proxy struct {
	cfg    Config
	meter  gateway.MeterConfig
	log    *slog.Logger
	store  gateway.Store
	ln     net.Listener
	self   netip.AddrPort
	policy gateway.Policy
	dialer net.Dialer
	epoch  time.Time
	dummy  [32]byte // compared against when the session is unknown

	saveMu sync.Mutex

	mu       sync.Mutex
	sessions map[string]*session
	conns    map[*pconn]struct{} // every open connection
	pending  *list.List          // of *pconn not yet authenticated, oldest first
	perAddr  map[netip.Addr]int  // pending connections per source address
	relayed  int                 // authenticated connections
	stopping bool
	connWG   sync.WaitGroup

	events *gateway.EventQueue

	saveReq   chan struct{}
	running   atomic.Bool
	closeOnce sync.Once
}

var _ gateway.Gateway = (*Proxy)(nil)

// New loads the store and opens the listener; Run serves it.
func New(cfg Config) (*Proxy, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	setDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&cfg.AuthTimeout, min(DefaultAuthTimeout, cfg.HandshakeTimeout))
	cfg.AuthTimeout = min(cfg.AuthTimeout, cfg.HandshakeTimeout)
	setDefault(&cfg.MaxHandshakes, DefaultMaxHandshakes)
	setDefault(&cfg.MaxHandshakesPerAddr, DefaultMaxHandshakesPerAddr)
	setDefault(&cfg.DialTimeout, DefaultDialTimeout)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.IdleAfter, DefaultIdleAfter)
	setDefault(&cfg.MaxConns, DefaultMaxConns)
	setDefault(&cfg.MaxConnsPerSession, DefaultMaxConnsPerSession)
	setDefault(&cfg.PersistAhead, DefaultPersistAhead)
	setDefault(&cfg.Grace, DefaultGrace)
	setDefault(&cfg.TopUpTime, gateway.DefaultTopUpTime)
	policy := gateway.NewPolicy(cfg.AllowDestination, cfg.AllowNetworks)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RateLimit < 0 {
		return nil, fmt.Errorf("proxy: negative rate limit: %w", gateway.ErrInvalid)
	}
	p := &Proxy{
		cfg: cfg, log: cfg.Log, store: cfg.Store, epoch: time.Now(), policy: policy,
		sessions: map[string]*session{}, conns: map[*pconn]struct{}{}, pending: list.New(), perAddr: map[netip.Addr]int{},
		events: gateway.NewEventQueue(64), saveReq: make(chan struct{}, 1),
		meter: gateway.MeterConfig{Persist: cfg.Store != nil, PersistAhead: cfg.PersistAhead, MaxLead: maxLeadFactor * cfg.PersistAhead,
			LeadTime: leadTime, TopUpTime: max(cfg.TopUpTime, 0)},
	}
	rand.Read(p.dummy[:])
	p.dialer = net.Dialer{Timeout: cfg.DialTimeout, ControlContext: p.control}
	if p.store != nil {
		recs, err := p.store.Load()
		if err != nil {
			return nil, fmt.Errorf("proxy: load usage: %w", err)
		}
		for _, r := range recs {
			p.sessions[r.SessionID] = p.newSession(gateway.RestoreMeter(p.meter, r, r.Used, false, time.Now()))
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("proxy: listen on %s: %w", cfg.Addr, err)
	}
	p.ln = ln
	p.self = ln.Addr().(*net.TCPAddr).AddrPort()
	return p, nil
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

func (p *Proxy) newSession(m *gateway.Meter) *session {
	s := &session{p: p, id: m.ID(), hash: m.Hash(), m: m, chunk: copyChunk, conns: map[*pconn]struct{}{}}
	if p.cfg.RateLimit > 0 {
		// Each copy step pays for what it wrote afterwards, so a step
		// never exceeds the burst.
		burst := min(copyChunk, max(bufSize, p.cfg.RateLimit/8))
		s.lim = rate.NewLimiter(rate.Limit(p.cfg.RateLimit), int(burst))
		s.chunk = burst
	}
	return s
}

// Addr implements gateway.Gateway.
func (p *Proxy) Addr() string {
	if p.cfg.Advertise != "" {
		return p.cfg.Advertise
	}
	return p.ln.Addr().String()
}

// Events implements gateway.Gateway. The channel is closed when Run
// returns; events still queued then are dropped.
func (p *Proxy) Events() <-chan gateway.Event { return p.events.C() }

// Admit implements gateway.Gateway.
func (p *Proxy) Admit(ctx context.Context, g gateway.Grant) error {
	if err := g.Check(); err != nil {
		return fmt.Errorf("proxy: admit: %w", err)
	}
	hash := sha256.Sum256(g.Credential)
	p.mu.Lock()
	if s := p.sessions[g.SessionID]; s != nil {
		p.mu.Unlock()
		s.mu.Lock()
		err := s.m.CheckAdmit(hash)
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("proxy: admit %s: %w", g.SessionID, err)
		}
		return p.save()
	}
	m := gateway.NewMeter(p.meter, g.SessionID, hash, g.Quota, g.Threshold, time.Now())
	if g.Verified {
		m.SetVerified(g.GuestKey)
	}
	s := p.newSession(m)
	p.sessions[g.SessionID] = s
	p.mu.Unlock()
	if err := p.save(); err != nil {
		p.mu.Lock()
		delete(p.sessions, g.SessionID)
		p.mu.Unlock()
		s.mu.Lock()
		s.m.Revoke()
		cut := s.connsLocked()
		s.wakeLocked()
		s.mu.Unlock()
		for _, c := range cut {
			c.close()
		}
		return fmt.Errorf("proxy: admit %s: %w", g.SessionID, err)
	}
	p.log.Info("session admitted", "session", g.SessionID, "quota", g.Quota)
	return nil
}

func (p *Proxy) session(id string) (*session, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sessions[id]
	if s == nil {
		return nil, fmt.Errorf("proxy: session %s: %w", id, gateway.ErrUnknownSession)
	}
	return s, nil
}

// Extend implements gateway.Gateway.
func (p *Proxy) Extend(ctx context.Context, sessionID string, bytes int64) error {
	s, err := p.session(sessionID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.m.Extend(bytes); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("proxy: extend %s: %w", sessionID, err)
	}
	s.wakeLocked()
	s.mu.Unlock()
	if err := p.save(); err != nil {
		s.mu.Lock()
		s.m.UndoExtend(bytes)
		s.mu.Unlock()
		return fmt.Errorf("proxy: extend %s: %w", sessionID, err)
	}
	// Durable: connections held since the session ran out go on.
	s.mu.Lock()
	s.releaseLocked()
	s.mu.Unlock()
	return nil
}

// Acknowledge implements gateway.Gateway. A verified session's copy steps
// reserve no budget beyond acked + window, from the first byte: its
// connections stall (their reads wait, nothing is closed) until a higher
// acknowledgment arrives.
func (p *Proxy) Acknowledge(ctx context.Context, sessionID string, received int64, sig []byte) error {
	s, err := p.session(sessionID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	raised, err := s.m.Acknowledge(received, sig)
	if raised {
		s.wakeLocked()
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("proxy: acknowledge %s: %w", sessionID, err)
	}
	if err := p.save(); err != nil {
		return fmt.Errorf("proxy: acknowledge %s: %w", sessionID, err)
	}
	return nil
}

// Evidence implements gateway.Gateway.
func (p *Proxy) Evidence(sessionID string) (gateway.Evidence, error) {
	s, err := p.session(sessionID)
	if err != nil {
		return gateway.Evidence{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	acked, sig := s.m.Acked()
	return gateway.Evidence{Verified: s.m.Verified(), Acked: acked, Signature: sig, Held: s.m.Held()}, nil
}

// control is a session's side of its guest's control stream.
func (p *Proxy) controlOf(s *session) gateway.Control {
	return gateway.Control{
		// In-band, an acknowledgment frees its bytes at once and is saved
		// with the next save (within saveEvery): waiting for a save per
		// acknowledgment would pace a fast transfer by the store. Nothing
		// of the host's depends on it being durable first: a crash before
		// the save holds the guest at the older count until its next
		// stream sends the whole count again.
		Acknowledge: func(ctx context.Context, received int64, sig []byte) error {
			s.mu.Lock()
			raised, err := s.m.Acknowledge(received, sig)
			if raised {
				s.wakeLocked()
			}
			s.mu.Unlock()
			if err != nil {
				return fmt.Errorf("proxy: acknowledge %s: %w", s.id, err)
			}
			p.requestSave()
			return nil
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

// Revoke implements gateway.Gateway. The session's usage stays readable
// through Usage until the process ends; the store forgets it.
func (p *Proxy) Revoke(ctx context.Context, sessionID string) error {
	s, err := p.session(sessionID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.m.Revoke()
	s.holding = false
	cut := s.connsLocked()
	s.wakeLocked()
	if s.idle != nil {
		s.idle.Stop()
	}
	s.mu.Unlock()
	for _, c := range cut {
		c.close()
	}
	if err := p.save(); err != nil {
		return fmt.Errorf("proxy: revoke %s: %w", sessionID, err)
	}
	return nil
}

// Usage implements gateway.Gateway. For a session restored from the store,
// used includes the bound saved ahead of use before the restart.
func (p *Proxy) Usage(sessionID string) (used, quota int64, err error) {
	s, err := p.session(sessionID)
	if err != nil {
		return 0, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.Used(), s.m.Quota(), nil
}

// authenticate returns the session whose ID is user and whose access code
// pass is, or nil. The code is compared as a hash, in constant time.
func (p *Proxy) authenticate(user, pass string) *session {
	p.mu.Lock()
	s := p.sessions[user]
	p.mu.Unlock()
	want := p.dummy
	if s != nil {
		want = s.hash
	}
	if !gateway.CodeMatches(want, pass) || s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m.Revoked() {
		return nil
	}
	return s
}

// control refuses destinations the gateway must not connect to. It runs
// on every address the dialer tries, after name resolution.
func (p *Proxy) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	if network != "tcp4" && network != "tcp6" {
		return fmt.Errorf("network %s: %w", network, errDestination)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %v", errDestination, err)
	}
	if p.isSelf(ap) || !p.policy.Allowed(ap) {
		return errDestination
	}
	return nil
}

// isSelf reports whether ap may reach the gateway's own listener.
func (p *Proxy) isSelf(ap netip.AddrPort) bool {
	if ap.Port() != p.self.Port() {
		return false
	}
	a, self := ap.Addr().Unmap(), p.self.Addr().Unmap()
	return a == self || a.IsLoopback() || a.IsUnspecified() || gateway.IsOwn(a)
}

// Run implements gateway.Gateway: it serves guests until ctx ends or Close
// is called, then closes every connection, saves exact usage and returns.
func (p *Proxy) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("proxy: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	bg.Go(func() { p.events.Run(ctx) })
	bg.Go(func() { p.saver(ctx) })
	stop := context.AfterFunc(ctx, p.closeListener)
	defer stop()

	err := p.accept(ctx)
	p.closeListener()
	cancel()
	p.mu.Lock()
	p.stopping = true
	cut := slices.Collect(maps.Keys(p.conns))
	p.mu.Unlock()
	for _, c := range cut {
		c.close()
	}
	p.connWG.Wait()
	bg.Wait()
	p.events.Close()
	if serr := p.save(); serr != nil {
		err = errors.Join(err, serr)
	}
	return err
}

// Close stops accepting and, if Run is serving, makes it return. It is safe
// to call when Run was never called, and more than once.
func (p *Proxy) Close() error {
	p.closeListener()
	return nil
}

func (p *Proxy) closeListener() {
	p.closeOnce.Do(func() { p.ln.Close() })
}

func (p *Proxy) accept(ctx context.Context) error {
	var backoff time.Duration
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ECONNABORTED) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		c := &pconn{p: p, client: conn}
		if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
			c.addr = ta.AddrPort().Addr().Unmap()
		}
		c.ctx, c.cancel = context.WithCancel(ctx)
		evicted, why := p.track(c)
		if why != "" {
			c.cancel()
			conn.Close()
			p.log.Debug("connection refused", "remote", conn.RemoteAddr(), "why", why)
			continue
		}
		if evicted != nil {
			evicted.close()
			p.log.Debug("unauthenticated connection closed to make room", "remote", evicted.client.RemoteAddr())
		}
		go p.serve(c)
	}
}

// track counts a new connection as a handshake: within its address's
// budget and, when the budget in all is used up, in place of the oldest
// handshake, which it returns for closing. why says why it was refused.
func (p *Proxy) track(c *pconn) (evicted *pconn, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.stopping:
		return nil, "stopping"
	case p.perAddr[c.addr] >= p.cfg.MaxHandshakesPerAddr:
		return nil, "too many unauthenticated connections from the address"
	}
	if p.pending.Len() >= p.cfg.MaxHandshakes {
		evicted = p.pending.Front().Value.(*pconn)
		p.untrackHandshakeLocked(evicted)
	}
	c.pending = p.pending.PushBack(c)
	p.perAddr[c.addr]++
	p.conns[c] = struct{}{}
	p.connWG.Add(1)
	return evicted, ""
}

func (p *Proxy) untrackHandshakeLocked(c *pconn) {
	p.pending.Remove(c.pending)
	c.pending = nil
	if p.perAddr[c.addr]--; p.perAddr[c.addr] <= 0 {
		delete(p.perAddr, c.addr)
	}
}

// promote moves an authenticated connection from the handshake budget to
// MaxConns. It fails if the gateway is full, or if the connection was
// closed to make room meanwhile.
func (p *Proxy) promote(c *pconn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.pending == nil {
		return net.ErrClosed
	}
	p.untrackHandshakeLocked(c)
	if p.relayed >= p.cfg.MaxConns {
		return errGatewayFull
	}
	p.relayed++
	c.relayed = true
	return nil
}

func (p *Proxy) forget(c *pconn) {
	p.mu.Lock()
	delete(p.conns, c)
	if c.pending != nil {
		p.untrackHandshakeLocked(c)
	}
	if c.relayed {
		p.relayed--
	}
	p.mu.Unlock()
	p.connWG.Done()
}

// requestSave asks the saver for a save soon, without waiting.
func (p *Proxy) requestSave() {
	select {
	case p.saveReq <- struct{}{}:
	default:
	}
}

// saver saves on request and every saveEvery while Run runs.
func (p *Proxy) saver(ctx context.Context) {
	if p.store == nil {
		return
	}
	t := time.NewTicker(saveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.saveReq:
		case <-t.C:
		}
		if err := p.save(); err != nil {
			p.log.Error("cannot save usage; traffic waits", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(saveRetry):
			}
		}
	}
}

// save writes every session whose record changed, then lets connections
// use the budget the new records cover.
func (p *Proxy) save() error {
	if p.store == nil {
		return nil
	}
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	all := slices.Collect(maps.Values(p.sessions))
	p.mu.Unlock()
	var (
		b       gateway.SaveBatch
		changed []*session
	)
	for _, s := range all {
		s.mu.Lock()
		if s.addToSave(&b) {
			changed = append(changed, s)
		}
		s.mu.Unlock()
	}
	if err := b.Write(p.store); err != nil {
		return err
	}
	for i, s := range changed {
		s.mu.Lock()
		if b.Done(i) {
			s.wakeLocked()
		}
		s.grewLead = false
		s.mu.Unlock()
	}
	return nil
}

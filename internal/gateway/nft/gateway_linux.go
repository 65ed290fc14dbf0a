package nft

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/seal"
)

// Gateway is the kernel metering gateway. See the package documentation.
//
// Lock order: saveMu, limMu, mu, nftMu, evMu.
type Gateway struct {
	cfg   Config
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

	evMu     sync.Mutex
	evq      []gateway.Event
	evSignal chan struct{}
	events   chan gateway.Event

	running   atomic.Bool
	closeOnce sync.Once
}

var _ gateway.Gateway = (*Gateway)(nil)

// session is one admitted session's metering state (under Gateway.mu).
//
// Budget invariant: the kernel quota's limit is limitSet ≤ bound() =
// min(quota, durable), and durable is saved in the store before the limit
// is raised. The quota object's consumed bytes are never below the
// counter's (see setLimits), so the kernel passes at most bound() bytes.
type session struct {
	id        string
	tag       string
	hash      [32]byte
	threshold int64

	quota    int64
	used     int64 // bytes passed, as the kernel counter last read
	durable  int64 // usage bound saved in the store
	limitSet int64 // the kernel quota's limit
	lead     int64
	frozen   bool  // at the last poll the quota was used up: packets are dropped
	shrink   bool  // idle: lower the limit and the saved bound to near use
	resetAt  int64 // the counter when the quota object was last replaced

	warned, seen, exhausted, revoked bool
	kernelGone                       bool // revoked and its chain, objects and bindings removed
	inStore                          bool
	saved                            gateway.Record
	bindings                         []binding
	lastMove                         time.Time
	idleSent                         bool
}

func (s *session) bound() int64 { return min(s.quota, s.durable) }

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
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, log: cfg.Log, store: cfg.Store,
		sessions: map[string]*session{}, byAddr: map[netip.Addr]*session{},
		evSignal: make(chan struct{}, 1), events: make(chan gateway.Event, 64)}
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
	g.lay = newLayout(cfg.Table, cfg.LAN, cfg.Uplink, uint16(port))
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

// kernelState is what a table left by an earlier run holds.
type kernelState struct {
	counters map[string]uint64 // by tag
	quotas   map[string]*nftables.QuotaObj
	bindings map[string][]binding
	chains   []string // guest tags
}

func (g *Gateway) readKernel() (*kernelState, error) {
	ks := &kernelState{counters: map[string]uint64{}, quotas: map[string]*nftables.QuotaObj{}, bindings: map[string][]binding{}}
	if _, err := g.nc.ListTableOfFamily(g.lay.table.Name, g.lay.table.Family); err != nil {
		return ks, nil // no table yet
	}
	objs, err := g.nc.GetObjects(g.lay.table)
	if err != nil {
		return nil, fmt.Errorf("read objects: %w", err)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			if tag, ok := strings.CutPrefix(o.Name, "c-"); ok {
				ks.counters[tag] = o.Bytes
			}
		case *nftables.QuotaObj:
			if tag, ok := strings.CutPrefix(o.Name, "q-"); ok {
				ks.quotas[tag] = o
			}
		}
	}
	chains, err := g.nc.ListChainsOfTableFamily(g.lay.table.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == g.lay.table.Name {
			if tag, ok := strings.CutPrefix(c.Name, "g-"); ok {
				ks.chains = append(ks.chains, tag)
			}
		}
	}
	for _, s := range []*nftables.Set{g.lay.up4, g.lay.up6} {
		els, err := g.nc.GetSetElements(s)
		if err != nil {
			continue // the map does not exist yet
		}
		for _, e := range els {
			n := 4
			if s == g.lay.up6 {
				n = 16
			}
			if len(e.Key) < n+6 || e.Comment == "" {
				continue
			}
			a, _ := netip.AddrFromSlice(e.Key[:n])
			ks.bindings[e.Comment] = append(ks.bindings[e.Comment], binding{addr: a, mac: net.HardwareAddr(slices.Clone(e.Key[n : n+6]))})
		}
	}
	return ks, nil
}

// reconcile brings the table to the desired state: the static part, and
// one chain, quota and counter per stored session with the bindings the
// kernel still holds for it; everything else in the table goes. A session
// whose counter survived (the process restarted, the kernel did not) keeps
// its exact usage; otherwise its saved upper bound counts as used.
func (g *Gateway) reconcile() error {
	var recs []gateway.Record
	if g.store != nil {
		var err error
		if recs, err = g.store.Load(); err != nil {
			return fmt.Errorf("nft: load usage: %w", err)
		}
	}
	ks, err := g.readKernel()
	if err != nil {
		return fmt.Errorf("nft: read table %s: %w", g.lay.table.Name, err)
	}
	err = g.apply(recs, ks)
	if err != nil {
		// The old table does not fit (another version's layout): start
		// from scratch, every session at its saved bound.
		g.log.Warn("rebuilding the nftables table", "table", g.lay.table.Name, "err", err)
		g.nftMu.Lock()
		g.nc.DelTable(g.lay.table)
		derr := g.nc.Flush()
		g.nftMu.Unlock()
		if derr != nil && !errors.Is(derr, unix.ENOENT) {
			return fmt.Errorf("nft: delete table %s: %w", g.lay.table.Name, errors.Join(err, derr))
		}
		g.sessions, g.byAddr = map[string]*session{}, map[netip.Addr]*session{}
		empty := &kernelState{counters: map[string]uint64{}, quotas: map[string]*nftables.QuotaObj{}, bindings: map[string][]binding{}}
		if err := g.apply(recs, empty); err != nil {
			return fmt.Errorf("nft: build table %s: %w", g.lay.table.Name, err)
		}
	}
	if n := g.flowtables(); n > 0 {
		g.log.Warn("a flowtable exists in this network namespace; flows it offloads bypass the forward hook and are not metered",
			"flowtables", n)
	}
	return g.save()
}

// flowtables counts the flowtables of every table in the namespace. This
// gateway makes none: metered flows must not be offloaded past its
// forward chain.
func (g *Gateway) flowtables() int {
	g.nftMu.Lock()
	defer g.nftMu.Unlock()
	tables, err := g.nc.ListTables()
	if err != nil {
		return 0
	}
	n := 0
	for _, t := range tables {
		if fts, err := g.nc.ListFlowtables(t); err == nil {
			n += len(fts)
		}
	}
	return n
}

func (g *Gateway) apply(recs []gateway.Record, ks *kernelState) error {
	now := time.Now()
	want := map[string]bool{}
	g.nftMu.Lock()
	locked := true
	defer func() {
		if locked {
			g.nftMu.Unlock()
		}
	}()
	if err := g.lay.build(g.nc); err != nil {
		return err
	}
	sessions := map[string]*session{}
	byAddr := map[netip.Addr]*session{}
	for _, r := range recs {
		s := &session{id: r.SessionID, tag: tagOf(r.SessionID), hash: r.CredentialHash, threshold: r.Threshold,
			quota: r.Quota, used: r.Used, durable: r.Used, warned: r.Warned, lead: g.cfg.PersistAhead,
			inStore: true, saved: r, lastMove: now}
		c, haveCounter := ks.counters[s.tag]
		q, haveQuota := ks.quotas[s.tag]
		mode := create
		if haveCounter && haveQuota {
			// The kernel's count is exact and never above the bound the
			// store holds (the limit was only ever raised after a save).
			s.used = min(int64(c), s.quota)
			s.durable = max(s.durable, s.used)
			mode = update
			if q.Consumed >= q.Bytes {
				// Used up: nothing passes, the counter stands still, so a
				// new quota object starting at the counter is exact.
				mode = replace
			}
		}
		s.seen = s.used > 0
		s.exhausted = s.used >= s.quota
		s.idleSent = true
		s.limitSet = s.bound()
		s.resetAt = s.used
		want[s.tag] = true
		g.lay.addGuest(g.nc, s.tag, uint64(s.limitSet), uint64(s.used), mode)
		for _, b := range ks.bindings[s.tag] {
			if len(s.bindings) < g.cfg.MaxBindings && byAddr[b.addr] == nil {
				s.bindings = append(s.bindings, b)
				byAddr[b.addr] = s
			}
		}
		sessions[s.id] = s
	}
	// Refill the maps: drop every element, add the kept bindings back.
	for _, m := range []*nftables.Set{g.lay.up4, g.lay.up6, g.lay.down4, g.lay.down6} {
		g.nc.FlushSet(m)
	}
	for _, s := range sessions {
		for _, b := range s.bindings {
			if err := g.addBindingLocked(b, s.tag); err != nil {
				return err
			}
		}
	}
	for _, tag := range ks.chains {
		if !want[tag] {
			g.lay.delGuest(g.nc, tag)
		}
	}
	if err := g.nc.Flush(); err != nil {
		return err
	}
	g.nftMu.Unlock()
	locked = false
	g.mu.Lock()
	g.sessions, g.byAddr = sessions, byAddr
	g.mu.Unlock()
	return nil
}

func (g *Gateway) addBindingLocked(b binding, tag string) error {
	up, down, ue, de := g.lay.elements(b, tag)
	if err := g.nc.SetAddElements(up, []nftables.SetElement{ue}); err != nil {
		return err
	}
	return g.nc.SetAddElements(down, []nftables.SetElement{de})
}

func (g *Gateway) delBindingLocked(b binding, tag string) error {
	up, down, ue, de := g.lay.elements(b, tag)
	ue.VerdictData, de.VerdictData = nil, nil
	if err := g.nc.SetDeleteElements(up, []nftables.SetElement{ue}); err != nil {
		return err
	}
	return g.nc.SetDeleteElements(down, []nftables.SetElement{de})
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
func (g *Gateway) Events() <-chan gateway.Event { return g.events }

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
		revoked, same := s.revoked, subtle.ConstantTimeCompare(s.hash[:], hash[:]) == 1
		g.mu.Unlock()
		switch {
		case revoked:
			return fmt.Errorf("nft: admit %s: %w", gr.SessionID, gateway.ErrRevoked)
		case !same:
			return fmt.Errorf("nft: admit %s: %w", gr.SessionID, gateway.ErrSessionExists)
		}
		return g.save()
	}
	s := &session{id: gr.SessionID, tag: tagOf(gr.SessionID), hash: hash, threshold: gr.Threshold, quota: gr.Quota,
		lead: g.cfg.PersistAhead, lastMove: time.Now(), idleSent: true}
	if g.store == nil {
		s.durable = math.MaxInt64
	}
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
		s.revoked, s.kernelGone = true, true
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
	switch {
	case s.revoked:
		g.mu.Unlock()
		return fmt.Errorf("nft: extend %s: %w", sessionID, gateway.ErrRevoked)
	case bytes <= 0 || s.quota > math.MaxInt64-bytes:
		g.mu.Unlock()
		return fmt.Errorf("nft: extend %s by %d bytes: %w", sessionID, bytes, gateway.ErrInvalid)
	}
	s.quota += bytes
	if s.used < s.quota {
		s.exhausted = false
	}
	if s.quota-s.used >= s.threshold {
		s.warned = false
	}
	g.mu.Unlock()
	if err := g.save(); err != nil {
		g.mu.Lock()
		if !s.inStore || s.saved.Quota+bytes <= s.quota {
			s.quota -= bytes
			s.exhausted = s.used >= s.quota
		}
		g.mu.Unlock()
		return fmt.Errorf("nft: extend %s: %w", sessionID, err)
	}
	if err := g.setLimits(); err != nil {
		return fmt.Errorf("nft: extend %s: %w", sessionID, err)
	}
	return nil
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
	if !s.revoked {
		g.readCounterLocked(s)
		s.revoked = true
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
	if s.revoked {
		return
	}
	g.nftMu.Lock()
	o, err := g.nc.GetObject(g.lay.counterObj(s.tag, 0))
	g.nftMu.Unlock()
	if err != nil {
		return
	}
	if c, ok := o.(*nftables.CounterObj); ok {
		s.used = max(s.used, int64(c.Bytes))
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
	return s.used, s.quota, nil
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
	bg.Go(func() { g.pumpEvents(ctx) })
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
	close(g.events)
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

func (g *Gateway) pollLoop(ctx context.Context) {
	t := time.NewTicker(g.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := g.poll(); err != nil {
			g.log.Error("cannot poll the kernel counters", "err", err)
		}
	}
}

// poll reads every quota and counter in one dump, sends the events the
// new usage calls for, saves further ahead for sessions close to their
// saved bound, and sets new kernel limits where they are due.
func (g *Gateway) poll() error {
	objs, err := g.readObjects()
	if err != nil {
		return err
	}
	now := time.Now()
	needSave, needLimits, needShrink := false, false, false
	g.mu.Lock()
	for _, s := range g.sessions {
		o, ok := objs[s.tag]
		if s.revoked || !ok {
			continue
		}
		moved := int64(0)
		if o.counter > s.used {
			moved = o.counter - s.used
			s.used = o.counter
			s.lastMove, s.idleSent = now, false
		}
		s.frozen = o.frozen()
		g.eventsLocked(s)
		if !s.idleSent && now.Sub(s.lastMove) >= g.cfg.IdleAfter {
			s.idleSent = true
			g.emit(s, gateway.Idle)
		}
		if g.store != nil && s.durable < s.quota {
			// Keep the lead above four polls' worth of this session's
			// traffic, so the kernel limit is raised long before traffic
			// reaches it; if it did reach it (packets were dropped and TCP
			// backs off), save sixteen times further ahead.
			lead := max(s.lead, 4*moved)
			if s.frozen {
				lead = 16 * s.lead
			}
			s.lead = min(lead, maxLeadFactor*g.cfg.PersistAhead)
			if s.used+s.lead/2 >= s.durable {
				needSave = true
			}
		}
		needLimits = needLimits || s.bound() > s.limitSet || s.owed(o)
		if g.store != nil && !s.frozen && now.Sub(s.lastMove) >= shrinkAfter && s.limitSet > s.used+g.cfg.PersistAhead {
			// Idle with a long lead: bring the bound back near use, so
			// that losing the table (a reboot) costs this guest little.
			s.shrink = true
			needShrink = true
		}
	}
	g.mu.Unlock()
	if needShrink {
		if err := g.shrinkLimits(); err != nil {
			return err
		}
		needSave = true
	}
	if needSave {
		if err := g.save(); err != nil {
			return err
		}
		needLimits = true
	}
	if needLimits {
		return g.setLimits()
	}
	return nil
}

// guestObjs is one session's quota and counter as the kernel dumped them.
type guestObjs struct {
	counter         int64
	limit, consumed int64 // the quota's; consumed is capped at limit
	haveQuota       bool
}

// frozen: the quota is used up, so every further packet is dropped and the
// counter stands still.
func (o guestObjs) frozen() bool { return o.haveQuota && o.consumed >= o.limit }

// owed reports whether a used-up quota object holds back bytes the session
// may still use: the quota also counts the packets it drops, so if a limit
// was raised in place while packets were being dropped, those count
// against the session until the object is replaced. Only worth it when at
// least a full-size packet fits, and once per movement of the counter.
func (s *session) owed(o guestObjs) bool {
	return o.frozen() && s.bound()-o.counter >= mtu && o.counter != s.resetAt
}

func (g *Gateway) readObjects() (map[string]guestObjs, error) {
	g.nftMu.Lock()
	objs, err := g.nc.GetObjects(g.lay.table)
	g.nftMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("read the kernel counters: %w", err)
	}
	out := map[string]guestObjs{}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			if tag, ok := strings.CutPrefix(o.Name, "c-"); ok {
				x := out[tag]
				x.counter = int64(o.Bytes)
				out[tag] = x
			}
		case *nftables.QuotaObj:
			if tag, ok := strings.CutPrefix(o.Name, "q-"); ok {
				x := out[tag]
				x.limit, x.consumed, x.haveQuota = int64(o.Bytes), int64(o.Consumed), true
				out[tag] = x
			}
		}
	}
	return out, nil
}

// eventsLocked sends the events s's usage calls for.
func (g *Gateway) eventsLocked(s *session) {
	if s.used > 0 && !s.seen {
		s.seen = true
		g.emit(s, gateway.FirstTraffic)
	}
	if s.threshold > 0 && !s.warned && s.quota-s.used < s.threshold {
		s.warned = true
		g.emit(s, gateway.ThresholdCrossed)
	}
	// Exhausted: not even a bare TCP segment fits any more, or the kernel
	// refuses packets at the full quota with less than a full-size packet
	// left (or no progress since the quota object was last replaced: the
	// guest's next packet is larger than what is left).
	full := s.frozen && s.limitSet >= s.quota && (s.quota-s.used < mtu || s.used == s.resetAt)
	if !s.exhausted && (s.used >= s.quota || full || s.quota-s.used < minPacket) {
		s.exhausted = true
		g.emit(s, gateway.Exhausted)
	}
}

// setLimits brings each session's kernel quota to its current bound.
//
// The kernel's quota object counts every packet it sees, the ones it
// drops too, and a limit changed in place keeps what was counted. So:
//
//   - a quota that is not used up is raised in place: it has dropped
//     nothing since it was made (drops only start once it is used up), so
//     what it counted is what passed, and nothing is lost or gained;
//   - a used-up quota is replaced, in the same transaction as the rules
//     that use it, by a new object whose consumed bytes are the counter's:
//     nothing passes while it is used up, so the counter read before the
//     transaction is still exact when it commits.
//
// Either way the kernel passes at most the new bound in all. Limits only
// rise here (a replacement may also give back bytes counted for dropped
// packets, see owed).
func (g *Gateway) setLimits() error {
	g.limMu.Lock()
	defer g.limMu.Unlock()
	objs, err := g.readObjects()
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	type change struct {
		s       *session
		limit   int64
		counter int64
		mode    guestMode
	}
	var changes []change
	for _, s := range g.sessions {
		o, ok := objs[s.tag]
		if s.revoked || !ok || !o.haveQuota {
			continue
		}
		b := s.bound()
		switch {
		case o.frozen() && (b > s.limitSet || s.owed(o)):
			changes = append(changes, change{s: s, limit: b, counter: o.counter, mode: replace})
		case !o.frozen() && b > s.limitSet:
			changes = append(changes, change{s: s, limit: b, mode: update})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	g.nftMu.Lock()
	for _, c := range changes {
		g.lay.addGuest(g.nc, c.s.tag, uint64(c.limit), uint64(c.counter), c.mode)
	}
	err = g.nc.Flush()
	g.nftMu.Unlock()
	if err != nil {
		return fmt.Errorf("set quota limits: %w", err)
	}
	for _, c := range changes {
		c.s.limitSet = c.limit
		if c.mode == replace {
			c.s.resetAt = c.counter
			c.s.frozen = false
		}
	}
	return nil
}

// shrinkLimits lowers the kernel limit of idle sessions marked shrink to
// PersistAhead above their use, first in the kernel, then (by the caller's
// save) in the store: the store may hold more than the kernel allows,
// never less. A session that moved meanwhile is left alone; one whose
// next packet no longer fits is raised again by the next poll.
func (g *Gateway) shrinkLimits() error {
	g.limMu.Lock()
	defer g.limMu.Unlock()
	objs, err := g.readObjects()
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var low []*session
	prev := map[*session]int64{}
	g.nftMu.Lock()
	for _, s := range g.sessions {
		o, ok := objs[s.tag]
		if !s.shrink || s.revoked || !ok || o.frozen() || o.counter != s.used {
			s.shrink = false
			continue
		}
		s.shrink = false
		s.lead = g.cfg.PersistAhead
		limit := min(s.quota, s.used+s.lead)
		if limit >= s.limitSet {
			continue
		}
		g.nc.AddObj(g.lay.quotaObj(s.tag, uint64(limit), 0))
		prev[s] = s.limitSet
		s.limitSet = limit
		low = append(low, s)
	}
	if len(low) == 0 {
		g.nftMu.Unlock()
		return nil
	}
	err = g.nc.Flush()
	g.nftMu.Unlock()
	if err != nil {
		for _, s := range low { // the batch failed as a whole
			s.limitSet = prev[s]
		}
		return fmt.Errorf("lower quota limits: %w", err)
	}
	for _, s := range low {
		s.durable = s.limitSet
	}
	return nil
}

func (g *Gateway) emit(s *session, k gateway.EventKind) {
	e := gateway.Event{Kind: k, SessionID: s.id, Used: s.used, Quota: s.quota}
	g.evMu.Lock()
	g.evq = append(g.evq, e)
	g.evMu.Unlock()
	select {
	case g.evSignal <- struct{}{}:
	default:
	}
}

func (g *Gateway) pumpEvents(ctx context.Context) {
	for {
		g.evMu.Lock()
		q := g.evq
		g.evq = nil
		g.evMu.Unlock()
		for _, e := range q {
			select {
			case g.events <- e:
			case <-ctx.Done():
				return
			}
		}
		if len(q) > 0 {
			continue
		}
		select {
		case <-g.evSignal:
		case <-ctx.Done():
			return
		}
	}
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
	type change struct {
		s   *session
		rec gateway.Record
		del bool
	}
	var (
		changes []change
		put     []gateway.Record
		del     []string
	)
	g.mu.Lock()
	for _, s := range g.sessions {
		if s.revoked {
			if s.inStore {
				del = append(del, s.id)
				changes = append(changes, change{s: s, del: true})
			}
			continue
		}
		bound := max(s.durable, min(s.quota, s.used+s.lead))
		rec := gateway.Record{SessionID: s.id, CredentialHash: s.hash, Quota: s.quota, Used: bound,
			Threshold: s.threshold, Warned: s.warned}
		if !s.inStore || rec != s.saved {
			put = append(put, rec)
			changes = append(changes, change{s: s, rec: rec})
		}
	}
	g.mu.Unlock()
	if len(changes) == 0 {
		return nil
	}
	if err := g.store.Save(put, del); err != nil {
		return err
	}
	g.mu.Lock()
	for _, c := range changes {
		if c.del {
			c.s.inStore = false
			continue
		}
		c.s.inStore, c.s.saved = true, c.rec
		c.s.durable = max(c.s.durable, c.rec.Used)
	}
	g.mu.Unlock()
	return nil
}

// authenticate returns the session whose ID and access code these are.
func (g *Gateway) authenticate(sessionID, code string) *session {
	g.mu.Lock()
	s := g.sessions[sessionID]
	g.mu.Unlock()
	want := g.dummy
	if s != nil {
		want = s.hash
	}
	raw, err := seal.ParseCode(code)
	var got [32]byte
	if err == nil {
		got = sha256.Sum256(raw)
	}
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 || err != nil || s == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.revoked {
		return nil
	}
	return s
}

// neighbour finds the MAC the kernel resolved for addr on the LAN.
func (g *Gateway) neighbour(addr netip.Addr) (net.HardwareAddr, error) {
	link, err := g.nl.LinkByName(g.cfg.LAN)
	if err != nil {
		return nil, fmt.Errorf("find LAN interface %s: %w", g.cfg.LAN, err)
	}
	fam := netlink.FAMILY_V4
	if addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	for range 3 {
		ns, err := g.nl.NeighList(link.Attrs().Index, fam)
		if err != nil {
			return nil, fmt.Errorf("read neighbour table: %w", err)
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if ok && a.Unmap() == addr && len(n.HardwareAddr) == 6 &&
				n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
				return slices.Clone(n.HardwareAddr), nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("no neighbour entry for %s on %s", addr, g.cfg.LAN)
}

// bind admits addr (and its MAC) for s. Admitting an address bound to
// another session, or more than MaxBindings addresses, is refused.
func (g *Gateway) bind(s *session, addr netip.Addr) (binding, error) {
	mac, err := g.neighbour(addr)
	if err != nil {
		return binding{}, err
	}
	return g.bindMAC(s, binding{addr: addr, mac: mac})
}

// bindMAC binds an address and MAC to s.
func (g *Gateway) bindMAC(s *session, b binding) (binding, error) {
	addr, mac := b.addr, b.mac
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.revoked {
		return binding{}, gateway.ErrRevoked
	}
	if o := g.byAddr[addr]; o != nil {
		if o != s {
			return binding{}, errAddrTaken
		}
		for _, old := range s.bindings {
			if old.addr == addr && slices.Equal(old.mac, mac) {
				return b, nil
			}
		}
		return binding{}, errAddrTaken
	}
	if len(s.bindings) >= g.cfg.MaxBindings {
		return binding{}, errTooManyBindings
	}
	g.nftMu.Lock()
	err := g.addBindingLocked(b, s.tag)
	if err == nil {
		err = g.nc.Flush()
	}
	g.nftMu.Unlock()
	if err != nil {
		return binding{}, fmt.Errorf("add binding %s: %w", b, err)
	}
	s.bindings = append(s.bindings, b)
	g.byAddr[addr] = s
	g.log.Info("guest bound", "session", s.id, "addr", addr, "mac", mac)
	return b, nil
}

func (g *Gateway) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admit", g.handleAdmit)
	return mux
}

func (g *Gateway) handleAdmit(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "malformed form", http.StatusBadRequest)
		return
	}
	sid, code := r.PostForm.Get("session"), r.PostForm.Get("code")
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		http.Error(w, "unknown peer address", http.StatusBadRequest)
		return
	}
	addr := ap.Addr().Unmap().WithZone("")
	if addr.IsLinkLocalUnicast() || addr.IsLoopback() {
		http.Error(w, "present the code from the address you browse with, not a link-local one", http.StatusBadRequest)
		return
	}
	s := g.authenticate(sid, code)
	if s == nil {
		http.Error(w, "wrong session or access code", http.StatusForbidden)
		return
	}
	if _, err := g.bind(s, addr); err != nil {
		switch {
		case errors.Is(err, errAddrTaken), errors.Is(err, errTooManyBindings):
			http.Error(w, err.Error(), http.StatusConflict)
		case errors.Is(err, gateway.ErrRevoked):
			http.Error(w, "session revoked", http.StatusForbidden)
		default:
			g.log.Warn("cannot bind a guest", "session", sid, "addr", addr, "err", err)
			http.Error(w, "cannot admit this address now; try again", http.StatusServiceUnavailable)
		}
		return
	}
	used, quota, _ := g.Usage(sid)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "online %s used=%s quota=%s\n", addr, strconv.FormatInt(used, 10), strconv.FormatInt(quota, 10))
}

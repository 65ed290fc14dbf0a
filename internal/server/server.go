// Package server assembles the Sharespot server: store, payment platform,
// session engine, relay and API, served over HTTP/2 (TLS, or cleartext on
// loopback), with a sweeper that moves overdue sessions on.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/atomicfile"
	"github.com/sharespot/sharespot/internal/auth"
	"github.com/sharespot/sharespot/internal/bus"
	"github.com/sharespot/sharespot/internal/card"
	"github.com/sharespot/sharespot/internal/dashboard"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/portal"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// DefaultListen is where the server listens when not told otherwise.
const DefaultListen = "127.0.0.1:8474"

// Defaults of the connection deadlines.
const (
	// HeaderTimeout bounds reading a request's headers (and the TLS
	// handshake before the first).
	HeaderTimeout      = 10 * time.Second
	DefaultBodyTimeout = 20 * time.Second
	DefaultIdleTimeout = 2 * time.Minute
)

// Config configures a server. The zero value plus a data directory works.
type Config struct {
	// DataDir holds sharespot.db. Default: DefaultDataDir().
	DataDir string
	// DB is the database: empty for SQLite in DataDir (DBPath), or a
	// postgres:// (postgresql://) URL for PostgreSQL.
	DB string
	// KeyFile holds the 32-byte key that seals the payment platform's
	// receipt-signing keys in the database (created 0600 on first use).
	// Default: platform.key in DataDir. Replicas of one database must
	// share it.
	KeyFile string
	// AdminKeyFile holds the admin key that authorises the dashboard's
	// sign-in links (created 0600 at the first start). Default:
	// admin.key in DataDir. Replicas of one database must share it.
	AdminKeyFile string
	// TLSCert and TLSKey: PEM files; without them the server speaks
	// cleartext HTTP/2 and HTTP/1.1, which Serve allows only on loopback
	// unless Insecure is set.
	TLSCert, TLSKey string
	Insecure        bool
	Session         session.Config
	// Limits: per device and per client address (rates, calls in
	// progress, inbox streams, connections); zero fields are off.
	Limits api.Limits
	// BodyTimeout bounds reading a request's body, from the end of its
	// headers to the end of its body (default DefaultBodyTimeout). An
	// inbox stream's request ends at once; its stream is not bounded.
	BodyTimeout time.Duration
	// IdleTimeout closes a connection with no request or stream open
	// for this long (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// SweepInterval: how often overdue sessions are looked for.
	SweepInterval time.Duration
	// DBMaxConns caps the PostgreSQL connection pool (default 16).
	DBMaxConns int
	// CommitDelay: how long SQLite's writer waits for more writes to share
	// a commit (store.Options.CommitDelay); 0 commits at once.
	CommitDelay time.Duration
	// Bus is the NATS server(s) (nats://host:port, comma-separated) that
	// carry inbox wake-ups between replicas; empty for one replica.
	Bus string
	// PollInterval: longest an inbox stream waits without a wake-up.
	// Default 30 s; 1 s with a Bus, which bounds the delay a lost
	// wake-up causes.
	PollInterval time.Duration
	// AckDelay: how long an inbox acknowledgment of what this replica's
	// stream sent is held before its write, with others' (relay.Acks;
	// default relay.DefaultAckDelay).
	AckDelay time.Duration
	// HostGoneGrace: how long after a host's inbox stream ended without
	// HotspotService.Leave its hotspots are marked offline, unless it is
	// back (default 10 s).
	HostGoneGrace time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
	// Registry receives the server's metrics (served at /metrics); nil:
	// a registry of the server's own.
	Registry *prometheus.Registry
	// Crash is passed to the store (crash-safety tests only); with it set,
	// the API names each call's writes (api.Deps.NameCalls).
	Crash func(commit int64, committed bool, calls []string)
	// Stripe configures card payments (internal/card); without a key the
	// wallet is the only payment platform.
	Stripe card.Config
}

// DefaultDataDir is the user's data directory for Sharespot.
func DefaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "sharespot")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "sharespot-data"
	}
	if runtime.GOOS == "darwin" {
		return filepath.Join(home, "Library", "Application Support", "Sharespot")
	}
	return filepath.Join(home, ".local", "share", "sharespot")
}

// DBPath is the SQLite file inside a data directory.
func DBPath(dataDir string) string { return filepath.Join(dataDir, "sharespot.db") }

// DBTarget is the database a server with this data directory and DB
// setting uses: the postgres:// URL, or the SQLite file in the data
// directory. It refuses a DB that is neither empty nor a PostgreSQL URL.
func DBTarget(dataDir, db string) (string, error) {
	switch {
	case db == "":
		if dataDir == "" {
			dataDir = DefaultDataDir()
		}
		return DBPath(dataDir), nil
	case store.IsPostgresURL(db):
		return db, nil
	default:
		return "", fmt.Errorf("server: database %q is not a postgres:// URL; leave it empty to use SQLite in the data directory", store.Redact(db))
	}
}

// Server is a running Sharespot server's parts.
type Server struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Store
	hub     *relay.Hub
	acks    *relay.Acks
	bus     *bus.NATS
	engine  *session.Engine
	auth    *auth.Auth
	wallet  *payment.Wallet
	card    *card.Card
	handler http.Handler
	reg     *prometheus.Registry
	metrics *metrics.Server

	readyMu   sync.Mutex
	readyWait []chan error // callers of a database check under way
}

// Open opens the database and builds the server.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Session.QuoteTimeout == 0 {
		cfg.Session = session.DefaultConfig()
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 500 * time.Millisecond
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 30 * time.Second
		if cfg.Bus != "" {
			cfg.PollInterval = time.Second
		}
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, hub: relay.NewHub(), reg: cfg.Registry}
	s.metrics = metrics.NewServer(s.reg)
	target, err := DBTarget(cfg.DataDir, cfg.DB)
	if err != nil {
		return nil, err
	}
	if cfg.Bus != "" && !bus.IsURL(cfg.Bus) {
		return nil, errors.New("server: the bus is not a NATS URL: want nats://host:port")
	}
	if s.st, err = store.Open(ctx, target, store.Options{Logger: cfg.Logger, Crash: cfg.Crash, MaxConns: cfg.DBMaxConns,
		CommitDelay: cfg.CommitDelay, OnCommit: s.metrics.Committed}); err != nil {
		return nil, err
	}
	keyFile := cfg.KeyFile
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, "platform.key")
	}
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		s.st.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	_, statErr := os.Stat(keyFile)
	created := errors.Is(statErr, fs.ErrNotExist)
	kek, err := atomicfile.LoadOrCreateSecret(keyFile, 32)
	if err != nil {
		s.st.Close()
		return nil, fmt.Errorf("server: the key that seals the receipt-signing keys: %w", err)
	}
	if s.wallet, err = payment.Open(ctx, s.st, cfg.Now, kek); err != nil {
		s.st.Close()
		if created {
			// A replica started without the shared key file made a
			// new one the database's keys do not open: leave nothing
			// behind that a second try would take for the right one.
			os.Remove(keyFile)
			err = fmt.Errorf("%w (%s did not exist and was not kept: copy the key file of the replicas already on this database there, or pass it with --key-file)", err, keyFile)
		}
		return nil, err
	}
	if err := s.repairHostRecords(ctx); err != nil {
		s.st.Close()
		return nil, err
	}
	if s.st.Engine() == store.Postgres && cfg.Bus == "" {
		// Several replicas share a PostgreSQL database; without a bus a
		// message committed on one reaches a stream held by another only
		// at that stream's next poll.
		s.log.Warn("PostgreSQL without a bus: if other replicas share this database, a guest or host whose stream is on another replica waits up to the poll interval for each message; give every replica --bus nats://HOST:4222",
			"poll_interval", cfg.PollInterval)
	}
	// Commits wake the local hub directly; with a bus, also the replica
	// that holds the receiver's stream.
	var waker relay.Waker = s.hub
	if cfg.Bus != "" {
		if s.bus, err = bus.Dial(cfg.Bus, s.hub, bus.Options{Logger: cfg.Logger}); err != nil {
			s.st.Close()
			return nil, err
		}
		waker = s.bus
	}
	// Settlement ends card holds through package card's tables, with or
	// without a Stripe key: holds an earlier run left are still captured
	// or released, the calls waiting in the outbox for a run with a key.
	s.engine = session.New(s.st, waker, s.wallet, card.Settler{}, cfg.Now, cfg.Session, cfg.Logger)
	s.auth = auth.New(s.st, cfg.Now, time.Hour)
	s.instrument()
	dash, err := s.openDashboard(ctx)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.acks = relay.NewAcks(s.st, cfg.AckDelay, cfg.Logger)
	deps := api.Deps{Store: s.st, Engine: s.engine, Auth: s.auth, Wallet: s.wallet, Hub: s.hub, Acks: s.acks,
		Now: cfg.Now, Log: cfg.Logger, Limits: cfg.Limits, PollInterval: cfg.PollInterval, Metrics: s.metrics,
		HostAway: cfg.Session.HostAway, HostGoneGrace: cfg.HostGoneGrace, NameCalls: cfg.Crash != nil}
	if cfg.Bus != "" {
		deps.BusDown = func() bool { return !s.bus.Connected() }
	}
	mux := http.NewServeMux()
	if cfg.Stripe.Key != "" {
		if s.card, err = card.New(cfg.Stripe, s.st, s.engine, s.wallet, cfg.Now, cfg.Logger); err != nil {
			s.Close()
			return nil, err
		}
		deps.Card = s.card
		// Stripe's events pass the per-address limits like any caller.
		mux.Handle(card.WebhookPath, api.GuardAddresses(cfg.Limits, s.metrics, s.card))
	}
	mux.Handle("/", api.Handler(deps))
	// The guest pages, on the API's origin: the page's calls are
	// same-origin, so no CORS is needed or allowed.
	known := func(ctx context.Context, addr string) (bool, error) {
		return store.ReadT(ctx, s.st, func(tx *store.Tx) (bool, error) { return session.KnownGateway(tx, addr) })
	}
	mux.Handle(portal.Path, api.GuardAddresses(cfg.Limits, s.metrics, portal.Handler(known)))
	dh := api.GuardAddresses(cfg.Limits, s.metrics, dash.Handler())
	mux.Handle("/dashboard", dh)
	mux.Handle("/dashboard/", dh)
	// /healthz, /readyz and /metrics outside the body deadline.
	s.handler = s.routes(bodyDeadline(mux, cfg.BodyTimeout))
	return s, nil
}

// AdminKeyFile is where the admin key of a server with this data
// directory and admin key setting is.
func AdminKeyFile(dataDir, adminKeyFile string) string {
	if adminKeyFile != "" {
		return adminKeyFile
	}
	if dataDir == "" {
		dataDir = DefaultDataDir()
	}
	return dashboard.KeyPath(dataDir)
}

// openDashboard loads (or makes) the admin key, records its check value
// in the database for `sharespot server admin-link`, and builds the
// dashboard.
func (s *Server) openDashboard(ctx context.Context) (*dashboard.Dashboard, error) {
	key, err := dashboard.LoadOrCreateKey(AdminKeyFile(s.cfg.DataDir, s.cfg.AdminKeyFile))
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	// Read first: a restart commits nothing here (the crash tests count
	// commits from the start).
	var recorded, same bool
	err = s.st.Read(ctx, func(tx *store.Tx) error {
		var err error
		recorded, same, err = dashboard.KeyRecorded(tx, key)
		return err
	})
	if err == nil && !recorded {
		err = s.st.Write(ctx, func(tx *store.Tx) error {
			var err error
			same, err = dashboard.RecordKey(tx, key, s.cfg.Now().UnixMilli())
			return err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("server: record the admin key: %w", err)
	}
	if !same {
		s.log.Warn("the admin key is not the one the first server of this database made: dashboard links work only on servers sharing one admin key (copy it, or give --admin-key-file)",
			"file", AdminKeyFile(s.cfg.DataDir, s.cfg.AdminKeyFile))
	}
	return dashboard.New(dashboard.Deps{Store: s.st, Auth: s.auth, Key: key, Now: s.cfg.Now, Log: s.log, SecureCookies: s.cfg.TLSCert != "",
		HostAway: s.cfg.Session.HostAway})
}

// repairHostRecords rebuilds the hosts' records that discovery shows when
// they differ from the settled sessions, and gives ended sessions their
// end time when they lack it: a replica of a release before
// schema 8 settles sessions without keeping them, so a rolling upgrade
// leaves them short until a replica of this release starts after the
// last old one stopped. Read first: a start with nothing to repair
// commits nothing (the crash tests count commits from the start).
func (s *Server) repairHostRecords(ctx context.Context) error {
	drift, err := store.ReadT(ctx, s.st, session.CheckHostRecords)
	if err == nil && len(drift) > 0 {
		err = s.st.Write(ctx, session.RebuildHostRecords)
	}
	if err != nil {
		return fmt.Errorf("server: hosts' records: %w", err)
	}
	if len(drift) > 0 {
		s.log.Warn("the hosts' records shown in discovery differed from their settled sessions (settled by a replica of an earlier release after the upgrade?); rebuilt from the sessions",
			"hosts", len(drift), "first", drift[0])
	}
	// The same for the sessions' end times: a replica of a release before
	// schema 9 ends sessions without ended_ms.
	unmarked, err := store.ReadT(ctx, s.st, session.CountEndedUnmarked)
	if err == nil && unmarked > 0 {
		err = s.st.Write(ctx, session.RepairEnded)
	}
	if err != nil {
		return fmt.Errorf("server: sessions' end times: %w", err)
	}
	if unmarked > 0 {
		s.log.Warn("sessions had ended without their end time (ended by a replica of an earlier release after the upgrade?); set from their last update",
			"sessions", unmarked)
	}
	return nil
}

// Handler serves the API.
func (s *Server) Handler() http.Handler { return s.handler }

// Card is the card platform, nil without a Stripe key.
func (s *Server) Card() *card.Card { return s.card }

// Store is the server's database (for operator commands and tests).
func (s *Server) Store() *store.Store { return s.st }

// Close closes the database, then the bus (publishing the last commits'
// wake-ups). Safe after a failed Open and more than once.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	if s.acks != nil {
		// The acknowledgments held: written, or their messages are
		// delivered again after the restart.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.acks.Flush(ctx); err != nil {
			s.log.Warn("write held acknowledgments at close", "err", err)
		}
		cancel()
	}
	err := s.st.Close()
	s.bus.Close()
	return err
}

// CheckListen refuses cleartext on a non-loopback address unless allowed.
func (s *Server) CheckListen(addr net.Addr) error {
	if s.cfg.TLSCert != "" || s.cfg.Insecure {
		return nil
	}
	tcp, ok := addr.(*net.TCPAddr)
	if ok && tcp.IP.IsLoopback() {
		return nil
	}
	return fmt.Errorf("server: refusing cleartext HTTP on %s, which is not a loopback address: give --tls-cert and --tls-key, or --insecure-plaintext behind a TLS-terminating proxy", addr)
}

// Serve serves on ln until ctx ends, then shuts down gracefully: it stops
// accepting, ends inbox streams, lets unary calls finish (up to 10 s) and
// waits for the writer to commit what it holds. Connections over the
// limits' caps are closed as they are accepted (api.LimitListener).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.CheckListen(ln.Addr()); err != nil {
		return err
	}
	ln = api.LimitListener(ln, s.cfg.Limits, s.log, s.metrics)
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: HeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return streams },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetHTTP2(true)
	if s.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("server: load TLS certificate: %w", err)
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if err := serveTLSH2(hs); err != nil {
			return fmt.Errorf("server: HTTP/2 over TLS: %w", err)
		}
	}
	var plain *cleartext // cleartext HTTP/2 goes around net/http's h2c path
	if hs.TLSConfig == nil {
		plain = newCleartext(ln, hs, streams)
		ln = plain
	}

	var wg sync.WaitGroup
	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer stopSweep()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sweep(sweepCtx)
	}()
	if s.card != nil {
		// The Stripe calls settlement queued: those a crash left at
		// once, new ones as they come.
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.card.Run(sweepCtx, s.cfg.SweepInterval)
		}()
	}

	errc := make(chan error, 1)
	go func() {
		if hs.TLSConfig != nil {
			errc <- hs.ServeTLS(ln, "", "") // sets up ALPN for HTTP/2
			return
		}
		errc <- hs.Serve(ln)
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		endStreams()
		shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = hs.Shutdown(shut)
		if plain != nil {
			plain.wait(shut) // its HTTP/2 connections, which hs does not track
		}
		cancel()
		<-errc
	}
	stopSweep()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// sweep moves overdue sessions on and deletes expired credentials.
//
// Deadlines do not run out on parties while the database is away: they
// could not act (a host's final count, a grant, a quote all need it). So
// once the sweep finds the database unavailable it stops expiring
// sessions, and when the database is back it waits the close timeout
// more before it expires any, leaving hosts and guests, whose calls were
// refused meanwhile, the time to make them. Every replica's sweep sees
// the shared database's outage itself, and the grace also runs from the
// last call on this replica that found it away (store.LastUnavailable):
// a sweep that was busy through the whole outage still waits.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	lastAuth := time.Time{}
	var away bool
	var resume time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch {
		case away:
			err := s.st.Read(ctx, func(tx *store.Tx) error {
				var n int64
				return tx.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
			})
			if err != nil {
				continue
			}
			grace := s.closeGrace()
			away, resume = false, time.Now().Add(grace)
			s.log.Info("database back: overdue sessions expire again after a grace, for the parties to make the calls it refused",
				"grace", grace)
			continue
		case time.Now().Before(resume):
			continue
		case time.Since(s.st.LastUnavailable()) < s.closeGrace():
			// Another call found the database away, though this loop
			// did not (it may have been busy all through the outage):
			// the same grace, from that call.
			continue
		}
		if err := s.SweepOnce(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, store.ErrUnavailable) {
				away = true
				s.log.Warn("database unavailable: no session expires until it is back and a grace has passed", "err", err)
				continue
			}
			s.log.Warn("sweep", "err", err)
		}
		if time.Since(lastAuth) > time.Minute {
			lastAuth = time.Now()
			if err := s.auth.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("sweep credentials", "err", err)
			}
			if err := s.st.Write(ctx, func(tx *store.Tx) error { return dashboard.Sweep(tx, s.cfg.Now().UnixMilli()) }); err != nil && ctx.Err() == nil {
				s.log.Warn("sweep dashboard sign-ins", "err", err)
			}
		}
	}
}

// closeGrace is how long after the database's return nothing expires:
// the close timeout, which a party has to make a call a deadline waits on.
func (s *Server) closeGrace() time.Duration {
	if g := s.cfg.Session.CloseTimeout; g > 0 {
		return g
	}
	return session.DefaultConfig().CloseTimeout
}

// SweepOnce expires every session overdue now.
func (s *Server) SweepOnce(ctx context.Context) error {
	for {
		ids, err := store.ReadT(ctx, s.st, func(tx *store.Tx) ([]string, error) { return s.engine.Overdue(tx, 100) })
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		var errs []error
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.st.Write(ctx, func(tx *store.Tx) error { return s.engine.Expire(tx, id) }); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("expire %s: %w", id, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if len(ids) < 100 {
			return nil
		}
	}
}

//go:build !device

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/bus"
	"github.com/sharespot/sharespot/internal/card"
	"github.com/sharespot/sharespot/internal/dashboard"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

// ServerGroupCmd is `sharespot server`: running it (the default) and the
// operator's dashboard link.
type ServerGroupCmd struct {
	Run              ServerCmd           `cmd:"" default:"withargs" help:"Run the server (the default: \"sharespot server\" is \"sharespot server run\")."`
	AdminLink        AdminLinkCmd        `cmd:"" name:"admin-link" help:"Operator: print a one-time link (10 minutes) that signs a browser in to the operator's dashboard."`
	StripeTestEvents StripeTestEventsCmd `cmd:"" name:"stripe-test-events" help:"Test mode with stripe-mock (which sends no webhooks): authorise, or --decline, the card payments and fundings waiting for Stripe, by webhook events signed as Stripe signs them."`
}

// AdminLinkCmd makes an operator's sign-in link, authorised by the admin
// key the server made at its first start, in the server's database.
type AdminLinkCmd struct {
	Data         string `env:"SHARESPOT_DATA" help:"The server's data directory (holds admin.key)." placeholder:"DIR"`
	DB           string `name:"db" env:"SHARESPOT_DB" help:"The server's database, when it is PostgreSQL (a postgres:// URL)." placeholder:"URL"`
	AdminKeyFile string `name:"admin-key-file" env:"SHARESPOT_ADMIN_KEY_FILE" help:"The server's admin key (default: admin.key in --data)." placeholder:"FILE"`
	URL          string `name:"url" default:"http://127.0.0.1:8474" env:"SHARESPOT_PUBLIC_URL" help:"The server's address as the browser reaches it."`
}

// Run prints the link.
func (c *AdminLinkCmd) Run(env *runEnv) error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--url %q: want the server's address as a browser reaches it, such as https://sharespot.example.org", c.URL)
	}
	target, err := server.DBTarget(c.Data, c.DB)
	if err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	keyFile := server.AdminKeyFile(c.Data, c.AdminKeyFile)
	if _, err := os.Stat(keyFile); err != nil {
		return fmt.Errorf("no admin key at %s: start `sharespot server` on this data directory once (it makes the key), or give --admin-key-file", keyFile)
	}
	key, err := dashboard.LoadOrCreateKey(keyFile)
	if err != nil {
		return err
	}
	st, err := store.Open(env.ctx, target, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	token, exp, err := dashboard.OperatorLink(env.ctx, st, key, time.Now())
	if err != nil {
		return fmt.Errorf("admin link: %w", err)
	}
	fmt.Fprintf(env.stdout, "%s%s\n", strings.TrimRight(c.URL, "/"), dashboard.SignInPath(token))
	fmt.Fprintf(env.stderr, "operator's dashboard: open the link above once, before %s\n", exp.UTC().Format("15:04:05 UTC"))
	return nil
}

// ServerCmd runs the server.
type ServerCmd struct {
	Listen            string        `default:"127.0.0.1:8474" env:"SHARESPOT_LISTEN" help:"Address to listen on."`
	Data              string        `env:"SHARESPOT_DATA" help:"Data directory (default: the user's data directory)." placeholder:"DIR"`
	DB                string        `name:"db" env:"SHARESPOT_DB" help:"Database: a postgres:// URL for PostgreSQL; empty for SQLite in the data directory." placeholder:"URL"`
	DBMaxConns        int           `name:"db-max-conns" env:"SHARESPOT_DB_MAX_CONNS" default:"16" help:"Most connections to PostgreSQL this replica opens."`
	CommitDelay       time.Duration `name:"commit-delay" env:"SHARESPOT_COMMIT_DELAY" help:"SQLite: how long a write waits for others to share its commit (at most 10ms), as PostgreSQL's commit_delay. A busy server then commits less often and serves more per core, each write up to this much later. Default 0: commit at once. PostgreSQL: set commit_delay in postgresql.conf instead." placeholder:"DURATION"`
	Bus               string        `name:"bus" env:"SHARESPOT_BUS" help:"NATS server(s) carrying inbox wake-ups between replicas (nats://host:4222, comma-separated); empty for a single server." placeholder:"URL"`
	PollInterval      time.Duration `name:"poll-interval" env:"SHARESPOT_POLL_INTERVAL" help:"Longest an inbox stream waits without a wake-up before reading the inbox anyway (default 30s; 1s with --bus)."`
	AdminKeyFile      string        `name:"admin-key-file" env:"SHARESPOT_ADMIN_KEY_FILE" help:"The admin key that authorises the dashboard's sign-in links (created 0600 at the first start; default: admin.key in --data). Replicas of one database must share it." placeholder:"FILE"`
	KeyFile           string        `name:"key-file" env:"SHARESPOT_KEY_FILE" help:"The 32-byte key that seals the payment platform's receipt-signing keys in the database (created 0600 on first use; default: platform.key in --data). Replicas of one database must share it; keep it out of database backups." placeholder:"FILE"`
	TLSCert           string        `name:"tls-cert" env:"SHARESPOT_TLS_CERT" help:"TLS certificate (PEM)." type:"existingfile"`
	TLSKey            string        `name:"tls-key" env:"SHARESPOT_TLS_KEY" help:"TLS private key (PEM)." type:"existingfile"`
	InsecurePlaintext bool          `help:"Allow cleartext HTTP on a non-loopback address (only behind a TLS-terminating proxy)."`
	FeeBPS            int64         `name:"fee-bps" default:"500" help:"Platform fee in basis points of what the guest is charged (500 = 5%)."`
	Suites            string        `default:"x25519-hkdf-sha256-chacha20poly1305" help:"HPKE suites to accept for access codes, most preferred first, comma-separated."`
	AnnounceSuite     bool          `help:"Send guests an encryption message naming the suite (claim 2, second alternative); otherwise the preset suite is used."`
	QuoteTimeout      time.Duration `default:"30s" help:"How long a host has to answer a request."`
	QuoteTTL          time.Duration `name:"quote-ttl" default:"2m" help:"How long a guest has to pay a quote."`
	GrantTimeout      time.Duration `default:"30s" help:"How long a host has to grant after payment before the guest is refunded."`
	CloseTimeout      time.Duration `default:"15s" help:"How long a host has to send its final count after a guest ends; then the session settles on the host's last usage report."`
	HostAway          time.Duration `name:"host-away" default:"90s" help:"A hotspot whose host's agent (sharespot share) has not been connected this long is offline: scan shows it as such and a request for it is refused at once. 0: every registered hotspot is offered."`
	MaxUnpaid         int           `name:"max-unpaid" default:"4" help:"Requests an account may have open and not yet paid for."`
	RateDevice        float64       `default:"50" help:"Requests per second per device (0: no limit)."`
	RateIP            float64       `name:"rate-ip" default:"500" help:"Requests per second per client address (0: no limit)."`
	MaxInflightIP     int           `name:"max-inflight-ip" default:"256" help:"Calls one client address may have in progress (0: no limit)."`
	MaxStreamsIP      int           `name:"max-streams-ip" default:"1024" help:"Inbox streams one client address may hold open, and apart from them channels (0: no limit)."`
	MaxConnsIP        int           `name:"max-conns-ip" default:"1024" help:"Connections one client address may hold open (0: no limit)."`
	MaxConns          int           `name:"max-conns" help:"Connections open in all (default: the open-files limit less a tenth, at least 256, kept for the rest)."`
	BodyTimeout       time.Duration `name:"body-timeout" default:"20s" help:"How long a client has to send a request's body once its headers are in."`
	IdleTimeout       time.Duration `name:"idle-timeout" default:"2m" help:"Close a connection with no call or stream open for this long."`
	LogLevel          string        `default:"info" enum:"debug,info,warn,error" help:"Log level."`
	LogJSON           bool          `name:"log-json" help:"Log as JSON."`
	StripeKey         string        `name:"stripe-key" env:"STRIPE_SECRET_KEY" help:"Stripe secret key: guests may pay by card (connect --pay card). Without it the wallet is the only payment platform." placeholder:"KEY"`
	StripeWebhookSec  string        `name:"stripe-webhook-secret" env:"STRIPE_WEBHOOK_SECRET" help:"Signing secret (whsec_...) of the webhook endpoint that posts to /stripe/webhook." placeholder:"SECRET"`
	StripeAPIBase     string        `name:"stripe-api-base" env:"STRIPE_API_BASE" help:"Stripe API base URL (a test server such as stripe-mock); default Stripe's." placeholder:"URL"`
	StripeReturnURL   string        `name:"stripe-return-url" env:"STRIPE_RETURN_URL" help:"Where Stripe sends card holders after 3-D Secure and hosts after payout onboarding." placeholder:"URL"`
	MemoryLimit       string        `name:"memory-limit" env:"SHARESPOT_MEMORY_LIMIT" help:"Soft limit of the server's memory, such as 1GiB: near it the Go runtime collects garbage more often and gives freed memory back to the system, so many idle inbox streams cost less RSS, for some CPU. Above it nothing is refused. Default: GOMEMLIMIT's, else none." placeholder:"SIZE"`
	CPUProfile        string        `name:"cpuprofile" help:"Write a CPU profile of the whole run to FILE when the server stops (for benchmarks: bench --spawn --server-cpuprofile)." placeholder:"FILE"`
}

func newLogger(w io.Writer, level string, json bool) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if json {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// maxCommitDelay bounds --commit-delay: every write waits up to this long.
const maxCommitDelay = 10 * time.Millisecond

func (c *ServerCmd) config(log *slog.Logger) (server.Config, error) {
	cfg := server.Config{DataDir: c.Data, DB: c.DB, KeyFile: c.KeyFile, AdminKeyFile: c.AdminKeyFile, TLSCert: c.TLSCert, TLSKey: c.TLSKey, Insecure: c.InsecurePlaintext, Logger: log,
		DBMaxConns: c.DBMaxConns, CommitDelay: c.CommitDelay, Bus: c.Bus, PollInterval: c.PollInterval}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return cfg, errors.New("--tls-cert and --tls-key go together")
	}
	if _, err := server.DBTarget(c.Data, c.DB); err != nil {
		return cfg, fmt.Errorf("--db: %w", err)
	}
	if c.Bus != "" && !bus.IsURL(c.Bus) {
		return cfg, errors.New("--bus: want a NATS URL such as nats://127.0.0.1:4222 (several separated by commas)")
	}
	if c.DBMaxConns < 0 {
		return cfg, fmt.Errorf("--db-max-conns %d: want a positive number (0: the default, 16)", c.DBMaxConns)
	}
	if c.CommitDelay < 0 || c.CommitDelay > maxCommitDelay {
		return cfg, fmt.Errorf("--commit-delay %v: want a duration from 0 to %v, such as 1ms", c.CommitDelay, maxCommitDelay)
	}
	if c.CommitDelay > 0 && c.DB != "" {
		return cfg, errors.New("--commit-delay is for SQLite's writer; on PostgreSQL set commit_delay in postgresql.conf")
	}
	if c.PollInterval < 0 {
		return cfg, fmt.Errorf("--poll-interval %v: want a positive duration", c.PollInterval)
	}
	sc := session.DefaultConfig()
	sc.FeeBPS, sc.Announce = c.FeeBPS, c.AnnounceSuite
	sc.QuoteTimeout, sc.QuoteTTL, sc.GrantTimeout = c.QuoteTimeout, c.QuoteTTL, c.GrantTimeout
	if c.CloseTimeout < 0 || c.HostAway < 0 {
		return cfg, fmt.Errorf("--close-timeout %v, --host-away %v: want positive durations", c.CloseTimeout, c.HostAway)
	}
	sc.HostAway = c.HostAway
	if c.MaxUnpaid < 0 {
		return cfg, fmt.Errorf("--max-unpaid %d: want at least 1", c.MaxUnpaid)
	}
	if c.CloseTimeout > 0 {
		sc.CloseTimeout = c.CloseTimeout
	}
	if c.MaxUnpaid > 0 {
		sc.MaxUnpaidPerAccount = c.MaxUnpaid
	}
	if c.FeeBPS < 0 || c.FeeBPS > 10000 {
		return cfg, fmt.Errorf("--fee-bps %d must be between 0 and 10000", c.FeeBPS)
	}
	sc.Suites = nil
	for _, name := range strings.Split(c.Suites, ",") {
		s, err := seal.ParseSuite(strings.TrimSpace(name))
		if err != nil {
			return cfg, fmt.Errorf("--suites: %w (known: %v)", err, seal.Suites())
		}
		sc.Suites = append(sc.Suites, s)
	}
	cfg.Session = sc
	cfg.Limits = api.DefaultLimits()
	cfg.Limits.PerDevice, cfg.Limits.PerIP = rate.Limit(c.RateDevice), rate.Limit(c.RateIP)
	for _, f := range []struct {
		name string
		v    int
	}{{"--max-inflight-ip", c.MaxInflightIP}, {"--max-streams-ip", c.MaxStreamsIP}, {"--max-conns-ip", c.MaxConnsIP}, {"--max-conns", c.MaxConns}} {
		if f.v < 0 {
			return cfg, fmt.Errorf("%s %d: want a positive number (0: no limit)", f.name, f.v)
		}
	}
	cfg.Limits.PerIPInFlight, cfg.Limits.PerIPStreams, cfg.Limits.PerIPConns = c.MaxInflightIP, c.MaxStreamsIP, c.MaxConnsIP
	cfg.Limits.Conns = c.MaxConns
	if cfg.Limits.Conns == 0 {
		cfg.Limits.Conns = connCap(fileLimit())
	}
	if c.BodyTimeout < 0 || c.IdleTimeout < 0 {
		return cfg, errors.New("--body-timeout and --idle-timeout: want positive durations")
	}
	cfg.BodyTimeout, cfg.IdleTimeout = c.BodyTimeout, c.IdleTimeout
	switch {
	case c.StripeKey == "" && (c.StripeWebhookSec != "" || c.StripeAPIBase != ""):
		return cfg, errors.New("--stripe-webhook-secret and --stripe-api-base need --stripe-key (or STRIPE_SECRET_KEY)")
	case c.StripeKey != "" && c.StripeWebhookSec == "":
		return cfg, errors.New("--stripe-key needs --stripe-webhook-secret (STRIPE_WEBHOOK_SECRET): the whsec_... of the webhook endpoint posting to /stripe/webhook; card payments are confirmed by its events")
	case c.StripeKey != "" && !strings.HasPrefix(c.StripeKey, "sk_") && !strings.HasPrefix(c.StripeKey, "rk_"):
		return cfg, errors.New("--stripe-key: want a Stripe secret key (sk_live_..., sk_test_...) or restricted key (rk_...)")
	}
	cfg.Stripe = card.Config{Key: c.StripeKey, WebhookSecret: c.StripeWebhookSec, APIBase: c.StripeAPIBase, ReturnURL: c.StripeReturnURL}
	return cfg, nil
}

// connCap is the default of --max-conns: the open-files limit less what
// the database, the logs and the rest need (a tenth, at least 256); no
// cap (0) when the limit is unknown or effectively unlimited.
func connCap(files uint64) int {
	if files == 0 || files > 1<<30 {
		return 0
	}
	reserve := max(256, files/10)
	if files <= 2*reserve {
		return int(files / 2)
	}
	return int(files - reserve)
}

// Run starts the server and serves until interrupted.
func (c *ServerCmd) Run(env *runEnv) error {
	log := newLogger(env.stderr, c.LogLevel, c.LogJSON)
	cfg, err := c.config(log)
	if err != nil {
		return err
	}
	if cfg.Crash, err = crashHook(os.Getenv("SHARESPOT_TEST_CRASH")); err != nil {
		return err
	}
	if cfg.AckDelay, err = ackDelay(os.Getenv("SHARESPOT_TEST_ACK_DELAY")); err != nil {
		return err
	}
	hook, before := os.Getenv("SHARESPOT_TEST_STRIPE_CRASH"), false
	if rest, ok := strings.CutPrefix(hook, "before:"); ok {
		hook, before = rest, true
	}
	kill, err := stripeCrashHook(hook)
	if err != nil {
		return err
	}
	if before {
		cfg.Stripe.BeforeCall = kill
	} else {
		cfg.Stripe.AfterCall = kill
	}
	if c.MemoryLimit != "" {
		n, err := size.Parse(c.MemoryLimit)
		if err != nil {
			return fmt.Errorf("--memory-limit: %w", err)
		}
		if n < 64<<20 {
			return fmt.Errorf("--memory-limit %s: want at least 64MiB, such as 1GiB", c.MemoryLimit)
		}
		debug.SetMemoryLimit(n)
	}
	if c.CPUProfile != "" {
		stop, err := startCPUProfile(c.CPUProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer stop()
	}
	srv, err := server.Open(env.ctx, cfg)
	if err != nil {
		if env.ctx.Err() != nil {
			// Ctrl-C (or a service manager's stop) while starting, e.g.
			// while waiting for the database: a stop, not a failure.
			fmt.Fprintln(env.stdout, "sharespot server stopped before it started")
			return nil
		}
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Listen, err)
	}
	defer ln.Close()
	if err := srv.CheckListen(ln.Addr()); err != nil {
		return err
	}
	scheme := "http"
	if c.TLSCert != "" {
		scheme = "https"
	}
	target, err := server.DBTarget(c.Data, c.DB)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "sharespot server listening on %s://%s (data: %s, protocol %d)\n", scheme, ln.Addr(), store.Redact(target), protocol.Version)
	log.Info("limits", "rate_ip", c.RateIP, "rate_device", c.RateDevice, "inflight_ip", cfg.Limits.PerIPInFlight,
		"streams_ip", cfg.Limits.PerIPStreams, "conns_ip", cfg.Limits.PerIPConns, "conns", cfg.Limits.Conns,
		"body_timeout", cfg.BodyTimeout, "idle_timeout", cfg.IdleTimeout)
	err = srv.Serve(env.ctx, ln)
	fmt.Fprintln(env.stdout, "sharespot server stopped")
	return err
}

// crashHook parses SHARESPOT_TEST_CRASH, the crash-safety tests' hook:
// "before:N" or "after:N" SIGKILLs the server just before or just after its
// Nth database commit; "before:Call" or "after:Call" (a method's name, such
// as ReportUsage) just before or after the first commit that holds a write
// of that call. Empty means no hook.
func crashHook(spec string) (func(int64, bool, []string), error) {
	if spec == "" {
		return nil, nil
	}
	when, at, ok := strings.Cut(spec, ":")
	n, err := strconv.ParseInt(at, 10, 64)
	byCall := err != nil && validCallName(at)
	if !ok || (when != "before" && when != "after") || (!byCall && (err != nil || n < 1)) {
		return nil, fmt.Errorf("SHARESPOT_TEST_CRASH=%q: want before:N or after:N (a commit's number from 1), or before:Call or after:Call (a method's name)", spec)
	}
	after := when == "after"
	return func(commit int64, committed bool, calls []string) {
		if committed != after || (byCall && !slices.Contains(calls, at)) || (!byCall && commit != n) {
			return
		}
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			p.Kill() // SIGKILL on Unix: no clean-up runs
		}
		select {} // the signal is on its way
	}, nil
}

// validCallName: a method's name as the API's procedures end, ReportUsage.
func validCallName(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// ackDelay parses SHARESPOT_TEST_ACK_DELAY, how long the crash-safety
// tests' server holds an inbox acknowledgment before its write ("": the
// default, relay.DefaultAckDelay): shorter there, since their driver waits
// for each held one to be written before its next step.
func ackDelay(spec string) (time.Duration, error) {
	if spec == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(spec)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("SHARESPOT_TEST_ACK_DELAY=%q: want a positive duration such as 10ms", spec)
	}
	return d, nil
}

// stripeCrashHook parses SHARESPOT_TEST_STRIPE_CRASH, the crash-safety
// tests' hook for the Stripe outbox: "KIND:N" SIGKILLs the server after
// its Nth successful Stripe call of that kind (capture, cancel, transfer),
// before the call is recorded as done; "before:KIND:N" just before the Nth
// call of that kind is made.
func stripeCrashHook(spec string) (func(string), error) {
	if spec == "" {
		return nil, nil
	}
	kind, num, ok := strings.Cut(spec, ":")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 1 {
		return nil, fmt.Errorf("SHARESPOT_TEST_STRIPE_CRASH=%q: want KIND:N", spec)
	}
	var seen atomic.Int64
	return func(k string) {
		if k == kind && seen.Add(1) == int64(n) {
			if p, err := os.FindProcess(os.Getpid()); err == nil {
				p.Kill()
			}
			select {}
		}
	}, nil
}

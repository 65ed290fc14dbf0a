package server_test

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	_ "github.com/jackc/pgx/v5/stdlib" // the test's own PostgreSQL session
	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"

	"github.com/sharespot/sharespot/internal/buildinfo"
	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// get asks url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := client.NewHTTPClient().Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func wantReady(t *testing.T, url string, ready bool, reason string) {
	t.Helper()
	code, body := get(t, url+"/readyz")
	if ready && code != http.StatusOK {
		t.Fatalf("/readyz = %d %q, want 200", code, body)
	}
	if !ready && (code != http.StatusServiceUnavailable || !strings.Contains(body, reason)) {
		t.Fatalf("/readyz = %d %q, want 503 naming %q", code, body, reason)
	}
	if code, body := get(t, url+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q: the process is up, whatever /readyz says", code, body)
	}
}

// TestReadySQLite: ready while the database takes a write; not ready while
// another process holds SQLite's write lock; ready again once it lets go.
func TestReadySQLite(t *testing.T) {
	dir := t.TempDir()
	env := harness.StartIn(t, dir, func(c *server.Config) { c.DB = "" })
	wantReady(t, env.URL, true, "")

	db, err := sql.Open(sqliteDriver, "file:"+filepath.Join(dir, "sharespot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server's writer may hold the lock for a moment (a background
	// write): wait for it as the server's own connections do.
	if _, err := conn.ExecContext(context.Background(), "PRAGMA busy_timeout = 10000"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	wantReady(t, env.URL, false, "database")
	if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// The writer's stuck write completes once the lock is free; the next
	// check shares it or makes its own.
	until(t, "ready again after the lock is released", func() bool {
		code, _ := get(t, env.URL+"/readyz")
		return code == http.StatusOK
	})
}

// TestReadyPostgres: not ready while another session holds a lock that
// keeps the check's write waiting.
func TestReadyPostgres(t *testing.T) {
	u := pgtest.New(t)
	env := harness.Start(t, func(c *server.Config) { c.DB = u })
	wantReady(t, env.URL, true, "")
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`LOCK TABLE schema_migrations IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	wantReady(t, env.URL, false, "database")
	tx.Rollback()
	until(t, "ready again after the lock is released", func() bool {
		code, _ := get(t, env.URL+"/readyz")
		return code == http.StatusOK
	})
}

// TestReadyBus: with --bus, ready whether the bus is connected or not: a
// replica that lost the bus still serves (its streams poll the inbox), so
// a load balancer keeps it. /healthz and sharespot_bus_connected say it
// is degraded.
func TestReadyBus(t *testing.T) {
	t.Run("connected", func(t *testing.T) {
		u := natstest.Require(t)
		env := harness.Start(t, func(c *server.Config) { c.Bus = u })
		wantReady(t, env.URL, true, "")
		if _, body := get(t, env.URL+"/healthz"); !strings.HasPrefix(body, "ok\n") {
			t.Fatalf("/healthz with the bus connected = %q, want ok", body)
		}
		if got := scrapeOf(t, env.URL).value("sharespot_bus_connected"); got != 1 {
			t.Fatalf("sharespot_bus_connected = %v, want 1", got)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		// A port nothing listens on: take one, then free it.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		env := harness.Start(t, func(c *server.Config) { c.Bus = "nats://" + addr })
		wantReady(t, env.URL, true, "")
		if _, body := get(t, env.URL+"/healthz"); !strings.HasPrefix(body, "degraded: bus: not connected") {
			t.Fatalf("/healthz with the bus away = %q, want degraded naming the bus", body)
		}
		if got := scrapeOf(t, env.URL).value("sharespot_bus_connected"); got != 0 {
			t.Fatalf("sharespot_bus_connected = %v, want 0", got)
		}
	})
}

// TestVersionEverywhere: /healthz and sharespot_build_info carry the
// build's version (the User-Agent is client's TestUserAgent).
func TestVersionEverywhere(t *testing.T) {
	env := harness.Start(t, nil)
	bi := buildinfo.Get()
	if _, body := get(t, env.URL+"/healthz"); body != "ok\nversion: "+bi.String()+"\n" {
		t.Fatalf("/healthz = %q, want ok and the version %q", body, bi.String())
	}
	if got := scrapeOf(t, env.URL).value("sharespot_build_info", "version", bi.Version, "goversion", bi.Go); got != 1 {
		t.Fatalf("sharespot_build_info{version=%q} = %v, want 1", bi.Version, got)
	}
}

// deviceWith signs in a new device whose client tells status of its
// inbox stream.
func deviceWith(t *testing.T, url string, status func(string, error)) *client.Client {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(url, key, client.Options{StreamStatus: status})
	if err := c.SignIn(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDatabaseAway: on PostgreSQL, while the database refuses connections
// the server is not ready and answers unavailable (which clients retry),
// never internal; an inbox stream opened before stays open; once the
// database is back, calls succeed again and the open stream delivers a
// message sent then. It logs how long the first call took to succeed
// after the database's return (docs/benchmarks.md; the goal is under a
// second).
func TestDatabaseAway(t *testing.T) {
	u := pgtest.New(t)
	env := harness.Start(t, func(c *server.Config) { c.DB = u })
	ctx := t.Context()
	// The devices' clients say when their streams break and come back.
	var breaks atomic.Int32
	var breakMu sync.Mutex
	var breakErrs []string
	hostC := deviceWith(t, env.URL, func(_ string, err error) {
		if err != nil {
			breaks.Add(1)
			breakMu.Lock()
			breakErrs = append(breakErrs, err.Error())
			breakMu.Unlock()
		}
	})
	upAgain := make(chan time.Time, 1)
	guestC := deviceWith(t, env.URL, func(_ string, err error) {
		if err == nil {
			select {
			case upAgain <- time.Now():
			default:
			}
		}
	})
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	hostIn := client.Listen(ctx, hostC, client.InboxOptions{All: true})
	until(t, "the host's stream is open", func() bool { return scrapeOf(t, env.URL).value("sharespot_inbox_streams_open") == 1 })
	// Open means answered: a stream counted open may not have made its
	// first read yet, and one whose first read meets the outage is refused
	// like a new one (on a busy machine it did, and broke six times). So
	// the host's stream first delivers a request, which the guest ends.
	g := &guest.Guest{C: guestC, Suites: []seal.Suite{seal.Preset}}
	early, err := g.RequestAccess(ctx, res.Msg.Hotspot.Id, harness.BenchMB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guestC.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: early.Id, Reason: "test"})); err != nil {
		t.Fatal(err)
	}
	for ended := false; !ended; {
		select {
		case e := <-hostIn.C():
			ended = e.SessionId == early.Id && e.GetSessionEnded() != nil
		case <-time.After(30 * time.Second):
			t.Fatal("the host's stream delivered no end of the early request within 30 s")
		}
	}

	refuser := pgtest.NewRefuser(t, u)
	refuser.Refuse(true)
	wantReady(t, env.URL, false, "database")
	for _, call := range []struct {
		name string
		do   func() error
	}{
		{"Balance", func() error {
			_, err := guestC.Payments.Balance(ctx, connect.NewRequest(&sharespotv1.BalanceRequest{}))
			return err
		}},
		{"RequestAccess", func() error {
			_, err := g.RequestAccess(ctx, res.Msg.Hotspot.Id, harness.BenchMB)
			return err
		}},
	} {
		if err := call.do(); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("%s with the database away: %v (code %v), want unavailable", call.name, err, connect.CodeOf(err))
		}
	}

	// A stream opened now is refused (unavailable, Retry-After: 1) and
	// tried again.
	client.Listen(ctx, guestC, client.InboxOptions{All: true})
	time.Sleep(3 * time.Second) // its backoff grows past a second meanwhile

	refuser.Refuse(false)
	back := time.Now()
	until(t, "a call succeeds once the database is back", func() bool {
		_, err := guestC.Payments.Balance(ctx, connect.NewRequest(&sharespotv1.BalanceRequest{}))
		return err == nil
	})
	t.Logf("the first call succeeded %v after the database took connections again", time.Since(back).Round(time.Millisecond))
	select {
	case up := <-upAgain:
		t.Logf("a stream refused during the outage was up %v after the database's return", up.Sub(back).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("a stream refused during the outage never came up")
	}
	wantReady(t, env.URL, true, "")

	// The host's stream, open through the outage, delivers a request
	// made now.
	ses, err := g.BeginHotspot(ctx, res.Msg.Hotspot.Id, harness.BenchMB)
	if err != nil {
		t.Fatal(err)
	}
	defer ses.Close()
	select {
	case env := <-hostIn.C():
		if env.SessionId != ses.ID {
			t.Fatalf("the host got a message of session %s, want %s", env.SessionId, ses.ID)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the host's stream delivered nothing within 30 s of the request")
	}
	if n := breaks.Load(); n != 0 {
		breakMu.Lock()
		defer breakMu.Unlock()
		t.Fatalf("the host's stream broke %d times: it should have stayed open through the outage; %q", n, breakErrs)
	}
}

// TestReflection: a gRPC reflection client lists every service without
// the proto files, and resolves a method's descriptor.
func TestReflection(t *testing.T) {
	env := harness.Start(t, nil)
	rc := grpcreflect.NewClient(client.NewHTTPClient(), env.URL)
	stream := rc.NewStream(context.Background())
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatalf("list services: %v", err)
	}
	var got []string
	for _, n := range names {
		got = append(got, string(n))
	}
	for _, want := range []string{"sharespot.v1.SessionService", "sharespot.v1.PaymentService", "sharespot.v1.InboxService"} {
		if !slices.Contains(got, want) {
			t.Errorf("services %v lack %s", got, want)
		}
	}
	files, err := stream.FileContainingSymbol("sharespot.v1.SessionService.RequestAccess")
	if err != nil {
		t.Fatalf("file containing RequestAccess: %v", err)
	}
	if len(files) == 0 || !strings.HasPrefix(files[0].GetName(), "sharespot/v1/") {
		t.Fatalf("file containing RequestAccess: %v", files)
	}
}

// until retries f until it holds, for at most 30 s (a bound, not a timing
// assertion).
func until(t *testing.T, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); !f(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not within 30s: %s", what)
		}
	}
}

// TestWarnPostgresWithoutBus: a replica on PostgreSQL without a bus says,
// at start, that streams on other replicas fall back to the poll; with a
// bus, or on SQLite, it says nothing of the kind.
func TestWarnPostgresWithoutBus(t *testing.T) {
	u := pgtest.New(t)
	nats := natstest.Require(t)
	keyFile := filepath.Join(t.TempDir(), "platform.key") // replicas of one database share it
	for _, tt := range []struct {
		name     string
		db, bus  string
		warnings int
	}{
		{"postgres_no_bus", u, "", 1},
		{"postgres_bus", u, nats, 0},
		{"sqlite", "", "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var log strings.Builder
			var mu sync.Mutex
			logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &log}, nil))
			srv, err := server.Open(context.Background(), server.Config{DataDir: t.TempDir(), DB: tt.db, Bus: tt.bus, KeyFile: keyFile, Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			srv.Close()
			mu.Lock()
			defer mu.Unlock()
			if got := strings.Count(log.String(), "PostgreSQL without a bus"); got != tt.warnings {
				t.Fatalf("%d warnings, want %d; log:\n%s", got, tt.warnings, log.String())
			}
		})
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestReplicaWithoutKeyFile: a second replica on the same database started
// without the first one's key file refuses to start, says how to fix it,
// and leaves no key file behind that a second try would take for the
// right one.
func TestReplicaWithoutKeyFile(t *testing.T) {
	u := pgtest.New(t)
	first, err := server.Open(t.Context(), server.Config{DataDir: t.TempDir(), DB: u})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	dir := t.TempDir()
	_, err = server.Open(t.Context(), server.Config{DataDir: dir, DB: u})
	if err == nil || !strings.Contains(err.Error(), "--key-file") {
		t.Fatalf("a replica without the shared key file: %v, want a refusal naming --key-file", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "platform.key")); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("the refused replica left %s behind (%v)", filepath.Join(dir, "platform.key"), serr)
	}
}

// TestDeadlinesWaitForTheDatabase: a guest ended its session and the host
// is to send its final count within the close timeout, but the database
// refuses connections for longer than that. The deadline does not run out
// on the host meanwhile: once the database is back, a count sent within
// the grace settles the session, and the host is paid for what it carried.
func TestDeadlinesWaitForTheDatabase(t *testing.T) {
	const closeTimeout = 3 * time.Second
	u := pgtest.New(t)
	env := harness.Start(t, func(c *server.Config) {
		c.DB = u
		c.Session = session.DefaultConfig()
		c.Session.CloseTimeout = closeTimeout
	})
	ctx := t.Context()
	hostC, guestC := env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, guestC, "EUR", 1000)
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	harness.Listen(t, hostC, nil)
	g := &guest.Guest{C: guestC, Suites: []seal.Suite{seal.Preset}, Unverified: true}
	ses, err := g.BeginHotspot(ctx, res.Msg.Hotspot.Id, 10*harness.BenchMB)
	if err != nil {
		t.Fatal(err)
	}
	q, err := hostC.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * harness.BenchMB, AmountMinor: 100, Currency: "EUR"}))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ses.Pay(ctx, q.Msg.Quote, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ses.Confirm(ctx, q.Msg.Quote, rc); err != nil {
		t.Fatal(err)
	}
	if err := harness.Grant(ctx, hostC, g, ses.ID, q.Msg.Quote, 10*harness.BenchMB); err != nil {
		t.Fatal(err)
	}
	if _, err := guestC.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, Reason: "done"})); err != nil {
		t.Fatal(err)
	}
	refuser := pgtest.NewRefuser(t, u)
	refuser.Refuse(true)
	time.Sleep(time.Second)
	env.Clock.Advance(closeTimeout + time.Second) // past the deadline, the database away
	time.Sleep(time.Second)
	refuser.Refuse(false)
	// The sweep (every 20 ms here) has had its chance to settle on the
	// last report (none: 0 bytes) before the host's count arrives.
	time.Sleep(500 * time.Millisecond)
	const used = 7 * harness.BenchMB
	if err := client.Retry(ctx, func() error {
		_, err := hostC.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: ses.ID, UsedBytes: used}))
		return err
	}); err != nil {
		t.Fatalf("the host's final count after the outage: %v", err)
	}
	var s *sharespotv1.Session
	until(t, "the session settles", func() bool {
		r, err := guestC.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: ses.ID}))
		if err != nil {
			return false
		}
		s = r.Msg.Session
		return s.State == sharespotv1.SessionState_SESSION_STATE_ENDED
	})
	if s.UsedBytes != used || s.SettledHostMinor+s.SettledFeeMinor != 70 || s.RefundedMinor != 30 {
		t.Fatalf("settled on %d bytes: host %d, fee %d, refunded %d; want 7 MB billed (70 cents), 30 refunded", s.UsedBytes, s.SettledHostMinor, s.SettledFeeMinor, s.RefundedMinor)
	}
	env.MustAudit(t)
}

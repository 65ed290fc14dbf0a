// Package harness runs a real Sharespot server on a loopback port, on a
// SQLite file, with real clients, for the conformance suite, the crash tests
// and the benchmarks. Nothing in it is a mock: calls cross HTTP/2 and the
// database is the same as production's.
//
// With SHARESPOT_TEST_DB=postgres every server the harness starts runs on a
// fresh PostgreSQL database of its own instead (see Postgres), which is how
// CI runs the suites on both engines.
package harness

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// Clock is a settable clock; it starts at the real time and moves only when
// advanced.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at the current time.
func NewClock() *Clock { return &Clock{now: time.Now()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Env is a running server.
type Env struct {
	URL string
	Dir string
	// DB is the server's PostgreSQL URL, or "" when it runs on SQLite in
	// Dir.
	DB    string
	Srv   *server.Server
	Clock *Clock

	cancel context.CancelFunc
	done   chan error
}

// Start runs a server in t's temporary directory until t ends. mod may
// change the configuration.
func Start(t testing.TB, mod func(*server.Config)) *Env {
	t.Helper()
	return StartIn(t, t.TempDir(), mod)
}

// Postgres creates a uniquely named PostgreSQL database for t, dropped
// when t ends, and returns its URL. Where no server is reachable t skips,
// or fails in CI (CI=true). See pgtest for the server used.
func Postgres(t testing.TB) string {
	t.Helper()
	return pgtest.New(t)
}

// TestDBEnv names the database engine the harness starts servers on:
// "postgres", or "" / "sqlite" for SQLite.
const TestDBEnv = "SHARESPOT_TEST_DB"

// pgURLFile, in a data directory, holds the URL of the PostgreSQL database
// the harness made for it, so that a server restarted on the same
// directory finds the same data, as it finds sharespot.db on SQLite.
const pgURLFile = "harness-postgres-url"

// DBFor returns the database setting (server.Config.DB) for a server on
// dir: "" (SQLite in dir) unless SHARESPOT_TEST_DB=postgres, and then the
// PostgreSQL database that belongs to dir, created on first use and
// dropped when t ends.
func DBFor(t testing.TB, dir string) string {
	t.Helper()
	switch v := os.Getenv(TestDBEnv); v {
	case "", "sqlite":
		return ""
	case "postgres":
	default:
		t.Fatalf("harness: %s=%q: want postgres or sqlite", TestDBEnv, v)
	}
	if u := DBIn(dir); u != "" {
		return u
	}
	u := Postgres(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, pgURLFile), []byte(u+"\n"), 0o600); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return u
}

// DBIn returns the PostgreSQL URL DBFor made for dir, or "" when it made
// none (SQLite), for tests that start the sharespot binary on dir: they
// pass it as --db.
func DBIn(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, pgURLFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// StartIn runs a server on the data directory dir (and on the PostgreSQL
// database DBFor gives, when SHARESPOT_TEST_DB=postgres).
func StartIn(t testing.TB, dir string, mod func(*server.Config)) *Env {
	t.Helper()
	e := &Env{Dir: dir, Clock: NewClock()}
	cfg := server.Config{DataDir: dir, DB: DBFor(t, dir), Now: e.Clock.Now, SweepInterval: 20 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	e.DB = cfg.DB
	ctx := context.Background()
	srv, err := server.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("harness: open server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatalf("harness: listen: %v", err)
	}
	e.Srv, e.URL = srv, "http://"+ln.Addr().String()
	sctx, cancel := context.WithCancel(ctx)
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- srv.Serve(sctx, ln) }()
	t.Cleanup(e.Stop)
	return e
}

// Stop shuts the server down (idempotent).
func (e *Env) Stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.Srv.Close()
	e.cancel = nil
}

// TapWrites makes a PostgreSQL database keep a copy of every row written
// to it from now on, so that DatabaseBytes covers rows since deleted (an
// acknowledged inbox message, say), as SQLite's files do. On SQLite it does
// nothing.
func (e *Env) TapWrites(t testing.TB) {
	t.Helper()
	if e.DB == "" {
		return
	}
	err := e.Srv.Store().Write(context.Background(), func(tx *store.Tx) error {
		tables, err := userTables(tx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(`CREATE TABLE harness_tap (id BIGSERIAL PRIMARY KEY, tbl TEXT NOT NULL, row_json TEXT NOT NULL);
			CREATE FUNCTION harness_tap() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				INSERT INTO harness_tap (tbl, row_json) VALUES (TG_TABLE_NAME, row_to_json(NEW)::text);
				RETURN NEW;
			END $$`); err != nil {
			return err
		}
		for _, tbl := range tables {
			if _, err := tx.Exec(`CREATE TRIGGER harness_tap AFTER INSERT OR UPDATE ON ` + tbl + ` FOR EACH ROW EXECUTE FUNCTION harness_tap()`); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("harness: tap the database: %v", err)
	}
}

func userTables(tx *store.Tx) ([]string, error) {
	rows, err := tx.Query(`SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		out = append(out, name)
	}
	return out, rows.Err()
}

// DatabaseBytes returns what the server's database holds, for tests that
// look for what must never be stored: on SQLite the database files (main
// file and WAL); on PostgreSQL every value of every table (byte columns raw,
// the others as text) and every row TapWrites recorded (as JSON, with byte
// values also raw).
func (e *Env) DatabaseBytes(t testing.TB) []byte {
	t.Helper()
	var db []byte
	if e.DB == "" {
		for _, name := range []string{"sharespot.db", "sharespot.db-wal"} {
			b, err := os.ReadFile(filepath.Join(e.Dir, name))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			db = append(db, b...)
		}
		return db
	}
	err := e.Srv.Store().Read(context.Background(), func(tx *store.Tx) error {
		rows, err := tx.Query(`SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
			JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
			WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position`)
		if err != nil {
			return err
		}
		var cols [][3]string
		for rows.Next() {
			var c [3]string
			if err := rows.Scan(&c[0], &c[1], &c[2]); err != nil {
				rows.Close()
				return err
			}
			cols = append(cols, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, c := range cols {
			expr := `CAST(` + c[1] + ` AS TEXT)`
			if c[2] == "bytea" {
				expr = c[1]
			}
			rows, err := tx.Query(`SELECT ` + expr + ` FROM ` + c[0] + ` WHERE ` + c[1] + ` IS NOT NULL`)
			if err != nil {
				return err
			}
			for rows.Next() {
				var b []byte
				if err := rows.Scan(&b); err != nil {
					rows.Close()
					return err
				}
				db = append(db, b...)
				if c[0] == "harness_tap" && c[1] == "row_json" {
					db = append(db, tappedBytes(b)...)
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("harness: read the database: %v", err)
	}
	return db
}

// tappedBytes decodes the byte values (JSON strings "\\x<hex>") of a
// tapped row.
func tappedBytes(rowJSON []byte) []byte {
	var row map[string]any
	if json.Unmarshal(rowJSON, &row) != nil {
		return nil
	}
	var out []byte
	for _, v := range row {
		if s, ok := v.(string); ok && strings.HasPrefix(s, `\x`) {
			if b, err := hex.DecodeString(s[2:]); err == nil {
				out = append(out, b...)
			}
		}
	}
	return out
}

// Device returns a new signed-in device with a fresh key.
func (e *Env) Device(t testing.TB, name string) *client.Client {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(e.URL, key, client.Options{DeviceName: name})
	if err := c.SignIn(context.Background()); err != nil {
		t.Fatalf("harness: sign in %s: %v", name, err)
	}
	return c
}

// Fund adds money to a device's wallet, as the operator does.
func (e *Env) Fund(t testing.TB, c *client.Client, currency string, amount int64) {
	t.Helper()
	err := e.Srv.Store().Write(context.Background(), func(tx *store.Tx) error {
		_, err := payment.Fund(tx, time.Now().UnixMilli(), c.AccountID(), currency, amount, "", "test funding")
		return err
	})
	if err != nil {
		t.Fatalf("harness: fund: %v", err)
	}
}

// Balance returns a device's wallet balance.
func Balance(t testing.TB, c *client.Client, currency string) int64 {
	t.Helper()
	res, err := c.Payments.Balance(context.Background(), connect.NewRequest(&sharespotv1.BalanceRequest{}))
	if err != nil {
		t.Fatalf("harness: balance: %v", err)
	}
	for _, m := range res.Msg.Balances {
		if m.Currency == currency {
			return m.AmountMinor
		}
	}
	return 0
}

// Audit checks the server's money invariants: the ledger balances, no
// forbidden negative balance, no money left in the escrow of an ended
// session, every paid quote either granted (and settled) or refunded, and
// every settled session billed by the settlement rules (CheckFairness, at
// the default fee).
func Audit(ctx context.Context, st *store.Store) error {
	return st.Read(ctx, func(tx *store.Tx) error {
		a, err := ledger.Check(tx)
		if err != nil {
			return err
		}
		if !a.OK() {
			return fmt.Errorf("ledger inconsistent: %s", a)
		}
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM ledger_accounts a JOIN sessions s ON a.id = 'escrow:' || s.id
			WHERE s.state = ? AND a.balance <> 0`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED)).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d ended sessions still hold escrow", n)
		}
		// A receipt exists for every charged quote; an ended session's paid
		// quotes are granted or refunded.
		if err := tx.QueryRow(`SELECT COUNT(*) FROM quotes q JOIN sessions s ON s.id = q.session_id
			WHERE s.state = ? AND q.state IN (?, ?)`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED),
			int32(sharespotv1.QuoteState_QUOTE_STATE_PAID), int32(sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED)).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d paid quotes of ended sessions neither granted nor refunded", n)
		}
		if err := tx.QueryRow(`SELECT COUNT(*) FROM ledger_transfers t WHERE t.id LIKE 'pay:%'
			AND NOT EXISTS (SELECT 1 FROM receipts r WHERE 'pay:' || r.quote_id = t.id)`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d payments without a receipt", n)
		}
		// Volume: no hotspot sold more than it shares (the CHECK holds it
		// non-negative; this holds the upper bound).
		if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE committed_bytes > shareable_bytes`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d hotspots oversold", n)
		}
		// The hosts' records that discovery shows match their sessions.
		drift, err := session.CheckHostRecords(tx)
		if err != nil {
			return err
		}
		if len(drift) > 0 {
			return fmt.Errorf("host records differ from their sessions: %s", strings.Join(drift, "; "))
		}
		// A session has its end time exactly when it has ended: the
		// indexes of unfinished sessions hold the rest (migration 0009).
		if err := tx.QueryRow(`SELECT COUNT(*) FROM sessions WHERE (state = ? AND ended_ms = 0) OR (state <> ? AND ended_ms <> 0)`,
			int32(sharespotv1.SessionState_SESSION_STATE_ENDED), int32(sharespotv1.SessionState_SESSION_STATE_ENDED)).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d sessions whose end time disagrees with their state", n)
		}
		// Fairness: every settled session billed by the rules.
		return errors.Join(CheckFairness(tx, session.DefaultConfig().FeeBPS)...)
	})
}

// MustAudit fails t if Audit does.
func (e *Env) MustAudit(t testing.TB) {
	t.Helper()
	if err := Audit(context.Background(), e.Srv.Store()); err != nil {
		t.Fatalf("audit: %v", err)
	}
}

// Inbox collects a device's messages, received through the real stream
// (client.Inbox, every message on C).
type Inbox struct {
	*client.Inbox
	stop context.CancelFunc
}

// Listen starts receiving c's inbox; each message lands in the returned
// inbox. h, if not nil, also handles every message first (a host agent).
func Listen(t testing.TB, c *client.Client, h client.Handler) *Inbox {
	ctx, cancel := context.WithCancel(context.Background())
	in := &Inbox{Inbox: client.Listen(ctx, c, client.InboxOptions{Handle: h, All: true}), stop: cancel}
	t.Cleanup(in.Stop)
	return in
}

// Stop stops receiving.
func (in *Inbox) Stop() {
	if in.stop != nil {
		in.stop()
		<-in.Done()
		in.stop = nil
	}
}

// ListenGuest starts receiving g's inbox (guest.Guest.Listen: each
// message to its session's Messages) until t ends.
func ListenGuest(t testing.TB, g *guest.Guest) *client.Inbox {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in, err := g.Listen(ctx, nil)
	if err != nil {
		cancel()
		t.Fatalf("harness: listen as the guest: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-in.Done()
	})
	return in
}

// Next waits up to 10 s for the next message whose body is of type B,
// skipping others.
func Next[B any](t testing.TB, in *Inbox) (*sharespotv1.Envelope, B) {
	t.Helper()
	return NextIn[B](t, in.C())
}

// NextIn is Next on any stream of messages, such as a guest session's
// (guest.Session.Messages).
func NextIn[B any](t testing.TB, msgs <-chan *sharespotv1.Envelope) (*sharespotv1.Envelope, B) {
	t.Helper()
	var zero B
	timeout := time.After(10 * time.Second)
	for {
		select {
		case env := <-msgs:
			if b, ok := env.Body.(B); ok {
				return env, b
			}
		case <-timeout:
			t.Fatalf("harness: no %T message within 10s", zero)
			return nil, zero
		}
	}
}

// Code returns the Connect code of err (or Unknown when err is not one).
func Code(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeUnknown
}

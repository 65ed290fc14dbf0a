// Package pgtest gives tests a PostgreSQL database of their own: a fresh,
// uniquely named database created on the test server and dropped when the
// test ends.
//
// The server is SHARESPOT_TEST_POSTGRES (a postgres:// URL of a database to
// connect to for CREATE DATABASE; default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable). Where it
// cannot be reached, tests that need it skip, except in CI (CI=true), where
// they fail: a skipped test proves nothing.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// DefaultAdminURL is the server used when SHARESPOT_TEST_POSTGRES is unset.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL is the URL tests create their databases through.
func AdminURL() string {
	if u := os.Getenv("SHARESPOT_TEST_POSTGRES"); u != "" {
		return u
	}
	return DefaultAdminURL
}

var (
	probeOnce sync.Once
	probeErr  error
)

func probe() error {
	probeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		db, err := open(AdminURL())
		if err != nil {
			probeErr = err
			return
		}
		defer db.Close()
		probeErr = db.PingContext(ctx)
	})
	return probeErr
}

func open(u string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return nil, fmt.Errorf("SHARESPOT_TEST_POSTGRES=%q: %w", u, err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	return stdlib.OpenDB(*cfg), nil
}

// Require skips t when the test PostgreSQL server cannot be reached, or
// fails it when CI=true.
func Require(t testing.TB) {
	t.Helper()
	if err := probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s is required in CI: %v", redact(AdminURL()), err)
		}
		t.Skipf("no PostgreSQL at %s (set SHARESPOT_TEST_POSTGRES): %v", redact(AdminURL()), err)
	}
}

// New creates a fresh database for t and returns its URL; the database is
// dropped when t ends. It calls Require first.
func New(t testing.TB) string {
	t.Helper()
	Require(t)
	var b [6]byte
	rand.Read(b[:])
	name := fmt.Sprintf("sharespot_test_%s_%s", time.Now().UTC().Format("20060102t150405"), hex.EncodeToString(b[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := open(AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		admin.Close()
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Connections a failed test left open must not keep the
		// database alive.
		if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
			t.Errorf("pgtest: end connections to %s: %v", name, err)
		}
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("pgtest: SHARESPOT_TEST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// redact hides a password in u.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(an unparsable URL)"
	}
	return p.Redacted()
}

// Refuser makes the database at dbURL (one New made) refuse connections,
// as a database that is down or restarting does, and take them again.
type Refuser struct {
	t     testing.TB
	name  string
	admin *sql.DB
}

// NewRefuser returns a Refuser for dbURL; whatever happens, the database
// takes connections again when t ends.
func NewRefuser(t testing.TB, dbURL string) *Refuser {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := open(AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	r := &Refuser{t: t, name: u.Path[1:], admin: admin}
	t.Cleanup(func() {
		admin.Exec(fmt.Sprintf(`ALTER DATABASE %q WITH ALLOW_CONNECTIONS true`, r.name))
		admin.Close()
	})
	return r
}

// Refuse makes the database refuse new connections and ends the open
// ones (so a pool's idle connections fail too), or, with on false, lets
// connections in again.
func (r *Refuser) Refuse(on bool) {
	r.t.Helper()
	if _, err := r.admin.Exec(fmt.Sprintf(`ALTER DATABASE %q WITH ALLOW_CONNECTIONS %v`, r.name, !on)); err != nil {
		r.t.Fatalf("pgtest: allow_connections %v on %s: %v", !on, r.name, err)
	}
	if on {
		if _, err := r.admin.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, r.name); err != nil {
			r.t.Fatalf("pgtest: end connections to %s: %v", r.name, err)
		}
	}
}

// WALBytes returns how far the write-ahead log of the PostgreSQL server at
// dbURL has come, in bytes since its start (pg_current_wal_lsn): the
// difference over a run is what the server wrote to its log in it, every
// database's writes and checkpoints' page images included.
func WALBytes(ctx context.Context, dbURL string) (n int64, err error) {
	err = queryRow(ctx, dbURL, "WAL position", `SELECT (pg_current_wal_lsn() - '0/0')::bigint`, nil, &n)
	return n, err
}

// Updates returns how many rows of table the database at dbURL has updated
// and how many of those updates were HOT (heap-only: no index entry
// written), as its statistics hold them (pg_stat_user_tables). A backend
// reports its counts when it goes idle, within about ten seconds.
func Updates(ctx context.Context, dbURL, table string) (updates, hot int64, err error) {
	err = queryRow(ctx, dbURL, "updates of "+table, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1`, []any{table}, &updates, &hot)
	return updates, hot, err
}

// queryRow reads one row of query from the database at dbURL, on a
// connection of its own, into dest; what names it in an error.
func queryRow(ctx context.Context, dbURL, what, query string, args []any, dest ...any) error {
	db, err := open(dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.QueryRowContext(ctx, query, args...).Scan(dest...); err != nil {
		return fmt.Errorf("pgtest: %s in %s: %w", what, redact(dbURL), err)
	}
	return nil
}

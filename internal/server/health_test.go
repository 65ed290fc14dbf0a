package server_test

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/grpcreflect"
	_ "github.com/jackc/pgx/v5/stdlib" // the test's own PostgreSQL session

	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/server"
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

// TestReadyBus: with --bus, ready only while the bus is connected.
func TestReadyBus(t *testing.T) {
	t.Run("connected", func(t *testing.T) {
		u := natstest.Require(t)
		env := harness.Start(t, func(c *server.Config) { c.Bus = u })
		wantReady(t, env.URL, true, "")
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
		wantReady(t, env.URL, false, "bus: not connected")
	})
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

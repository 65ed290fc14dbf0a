package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

func TestDBTarget(t *testing.T) {
	tests := []struct {
		dir, db string
		want    string
		err     bool
	}{
		{"/data", "", filepath.Join("/data", "sharespot.db"), false},
		{"/data", "postgres://u@h:5432/sharespot", "postgres://u@h:5432/sharespot", false},
		{"/data", "postgresql://u@h/sharespot?sslmode=require", "postgresql://u@h/sharespot?sslmode=require", false},
		{"/data", "/elsewhere/sharespot.db", "", true},
		{"/data", "mysql://u:secret@h/db", "", true},
	}
	for _, tt := range tests {
		got, err := DBTarget(tt.dir, tt.db)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("DBTarget(%q, %q) = %q, %v; want %q, error %v", tt.dir, tt.db, got, err, tt.want, tt.err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
	if got, _ := DBTarget("", ""); got != DBPath(DefaultDataDir()) {
		t.Errorf("DBTarget with no data directory = %q", got)
	}
}

// TestPostgresServer runs the server on PostgreSQL: a device signs in over
// the API, and a second server on the same database knows it. No SQLite
// file is written in the data directory.
func TestPostgresServer(t *testing.T) {
	url := pgtest.New(t)
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	var account string
	for run := range 2 {
		srv, err := Open(t.Context(), Config{DataDir: dir, DB: url})
		if err != nil {
			t.Fatal(err)
		}
		if e := srv.Store().Engine(); e != store.Postgres {
			t.Fatalf("engine %s", e)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, ln) }()
		c := client.New("http://"+ln.Addr().String(), key, client.Options{})
		if err := c.SignIn(t.Context()); err != nil {
			t.Fatalf("run %d: sign in: %v", run, err)
		}
		if run == 0 {
			account = c.AccountID()
		} else if c.AccountID() != account {
			t.Errorf("second server gave the device account %s, first %s", c.AccountID(), account)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Serve did not return")
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(DBPath(dir)); !os.IsNotExist(err) {
		t.Errorf("an SQLite file exists in the data directory: %v", err)
	}
}

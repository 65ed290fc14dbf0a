//go:build unix

package store

import (
	"bytes"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// withUmask runs the rest of t under umask mask. The umask is the
// process's: tests that call this must not run in parallel.
func withUmask(t *testing.T, mask int) {
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

// The database holds the platform's receipt-signing key: it and its WAL and
// shared-memory files are the server's alone, whatever the directory's mode
// or the umask.
func TestSQLiteFilesArePrivate(t *testing.T) {
	for _, mask := range []int{0o022, 0} {
		t.Run(fmt.Sprintf("umask %04o", mask), func(t *testing.T) {
			withUmask(t, mask)
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "sharespot.db")
			s, err := OpenSQLite(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.Write(t.Context(), insertAccount("a1")); err != nil {
				t.Fatal(err)
			}
			// The WAL and the shared memory exist while the database is open.
			for _, name := range []string{"sharespot.db", "sharespot.db-wal", "sharespot.db-shm"} {
				fi, err := os.Stat(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if m := fi.Mode().Perm(); m != 0o600 {
					t.Errorf("%s has mode %v, want 0600", name, m)
				}
			}
		})
	}
}

// A database an older version left readable by others is made private
// when opened.
func TestSQLiteTightensExistingDatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sharespot.db")
	s, err := OpenSQLite(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s, err = OpenSQLite(t.Context(), path, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("reopened database: mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "0600") {
		t.Errorf("no warning that the mode was changed; logs:\n%s", logs.String())
	}
}

// Someone else who can write the data directory can replace the database
// (and the key in it): the server says so.
func TestSQLiteWarnsAboutWritableDirectory(t *testing.T) {
	for _, tt := range []struct {
		mode fs.FileMode
		warn bool
	}{{0o700, false}, {0o755, false}, {0o775, true}, {0o777, true}, {0o777 | fs.ModeSticky, true}} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tt.mode); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			s, err := OpenSQLite(t.Context(), filepath.Join(dir, "sharespot.db"), Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "writable")
			if warned != tt.warn {
				t.Errorf("directory mode %v: warned %v, want %v; logs:\n%s", tt.mode, warned, tt.warn, logs.String())
			}
		})
	}
}

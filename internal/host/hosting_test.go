package host

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	k1, err := LoadOrCreateKey(p)
	if err != nil || len(k1) != 32 {
		t.Fatalf("create: %d bytes, %v", len(k1), err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reload differs: %v", err)
	}
	if err := os.WriteFile(p, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(p); err == nil {
		t.Fatal("a 5-byte key file was accepted")
	}
}

// The inbox cursor is written whole (0600) and read back; a write that
// fails leaves no temporary file in the state directory.
func TestCursorFile(t *testing.T) {
	dir := t.TempDir()
	h := &Host{CursorFile: filepath.Join(dir, "inbox.cursor"), Log: slog.New(slog.DiscardHandler)}
	if got := h.loadCursor(); got != 0 {
		t.Fatalf("no cursor file: loadCursor = %d", got)
	}
	for _, seq := range []uint64{7, 123456789, 8} {
		h.saveCursor(seq)
		if got := h.loadCursor(); got != seq {
			t.Fatalf("saveCursor(%d), then loadCursor = %d", seq, got)
		}
	}
	if fi, err := os.Stat(h.CursorFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cursor file: mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}

	// A cursor path that cannot be replaced (a directory is in the way).
	blocked := filepath.Join(t.TempDir(), "inbox.cursor")
	if err := os.MkdirAll(filepath.Join(blocked, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	h = &Host{CursorFile: blocked, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	h.saveCursor(9)
	if !strings.Contains(logs.String(), "save inbox cursor") {
		t.Errorf("the failure was not logged: %q", logs.String())
	}
	entries, err := os.ReadDir(filepath.Dir(blocked))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("state directory holds %q after a failed save: temporary file left behind", names)
	}
}

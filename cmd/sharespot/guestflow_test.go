package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestGuestStateDir: a guest's state goes to the user's state directory,
// never beside a key in the working directory, unless an earlier version
// left a live session there.
func TestGuestStateDir(t *testing.T) {
	home, work := t.TempDir(), t.TempDir()
	key := filepath.Join(work, "guest.key")
	t.Setenv("HOME", home)
	t.Setenv("XDG_STATE_HOME", "")
	if got, want := (guestStateFlags{}).stateDir(key), filepath.Join(home, ".local", "state", "sharespot", "guest-guest.key"); got != want {
		t.Errorf("without XDG_STATE_HOME: %s, want %s", got, want)
	}
	t.Setenv("XDG_STATE_HOME", filepath.Join(home, "st"))
	if got, want := (guestStateFlags{}).stateDir(key), filepath.Join(home, "st", "sharespot", "guest-guest.key"); got != want {
		t.Errorf("with XDG_STATE_HOME: %s, want %s", got, want)
	}
	if got := (guestStateFlags{State: "x"}).stateDir(key); got != "x" {
		t.Errorf("--state x: %s", got)
	}
	t.Setenv("XDG_STATE_HOME", "")
	old := filepath.Join(work, "guest-guest.key.state")
	if err := os.Mkdir(old, 0o700); err != nil {
		t.Fatal(err)
	}
	if got := (guestStateFlags{}).stateDir(key); got != old {
		t.Errorf("with an earlier version's directory beside the key: %s, want %s", got, old)
	}
}

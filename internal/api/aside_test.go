package api

import (
	"bytes"
	"runtime"
	"strconv"
	"testing"
)

// goid is the calling goroutine's ID, from its stack trace's first line.
func goid(t *testing.T) int {
	var buf [64]byte
	line := buf[:runtime.Stack(buf[:], false)]
	line, _ = bytes.CutPrefix(line, []byte("goroutine "))
	id, _, _ := bytes.Cut(line, []byte(" "))
	n, err := strconv.Atoi(string(id))
	if err != nil {
		t.Errorf("no goroutine ID in %q", buf)
	}
	return n
}

// TestAside checks that aside runs its function on another goroutine, waits
// for it, and raises its panic on the caller.
func TestAside(t *testing.T) {
	caller := goid(t)
	ran := 0
	aside(func() { ran = goid(t) })
	if ran == 0 || ran == caller {
		t.Errorf("ran on goroutine %d, called from %d: want another, and waited for", ran, caller)
	}

	var got any
	func() {
		defer func() { got = recover() }()
		aside(func() { panic("deep") })
		t.Error("aside returned after its function panicked")
	}()
	if got != "deep" {
		t.Errorf("recovered %v on the caller, want the function's panic", got)
	}
}

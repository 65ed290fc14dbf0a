// Package natstest gives tests the NATS server they need.
//
// The server is SHARESPOT_TEST_NATS (a nats:// URL; default
// nats://127.0.0.1:4222). Where it cannot be reached, tests that need it
// skip, except in CI (CI=true), where they fail: a skipped test proves
// nothing.
package natstest

import (
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"
)

// DefaultURL is the server used when SHARESPOT_TEST_NATS is unset.
const DefaultURL = "nats://127.0.0.1:4222"

// URL is the NATS server tests use.
func URL() string {
	if u := os.Getenv("SHARESPOT_TEST_NATS"); u != "" {
		return u
	}
	return DefaultURL
}

var (
	probeOnce sync.Once
	probeErr  error
)

// probe dials the server and reads its INFO line, which every NATS server
// sends first.
func probe() error {
	probeOnce.Do(func() {
		u, err := url.Parse(URL())
		if err != nil {
			probeErr = err
			return
		}
		c, err := net.DialTimeout("tcp", u.Host, 3*time.Second)
		if err != nil {
			probeErr = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil {
			probeErr = err
			return
		}
		if string(buf) != "INFO " {
			probeErr = &net.AddrError{Err: "not a NATS server (no INFO line)", Addr: u.Host}
		}
	})
	return probeErr
}

// Require skips t when the test NATS server cannot be reached, or fails it
// when CI=true, and returns the server's URL.
func Require(t testing.TB) string {
	t.Helper()
	if err := probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("NATS at %s is required in CI: %v", URL(), err)
		}
		t.Skipf("no NATS at %s (set SHARESPOT_TEST_NATS): %v", URL(), err)
	}
	return URL()
}

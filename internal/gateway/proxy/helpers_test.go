package proxy

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
)

// wait bounds every wait for something that should happen promptly; it is
// a failure deadline, not a timing assertion.
const wait = 10 * time.Second

func allowAll(netip.AddrPort) bool { return true }

// newProxy starts a proxy that may reach loopback origins; the test's
// cleanup stops it and checks Run's result.
func newProxy(t testing.TB, cfg Config) *Proxy {
	t.Helper()
	p, _ := startProxy(t, cfg)
	return p
}

// testGrace is the grace period of the tests' proxies unless they set
// one: a session that runs out is held this long, then closed.
const testGrace = 100 * time.Millisecond

// startProxy is newProxy that also returns a function stopping the proxy
// (Run returns, having saved exact usage).
func startProxy(t testing.TB, cfg Config) (*Proxy, func()) {
	t.Helper()
	if cfg.AllowDestination == nil {
		cfg.AllowDestination = allowAll
	}
	if cfg.Grace == 0 {
		cfg.Grace = testGrace
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, runProxy(t, p)
}

// runProxy runs p until the test ends; it returns a stop function that
// stops it early (and is safe to call twice).
func runProxy(t testing.TB, p *Proxy) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(wait):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// newCode returns an access code and its printed form.
func newCode(t testing.TB) ([]byte, string) {
	t.Helper()
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	return code, seal.FormatCode(code)
}

// admit admits a fresh session and returns its password.
func admit(t testing.TB, p *Proxy, id string, quota, threshold int64) string {
	t.Helper()
	code, pass := newCode(t)
	if err := p.Admit(context.Background(), gateway.Grant{SessionID: id, Credential: code, Quota: quota, Threshold: threshold}); err != nil {
		t.Fatal(err)
	}
	return pass
}

// guestKey signs a verified session's acknowledgments in the tests.
var guestPub, guestKey, _ = ed25519.GenerateKey(nil)

// admitVerified admits a fresh verified session (its guest's key
// guestPub) and returns its password.
func admitVerified(t testing.TB, p *Proxy, id string, quota int64) string {
	t.Helper()
	code, pass := newCode(t)
	if err := p.Admit(context.Background(), gateway.Grant{SessionID: id, Credential: code, Quota: quota, Verified: true, GuestKey: guestPub}); err != nil {
		t.Fatal(err)
	}
	return pass
}

// ackOf is the guest's signature of n bytes of session id.
func ackOf(id string, n int64) []byte { return protocol.SignAck(guestKey, id, n) }

// pattern is the byte origins send at offset i of a stream.
func pattern(i int64) byte { return byte(i % 251) }

func fillPattern(b []byte, off int64) {
	for i := range b {
		b[i] = pattern(off + int64(i))
	}
}

// origin is a TCP server for the tests.
type origin struct {
	addr     string
	accepted atomic.Int64
}

// startOrigin serves each connection with serve until the test ends.
func startOrigin(t testing.TB, serve func(net.Conn)) *origin {
	t.Helper()
	return startOriginOn(t, "127.0.0.1:0", serve)
}

// startOriginOn is startOrigin listening on addr.
func startOriginOn(t testing.TB, addr string, serve func(net.Conn)) *origin {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	o := &origin{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
	return o
}

// streamN sends n pattern bytes (n < 0: until the peer goes), then
// returns, closing the connection.
func streamN(n int64) func(net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 64<<10)
		var off int64
		for n < 0 || off < n {
			k := int64(len(buf))
			if n >= 0 {
				k = min(k, n-off)
			}
			fillPattern(buf[:k], off)
			if _, err := c.Write(buf[:k]); err != nil {
				return
			}
			off += k
		}
	}
}

// gated waits for start, then streams forever.
func gated(start <-chan struct{}) func(net.Conn) {
	return func(c net.Conn) {
		select {
		case <-start:
			streamN(-1)(c)
		case <-time.After(wait):
		}
	}
}

// failingStore fails every Save while fail is set.
type failingStore struct{ fail atomic.Bool }

func (*failingStore) Load() ([]gateway.Record, error) { return nil, nil }

func (f *failingStore) Save([]gateway.Record, []string) error {
	if f.fail.Load() {
		return errors.New("disk full")
	}
	return nil
}

// streamThenHold sends n pattern bytes and keeps the connection open
// until the peer closes it.
func streamThenHold(n int64) func(net.Conn) {
	return func(c net.Conn) {
		streamN(n)(c)
		io.Copy(io.Discard, c)
	}
}

func dialSOCKS(proxyAddr, user, pass, target string) (net.Conn, error) {
	d, err := xproxy.SOCKS5("tcp", proxyAddr, &xproxy.Auth{User: user, Password: pass}, xproxy.Direct)
	if err != nil {
		return nil, err
	}
	return d.Dial("tcp", target)
}

// bufConn is a net.Conn whose reads go through a bufio.Reader.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// statusError is a refused HTTP CONNECT.
type statusError struct {
	code int
	hdr  http.Header
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d", e.code) }

func dialHTTP(proxyAddr, user, pass, target string) (net.Conn, error) {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if user != "" || pass != "" {
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		c.Close()
		return nil, &statusError{res.StatusCode, res.Header}
	}
	return &bufConn{Conn: c, r: br}, nil
}

type dialFunc func(proxyAddr, user, pass, target string) (net.Conn, error)

var protocols = []struct {
	name string
	dial dialFunc
}{
	{"socks5", dialSOCKS},
	{"http", dialHTTP},
}

// drain reads c until it ends, checking the pattern, and returns the
// bytes read. A read that does not end within wait fails the test.
func drain(t testing.TB, c net.Conn) int64 {
	t.Helper()
	return drainAt(t, c, 0)
}

// drainAt is drain for a stream that continues at offset off.
func drainAt(t testing.TB, c net.Conn, off int64) int64 {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64<<10)
	n := off
	for {
		k, err := c.Read(buf)
		for i := 0; i < k; i++ {
			if buf[i] != pattern(n+int64(i)) {
				t.Errorf("byte %d is %d, want %d", n+int64(i), buf[i], pattern(n+int64(i)))
				return n - off
			}
		}
		n += int64(k)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("stream did not end within %v (read %d bytes)", wait, n-off)
			}
			return n - off
		}
	}
}

// nextEvent returns the next event of kind for session id, skipping
// others; it fails if none arrives within wait.
func nextEvent(t testing.TB, p *Proxy, id string, kind gateway.EventKind) gateway.Event {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case e, ok := <-p.Events():
			if !ok {
				t.Fatalf("events closed waiting for %v", kind)
			}
			if e.SessionID == id && e.Kind == kind {
				return e
			}
		case <-timer.C:
			t.Fatalf("no %v event for %s within %v", kind, id, wait)
		}
	}
}

func usage(t testing.TB, p *Proxy, id string) (used, quota int64) {
	t.Helper()
	used, quota, err := p.Usage(id)
	if err != nil {
		t.Fatal(err)
	}
	return used, quota
}

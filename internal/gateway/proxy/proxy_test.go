package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
)

// copyModes are the two copy paths: splice (Linux, TCP both sides) and
// the userspace buffer.
var copyModes = []struct {
	name     string
	noSplice bool
}{
	{"splice", false},
	{"buffered", true},
}

// TestQuotaExact: a download of more than the quota stops at exactly the
// quota, over 1 and 4 parallel connections of one session, both protocols,
// both copy paths; then the session is refused and Exhausted was sent.
func TestQuotaExact(t *testing.T) {
	const quota = 1<<20 + 12345
	for _, proto := range protocols {
		for _, mode := range copyModes {
			for _, conns := range []int{1, 4} {
				t.Run(fmt.Sprintf("%s/%s/conns=%d", proto.name, mode.name, conns), func(t *testing.T) {
					start := make(chan struct{})
					o := startOrigin(t, gated(start))
					p := newProxy(t, Config{noSplice: mode.noSplice})
					pass := admit(t, p, "s1", quota, 0)

					var total int64
					var mu sync.Mutex
					var wg sync.WaitGroup
					for range conns {
						c, err := proto.dial(p.Addr(), "s1", pass, o.addr)
						if err != nil {
							t.Fatal(err)
						}
						defer c.Close()
						wg.Go(func() {
							<-start
							n := drain(t, c)
							mu.Lock()
							total += n
							mu.Unlock()
						})
					}
					close(start)
					wg.Wait()
					if total != quota {
						t.Errorf("guest received %d bytes, want exactly %d", total, quota)
					}
					if used, q := usage(t, p, "s1"); used != quota || q != quota {
						t.Errorf("Usage = %d/%d, want %d/%d", used, q, quota, quota)
					}
					e := nextEvent(t, p, "s1", gateway.Exhausted)
					if e.Used != quota || e.Quota != quota {
						t.Errorf("Exhausted event %+v", e)
					}
					_, err := proto.dial(p.Addr(), "s1", pass, o.addr)
					if err == nil {
						t.Fatal("exhausted session got a new connection")
					}
					var se *statusError
					if proto.name == "http" && (!errors.As(err, &se) || se.code != http.StatusPaymentRequired) {
						t.Errorf("exhausted session: %v, want HTTP 402", err)
					}
				})
			}
		}
	}
}

// TestUploadCounts: bytes the guest sends count against the same quota.
func TestUploadCounts(t *testing.T) {
	const quota = 300_000
	received := make(chan int64, 1)
	o := startOrigin(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		received <- n
	})
	p := newProxy(t, Config{})
	pass := admit(t, p, "up", quota, 0)
	c, err := dialSOCKS(p.Addr(), "up", pass, o.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(wait))
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			break // the gateway cut us off
		}
	}
	select {
	case n := <-received:
		if n != quota {
			t.Errorf("origin received %d bytes, want %d", n, quota)
		}
	case <-time.After(wait):
		t.Fatal("origin connection not closed")
	}
	if used, _ := usage(t, p, "up"); used != quota {
		t.Errorf("used %d, want %d", used, quota)
	}
}

// TestExtendInPlace: extending a live session before it runs out keeps the
// same connection going, without resetting usage, and re-arms the
// threshold.
func TestExtendInPlace(t *testing.T) {
	const (
		quota     = 256 << 10
		threshold = 64 << 10
		first     = quota - 32<<10 // leaves less than threshold
		extra     = 512 << 10
	)
	more := make(chan struct{})
	o := startOrigin(t, func(c net.Conn) {
		streamN(first)(c)
		select {
		case <-more:
		case <-time.After(wait):
			return
		}
		buf := make([]byte, 32<<10)
		for off := int64(first); ; off += int64(len(buf)) {
			fillPattern(buf, off)
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			// The threshold alone: at loopback speed the early prompt
			// (TestEarlyPrompt) would come at once.
			p := newProxy(t, Config{TopUpTime: -1})
			pass := admit(t, p, "x", quota, threshold)
			c, err := proto.dial(p.Addr(), "x", pass, o.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := make([]byte, first)
			c.SetReadDeadline(time.Now().Add(wait))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			nextEvent(t, p, "x", gateway.FirstTraffic)
			if e := nextEvent(t, p, "x", gateway.ThresholdCrossed); e.Quota-e.Used >= threshold {
				t.Errorf("ThresholdCrossed at %+v: remaining not below %d", e, threshold)
			}
			if err := p.Extend(context.Background(), "x", extra); err != nil {
				t.Fatal(err)
			}
			// The last step of the first part may still be committing.
			if used, q := usage(t, p, "x"); used <= quota-threshold || used > first || q != quota+extra {
				t.Errorf("after Extend: Usage = %d/%d, want (%d, %d]/%d", used, q, quota-threshold, first, quota+extra)
			}
			more <- struct{}{}
			rest := drainAt(t, c, first)
			if total := first + rest; total != quota+extra {
				t.Errorf("one connection carried %d bytes, want %d", total, quota+extra)
			}
			if e := nextEvent(t, p, "x", gateway.ThresholdCrossed); e.Quota != quota+extra {
				t.Errorf("second ThresholdCrossed %+v", e)
			}
			nextEvent(t, p, "x", gateway.Exhausted)
		})
	}
}

// TestExtendAfterExhausted: after the cut, an extension lets exactly the
// extension through on a new connection.
func TestExtendAfterExhausted(t *testing.T) {
	const quota, extra = 100_000, 70_000
	o := startOrigin(t, streamN(-1))
	p := newProxy(t, Config{})
	pass := admit(t, p, "e", quota, 0)
	c, err := dialHTTP(p.Addr(), "e", pass, o.addr)
	if err != nil {
		t.Fatal(err)
	}
	if n := drain(t, c); n != quota {
		t.Fatalf("first connection: %d bytes, want %d", n, quota)
	}
	c.Close()
	nextEvent(t, p, "e", gateway.Exhausted)
	if err := p.Extend(context.Background(), "e", extra); err != nil {
		t.Fatal(err)
	}
	c, err = dialSOCKS(p.Addr(), "e", pass, o.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := drain(t, c); n != extra {
		t.Errorf("after Extend: %d bytes, want %d", n, extra)
	}
	if used, q := usage(t, p, "e"); used != quota+extra || q != quota+extra {
		t.Errorf("Usage = %d/%d", used, q)
	}
}

// TestRevokeCutsLiveTransfer: Revoke ends a transfer in progress and
// refuses the credentials afterwards.
func TestRevokeCutsLiveTransfer(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			o := startOrigin(t, streamN(-1))
			p := newProxy(t, Config{})
			pass := admit(t, p, "r", 1<<40, 0)
			c, err := proto.dial(p.Addr(), "r", pass, o.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(wait))
			if _, err := io.ReadFull(c, make([]byte, 100_000)); err != nil {
				t.Fatal(err)
			}
			if err := p.Revoke(context.Background(), "r"); err != nil {
				t.Fatal(err)
			}
			// The stream ends (drain fails the test if it runs on).
			drainAt(t, c, 100_000)
			if _, err := proto.dial(p.Addr(), "r", pass, o.addr); err == nil {
				t.Error("revoked session got a new connection")
			}
			if err := p.Admit(context.Background(), gateway.Grant{SessionID: "r", Credential: make([]byte, 32), Quota: 1}); !errors.Is(err, gateway.ErrRevoked) {
				t.Errorf("Admit after Revoke: %v, want ErrRevoked", err)
			}
			if err := p.Extend(context.Background(), "r", 1); !errors.Is(err, gateway.ErrRevoked) {
				t.Errorf("Extend after Revoke: %v, want ErrRevoked", err)
			}
		})
	}
}

// TestCredentialsRefused: wrong, missing and malformed credentials are
// refused on both protocols and the origin is never contacted.
func TestCredentialsRefused(t *testing.T) {
	o := startOrigin(t, streamN(-1))
	p := newProxy(t, Config{})
	pass := admit(t, p, "ok", 1<<20, 0)
	_, other := newCode(t)

	for _, proto := range protocols {
		for _, tc := range []struct{ name, user, pass string }{
			{"wrong code", "ok", other},
			{"unknown session", "nope", pass},
			{"code of another form", "ok", strings.ToUpper(pass) + "x"},
			{"empty password", "ok", ""},
			{"missing", "", ""},
		} {
			if proto.name == "socks5" && tc.user == "" {
				continue // the SOCKS5 client cannot send empty fields; the raw cases cover it
			}
			t.Run(proto.name+"/"+tc.name, func(t *testing.T) {
				c, err := proto.dial(p.Addr(), tc.user, tc.pass, o.addr)
				if err == nil {
					c.Close()
					t.Fatal("admitted")
				}
				var se *statusError
				if proto.name == "http" {
					if !errors.As(err, &se) || se.code != http.StatusProxyAuthRequired || se.hdr.Get("Proxy-Authenticate") == "" {
						t.Errorf("got %v, want 407 with Proxy-Authenticate", err)
					}
				}
			})
		}
	}

	// Raw handshakes: what the gateway answers, byte for byte.
	for _, tc := range []struct {
		name string
		send string
		want string // prefix of the answer
	}{
		{"socks no-auth only", "\x05\x01\x00", "\x05\xff"},
		{"socks no methods", "\x05\x00", "\x05\xff"},
		{"socks bad auth version", "\x05\x01\x02\x05\x02ok\x01x", "\x05\x02\x01\x01"},
		{"socks empty user", "\x05\x01\x02\x01\x00\x01x", "\x05\x02\x01\x01"},
		{"socks right user, code truncated", "\x05\x01\x02\x01\x02ok\x05" + pass[:5], "\x05\x02\x01\x01"},
		{"http garbage", "\x16\x03\x01\x00\x05hello\r\n\r\n", "HTTP/1.1 400"},
		{"http no credentials", "CONNECT " + o.addr + " HTTP/1.1\r\n\r\n", "HTTP/1.1 407"},
		{"http GET with credentials", "GET http://" + o.addr + "/ HTTP/1.1\r\nProxy-Authorization: Basic " + basic("ok", pass) + "\r\n\r\n", "HTTP/1.1 405"},
		{"http CONNECT without port", "CONNECT example.com HTTP/1.1\r\nProxy-Authorization: Basic " + basic("ok", pass) + "\r\n\r\n", "HTTP/1.1 400"},
		{"http header too large", "CONNECT " + o.addr + " HTTP/1.1\r\nX: " + strings.Repeat("a", 20<<10) + "\r\n\r\n", "HTTP/1.1 431"},
		{"http bad basic", "CONNECT " + o.addr + " HTTP/1.1\r\nProxy-Authorization: Basic !!!\r\n\r\n", "HTTP/1.1 407"},
	} {
		t.Run("raw/"+tc.name, func(t *testing.T) {
			got := exchange(t, p.Addr(), tc.send)
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("answer %q, want prefix %q", got, tc.want)
			}
		})
	}
	if n := o.accepted.Load(); n != 0 {
		t.Errorf("origin saw %d connections", n)
	}
}

func basic(user, pass string) string {
	return strings.TrimPrefix(basicHeader(user, pass), "Basic ")
}

func basicHeader(user, pass string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, pass)
	return r.Header.Get("Authorization")
}

// exchange sends raw bytes and returns everything the gateway answers
// before closing the connection.
func exchange(t *testing.T, addr, send string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.WriteString(c, send) // the gateway may stop reading early
	c.SetReadDeadline(time.Now().Add(wait))
	got, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("gateway did not close the connection (got %q)", got)
	}
	return string(got)
}

// TestSOCKSRequestRefusals: requests after a good login that cannot be
// served get SOCKS5 reply codes.
func TestSOCKSRequestRefusals(t *testing.T) {
	o := startOrigin(t, streamN(-1))
	p := newProxy(t, Config{})
	pass := admit(t, p, "ok", 1<<20, 0)
	login := "\x05\x01\x02\x01\x02ok" + string(rune(len(pass))) + pass
	const greet = "\x05\x02\x01\x00"
	for _, tc := range []struct {
		name, req string
		rep       byte
	}{
		{"bind", "\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", repCmdNotSupp},
		{"udp associate", "\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x50", repCmdNotSupp},
		{"address type", "\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50", repAtypNotSupp},
		{"bad host name", "\x05\x01\x00\x03\x05a b/c\x00\x50", repHostUnreach},
		{"port zero", "\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", repNotAllowed},
		{"self", "\x05\x01\x00\x01" + string(p.self.Addr().AsSlice()) + string([]byte{byte(p.self.Port() >> 8), byte(p.self.Port())}), repNotAllowed},
		{"refused", "\x05\x01\x00\x01\x7f\x00\x00\x01" + closedPort(t), repRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := exchange(t, p.Addr(), login+tc.req)
			if !strings.HasPrefix(got, greet) || len(got) < len(greet)+2 || got[len(greet)+1] != tc.rep {
				t.Errorf("answer %q, want reply code %d", got, tc.rep)
			}
		})
	}
	if n := o.accepted.Load(); n != 0 {
		t.Errorf("origin saw %d connections", n)
	}
}

// closedPort returns a loopback port nobody listens on, as two bytes.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return string([]byte{byte(port >> 8), byte(port)})
}

// TestDestinationPolicy: the gateway never dials itself, and by default
// refuses loopback destinations.
func TestDestinationPolicy(t *testing.T) {
	o := startOrigin(t, streamN(-1))
	t.Run("self", func(t *testing.T) {
		p := newProxy(t, Config{})
		pass := admit(t, p, "s", 1<<20, 0)
		for _, target := range []string{p.Addr(), "localhost:" + fmt.Sprint(p.self.Port())} {
			_, err := dialHTTP(p.Addr(), "s", pass, target)
			var se *statusError
			if !errors.As(err, &se) || se.code != http.StatusForbidden {
				t.Errorf("CONNECT %s: %v, want 403", target, err)
			}
			if _, err := dialSOCKS(p.Addr(), "s", pass, target); err == nil {
				t.Errorf("SOCKS CONNECT %s admitted", target)
			}
		}
	})
	t.Run("default refuses loopback", func(t *testing.T) {
		p, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		runProxy(t, p)
		pass := admit(t, p, "s", 1<<20, 0)
		_, err = dialHTTP(p.Addr(), "s", pass, o.addr)
		var se *statusError
		if !errors.As(err, &se) || se.code != http.StatusForbidden {
			t.Errorf("CONNECT %s: %v, want 403", o.addr, err)
		}
	})
	if n := o.accepted.Load(); n != 0 {
		t.Errorf("origin saw %d connections", n)
	}
}

// TestLimitsAndTimeouts: per-session and global connection limits, the
// handshake timeout and the idle timeout all close connections.
func TestLimitsAndTimeouts(t *testing.T) {
	hold := startOrigin(t, streamThenHold(0))
	t.Run("per session", func(t *testing.T) {
		p := newProxy(t, Config{MaxConnsPerSession: 2})
		pass := admit(t, p, "s", 1<<20, 0)
		for range 2 {
			c, err := dialHTTP(p.Addr(), "s", pass, hold.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		_, err := dialHTTP(p.Addr(), "s", pass, hold.addr)
		var se *statusError
		if !errors.As(err, &se) || se.code != http.StatusTooManyRequests {
			t.Errorf("third connection: %v, want 429", err)
		}
	})
	t.Run("global", func(t *testing.T) {
		// MaxConns counts authenticated connections, of any session.
		p := newProxy(t, Config{MaxConns: 1})
		passA, passB := admit(t, p, "a", 1<<20, 0), admit(t, p, "b", 1<<20, 0)
		c, err := dialHTTP(p.Addr(), "a", passA, hold.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = dialHTTP(p.Addr(), "b", passB, hold.addr)
		var se *statusError
		if !errors.As(err, &se) || se.code != http.StatusTooManyRequests {
			t.Errorf("over the limit: %v, want 429", err)
		}
		if _, err := dialSOCKS(p.Addr(), "b", passB, hold.addr); err == nil {
			t.Error("over the limit: SOCKS CONNECT admitted")
		}
	})
	t.Run("handshake timeout", func(t *testing.T) {
		p := newProxy(t, Config{HandshakeTimeout: 100 * time.Millisecond})
		if got := exchange(t, p.Addr(), "\x05\x01"); got != "" {
			t.Errorf("answered %q", got)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		for _, mode := range copyModes {
			p := newProxy(t, Config{IdleTimeout: 200 * time.Millisecond, noSplice: mode.noSplice})
			pass := admit(t, p, "s", 1<<20, 0)
			c, err := dialSOCKS(p.Addr(), "s", pass, hold.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(wait))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s: idle connection not closed", mode.name)
			}
		}
	})
}

// TestEvents: FirstTraffic, then Idle after IdleAfter without traffic,
// and Idle again only after more traffic.
func TestEvents(t *testing.T) {
	o := startOrigin(t, streamThenHold(1000))
	p := newProxy(t, Config{IdleAfter: 50 * time.Millisecond})
	pass := admit(t, p, "ev", 1<<20, 0)
	for i := range 2 {
		c, err := dialSOCKS(p.Addr(), "ev", pass, o.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if e := nextEvent(t, p, "ev", gateway.FirstTraffic); e.Used == 0 {
				t.Errorf("FirstTraffic %+v", e)
			}
		}
		if e := nextEvent(t, p, "ev", gateway.Idle); e.Used != int64(1000*(i+1)) {
			t.Errorf("Idle %+v, want used %d", e, 1000*(i+1))
		}
		c.Close()
	}
}

// TestRateLimit: a session limited to 2 MiB/s cannot move 1 MiB much
// faster than the limit allows (a lower bound only: never flaky).
func TestRateLimit(t *testing.T) {
	const rateLimit, size = 2 << 20, 1 << 20
	for _, mode := range copyModes {
		t.Run(mode.name, func(t *testing.T) {
			o := startOrigin(t, streamN(size))
			p := newProxy(t, Config{RateLimit: rateLimit, noSplice: mode.noSplice})
			pass := admit(t, p, "rl", 1<<30, 0)
			start := time.Now()
			c, err := dialSOCKS(p.Addr(), "rl", pass, o.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if n := drain(t, c); n != size {
				t.Fatalf("got %d bytes", n)
			}
			// Two bursts may pass unpaced (the bucket, and one step paid
			// after).
			burst := min(copyChunk, max(bufSize, rateLimit/8))
			if el, least := time.Since(start), time.Duration(float64(size-2*burst)/rateLimit*float64(time.Second)); el < least {
				t.Errorf("1 MiB took %v, want at least %v", el, least)
			}
		})
	}
}

// TestRestartKeepsRemaining: after a clean shutdown a new gateway on the
// same file knows the session, its credential and its exact usage.
func TestRestartKeepsRemaining(t *testing.T) {
	const quota, first = 1 << 20, 300_000
	path := filepath.Join(t.TempDir(), "usage.json")
	store1, err := gateway.OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	o1 := startOrigin(t, streamN(first))
	p1, stop := startProxy(t, Config{Store: store1})
	pass := admit(t, p1, "k", quota, 100_000)
	c, err := dialSOCKS(p1.Addr(), "k", pass, o1.addr)
	if err != nil {
		t.Fatal(err)
	}
	if n := drain(t, c); n != first {
		t.Fatalf("got %d", n)
	}
	c.Close()
	stop()

	store2, err := gateway.OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	p2 := newProxy(t, Config{Store: store2})
	if used, q := usage(t, p2, "k"); used != first || q != quota {
		t.Fatalf("after restart: Usage = %d/%d, want %d/%d", used, q, first, quota)
	}
	o2 := startOrigin(t, streamN(-1))
	c, err = dialHTTP(p2.Addr(), "k", pass, o2.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := drain(t, c); n != quota-first {
		t.Errorf("after restart: %d bytes, want the remaining %d", n, quota-first)
	}
	nextEvent(t, p2, "k", gateway.Exhausted)
}

// TestCrashNeverOverGrants: whatever the store holds at any moment is an
// upper bound on what passed, so a gateway restarted from it after a
// crash never lets the guest exceed the quota, and loses at most the lead.
func TestCrashNeverOverGrants(t *testing.T) {
	// The lead follows the guest's rate, up to 256 × PersistAhead: 2 MiB,
	// so that the crash leaves something of the quota at loopback speed.
	const quota, first, ahead = 4 << 20, 1_000_000, 8 << 10
	dir := t.TempDir()
	path := filepath.Join(dir, "usage.json")
	store, err := gateway.OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	o := startOrigin(t, streamThenHold(first))
	p1 := newProxy(t, Config{Store: store, PersistAhead: ahead})
	pass := admit(t, p1, "c", quota, 0)
	c, err := dialSOCKS(p1.Addr(), "c", pass, o.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(c, make([]byte, first)); err != nil {
		t.Fatal(err)
	}
	// "Crash": keep the file as it is now, with the connection still open.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(dir, "crashed.json")
	if err := os.WriteFile(crashed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	store2, err := gateway.OpenFileStore(crashed)
	if err != nil {
		t.Fatal(err)
	}
	p2 := newProxy(t, Config{Store: store2})
	saved, _ := usage(t, p2, "c")
	if saved < first || saved > first+maxLeadFactor*ahead {
		t.Fatalf("saved usage %d: want between %d and %d", saved, first, first+maxLeadFactor*ahead)
	}
	o2 := startOrigin(t, streamN(-1))
	c2, err := dialSOCKS(p2.Addr(), "c", pass, o2.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n := drain(t, c2); first+n > quota || n != quota-saved {
		t.Errorf("after crash: %d more bytes (%d saved as used); total %d of quota %d", n, saved, first+n, quota)
	}
}

// TestStoreFailure: a store that cannot save stops traffic instead of
// letting unsaved bytes through, and Admit reports the failure.
func TestStoreFailure(t *testing.T) {
	fs := &failingStore{}
	p := newProxy(t, Config{Store: fs})
	fs.fail.Store(true)
	code, _ := newCode(t)
	if err := p.Admit(context.Background(), gateway.Grant{SessionID: "f", Credential: code, Quota: 1 << 20}); err == nil {
		t.Fatal("Admit succeeded with a failing store")
	}
	if _, _, err := p.Usage("f"); !errors.Is(err, gateway.ErrUnknownSession) {
		t.Errorf("session kept after a failed Admit: %v", err)
	}

	fs.fail.Store(false)
	o := startOrigin(t, streamN(-1))
	pass := admit(t, p, "g", 1<<20, 0)
	fs.fail.Store(true)
	c, err := dialSOCKS(p.Addr(), "g", pass, o.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _ := c.Read(make([]byte, 1)); n != 0 {
		t.Error("bytes passed that the store could not save")
	}
	if err := p.Extend(context.Background(), "g", 1000); err == nil {
		t.Error("Extend succeeded with a failing store")
	}
	if _, q := usage(t, p, "g"); q != 1<<20 {
		t.Errorf("failed Extend left quota %d (a retry would extend twice)", q)
	}
	fs.fail.Store(false)
	c.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
		t.Errorf("traffic did not resume once the store recovered: %v", err)
	}
}

// TestAdmitValidation: malformed grants are refused; a repeated Admit is a
// no-op with the same code and an error with another.
func TestAdmitValidation(t *testing.T) {
	p := newProxy(t, Config{})
	code, _ := newCode(t)
	ctx := context.Background()
	for _, g := range []gateway.Grant{
		{SessionID: "", Credential: code, Quota: 1},
		{SessionID: "a:b", Credential: code, Quota: 1},
		{SessionID: strings.Repeat("a", 256), Credential: code, Quota: 1},
		{SessionID: "a", Credential: code[:5], Quota: 1},
		{SessionID: "a", Credential: code, Quota: 0},
		{SessionID: "a", Credential: code, Quota: 1, Threshold: -1},
	} {
		if err := p.Admit(ctx, g); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("Admit(%q, quota %d): %v, want ErrInvalid", g.SessionID, g.Quota, err)
		}
	}
	if err := p.Admit(ctx, gateway.Grant{SessionID: "a", Credential: code, Quota: 10}); err != nil {
		t.Fatal(err)
	}
	if err := p.Extend(ctx, "a", 5); err != nil {
		t.Fatal(err)
	}
	if err := p.Admit(ctx, gateway.Grant{SessionID: "a", Credential: code, Quota: 10}); err != nil {
		t.Errorf("repeated Admit: %v", err)
	}
	if _, q := usage(t, p, "a"); q != 15 {
		t.Errorf("repeated Admit changed the quota to %d", q)
	}
	other, _ := newCode(t)
	if err := p.Admit(ctx, gateway.Grant{SessionID: "a", Credential: other, Quota: 10}); !errors.Is(err, gateway.ErrSessionExists) {
		t.Errorf("Admit with another code: %v, want ErrSessionExists", err)
	}
	if err := p.Extend(ctx, "a", 0); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("Extend by 0: %v", err)
	}
	if err := p.Extend(ctx, "zz", 1); !errors.Is(err, gateway.ErrUnknownSession) {
		t.Errorf("Extend unknown: %v", err)
	}
	if err := p.Revoke(ctx, "zz"); !errors.Is(err, gateway.ErrUnknownSession) {
		t.Errorf("Revoke unknown: %v", err)
	}
}

// TestPipelinedData: bytes a client sends right behind its CONNECT (before
// the 200) reach the origin and are counted.
func TestPipelinedData(t *testing.T) {
	got := make(chan []byte, 1)
	o := startOrigin(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	p := newProxy(t, Config{})
	pass := admit(t, p, "pl", 1<<20, 0)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const early = "early bytes"
	io.WriteString(c, "CONNECT "+o.addr+" HTTP/1.1\r\nProxy-Authorization: "+basicHeader("pl", pass)+"\r\n\r\n"+early)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("%v %v", res, err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if !bytes.Equal(b, []byte(early)) {
			t.Errorf("origin got %q", b)
		}
	case <-time.After(wait):
		t.Fatal("origin got nothing")
	}
	if used, _ := usage(t, p, "pl"); used != int64(len(early)) {
		t.Errorf("used %d, want %d", used, len(early))
	}
}

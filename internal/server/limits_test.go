package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/store"
)

// wait bounds every wait for something that should happen promptly; it is
// a failure deadline, not a timing assertion.
const wait = 10 * time.Second

// serve runs a server with cfg on a loopback port until the test ends and
// returns it and its address.
func serve(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	cfg.DataDir = t.TempDir()
	srv, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(2 * wait):
			t.Errorf("Serve did not return after stop")
		}
		srv.Close()
	})
	return srv, ln.Addr().String()
}

// from dials from the loopback address local (127.0.0.1, .2, …: each is
// another client address to the server).
func from(local string) *net.Dialer {
	return &net.Dialer{Timeout: wait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
}

// httpFrom is an HTTP client dialling from local: HTTP/1.1, or cleartext
// HTTP/2 (prior knowledge) when h2.
func httpFrom(t *testing.T, local string, h2 bool) *http.Client {
	tr := &http.Transport{DialContext: from(local).DialContext}
	if h2 {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: wait}
}

// connectError is a Connect unary error body.
type connectError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// post sends body to a Connect procedure as unary JSON and returns the
// response's status, header and error body.
func post(t *testing.T, hc *http.Client, url string, body []byte, hdr map[string]string) (int, http.Header, connectError) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer res.Body.Close()
	var ce connectError
	b, _ := io.ReadAll(res.Body)
	json.Unmarshal(b, &ce)
	return res.StatusCode, res.Header, ce
}

// TestRateLimitBeforeDecoding: a flood of malformed requests from one
// address is refused with 429 (resource_exhausted, Retry-After) before
// the body is decoded — past the burst, none gets as far as a decoding
// error — while another address is served.
func TestRateLimitBeforeDecoding(t *testing.T) {
	const burst, flood = 2, 50
	_, addr := serve(t, Config{Limits: api.Limits{PerIP: rate.Every(time.Hour), PerIPBurst: burst}})
	url := "http://" + addr + sharespotv1connect.AuthServiceChallengeProcedure
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			local := "127.0.0.2"
			if h2 {
				local = "127.0.0.3"
			}
			hc := httpFrom(t, local, h2)
			var decoded, limited int
			for range flood {
				status, hdr, ce := post(t, hc, url, []byte("{not json"), nil)
				switch {
				case status == http.StatusTooManyRequests && ce.Code == "resource_exhausted":
					limited++
					if got := hdr.Get("Retry-After"); got != "1" {
						t.Fatalf("429 with Retry-After %q, want 1", got)
					}
				case ce.Code == "invalid_argument":
					decoded++
				default:
					t.Fatalf("answered %d %+v", status, ce)
				}
			}
			if decoded > burst || limited != flood-decoded {
				t.Errorf("of %d malformed requests %d were decoded and %d rate limited; want at most %d decoded (the burst)", flood, decoded, limited, burst)
			}
		})
	}
	t.Run("refused_without_waiting_for_the_body", func(t *testing.T) {
		// 127.0.0.2 has used its burst above.
		c, err := from("127.0.0.2").Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
			sharespotv1connect.AuthServiceChallengeProcedure)
		c.SetReadDeadline(time.Now().Add(wait))
		b, err := io.ReadAll(c)
		if !bytes.HasPrefix(b, []byte("HTTP/1.1 429")) {
			t.Fatalf("answered %q, want 429 before the body came", b)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the refused connection is held open, waiting for its body")
		}
	})
	t.Run("another address is served", func(t *testing.T) {
		authc := sharespotv1connect.NewAuthServiceClient(httpFrom(t, "127.0.0.4", true), "http://"+addr)
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		if _, err := authc.Challenge(t.Context(), connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: pub})); err != nil {
			t.Fatal(err)
		}
	})
}

// TestGzipBombNotInflated: a request whose body is within the size limit
// but inflates far past it is refused as too large without being
// inflated to the end (connect-go inflates the rest to report its size;
// the refusal must not know it).
func TestGzipBombNotInflated(t *testing.T) {
	const inflated = 60 << 20
	var bomb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	zw.Write(make([]byte, inflated))
	zw.Close()
	if bomb.Len() > api.MaxRequestBytes {
		t.Fatalf("the bomb is %d bytes, over the %d-byte limit", bomb.Len(), api.MaxRequestBytes)
	}
	_, addr := serve(t, Config{})
	status, _, ce := post(t, httpFrom(t, "127.0.0.1", false), "http://"+addr+sharespotv1connect.AuthServiceChallengeProcedure,
		bomb.Bytes(), map[string]string{"Content-Encoding": "gzip"})
	if status != http.StatusTooManyRequests || ce.Code != "resource_exhausted" || !strings.Contains(ce.Message, fmt.Sprint(api.MaxRequestBytes)) {
		t.Fatalf("answered %d %+v, want resource_exhausted naming the %d-byte limit", status, ce, api.MaxRequestBytes)
	}
	if strings.Contains(ce.Message, fmt.Sprint(inflated)) {
		t.Errorf("the server inflated the whole bomb: %q", ce.Message)
	}
}

// TestSlowBodyClosed: a request whose body stops coming is answered or
// closed at the body deadline, over HTTP/1.1 and HTTP/2.
func TestSlowBodyClosed(t *testing.T) {
	_, addr := serve(t, Config{BodyTimeout: 200 * time.Millisecond})
	path := sharespotv1connect.AuthServiceChallengeProcedure
	t.Run("http1", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", path)
		c.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("a request with one byte of its body is still open")
		}
	})
	t.Run("h2", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		go pw.Write([]byte("{"))
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, pr)
		req.Header.Set("Content-Type", "application/json")
		res, err := httpFrom(t, "127.0.0.1", true).Do(req)
		if err == nil {
			res.Body.Close()
		}
		if ctx.Err() != nil {
			t.Fatal("a stream with one byte of its body is still open")
		}
	})
}

// TestInboxStreamOutlivesBodyDeadline: the body deadline ends with the
// request's body, so an inbox stream stays open long past it and still
// delivers, over HTTP/1.1 and HTTP/2.
func TestInboxStreamOutlivesBodyDeadline(t *testing.T) {
	const deadline = 100 * time.Millisecond
	srv, addr := serve(t, Config{BodyTimeout: deadline, PollInterval: 20 * time.Millisecond})
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			_, key, _ := ed25519.GenerateKey(rand.Reader)
			c := client.New("http://"+addr, key, client.Options{HTTPClient: httpFrom(t, "127.0.0.1", h2)})
			if err := c.SignIn(t.Context()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			stream, err := c.Inbox.Subscribe(ctx, connect.NewRequest(&sharespotv1.SubscribeRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			if !stream.Receive() {
				t.Fatalf("subscribe: %v", stream.Err())
			}
			time.Sleep(5 * deadline) // well past the body deadline
			err = srv.Store().Write(t.Context(), func(tx *store.Tx) error {
				return relay.Append(tx, nil, time.Now().UnixMilli(), c.DeviceID(), "ses_test", &sharespotv1.Envelope{})
			})
			if err != nil {
				t.Fatal(err)
			}
			if !stream.Receive() || len(stream.Msg().Envelopes) != 1 {
				t.Fatalf("after the body deadline the stream ended: %v", stream.Err())
			}
		})
	}
}

// hold opens a connection from local and sends nothing.
func hold(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	c, err := from(local).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// healthz asks GET /healthz on a new connection from local: true if it
// was answered ok, false if the connection was closed unanswered.
func healthz(t *testing.T, local, addr string) bool {
	t.Helper()
	c, err := from(local).Dial("tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(wait))
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("no answer and not closed")
	}
	return bytes.HasPrefix(b, []byte("HTTP/1.1 200"))
}

// eventually retries f until it holds or wait passes.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(wait); !f(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not within %v: %s", wait, what)
		}
	}
}

// TestConnectionCaps: connections over the per-address cap are closed
// unanswered while another address is served; over the cap in all,
// every address is turned away until a connection closes.
func TestConnectionCaps(t *testing.T) {
	tests := []struct {
		name       string
		limits     api.Limits
		otherValid bool // another address is served while one is at its cap
	}{
		{"per_address", api.Limits{PerIPConns: 2}, true},
		{"in_all", api.Limits{Conns: 2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := serve(t, Config{Limits: tt.limits})
			first := hold(t, "127.0.0.1", addr)
			hold(t, "127.0.0.1", addr)
			if healthz(t, "127.0.0.1", addr) {
				t.Error("a connection over the cap was served")
			}
			if got := healthz(t, "127.0.0.2", addr); got != tt.otherValid {
				t.Errorf("another address served: %v, want %v", got, tt.otherValid)
			}
			first.Close()
			eventually(t, "a closed connection frees its place", func() bool { return healthz(t, "127.0.0.1", addr) })
		})
	}
}

// slowBody starts a request from local whose body never ends; the server
// holds it as a call in progress.
func slowBody(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	c := hold(t, local, addr)
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
		sharespotv1connect.AuthServiceChallengeProcedure)
	return c
}

// answered reports whether the server has answered c (or closed it).
func answered(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(time.Millisecond))
	var b [1]byte
	_, err := c.Read(b[:])
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestCallsInProgressCaps: one address's unary calls in progress and its
// inbox streams are capped, refused with resource_exhausted before
// anything is read, while another address is served.
func TestCallsInProgressCaps(t *testing.T) {
	challenge := func(local, addr string) error {
		authc := sharespotv1connect.NewAuthServiceClient(httpFrom(t, local, true), "http://"+addr)
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		_, err := authc.Challenge(t.Context(), connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: pub}))
		return err
	}
	t.Run("unary", func(t *testing.T) {
		_, addr := serve(t, Config{Limits: api.Limits{PerIPInFlight: 2}})
		// Two calls that never finish their bodies hold the address's two
		// places. A probe racing one of them may hold a place while it
		// comes in, and then it is refused (at once): it is replaced.
		held := []net.Conn{slowBody(t, "127.0.0.1", addr), slowBody(t, "127.0.0.1", addr)}
		var err error
		eventually(t, "a third call from the address is refused", func() bool {
			if err = challenge("127.0.0.1", addr); connect.CodeOf(err) == connect.CodeResourceExhausted {
				return true
			}
			for i, c := range held {
				if answered(c) {
					held[i] = slowBody(t, "127.0.0.1", addr)
				}
			}
			return false
		})
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Meta().Get("Retry-After") != "1" || !strings.Contains(ce.Message(), "in progress") {
			t.Errorf("refusal %v, want Retry-After 1 and a message saying why", err)
		}
		if err := challenge("127.0.0.2", addr); err != nil {
			t.Errorf("another address: %v", err)
		}
	})
	t.Run("streams", func(t *testing.T) {
		_, addr := serve(t, Config{Limits: api.Limits{PerIPStreams: 1}})
		subscribe := func(local string) error {
			_, key, _ := ed25519.GenerateKey(rand.Reader)
			c := client.New("http://"+addr, key, client.Options{HTTPClient: httpFrom(t, local, true)})
			if err := c.SignIn(t.Context()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			stream, err := c.Inbox.Subscribe(ctx, connect.NewRequest(&sharespotv1.SubscribeRequest{}))
			if err == nil && !stream.Receive() {
				err = stream.Err()
			}
			t.Cleanup(func() {
				cancel()
				if stream != nil {
					stream.Close()
				}
			})
			return err
		}
		if err := subscribe("127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		if err := subscribe("127.0.0.1"); connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Errorf("a second stream from the address: %v, want resource_exhausted", err)
		}
		if err := subscribe("127.0.0.2"); err != nil {
			t.Errorf("another address: %v", err)
		}
	})
}

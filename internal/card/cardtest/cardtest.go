// Package cardtest runs the real stripe-mock (Stripe's own API test
// server) for tests, behind a recording reverse proxy that keeps every
// request the server sent to Stripe (path, form and idempotency key) and
// forwards it unchanged. stripe-mock is stateless and answers with
// fixtures: tests assert on what was sent and on the ledger, never on the
// amounts stripe-mock answers with. It also signs webhook events with the
// stripe-go webhook package, as Stripe signs them.
package cardtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/card"
)

// Key is a test-mode secret key stripe-mock accepts.
const Key = "sk_test_sharespot"

// WebhookSecret is the endpoint secret the tests' servers verify with.
const WebhookSecret = "whsec_sharespot_test"

// Request is one call the server made to Stripe.
type Request struct {
	Method, Path, IdempotencyKey string
	Form                         url.Values
}

// Mock is stripe-mock behind the recording proxy.
type Mock struct {
	// URL is the proxy's: give it as the Stripe API base.
	URL string
	mu  sync.Mutex
	log []Request
}

// Binary finds stripe-mock: on PATH or in $GOPATH/bin.
func Binary() string {
	if p, err := exec.LookPath("stripe-mock"); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	if p := filepath.Join(gopath, "bin", "stripe-mock"); gopath != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

var listening = regexp.MustCompile(`Listening for HTTP at address: (\S+)`)

// Start runs stripe-mock on a free loopback port and the recording proxy
// in front of it, both until t ends. Without stripe-mock t skips, or fails
// when CI=true.
func Start(t testing.TB) *Mock {
	t.Helper()
	bin := Binary()
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("stripe-mock is required in CI: go install github.com/stripe/stripe-mock@latest")
		}
		t.Skip("stripe-mock not installed (go install github.com/stripe/stripe-mock@latest)")
	}
	// Both listeners on ports the system chooses: without -https-addr
	// stripe-mock also takes its fixed HTTPS port (12112), and a second
	// one started meanwhile (another package's tests) exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-http-addr", "127.0.0.1:", "-https-addr", "127.0.0.1:")
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start stripe-mock: %v", err)
	}
	addr := make(chan string, 1)
	var logMu sync.Mutex
	var logged []string
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			logMu.Lock()
			logged = append(logged, sc.Text())
			logMu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		err := cmd.Wait()
		if t.Failed() {
			logMu.Lock()
			t.Logf("stripe-mock (%v) said:\n%s", err, strings.Join(logged, "\n"))
			logMu.Unlock()
		}
	})
	var target string
	select {
	case target = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatal("stripe-mock did not say where it listens within 30 s")
	}
	// It says so before its listener takes connections: wait until one
	// is taken (a loaded machine shows the gap).
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := net.DialTimeout("tcp", target, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock said it listens at %s, but nothing answers there within 30 s: %v", target, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	up, _ := url.Parse("http://" + target)
	m := &Mock{}
	rp := httputil.NewSingleHostReverseProxy(up)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		m.mu.Lock()
		m.log = append(m.log, Request{Method: r.Method, Path: r.URL.Path, IdempotencyKey: r.Header.Get("Idempotency-Key"), Form: form})
		m.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	m.URL = proxy.URL
	return m
}

// Requests returns the calls made so far whose path starts with prefix
// and that are POSTs (the ones that change something).
func (m *Mock) Requests(prefix string) []Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Request
	for _, r := range m.log {
		if r.Method == http.MethodPost && strings.HasPrefix(r.Path, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// Event is a webhook event's body (card.EventPayload).
func Event(id, typ string, object any) []byte { return card.EventPayload(id, typ, object) }

// Post signs payload with secret as of at and posts it to the server's
// webhook endpoint, returning the HTTP status.
func Post(t testing.TB, serverURL, secret string, at time.Time, payload []byte) int {
	t.Helper()
	code, err := card.PostEvent(context.Background(), serverURL, secret, at, payload)
	if err != nil {
		t.Fatalf("post webhook: %v", err)
	}
	return code
}

// Intent is a PaymentIntent object as events carry it (card.IntentObject).
func Intent(id string, amount, capturable int64, currency, status, metadataID string) map[string]any {
	return card.IntentObject(id, amount, capturable, currency, status, metadataID)
}

// String describes the recorded calls (for failure messages).
func (m *Mock) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	for _, r := range m.log {
		fmt.Fprintf(&b, "%s %s key=%s %v\n", r.Method, r.Path, r.IdempotencyKey, r.Form)
	}
	return b.String()
}

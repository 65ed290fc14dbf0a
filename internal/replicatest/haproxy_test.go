package replicatest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/loadgen"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// haproxyConfig is the configuration deploy/ ships.
func haproxyConfig(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "haproxy", "haproxy.cfg")
}

// requireHAProxy is the haproxy binary: the test skips without one, and
// fails in CI.
func requireHAProxy(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("haproxy is required in CI (apt-get install haproxy)")
		}
		t.Skip("no haproxy on this machine")
	}
	return bin
}

// freeAddr is a loopback address nothing listens on (for a moment).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lb is the shipped configuration set up, through its environment, in
// front of two replicas, with its own addresses and admin socket.
type lb struct {
	bin  string
	cfg  string
	env  []string
	url  string // cleartext
	sock string
}

func newLB(t *testing.T, a, b *replica, env ...string) *lb {
	l := &lb{bin: requireHAProxy(t), cfg: haproxyConfig(t), sock: filepath.Join(t.TempDir(), "admin.sock")}
	addr := freeAddr(t)
	l.url = "http://" + addr
	// Clean: an operator's SHARESPOT_* settings must not leak in.
	l.env = append(harness.CleanEnv(), "SHARESPOT_LB_LISTEN="+addr, "SHARESPOT_LB_STATS_SOCKET="+l.sock,
		"SHARESPOT_REPLICA_A="+strings.TrimPrefix(a.URL, "http://"), "SHARESPOT_REPLICA_B="+strings.TrimPrefix(b.URL, "http://"))
	l.env = append(l.env, env...)
	return l
}

// start runs haproxy -db (foreground) with extra arguments and waits until
// a process answers on the admin socket with a pid other than any of
// notPids (a reload's old process may answer until the new one has bound
// the socket). It returns the process and the pid that answered: the
// worker's with -W.
func (l *lb) start(t *testing.T, notPids []int, args ...string) (*proc, int) {
	t.Helper()
	p := &proc{cmd: exec.Command(l.bin, append([]string{"-db", "-f", l.cfg}, args...)...), done: make(chan struct{})}
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = l.env, p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		// SIGTERM: a master stops its workers.
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("haproxy %v output:\n%s", p.cmd.Args[3:], p.output())
		}
	})
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		pid, err := l.pid()
		if err == nil && !slices.Contains(notPids, pid) {
			return p, pid
		}
		select {
		case <-p.done:
			t.Fatalf("haproxy exited: %v\n%s", p.cmd.ProcessState, p.output())
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("haproxy did not answer on its admin socket within 30s (last: pid %d, %v)", pid, err)
		}
	}
}

// admin sends one command to the admin socket and returns the answer.
func (l *lb) admin(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", l.sock, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// pid is the pid `show info` reports: the process serving the socket.
func (l *lb) pid() (int, error) {
	info, err := l.admin("show info")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(line, "Pid: "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no Pid in show info: %q", info)
}

// stat is one field of `show stat` for proxy px, server sv (FRONTEND,
// BACKEND or a server's name).
func (l *lb) stat(px, sv, field string) (string, error) {
	out, err := l.admin("show stat")
	if err != nil {
		return "", err
	}
	rows, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# "))).ReadAll()
	if err != nil || len(rows) == 0 {
		return "", fmt.Errorf("show stat: %q: %v", out, err)
	}
	col := -1
	for i, name := range rows[0] {
		if name == field {
			col = i
		}
	}
	for _, r := range rows[1:] {
		if col >= 0 && len(r) > col && r[0] == px && r[1] == sv {
			return r[col], nil
		}
	}
	return "", fmt.Errorf("show stat has no %s of %s/%s:\n%s", field, px, sv, out)
}

// TestHAProxy runs deploy/haproxy/haproxy.cfg (the real haproxy) in front of
// two real replicas on PostgreSQL and NATS: /readyz through it, then the
// whole flow with host and guest both addressing only the load balancer,
// and replica A SIGKILLed in the middle of the flow. HAProxy's health
// check takes A out; the flow ends on B; the money audits clean.
func TestHAProxy(t *testing.T) {
	requireHAProxy(t)
	nats := natstest.Require(t)
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*flowBound+30*time.Second)
	defer cancel()
	rs := startReplicas(t, db, []string{"--bus", nats}, "A", "B")
	a, b := rs[0], rs[1]
	l := newLB(t, a, b)
	l.start(t, nil)
	url := l.url
	hc := client.NewHTTPClient() // HTTP/2 with prior knowledge, as every client
	ready := func() int {
		res, err := hc.Get(url + "/readyz")
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	for end := time.Now().Add(30 * time.Second); ready() != http.StatusOK; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("/readyz through haproxy never answered 200")
		}
	}

	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f := newFlow(st, []string{url}, []string{url})
	var killed atomic.Bool
	f.midFlow = func() {
		if err := a.kill(); err != nil {
			t.Error(err)
			return
		}
		killed.Store(true)
	}
	runFlow(t, ctx, f, "flow through haproxy (replica A killed before the first grant)")
	if !killed.Load() {
		t.Fatal("replica A was not killed mid-flow")
	}
	f.check(t, ctx)
	if err := harness.Audit(ctx, st); err != nil {
		t.Fatalf("audit: %v", err)
	}
	// Only B is left: still ready through the load balancer.
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz through haproxy with only B up: %d", code)
	}
}

// TestHAProxyConfigCheck: `haproxy -c` passes on the shipped file with no
// environment at all (every setting has a default), and fails when the
// TLS bind is asked for with a certificate that is not there (so the
// check does read the file's conditional TLS bind).
func TestHAProxyConfigCheck(t *testing.T) {
	bin := requireHAProxy(t)
	check := func(env ...string) (string, error) {
		cmd := exec.Command(bin, "-c", "-f", haproxyConfig(t))
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := check(); err != nil {
		t.Fatalf("haproxy -c with an empty environment: %v\n%s", err, out)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	out, err := check("SHARESPOT_LB_TLS_CERT=" + missing)
	if err == nil || !strings.Contains(out, missing) {
		t.Fatalf("haproxy -c with a missing certificate: %v (want a failure naming it)\n%s", err, out)
	}
}

// testCert writes a throwaway certificate for 127.0.0.1 (the bench's) and
// its key into one PEM file, haproxy's crt, and returns the file and a
// pool trusting the certificate.
func testCert(t *testing.T) (string, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, tc, err := loadgen.SelfSignedTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pemData []byte
	for _, f := range []string{certFile, keyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pemData = append(pemData, b...)
	}
	file := filepath.Join(dir, "lb.pem")
	if err := os.WriteFile(file, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	return file, tc.RootCAs
}

// http1Client speaks HTTP/1.1 only (as curl's JSON calls, a /healthz
// probe, a browser on the dashboard may), trusting roots for TLS, on a
// fresh connection per request.
func http1Client(roots *x509.CertPool) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}}, DisableKeepAlives: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP1(true)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// get GETs url and returns the response with its body read.
func get(t *testing.T, hc *http.Client, url string) (*http.Response, string) {
	t.Helper()
	res, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res, string(body)
}

// newDeviceAt is a new device's client of url, signed in.
func newDeviceAt(t *testing.T, ctx context.Context, url string, hc *http.Client) *client.Client {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(url, key, client.Options{DeviceName: "lb-test", HTTPClient: hc})
	if err := c.SignIn(ctx); err != nil {
		t.Fatalf("sign in at %s: %v", url, err)
	}
	return c
}

// TestHAProxyFrontEnd: the shipped front end, in front of two replicas on
// PostgreSQL, takes HTTP/1.1 and h2c on its cleartext port and both over
// TLS (ALPN h2 and http/1.1); keeps /metrics (also spelled
// percent-encoded) internal while the replicas serve it; logs requests
// without a dashboard sign-in token; and answers on its admin socket.
func TestHAProxyFrontEnd(t *testing.T) {
	requireHAProxy(t)
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	rs := startReplicas(t, db, nil, "A", "B")
	certFile, roots := testCert(t)
	tlsAddr := freeAddr(t)
	l := newLB(t, rs[0], rs[1], "SHARESPOT_LB_TLS_CERT="+certFile, "SHARESPOT_LB_TLS_LISTEN="+tlsAddr)
	p, _ := l.start(t, nil)
	tlsURL := "https://" + tlsAddr
	h1, h2 := http1Client(roots), client.NewHTTPClientTrusting(roots)

	for _, c := range []struct {
		name, url string
		hc        *http.Client
		proto     int
		alpn      string
	}{
		{"cleartext/HTTP1.1", l.url, h1, 1, ""},
		{"cleartext/h2c", l.url, h2, 2, ""},
		{"TLS/http1.1", tlsURL, h1, 1, "http/1.1"},
		{"TLS/h2", tlsURL, h2, 2, "h2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, body := get(t, c.hc, c.url+"/healthz")
			if res.StatusCode != http.StatusOK || !strings.HasPrefix(body, "ok\nversion: ") || res.ProtoMajor != c.proto {
				t.Fatalf("GET /healthz: %s %q, want %d.x 200 \"ok\\nversion: …\"", res.Status, body, c.proto)
			}
			if res.TLS != nil && res.TLS.NegotiatedProtocol != c.alpn {
				t.Fatalf("ALPN chose %q, want %q", res.TLS.NegotiatedProtocol, c.alpn)
			}
			// A Connect JSON unary call, as README's curl examples make.
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/sharespot.v1.PaymentService/PlatformKeys", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			res, err = c.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var keys struct{ Keys []struct{ KeyID string } }
			if err := json.NewDecoder(res.Body).Decode(&keys); err != nil || res.StatusCode != http.StatusOK || len(keys.Keys) == 0 || keys.Keys[0].KeyID == "" || res.ProtoMajor != c.proto {
				t.Fatalf("PlatformKeys in JSON: %s, HTTP/%d, %+v, %v", res.Status, res.ProtoMajor, keys, err)
			}
			if c.proto == 2 {
				// The project's client, as the CLI uses it.
				newDeviceAt(t, ctx, c.url, c.hc)
			}
		})
	}

	t.Run("metrics internal", func(t *testing.T) {
		for _, path := range []string{"/metrics", "/%6detrics"} {
			res, body := get(t, h1, rs[0].URL+path)
			if res.StatusCode != http.StatusOK || !strings.Contains(body, "sharespot_") {
				t.Fatalf("GET %s on replica A: %s (want the metrics)", path, res.Status)
			}
			for _, hc := range []*http.Client{h1, h2} {
				for _, url := range []string{l.url, tlsURL} {
					if res, body := get(t, hc, url+path); res.StatusCode != http.StatusNotFound || strings.Contains(body, "sharespot_") {
						t.Errorf("GET %s%s over HTTP/%d through haproxy: %s (want 404 from haproxy)", url, path, res.ProtoMajor, res.Status)
					}
				}
			}
		}
	})

	t.Run("access log", func(t *testing.T) {
		const token = "SIGNINTOKEN-not-for-logs"
		for _, path := range []string{"/dashboard/signin/" + token, "/dashboard/sign%69n/" + token + "?again=" + token} {
			get(t, h1, l.url+path)
		}
		// A line per request, as it ends (HAProxy writes it after the
		// answer).
		for end := time.Now().Add(10 * time.Second); strings.Count(p.output(), `"GET /dashboard/signin/- HTTP/1.1"`) < 2; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("no access log line for the two sign-in pages:\n%s", p.output())
			}
		}
		if out := p.output(); strings.Contains(out, token) {
			t.Fatalf("the access log has the sign-in token:\n%s", out)
		}
	})

	t.Run("admin socket", func(t *testing.T) {
		info, err := l.admin("show info")
		if err != nil || !strings.Contains(info, "Name: HAProxy") || !strings.Contains(info, fmt.Sprintf("Pid: %d\n", p.cmd.Process.Pid)) {
			t.Fatalf("show info: %v\n%s", err, info)
		}
		// Both pass their health check (/readyz): "UP", not "UP 1/2"
		// (failing) nor the state before the first check.
		for _, sv := range []string{"a", "b"} {
			for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				st, err := l.stat("replicas", sv, "status")
				if err == nil && st == "UP" {
					break
				}
				if time.Now().After(end) {
					t.Fatalf("show stat: replica %s is %q (%v), want UP", sv, st, err)
				}
			}
		}
		if n, err := l.stat("sharespot", "FRONTEND", "req_tot"); err != nil || n == "0" {
			t.Errorf("show stat: the front end's req_tot is %q (%v)", n, err)
		}
	})
}

// TestHAProxyReload reloads the load balancer while an inbox stream is
// open through it, both documented ways: a new process taking the
// listening sockets over the admin socket and stopping the old one (-x,
// -sf), and master-worker mode's USR2. New connections go to the new
// process at once; the old one keeps the stream until
// SHARESPOT_LB_HARD_STOP_AFTER (here 2 s), then exits; the device opens
// its stream again through the new process.
func TestHAProxyReload(t *testing.T) {
	requireHAProxy(t)
	db := pgtest.New(t)
	rs := startReplicas(t, db, nil, "A", "B")
	const hardStop = 2 * time.Second
	for _, c := range []struct {
		name  string
		args  []string
		start func(t *testing.T, l *lb, old *proc, oldPid int) (newPid int)
	}{
		{"-sf", nil, func(t *testing.T, l *lb, _ *proc, oldPid int) int {
			_, pid := l.start(t, []int{oldPid}, "-x", l.sock, "-sf", strconv.Itoa(oldPid))
			return pid
		}},
		{"master-worker USR2", []string{"-W"}, func(t *testing.T, l *lb, master *proc, oldPid int) int {
			// A master still setting up may miss a USR2 (seen on a busy
			// machine: no reload at all), so it is sent again every 2 s
			// until a new worker answers; a second reload is harmless.
			var sent time.Time
			for end := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if time.Since(sent) > 2*time.Second {
					if err := master.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
						t.Fatal(err)
					}
					sent = time.Now()
				}
				if pid, err := l.pid(); err == nil && pid != oldPid {
					return pid
				}
				if time.Now().After(end) {
					t.Fatal("no new worker answered within 30s of USR2")
				}
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			l := newLB(t, rs[0], rs[1], "SHARESPOT_LB_HARD_STOP_AFTER="+hardStop.String())
			p, oldPid := l.start(t, nil, c.args...)
			dev := newDeviceAt(t, ctx, l.url, client.NewHTTPClient())
			subscribe := func() (*connect.ServerStreamForClient[sharespotv1.SubscribeResponse], error) {
				s, err := dev.Inbox.Subscribe(ctx, connect.NewRequest(&sharespotv1.SubscribeRequest{}))
				if err != nil {
					return nil, err
				}
				if !s.Receive() { // the server answers a subscription at once
					return nil, fmt.Errorf("subscribe: the stream ended: %v", s.Err())
				}
				return s, nil
			}
			stream, err := subscribe()
			if err != nil {
				t.Fatal(err)
			}
			ended := make(chan time.Time, 1)
			go func() {
				for stream.Receive() {
				}
				ended <- time.Now()
			}()

			reloaded := time.Now()
			newPid := c.start(t, l, p, oldPid)
			// Once the old process has let its listeners go, a new
			// connection can only reach the new one: its front end counts it.
			p.waitFor(t, fmt.Sprintf("(%d) : Proxy sharespot stopped", oldPid))
			before, err := l.stat("sharespot", "FRONTEND", "req_tot")
			if err != nil {
				t.Fatal(err)
			}
			if res, _ := get(t, http1Client(nil), l.url+"/healthz"); res.StatusCode != http.StatusOK {
				t.Fatalf("GET /healthz after the reload: %s", res.Status)
			}
			after, err := l.stat("sharespot", "FRONTEND", "req_tot")
			if n0, _ := strconv.Atoi(before); err != nil || after != strconv.Itoa(n0+1) {
				t.Fatalf("the new process (pid %d) counted requests %s, then %s (%v): the probe went elsewhere", newPid, before, after, err)
			}

			// The old process holds the stream until the hard stop, then
			// goes.
			bound := hardStop + 15*time.Second
			select {
			case at := <-ended:
				if held := at.Sub(reloaded); held < hardStop {
					t.Fatalf("the stream ended %v after the reload, before the hard stop (%v)", held, hardStop)
				}
			case <-time.After(bound):
				t.Fatalf("the stream through the old process was still open %v after the reload", bound)
			}
			for end := time.Now().Add(bound); syscall.Kill(oldPid, 0) == nil; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("the old process (pid %d) was still running %v after the reload", oldPid, bound)
				}
			}
			stream, err = subscribe()
			if err != nil {
				t.Fatalf("the inbox stream through the new process: %v", err)
			}
			stream.Close()
		})
	}
}

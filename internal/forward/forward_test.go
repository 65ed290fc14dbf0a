package forward

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/seal"
)

// rig is an origin, a real userspace gateway with one admitted session,
// and a forwarder for that session.
type rig struct {
	origin string
	gw     *gwproxy.Proxy
	fwd    *Forwarder
	sid    string
	code   string
}

func newRig(t testing.TB, quota int64) *rig {
	t.Helper()
	oln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	osrv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/head" { // what reached the origin
			fmt.Fprintf(w, "%s %s body=%d proxy-connection=%q connection=%q", r.Method, r.RequestURI, len(body), r.Header.Get("Proxy-Connection"), r.Header.Get("Connection"))
			return
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/n/"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(make([]byte, n))
	})}
	go osrv.Serve(oln)
	t.Cleanup(func() { osrv.Close() })
	oap := netip.MustParseAddrPort(oln.Addr().String())
	gw, err := gwproxy.New(gwproxy.Config{Addr: "127.0.0.1:0", AllowDestination: func(ap netip.AddrPort) bool { return ap == oap }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); gw.Run(ctx) }()
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	const sid = "ses_forwardtest"
	if err := gw.Admit(ctx, gateway.Grant{SessionID: sid, Credential: code, Quota: quota}); err != nil {
		t.Fatal(err)
	}
	fwd, err := Listen("127.0.0.1:0", gw.Addr(), sid, seal.FormatCode(code), nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() { defer wg.Done(); fwd.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &rig{origin: "http://" + oln.Addr().String(), gw: gw, fwd: fwd, sid: sid, code: seal.FormatCode(code)}
}

// used waits (up to 5 s) for the gateway's count to reach at least n.
func (r *rig) used(t testing.TB, n int64) int64 {
	t.Helper()
	var u int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if u, _, _ = r.gw.Usage(r.sid); u >= n {
			break
		}
	}
	return u
}

func TestSOCKS5CountsWhatTheGatewayMeters(t *testing.T) {
	r := newRig(t, 1<<40)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "socks5", Host: r.fwd.Addr()}), DisableKeepAlives: true}}
	for _, n := range []int{1, 100_000, 3_000_000} {
		res, err := hc.Get(fmt.Sprintf("%s/n/%d", r.origin, n))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if got != int64(n) {
			t.Fatalf("fetched %d of %d bytes", got, n)
		}
	}
	if u := r.used(t, r.fwd.Bytes()); u != r.fwd.Bytes() || u < 3_100_001 {
		t.Fatalf("the forwarder counted %d bytes, the gateway %d", r.fwd.Bytes(), u)
	}
}

func TestHTTPConnect(t *testing.T) {
	r := newRig(t, 1<<40)
	c, err := net.Dial("tcp", r.fwd.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	host := strings.TrimPrefix(r.origin, "http://")
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nGET /n/5000 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host, host, host)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("CONNECT answered %v, %v", res, err)
	}
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := io.Copy(io.Discard, res.Body); n != 5000 {
		t.Fatalf("fetched %d bytes through CONNECT", n)
	}
	if u := r.used(t, r.fwd.Bytes()); u != r.fwd.Bytes() {
		t.Fatalf("the forwarder counted %d bytes, the gateway %d", r.fwd.Bytes(), u)
	}
}

func TestRefusals(t *testing.T) {
	r := newRig(t, 1<<40)
	// Only loopback listeners.
	if _, err := Listen("0.0.0.0:0", r.gw.Addr(), r.sid, "x", nil); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("a forwarder on every address: %v", err)
	}
	// A destination the gateway refuses is refused locally, with nothing counted.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "socks5", Host: r.fwd.Addr()})}}
	if _, err := hc.Get("http://127.0.0.1:1/"); err == nil {
		t.Fatal("reached a destination the gateway refuses")
	}
	// A GET to the forwarder as a web server is refused with the reason.
	res, err := http.Get("http://" + r.fwd.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "http_proxy") {
		t.Fatalf("a GET to the forwarder itself got %s %q", res.Status, msg)
	}
	// So is a plain-HTTP proxy request for a destination the gateway
	// refuses, and an https:// URI without CONNECT.
	res, err = hc2(r).Get("http://127.0.0.1:1/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("a proxy request the gateway refuses got %s", res.Status)
	}
	c, err := net.Dial("tcp", r.fwd.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET https://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
	if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("GET https://… through the proxy: %v, %v", res, err)
	}
	if r.fwd.Bytes() != 0 {
		t.Fatalf("counted %d bytes for refused connections", r.fwd.Bytes())
	}
}

// hc2 is an HTTP client using the forwarder as its http_proxy.
func hc2(r *rig) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: r.fwd.Addr()})}}
}

// TestPlainHTTPProxy: a plain-HTTP proxy request (absolute URI, what
// http_proxy users send) goes through the gateway like a CONNECT to
// host:80, the origin sees origin-form with the proxy's headers gone,
// bodies pass both ways, and the forwarder counts exactly what the
// gateway meters.
func TestPlainHTTPProxy(t *testing.T) {
	r := newRig(t, 1<<40)
	hc := hc2(r)
	for _, n := range []int{0, 1, 100_000, 3_000_000} {
		res, err := hc.Get(fmt.Sprintf("%s/n/%d", r.origin, n))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || got != int64(n) {
			t.Fatalf("GET /n/%d through the proxy: %s, %d bytes", n, res.Status, got)
		}
	}
	for name, body := range map[string]io.Reader{
		"sized":   strings.NewReader(strings.Repeat("x", 70_000)),
		"chunked": io.MultiReader(strings.NewReader(strings.Repeat("x", 70_000))), // no length: chunked
	} {
		t.Run(name, func(t *testing.T) {
			res, err := hc.Post(r.origin+"/head?q=1", "text/plain", body)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if want := `POST /head?q=1 body=70000 proxy-connection="" connection="close"`; string(b) != want {
				t.Fatalf("the origin saw %q, want %q", b, want)
			}
		})
	}
	if u := r.used(t, r.fwd.Bytes()); u != r.fwd.Bytes() || u < 3_240_000 {
		t.Fatalf("the forwarder counted %d bytes, the gateway %d", r.fwd.Bytes(), u)
	}
}

// TestPlainHTTPProxyCurl is TestPlainHTTPProxy's GET as curl -x sends it.
func TestPlainHTTPProxyCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	r := newRig(t, 1<<40)
	out, err := exec.Command(curl, "-sS", "-x", "http://"+r.fwd.Addr(), "-o", "/dev/null", "-w", "%{http_code} %{size_download}", r.origin+"/n/250000").CombinedOutput()
	if err != nil || string(out) != "200 250000" {
		t.Fatalf("curl -x: %q, %v", out, err)
	}
	out, err = exec.Command(curl, "-sS", "-x", "http://"+r.fwd.Addr(), r.origin+"/head").CombinedOutput()
	if want := `GET /head body=0 proxy-connection="" connection="close"`; err != nil || string(out) != want {
		t.Fatalf("curl -x: the origin saw %q (%v), want %q", out, err, want)
	}
	if u := r.used(t, r.fwd.Bytes()); u != r.fwd.Bytes() || u < 250_000 {
		t.Fatalf("the forwarder counted %d bytes, the gateway %d", r.fwd.Bytes(), u)
	}
}

package nft

// The namespace suite run against the userspace proxy gateway: the proxy
// runs as a child process inside the host namespace (a Go process cannot
// move all its threads into a namespace, and the proxy dials the origin
// from whatever thread runs the dial), controlled line by line over its
// stdin and stdout. The host does not forward: guests reach the internet
// only through the proxy.

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/gateway/wg"
	"github.com/sharespot/sharespot/internal/netns"
	"github.com/sharespot/sharespot/internal/seal"
)

// childEnv makes the test binary run as the proxy child (see TestMain).
const childEnv = "SHARESPOT_TEST_PROXY_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(proxyChild(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// proxyChild runs a proxy gateway (SS_KIND=wireguard: a WireGuard one) on
// $SS_LISTEN with a FileStore at $SS_STORE and serves commands: "admit ID
// CODEHEX QUOTA THRESHOLD", "extend ID BYTES", "revoke ID", "usage ID",
// and for WireGuard "peer ID" (the session's tunnel: "ok PUBHEX ENDPOINT
// ADDRESS GATEWAY"). It answers "ok ..." or "err ...", and prints "event
// KIND ID USED QUOTA" for every event. $SS_PERSIST_AHEAD sets how far
// ahead of use usage is saved (default 64 KiB).
func proxyChild(in io.Reader, out io.Writer) int {
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	st, err := gateway.OpenFileStore(os.Getenv("SS_STORE"))
	if err != nil {
		say("fatal %v", err)
		return 1
	}
	var networks []netip.Prefix
	if n := os.Getenv("SS_ALLOW_NETWORKS"); n != "" {
		networks = []netip.Prefix{netip.MustParsePrefix(n)}
	}
	ahead := int64(64 << 10)
	if v, err := strconv.ParseInt(os.Getenv("SS_PERSIST_AHEAD"), 10, 64); err == nil {
		ahead = v
	}
	var p gateway.Gateway
	if os.Getenv("SS_KIND") == wg.Kind {
		key, err := wg.NewKey()
		if err == nil {
			p, err = wg.New(wg.Config{Listen: os.Getenv("SS_LISTEN"), Key: key, Store: st, PersistAhead: ahead, AllowNetworks: networks})
		}
		if err != nil {
			say("fatal %v", err)
			return 1
		}
	} else {
		p, err = gwproxy.New(gwproxy.Config{Addr: os.Getenv("SS_LISTEN"), Store: st, PersistAhead: ahead, Grace: 500 * time.Millisecond, AllowNetworks: networks})
		if err != nil {
			say("fatal %v", err)
			return 1
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	go func() {
		for e := range p.Events() {
			say("event %d %s %d %d", int(e.Kind), e.SessionID, e.Used, e.Quota)
		}
	}()
	if w, ok := p.(*wg.Gateway); ok {
		for !w.Ready() {
			time.Sleep(time.Millisecond)
		}
	}
	say("ready %s", p.Addr())
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			say("err malformed command")
			continue
		}
		var err error
		reply := "ok"
		switch f[0] {
		case "admit":
			code, _ := hex.DecodeString(f[2])
			quota, _ := strconv.ParseInt(f[3], 10, 64)
			th, _ := strconv.ParseInt(f[4], 10, 64)
			err = p.Admit(ctx, gateway.Grant{SessionID: f[1], Credential: code, Quota: quota, Threshold: th})
		case "extend":
			n, _ := strconv.ParseInt(f[2], 10, 64)
			err = p.Extend(ctx, f[1], n)
		case "revoke":
			err = p.Revoke(ctx, f[1])
		case "usage":
			var used, quota int64
			used, quota, err = p.Usage(f[1])
			reply = fmt.Sprintf("ok %d %d", used, quota)
		case "retransmitted": // "retransmitted tcp"
			w, ok := p.(*wg.Gateway)
			if !ok {
				err = errors.New("not the WireGuard gateway")
				break
			}
			reply = fmt.Sprintf("ok %d", w.Retransmitted())
		case "peer":
			tn, ok := p.(gateway.Tunnel)
			if !ok {
				err = errors.New("not a tunnel gateway")
				break
			}
			var tp gateway.TunnelPeer
			tp, err = tn.TunnelPeer(f[1])
			reply = fmt.Sprintf("ok %x %s %s %s", tp.PublicKey, tp.Endpoint, tp.Address, tp.Gateway)
		default:
			err = errors.New("unknown command")
		}
		if err != nil {
			say("err %v", err)
		} else {
			say("%s", reply)
		}
	}
	cancel()
	if err := <-done; err != nil {
		say("fatal %v", err)
		return 1
	}
	return 0
}

// proxyProc is the parent's handle on a proxy child.
type proxyProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	in      io.WriteCloser
	replies chan string
	ev      *events
	addr    string
	exited  chan struct{}
}

func startProxyChild(t testing.TB, ns *netns.NS, store, listen string) *proxyProc {
	return startProxyChildEnv(t, ns, store, listen)
}

// startProxyChildEnv is startProxyChild with more environment (NAME=value).
func startProxyChildEnv(t testing.TB, ns *netns.NS, store, listen string, env ...string) *proxyProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Exec(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"=1", "SS_STORE="+store, "SS_LISTEN="+listen), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	evc := make(chan gateway.Event, 64)
	p := &proxyProc{t: t, cmd: cmd, in: in, replies: make(chan string, 16), ev: collect(evc), exited: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		defer close(evc)
		defer close(p.exited)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event "):
				var e gateway.Event
				var kind int
				fmt.Sscanf(line, "event %d %s %d %d", &kind, &e.SessionID, &e.Used, &e.Quota)
				e.Kind = gateway.EventKind(kind)
				evc <- e
			case strings.HasPrefix(line, "ready "):
				ready <- strings.TrimPrefix(line, "ready ")
			default:
				p.replies <- line
			}
		}
		cmd.Wait()
	}()
	select {
	case p.addr = <-ready:
	case <-p.exited:
		t.Fatalf("proxy child exited: %s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("proxy child not ready")
	}
	t.Cleanup(p.kill)
	return p
}

// call sends a command and returns the reply, failing t on "err".
func (p *proxyProc) call(cmd string) string {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		p.t.Fatalf("proxy child: %v", err)
	}
	select {
	case r := <-p.replies:
		if !strings.HasPrefix(r, "ok") {
			p.t.Fatalf("proxy child: %s: %s", cmd, r)
		}
		return r
	case <-time.After(30 * time.Second):
		p.t.Fatalf("proxy child: no reply to %s", cmd)
	}
	return ""
}

func (p *proxyProc) usage(id string) (used, quota int64) {
	p.t.Helper()
	fmt.Sscanf(p.call("usage "+id), "ok %d %d", &used, &quota)
	return used, quota
}

// retransmitted is the TCP segments the WireGuard gateway's netstack has
// sent again (wg.Gateway.Retransmitted).
func (p *proxyProc) retransmitted() int64 {
	p.t.Helper()
	var n int64
	fmt.Sscanf(p.call("retransmitted tcp"), "ok %d", &n)
	return n
}

// kill ends the child with SIGKILL: a crash, no final save.
func (p *proxyProc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// socksClient is an HTTP client in g's namespace going through the proxy.
func socksClient(g *netns.Guest, proxyAddr, id string, code []byte, timeout time.Duration) *http.Client {
	d, _ := proxy.SOCKS5("tcp", proxyAddr, &proxy.Auth{User: id, Password: seal.FormatCode(code)}, g.NS)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}}
}

// TestProxyNamespaceSuite: the proxy gateway between namespaces.
func TestProxyNamespaceSuite(t *testing.T) {
	f := newFixture(t, 3)
	// The host forwards nothing: only the proxy takes guests out.
	f.tp.Host.Sysctl(t, "ipv4/ip_forward", "0")
	f.tp.Host.Sysctl(t, "ipv6/conf/all/forwarding", "0")
	store := filepath.Join(t.TempDir(), "proxy.json")
	listen := net.JoinHostPort(f.tp.HostLAN4.String(), "1080")
	p := startProxyChild(t, f.tp.Host, store, listen)
	g := f.tp.Guests
	ctx := context.Background()
	code := func(id string) []byte {
		c := make([]byte, 32)
		copy(c, id)
		return c
	}
	admit := func(id string, quota, threshold int64) []byte {
		c := code(id)
		p.call(fmt.Sprintf("admit %s %s %d %d", id, hex.EncodeToString(c), quota, threshold))
		return c
	}

	t.Run("bypass_before_admission_dns_ipv6", func(t *testing.T) {
		before := f.origin.Received()
		if n, err := netns.Fetch(ctx, guestClient(g[2], 2*time.Second), f.base, 1*mB); err == nil || n > 0 {
			t.Fatalf("a direct fetch got %d bytes (%v)", n, err)
		}
		if n, err := netns.Fetch(ctx, socksClient(g[2], p.addr, "nobody", code("nobody"), 2*time.Second), f.base, 1*mB); err == nil || n > 0 {
			t.Fatalf("a fetch with unknown credentials got %d bytes (%v)", n, err)
		}
		dnsTunnel(t, g[2], net.JoinHostPort(f.tp.Net4.String(), "53"), 100*kB)
		g[2].AddIPv6(t, f.tp)
		if n, err := netns.Fetch(ctx, guestClient(g[2], 2*time.Second), f.base6, 1*mB); err == nil || n > 0 {
			t.Fatalf("a direct IPv6 fetch got %d bytes (%v)", n, err)
		}
		dnsTunnel(t, g[2], net.JoinHostPort(f.tp.Net6.String(), "53"), 100*kB)
		settle(f.origin)
		if leak := f.origin.Received() - before; leak > maxLeak {
			t.Fatalf("%d bytes reached the internet without the proxy, want ≤ %d", leak, maxLeak)
		}
	})

	t.Run("cut_at_quota_extend_resumes", func(t *testing.T) {
		const quota = 2 * mB
		c := admit("p1", quota, 500*kB)
		n, err := netns.Fetch(ctx, socksClient(g[0], p.addr, "p1", c, wait), f.base, 4*mB)
		if err == nil || n >= quota {
			t.Fatalf("fetched %d bytes of 4 MB with a 2 MB quota (%v)", n, err)
		}
		p.ev.wait(t, gateway.ThresholdCrossed, "p1", wait)
		p.ev.wait(t, gateway.Exhausted, "p1", wait)
		if used, _ := p.usage("p1"); used != quota {
			t.Fatalf("used %d, want exactly %d", used, quota)
		}
		p.call("extend p1 " + strconv.Itoa(3*mB))
		if n, err := netns.Fetch(ctx, socksClient(g[0], p.addr, "p1", c, wait), f.base, 2*mB); err != nil || n != 2*mB {
			t.Fatalf("after the extension fetched %d bytes (%v)", n, err)
		}
		if used, q := p.usage("p1"); used < quota+2*mB || q != 5*mB {
			t.Fatalf("after the extension used %d of %d", used, q)
		}
	})

	t.Run("shaped_topup_no_gap", func(t *testing.T) {
		// The guest's link shaped to 1, 10 and 50 Mbit/s (tbf on the
		// host's LAN): a download bigger than the volume, the top-up
		// granted 100 ms after the (early) prompt, as an auto-topping
		// guest's round trip takes. The same connection runs to its end
		// with the right byte count; the longest stall is recorded. (The
		// whole flow, the real binaries with connect's auto-top-up and a
		// hash check, is cmd/sharespot's TestNoGapShapedNamespaces.)
		for _, tc := range []struct {
			mbit          int
			quota, amount int64
		}{
			{1, 1 * mB, 2 * mB},
			{10, 5 * mB, 10 * mB},
			{50, 5 * mB, 20 * mB},
		} {
			t.Run(fmt.Sprintf("%dmbit", tc.mbit), func(t *testing.T) {
				if out, err := f.tp.Host.Exec("tc", "qdisc", "replace", "dev", f.tp.LAN, "root", "tbf", "rate", fmt.Sprintf("%dmbit", tc.mbit),
					"burst", "64kb", "latency", "400ms").CombinedOutput(); err != nil {
					t.Fatalf("tc: %v: %s", err, out)
				}
				defer f.tp.Host.Exec("tc", "qdisc", "del", "dev", f.tp.LAN, "root").Run()
				id := fmt.Sprintf("shaped%d", tc.mbit)
				c := admit(id, tc.quota, 500*kB)
				r := netns.StartFetch(ctx, socksClient(g[0], p.addr, id, c, 2*time.Minute), f.base, tc.amount)
				var stall time.Duration
				last, lastAt, granted := int64(0), time.Now(), tc.quota
				for done := false; !done; {
					select {
					case <-r.Done():
						done = true
					case <-time.After(5 * time.Millisecond):
					}
					if n := r.N(); n != last {
						last, lastAt = n, time.Now()
					} else if d := time.Since(lastAt); d > stall {
						stall = d
					}
					// The top-up: one per volume prompted, while the
					// download needs more.
					if granted < tc.amount+tc.amount/10 && p.ev.count(gateway.ThresholdCrossed, id) >= int(granted/tc.quota) {
						time.Sleep(100 * time.Millisecond)
						p.call(fmt.Sprintf("extend %s %d", id, tc.quota))
						granted += tc.quota
					}
				}
				if err := r.Wait(); err != nil || r.N() != tc.amount {
					t.Fatalf("at %d Mbit/s the download got %d of %d bytes: %v", tc.mbit, r.N(), tc.amount, err)
				}
				t.Logf("%d Mbit/s: %d bytes in one connection across %d top-ups; longest stall %v; exhausted %d times",
					tc.mbit, r.N(), granted/tc.quota-1, stall.Round(time.Millisecond), p.ev.count(gateway.Exhausted, id))
			})
		}
	})

	t.Run("extend_while_flowing_no_gap", func(t *testing.T) {
		// The extension lands long before the first quota runs out (at
		// 1 GB/s, 100 ms ahead), so any stop would be the extension's.
		c := admit("p2", 100*mB, 0)
		r := netns.StartFetch(ctx, socksClient(g[1], p.addr, "p2", c, wait), f.base, 150*mB)
		for r.N() < 200*kB {
			select {
			case <-r.Done():
				t.Fatalf("fetch ended early: %v", r.Wait())
			case <-time.After(5 * time.Millisecond):
			}
		}
		p.call("extend p2 " + strconv.Itoa(100*mB))
		if err := r.Wait(); err != nil {
			t.Fatalf("transfer across the extension: %v", err)
		}
		if n := p.ev.count(gateway.Exhausted, "p2"); n != 0 {
			t.Fatalf("exhausted %d times across the extension", n)
		}
	})

	t.Run("revoke_cuts_running_download", func(t *testing.T) {
		r := netns.StartFetch(ctx, socksClient(g[1], p.addr, "p2", code("p2"), wait), f.base, 90*mB)
		for r.N() < 1*mB {
			select {
			case <-r.Done():
				t.Fatalf("fetch ended early: %v", r.Wait())
			case <-time.After(5 * time.Millisecond):
			}
		}
		p.call("revoke p2")
		if err := r.Wait(); err == nil || r.N() >= 90*mB {
			t.Fatalf("the download survived the revocation: %d bytes, %v", r.N(), err)
		}
	})

	t.Run("host_services_unreachable", func(t *testing.T) {
		// A service of the host's on every address (as one on 0.0.0.0):
		// a paying guest reaches it through none of the host's addresses,
		// LAN or uplink, IPv4 or IPv6, nor through one the host gets
		// after the gateway started.
		ln, err := f.tp.Host.Listen("tcp", "[::]:8003")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var reached atomic.Int64
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				reached.Add(1)
				c.Close()
			}
		}()
		late := netip.MustParseAddr("198.18.0.99")
		f.tp.Host.IP(t, "addr", "add", late.String()+"/24", "dev", f.tp.Uplink)
		c := admit("p4", 10*mB, 0)
		for _, a := range []netip.Addr{f.tp.HostLAN4, f.tp.HostLAN6, f.tp.HostUp4, f.tp.HostUp6, late} {
			target := "http://" + net.JoinHostPort(a.String(), "8003")
			if n, err := netns.Fetch(ctx, socksClient(g[0], p.addr, "p4", c, wait), target, 1); err == nil || n > 0 {
				t.Errorf("fetched %d bytes from the host's own %s (%v)", n, target, err)
			}
		}
		if n := reached.Load(); n != 0 {
			t.Fatalf("the host's service saw %d connections", n)
		}
		// The guest is served otherwise.
		if n, err := netns.Fetch(ctx, socksClient(g[0], p.addr, "p4", c, wait), f.base, 1*mB); err != nil || n != 1*mB {
			t.Fatalf("then fetched %d bytes from the internet (%v)", n, err)
		}
	})

	t.Run("private_networks_refused", func(t *testing.T) {
		// A service on the host's LAN (another guest's address, 10.77/24,
		// as the host's home router or NAS would be): a paying guest does
		// not reach it through the gateway, unless the host shares that
		// network (Config.AllowNetworks, share --allow-lan).
		ln, err := g[1].Listen("tcp", net.JoinHostPort(g[1].Addr4.String(), "8004"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var reached atomic.Int64
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				reached.Add(1)
				// The request first: an answer written before it arrives
				// reaches the client as a response on an idle connection,
				// which its transport drops, failing the fetch.
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				http.ReadRequest(bufio.NewReader(c))
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
				c.Close()
			}
		}()
		target := "http://" + net.JoinHostPort(g[1].Addr4.String(), "8004")
		c := admit("p5", 10*mB, 0)
		if n, err := netns.Fetch(ctx, socksClient(g[0], p.addr, "p5", c, wait), target, 1); err == nil || n > 0 {
			t.Errorf("fetched %d bytes from a private address on the host's LAN (%v)", n, err)
		}
		if n := reached.Load(); n != 0 {
			t.Fatalf("the LAN service saw %d connections", n)
		}
		shared := startProxyChildEnv(t, f.tp.Host, filepath.Join(t.TempDir(), "shared.json"), net.JoinHostPort(f.tp.HostLAN4.String(), "1081"),
			"SS_ALLOW_NETWORKS=10.77.0.0/24")
		defer shared.kill()
		sc := make([]byte, 32)
		copy(sc, "s5")
		shared.call(fmt.Sprintf("admit s5 %s %d 0", hex.EncodeToString(sc), 10*mB))
		if n, err := netns.Fetch(ctx, socksClient(g[0], shared.addr, "s5", sc, wait), target, 2); err != nil || n != 2 {
			t.Fatalf("with the LAN shared: fetched %d bytes (%v)", n, err)
		}
	})

	t.Run("crash_restart_keeps_quota", func(t *testing.T) {
		const quota = 3 * mB
		c := admit("p3", quota, 0)
		n1, err := netns.Fetch(ctx, socksClient(g[2], p.addr, "p3", c, wait), f.base, 1*mB)
		if err != nil {
			t.Fatal(err)
		}
		p.kill() // SIGKILL: no final save
		p = startProxyChild(t, f.tp.Host, store, listen)
		after, q := p.usage("p3")
		if after < n1 || q != quota {
			t.Fatalf("after the crash used %d of %d; the guest had %d body bytes", after, q, n1)
		}
		n2, _ := netns.Fetch(ctx, socksClient(g[2], p.addr, "p3", c, wait), f.base, 5*mB)
		t.Logf("before the crash %d body bytes, after it %d, counted as used at restart %d", n1, n2, after)
		if n1+n2 > quota {
			t.Fatalf("in all %d bytes for a quota of %d", n1+n2, quota)
		}
	})
}

package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/netns"
)

// nogapRatesEnv lists the link rates (Mbit/s, comma-separated) that
// TestNoGapShapedNamespaces runs at; default 10,50. At 1 Mbit/s the
// download takes about three minutes: ask for it with "1,10,50" (and a
// -timeout above 10m).
const nogapRatesEnv = "SHARESPOT_NOGAP_MBITS"

// TestNoGapShapedNamespaces (issue 11, "no gap at the quota"): the real
// binary's server, share and connect in network namespaces, the guest's
// link shaped by tc. The server and the host run in the host namespace (the
// host forwards nothing: the guest reaches the internet only through the
// host's userspace gateway), the origin in the internet namespace, and
// `connect --buy 5MB --auto-topup 5MB --yes` in the guest's, where a client
// downloads 20,000,000 bytes in one HTTP request through connect's
// forwarder. At every rate the download completes on its one connection
// (no reset) with the SHA-256 of what the origin served, across the
// top-ups; the three longest stalls (times no byte arrived) are logged.
func TestNoGapShapedNamespaces(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireTools(t, "ip", "tc")
	var rates []int
	for _, f := range strings.Split(cmp.Or(os.Getenv(nogapRatesEnv), "10,50"), ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			t.Fatalf("%s=%q: want Mbit/s rates, comma-separated", nogapRatesEnv, os.Getenv(nogapRatesEnv))
		}
		rates = append(rates, r)
	}
	const pull = 20_000_000
	want := netns.ContentSHA256(pull)

	work := t.TempDir()
	bin, err := harness.BuildBinary(work)
	if err != nil {
		t.Fatal(err)
	}
	tp := netns.NewTopology(t, 1)
	tp.Host.Sysctl(t, "ipv4/ip_forward", "0")
	tp.Host.Sysctl(t, "ipv6/conf/all/forwarding", "0")
	ln, err := tp.Internet.Listen("tcp", "[::]:80")
	if err != nil {
		t.Fatal(err)
	}
	netns.StartOrigin(t, ln, tp.Internet)
	url := "http://" + net.JoinHostPort(tp.Net4.String(), "80") + "/r/" + strconv.Itoa(pull)
	g := tp.Guests[0]

	listen := net.JoinHostPort(tp.HostLAN4.String(), "8474")
	gatewayAddr := net.JoinHostPort(tp.HostLAN4.String(), "1080")
	env := append(harness.CleanEnv(), "SHARESPOT_SERVER=http://"+listen, "XDG_CONFIG_HOME="+work+"/config",
		"XDG_DATA_HOME="+work+"/data", "XDG_STATE_HOME="+work+"/state")
	run := func(ns *netns.NS, args ...string) string {
		t.Helper()
		cmd := ns.Exec(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sharespot %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	srv := startNS(t, tp.Host, env, filepath.Join(work, "server.log"), bin, "server", "--data", filepath.Join(work, "srv"),
		"--listen", listen, "--insecure-plaintext", "--log-level", "warn")
	waitFor(t, 30*time.Second, "the server answers /healthz", func() bool {
		res, err := tp.Host.HTTPClient().Get("http://" + listen + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, srv)
	host := startNS(t, tp.Host, env, filepath.Join(work, "host.log"), bin, "share", "--identity", filepath.Join(work, "host.key"),
		"--state", filepath.Join(work, "host"), "--ssid", "Cafe", "--bssid", "02:5e:00:00:00:01", "--price", "10", "--min", "1MB",
		"--share", "1GB", "--warn", "1MB", "--listen", gatewayAddr)
	waitFor(t, 30*time.Second, "the host's gateway listens", func() bool {
		c, err := tp.Host.DialContext(t.Context(), "tcp", gatewayAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, host)
	guestKey := filepath.Join(work, "guest.key")
	out := strings.Fields(run(g.NS, "device", "id", "--identity", guestKey)) // makes the key (and says so first)
	id := out[len(out)-1]
	run(g.NS, "wallet", "balance", "--identity", guestKey) // signs the guest in
	fund := exec.Command(bin, "wallet", "fund", "--data", filepath.Join(work, "srv"), "--device", id, "--amount", "100000", "--currency", "EUR")
	fund.Env = env
	if out, err := fund.CombinedOutput(); err != nil {
		t.Fatalf("wallet fund: %v\n%s", err, out)
	}
	scan := filepath.Join(work, "scan.json")
	if err := os.WriteFile(scan, []byte(`[{"ssid": "Cafe", "bssid": "02:5e:00:00:00:01", "signal_dbm": -48, "frequency_mhz": 2437, "security": "wpa2"}]`), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, mbit := range rates {
		t.Run(fmt.Sprintf("%dmbit", mbit), func(t *testing.T) {
			// tbf on the host's LAN bridge: what the host sends its
			// guests, the download and the server's answers alike.
			if out, err := tp.Host.Exec("tc", "qdisc", "replace", "dev", tp.LAN, "root", "tbf", "rate", fmt.Sprintf("%dmbit", mbit),
				"burst", "64kb", "latency", "400ms").CombinedOutput(); err != nil {
				t.Fatalf("tc: %v: %s", err, out)
			}
			defer tp.Host.Exec("tc", "qdisc", "del", "dev", tp.LAN, "root").Run()
			// Three times the transfer's time at the link rate, and two
			// minutes for the top-ups.
			bound := 3*time.Duration(pull*8/(mbit*1_000_000))*time.Second + 2*time.Minute

			out := filepath.Join(t.TempDir(), "connect.log")
			guest := startNS(t, g.NS, env, out, bin, "connect", "--identity", guestKey, "--scan-file", scan, "Cafe",
				"--buy", "5MB", "--auto-topup", "5MB", "--yes", "--forward", "127.0.0.1:0")
			socksRE := regexp.MustCompile(`socks5h://(127\.0\.0\.1:[0-9]+)`)
			var fwd string
			waitFor(t, 60*time.Second, "connect prints its forwarder's address", func() bool {
				if m := socksRE.FindSubmatch(readFile(out)); m != nil {
					fwd = string(m[1])
				}
				return fwd != ""
			}, guest)

			dl := download(t, g.NS, fwd, url, bound)
			if dl.err != nil || dl.n != pull || dl.sum != want {
				t.Fatalf("at %d Mbit/s: %d of %d bytes, SHA-256 %x (want %x): %v\nconnect:\n%s\nhost:\n%s",
					mbit, dl.n, pull, dl.sum, want, dl.err, readFile(out), readFile(filepath.Join(work, "host.log")))
			}
			guest.stop(t)
			log := readFile(out)
			ended := regexp.MustCompile(`session ended: used [^\n]*`).Find(log)
			if ended == nil {
				t.Fatalf("connect did not end its session:\n%s", log)
			}
			topups := len(regexp.MustCompile(`added 5 MB: [0-9]+ MB in all`).FindAll(log, -1))
			t.Logf("%d Mbit/s: %d bytes, the served content's SHA-256, in one connection in %v across %d top-ups; longest stalls %v; %s",
				mbit, dl.n, dl.took.Round(time.Millisecond), topups, dl.stalls, ended)
		})
	}
	host.stop(t)
	srv.stop(t)
}

// nsProc is a sharespot process running in a namespace, its output in a
// file.
type nsProc struct {
	name, out string
	cmd       *exec.Cmd
	done      chan struct{}
	err       error
}

// startNS starts bin args in ns with env, output to out; t's cleanup
// stops it if the test has not.
func startNS(t *testing.T, ns *netns.NS, env []string, out, bin string, args ...string) *nsProc {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Exec(bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start sharespot %s: %v", args[0], err)
	}
	p := &nsProc{name: args[0], out: out, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop interrupts the process (as Ctrl-C does; `ip netns exec` runs it in
// its own place) and waits up to 30 s for it to exit, then kills it.
func (p *nsProc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("sharespot %s did not exit within 30 s of SIGINT; killed\n%s", p.name, readFile(p.out))
	}
}

func readFile(name string) []byte {
	b, _ := os.ReadFile(name)
	return b
}

// waitFor polls cond, up to d, and fails t (with p's output) if it never
// holds or p exits first.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool, p *nsProc) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.done:
			t.Fatalf("waiting until %s: sharespot %s exited (%v):\n%s", what, p.name, p.err, readFile(p.out))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v; sharespot %s wrote:\n%s", what, d, p.name, readFile(p.out))
		}
	}
}

// fetched is what a download got.
type fetched struct {
	n    int64
	sum  [sha256.Size]byte
	took time.Duration
	// stalls are the three longest times no byte arrived (after the
	// first), longest first.
	stalls []stall
	err    error
}

// stall is a time no byte arrived, and how many had before it.
type stall struct {
	d     time.Duration
	after int64
}

func (s stall) String() string {
	return fmt.Sprintf("%v after %.2f MB", s.d.Round(time.Millisecond), float64(s.after)/1e6)
}

// download GETs url from inside ns through the SOCKS5 forwarder at fwd
// (no credentials), in one request on one connection, hashing the body
// and timing the gaps between reads; the whole transfer bounded by d.
func download(t *testing.T, ns *netns.NS, fwd, url string, d time.Duration) fetched {
	t.Helper()
	socks, err := proxy.SOCKS5("tcp", fwd, nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: socks.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}}
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	var r fetched
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := hc.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		r.err = fmt.Errorf("origin: %s", res.Status)
		return r
	}
	h := sha256.New()
	buf := make([]byte, 32<<10)
	var last time.Time // when the last bytes arrived
	for {
		k, err := res.Body.Read(buf)
		if k > 0 {
			now := time.Now()
			if gap := now.Sub(last); !last.IsZero() && (len(r.stalls) < 3 || gap > r.stalls[2].d) {
				r.stalls = append(r.stalls, stall{gap, r.n})
				slices.SortFunc(r.stalls, func(a, b stall) int { return cmp.Compare(b.d, a.d) })
				r.stalls = r.stalls[:min(len(r.stalls), 3)]
			}
			last = now
			h.Write(buf[:k])
			r.n += int64(k)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.err = err
			}
			break
		}
	}
	r.took = time.Since(start)
	r.sum = [sha256.Size]byte(h.Sum(nil))
	return r
}

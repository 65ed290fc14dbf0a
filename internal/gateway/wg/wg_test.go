package wg_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/wg"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/tunnel"
)

// rig is a WireGuard gateway on loopback with an origin server guests may
// reach (and nothing else on the host), and guests' tunnels in this
// process: both ends are the real wireguard-go and gVisor netstack, over
// real UDP.
type rig struct {
	gw     *wg.Gateway
	origin netip.AddrPort
	other  netip.AddrPort // on the host, not allowed
	store  gateway.Store
	stop   func()
}

func newRig(t *testing.T, store gateway.Store) *rig {
	t.Helper()
	r := &rig{store: store}
	r.origin = serve(t)
	r.other = serve(t)
	key, err := wg.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	r.start(t, key)
	return r
}

func (r *rig) start(t testing.TB, key [32]byte) {
	t.Helper()
	gw, err := wg.New(wg.Config{Listen: "127.0.0.1:0", Key: key, Store: r.store, DNS: []netip.AddrPort{},
		AllowDestination: func(ap netip.AddrPort) bool { return ap == r.origin }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	for !gw.Ready() {
		time.Sleep(time.Millisecond)
	}
	r.gw = gw
	r.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	}
	t.Cleanup(func() {
		if r.stop != nil {
			r.stop()
			r.stop = nil
		}
	})
}

// serve runs an origin on loopback: GET /n/N answers N bytes.
func serve(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 8<<20)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n, _ := strconv.Atoi(strings.TrimPrefix(req.URL.Path, "/n/"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for n > 0 {
			k, err := w.Write(body[:min(n, len(body))])
			if err != nil {
				return
			}
			n -= k
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// admit lets a session in and opens its guest's tunnel.
func (r *rig) admit(t testing.TB, g gateway.Grant) *tunnel.Tunnel {
	t.Helper()
	if len(g.Credential) == 0 {
		code, err := seal.NewAccessCode()
		if err != nil {
			t.Fatal(err)
		}
		g.Credential = code
	}
	if err := r.gw.Admit(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return r.open(t, g.SessionID, g.Credential)
}

func (r *rig) open(t testing.TB, sid string, code []byte) *tunnel.Tunnel {
	t.Helper()
	p, err := r.gw.TunnelPeer(sid)
	if err != nil {
		t.Fatal(err)
	}
	gw := &sharespotv1.Gateway{Kind: wg.Kind, Address: p.Endpoint, WireguardPublicKey: p.PublicKey[:],
		TunnelAddress: p.Address.String(), TunnelGateway: p.Gateway.String()}
	cfg, err := tunnel.ConfigOf(gw, code)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := tunnel.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	return tn
}

// fetch downloads n bytes from dst through tn within d and returns what
// arrived.
func fetch(tn *tunnel.Tunnel, dst netip.AddrPort, n int64, d time.Duration) (int64, error) {
	hc := &http.Client{Timeout: d, Transport: &http.Transport{DialContext: tn.DialContext, DisableKeepAlives: true}}
	res, err := hc.Get(fmt.Sprintf("http://%s/n/%d", dst, n))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	got, err := io.Copy(io.Discard, res.Body)
	if err == nil && got != n {
		err = fmt.Errorf("got %d of %d bytes", got, n)
	}
	return got, err
}

// usage waits (up to 5 s) for the gateway's count and the tunnel's to
// agree, and returns it: both count every IP packet's length but the
// control stream's.
func usage(t *testing.T, r *rig, sid string, tn *tunnel.Tunnel) int64 {
	t.Helper()
	var used int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		used, _, err = r.gw.Usage(sid)
		if err != nil {
			t.Fatal(err)
		}
		if used == tn.Bytes() {
			return used
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway counted %d, the guest's tunnel %d", used, tn.Bytes())
		}
	}
}

// TestGateway: a guest online through the tunnel with its access code as
// its key: the bytes arrive exact, both ends count the same; the volume
// is cut exactly at the quota (the transfer stalls, nothing past it
// passes), an extension resumes it in place, revocation cuts it and its
// keys open nothing more; destinations outside the policy, the gateway's
// other ports and other guests are refused.
func TestGateway(t *testing.T) {
	r := newRig(t, nil)
	const mb = 1_000_000
	tn := r.admit(t, gateway.Grant{SessionID: "ses_a", Quota: 3 * mb, Threshold: mb})
	if n, err := fetch(tn, r.origin, 1*mb, 10*time.Second); err != nil {
		t.Fatalf("fetch 1 MB: %d, %v", n, err)
	}
	used := usage(t, r, "ses_a", tn)
	if used < 1*mb || used > 1*mb+mb/10 {
		t.Fatalf("1 MB downloaded counts %d bytes (IP headers included, a few percent at most)", used)
	}

	// 4 MB more cannot pass a quota of 3 MB: the transfer stalls at it.
	n, err := fetch(tn, r.origin, 4*mb, 3*time.Second)
	if err == nil {
		t.Fatalf("downloaded %d bytes past the quota", n)
	}
	used, quota, _ := r.gw.Usage("ses_a")
	if used > quota || used < quota-2*tunnel.MTU {
		t.Fatalf("at the cut the gateway counts %d of %d", used, quota)
	}
	if ev := awaitEvent(t, r.gw, gateway.Exhausted); ev.SessionID != "ses_a" {
		t.Fatalf("exhausted event for %q", ev.SessionID)
	}
	// A top-up lets the same guest go on.
	if err := r.gw.Extend(context.Background(), "ses_a", 5*mb); err != nil {
		t.Fatal(err)
	}
	if n, err := fetch(tn, r.origin, 2*mb, 10*time.Second); err != nil {
		t.Fatalf("fetch after the top-up: %d, %v", n, err)
	}
	if used, quota, _ := r.gw.Usage("ses_a"); used > quota {
		t.Fatalf("used %d of %d", used, quota)
	}

	// Refused: the host's other service, the gateway's other ports,
	// another guest's address, a private network.
	other := r.admit(t, gateway.Grant{SessionID: "ses_b", Quota: 3 * mb})
	pb, _ := r.gw.TunnelPeer("ses_b")
	pa, _ := r.gw.TunnelPeer("ses_a")
	if pa.Address == pb.Address {
		t.Fatalf("two sessions share the address %s", pa.Address)
	}
	for _, dst := range []netip.AddrPort{r.other, netip.AddrPortFrom(pa.Gateway, 80), netip.AddrPortFrom(pa.Address, 80), netip.MustParseAddrPort("10.1.2.3:80")} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := other.DialContext(ctx, "tcp", dst.String())
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("a guest reached %s", dst)
		} else if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: no answer; want a reset at once", dst)
		}
	}

	// Revoked: the transfer is cut (nothing more reaches the guest; its
	// connection stalls, as with the kernel gateway), a new one does not
	// start.
	if err := r.gw.Extend(context.Background(), "ses_a", 10_000*mb); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := fetch(tn, r.origin, 4000*mb, 6*time.Second); done <- err }()
	time.Sleep(300 * time.Millisecond)
	if err := r.gw.Revoke(context.Background(), "ses_a"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	at := tn.Bytes()
	time.Sleep(2 * time.Second)
	if grew := tn.Bytes() - at; grew > 100_000 {
		t.Errorf("%d bytes passed the tunnel in the 2 s after revocation", grew)
	}
	if err := <-done; err == nil {
		t.Fatal("a transfer went on to its end after revocation")
	}
	if n, err := fetch(tn, r.origin, 1000, 2*time.Second); err == nil {
		t.Fatalf("a revoked guest fetched %d bytes", n)
	}
	if used, quota, err := r.gw.Usage("ses_a"); err != nil || used > quota {
		t.Fatalf("after revocation: %d of %d, %v", used, quota, err)
	}
}

// TestTopUpResumesAtOnce: a download stalled at the quota goes on at
// full speed after the top-up. The gateway's TCP sender sent into the
// cut (every packet dropped) and backed off; what follows the top-up is
// one wait for its next retransmission, then the rest in a burst. With
// gVisor's RACK loss detection it went on at two segments per 200 ms
// probe timeout, for 7-90 s (measured): that shows here as dozens of
// pauses between the packets the gateway sends.
func TestTopUpResumesAtOnce(t *testing.T) {
	r := newRig(t, nil)
	const mb = 1_000_000
	var (
		mu     sync.Mutex
		after  bool      // the top-up is made
		last   time.Time // the last packet the gateway sent since
		pauses []time.Duration
	)
	wg.Watch(r.gw, func(p []byte, fromPeer, passed bool) {
		if fromPeer || !passed {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !after {
			return
		}
		now := time.Now()
		if gap := now.Sub(last); !last.IsZero() && gap > 150*time.Millisecond {
			pauses = append(pauses, gap.Round(time.Millisecond))
		}
		last = now
	})
	tn := r.admit(t, gateway.Grant{SessionID: "ses_a", Quota: 3 * mb, Threshold: mb})
	done := make(chan error, 1)
	go func() { _, err := fetch(tn, r.origin, 4*mb, 5*time.Minute); done <- err }()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		used, quota, _ := r.gw.Usage("ses_a")
		if quota-used < int64(tunnel.MTU) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the download never reached the cut: %d of %d", used, quota)
		}
	}
	time.Sleep(time.Second) // the cut lasts; the sender backs off
	mu.Lock()
	after, last = true, time.Now()
	mu.Unlock()
	if err := r.gw.Extend(context.Background(), "ses_a", 5*mb); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the download after the top-up: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	// One pause for the backed-off retransmission; a busy machine may add
	// a few. A crawl pauses every 200 ms until what was in flight at the
	// cut is through.
	if len(pauses) > 8 {
		t.Fatalf("after the top-up the gateway paused %d times over 150 ms (%v): the download crawled", len(pauses), pauses)
	}
	t.Logf("pauses after the top-up: %v", pauses)
}

// awaitEvent returns the next event of kind k (others are skipped).
func awaitEvent(t *testing.T, gw *wg.Gateway, k gateway.EventKind) gateway.Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-gw.Events():
			if ev.Kind == k {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v event within 5 s", k)
		}
	}
}

// TestVerifiedTunnel: a verified guest is held at the credit window from
// its first byte until it acknowledges, in-band, over the control stream
// in the tunnel (which is not metered); its acknowledger counts what the
// gateway counts.
func TestVerifiedTunnel(t *testing.T) {
	r := newRig(t, nil)
	const mb = 1_000_000
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	tn := r.admit(t, gateway.Grant{SessionID: "ses_v", Credential: code, Quota: 50 * mb, Verified: true, GuestKey: pub})
	// No acknowledgment: held at the window, max(1 MB, 2 % of 50 MB).
	if n, err := fetch(tn, r.origin, 3*mb, 3*time.Second); err == nil {
		t.Fatalf("an unacknowledging verified guest downloaded %d bytes", n)
	}
	if used, _, _ := r.gw.Usage("ses_v"); used > 1*mb || used < 1*mb-2*tunnel.MTU {
		t.Fatalf("held at %d bytes, want the 1 MB window", used)
	}
	// Acknowledging in-band lets it go on.
	g := &guest.Guest{C: client.New("http://127.0.0.1:9", key, client.Options{})} // no server
	s := guest.SessionFor(g, "ses_v")
	a := &guest.Acker{Session: s, Gateway: tn.ControlAddr(), Code: code, Count: tn.Bytes, Dial: tn.DialContext}
	s.Acknowledging(a)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	start := time.Now()
	if n, err := fetch(tn, r.origin, 5*mb, 20*time.Second); err != nil {
		t.Fatalf("an acknowledging guest: %d, %v", n, err)
	}
	t.Logf("5 MB acknowledged in-band in %v", time.Since(start))
	cancel()
	wg.Wait()
	// The guest counts what it sent whether or not the gateway let it
	// in (its packets dropped while it was held count on its side only):
	// its count is never below the gateway's, so it never under-pays.
	used, _, _ := r.gw.Usage("ses_v")
	ev, err := r.gw.Evidence("ses_v")
	// (A packet or two may pass after the last acknowledgment: a FIN, a
	// keepalive.)
	if n := tn.Bytes(); err != nil || !ev.Verified || ev.Acked > n || n-ev.Acked > 64<<10 || ev.Acked < used-64<<10 {
		t.Fatalf("evidence %+v (%v); want about the guest's last count %d, at least about the gateway's %d", ev, err, n, used)
	}
}

// TestResumeAfterIdle: with a store, an idle session's bound is saved
// exact (nothing more may pass until a save ahead); a guest coming back
// after a pause must get that save, not wait forever at its bound — as
// after a cut at the quota and a top-up.
func TestResumeAfterIdle(t *testing.T) {
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "usage.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, st)
	const mb = 1_000_000
	tn := r.admit(t, gateway.Grant{SessionID: "ses_i", Quota: 20 * mb})
	if n, err := fetch(tn, r.origin, 1*mb, 10*time.Second); err != nil {
		t.Fatalf("fetch 1 MB: %d, %v", n, err)
	}
	// Idle past activeFor and a periodic save: the bound is saved exact.
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs, err := st.Load()
		if err != nil {
			t.Fatal(err)
		}
		used, _, _ := r.gw.Usage("ses_i")
		if len(recs) == 1 && recs[0].Used == used {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the idle session's bound was not saved exact: %+v, used %d", recs, used)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n, err := fetch(tn, r.origin, 2*mb, 10*time.Second); err != nil {
		t.Fatalf("after a pause: %d, %v", n, err)
	}
}

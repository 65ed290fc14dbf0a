package conformance

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/proxy"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/forward"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/nft"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/netns"
	"github.com/sharespot/sharespot/internal/seal"
)

// dataPath is one gateway as a guest meets it: how the guest gets online
// with its code (C1.8) and fetches from the origin through the host.
type dataPath struct {
	gw   gateway.Gateway
	kind string
	// online does what the guest does with the access response before its
	// first byte (present the code, for the kernel gateway).
	online func(ctx context.Context, gwAddr, sessionID string, code []byte) error
	// client is the guest's HTTP client through the gateway, that the
	// guest does not count: the credentials in the URL (userspace
	// gateway), or straight out (kernel gateway) with nothing counting.
	client func(gwAddr, sessionID string, code []byte, timeout time.Duration) *http.Client
	// counted starts the verified guest's own counting, as connect does:
	// the forwarder (userspace gateway), whose client it returns, or the
	// interface to the host (kernel gateway); count is what it counted.
	counted func(t *testing.T, gwAddr, sessionID string, code []byte) (client func(timeout time.Duration) *http.Client, count func() int64)
	// dial reaches the gateway from where the guest is (its control
	// stream).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// origin is the origin's URL as the guest reaches it.
	origin string
	// fetch fetches n bytes and returns how many arrived.
	fetch func(ctx context.Context, hc *http.Client, n int64) (int64, error)
}

// proxyPath is the userspace gateway on loopback: no root needed.
func proxyPath(t *testing.T) *dataPath {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	org := netns.StartOrigin(t, ln, nil)
	originAddr := netip.MustParseAddrPort(org.Addr)
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "gateway.json"))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gwproxy.New(gwproxy.Config{Store: st, AllowDestination: func(ap netip.AddrPort) bool { return ap == originAddr }})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + org.Addr
	socks := func(addr string, auth *proxy.Auth, timeout time.Duration) *http.Client {
		d, _ := proxy.SOCKS5("tcp", addr, auth, proxy.Direct)
		return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}}
	}
	return &dataPath{gw: gw, kind: "proxy", origin: base,
		online: func(context.Context, string, string, []byte) error { return nil },
		client: func(gwAddr, sid string, code []byte, timeout time.Duration) *http.Client {
			return socks(gwAddr, &proxy.Auth{User: sid, Password: seal.FormatCode(code)}, timeout)
		},
		counted: func(t *testing.T, gwAddr, sid string, code []byte) (func(time.Duration) *http.Client, func() int64) {
			fwd, err := forward.Listen("127.0.0.1:0", gwAddr, sid, seal.FormatCode(code), nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); fwd.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			return func(timeout time.Duration) *http.Client { return socks(fwd.Addr(), nil, timeout) }, fwd.Bytes
		},
		dial: (&net.Dialer{}).DialContext,
		fetch: func(ctx context.Context, hc *http.Client, n int64) (int64, error) {
			return netns.Fetch(ctx, hc, base, n)
		},
	}
}

// nftPath is the kernel gateway in network namespaces (root): the guest
// in its namespace, the gateway's table in the host's, the origin in the
// internet's. The control plane (server, agents) stays on loopback.
func nftPath(t *testing.T) *dataPath {
	netns.RequireRoot(t)
	tp := netns.NewTopology(t, 1)
	ln, err := tp.Internet.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	netns.StartOrigin(t, ln, tp.Internet)
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "gateway.json"))
	if err != nil {
		t.Fatal(err)
	}
	admit := net.JoinHostPort(tp.HostLAN4.String(), "8475")
	aln, err := tp.Host.Listen("tcp", admit)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := nft.New(nft.Config{LAN: tp.LAN, Uplink: tp.Uplink, Listener: aln, NetNS: tp.Host.FD(), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	guestC := tp.Guests[0]
	base := "http://" + net.JoinHostPort(tp.Net4.String(), "80")
	return &dataPath{gw: gw, kind: nft.Kind, origin: base,
		online: func(ctx context.Context, gwAddr, sid string, code []byte) error {
			_, err := nft.Present(ctx, guestC.HTTPClient(), gwAddr, sid, code)
			return err
		},
		client: func(_, _ string, _ []byte, timeout time.Duration) *http.Client {
			hc := guestC.HTTPClient()
			hc.Timeout = timeout
			return hc
		},
		counted: func(t *testing.T, gwAddr, _ string, _ []byte) (func(time.Duration) *http.Client, func() int64) {
			var ifc *guest.InterfaceCounter
			if err := guestC.Do(func() error {
				name, err := guest.InterfaceTo(netip.MustParseAddrPort(gwAddr).Addr())
				if err == nil {
					ifc, err = guest.NewInterfaceCounter(name)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			count := func() int64 {
				var n int64
				guestC.Do(func() error { n = ifc.Bytes(); return nil })
				return n
			}
			return func(timeout time.Duration) *http.Client {
				hc := guestC.HTTPClient()
				hc.Timeout = timeout
				return hc
			}, count
		},
		dial: guestC.DialContext,
		fetch: func(ctx context.Context, hc *http.Client, n int64) (int64, error) {
			return netns.Fetch(ctx, hc, base, n)
		},
	}
}

// verifiedOnline is a verified guest going online as connect does: it
// starts counting (the forwarder, or the interface to the host), presents
// its code (the kernel gateway) and acknowledges what it counts in-band to
// the gateway. It returns the guest's client, which its count covers, and
// stop, which stops the acknowledgments after sending the last (the
// guest's End then carries it).
func verifiedOnline(t *testing.T, ctx context.Context, p *dataPath, ses *guest.Session, gwAddr string, code []byte) (client func(time.Duration) *http.Client, stop func()) {
	t.Helper()
	client, count := p.counted(t, gwAddr, ses.ID, code)
	if err := p.online(ctx, gwAddr, ses.ID, code); err != nil {
		t.Fatal(err)
	}
	a := &guest.Acker{Session: ses, Gateway: gwAddr, Code: code, Count: count, Every: 50 * time.Millisecond, Dial: p.dial}
	ses.Acknowledging(a)
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return client, stop
}

// TestClaimRealBytes runs C1.8, C1.9 and C1.15 with real bytes through
// each gateway: a real server, a real host (agent, gateway, event loop as
// `sharespot share` runs them) and a real guest.
func TestClaimRealBytes(t *testing.T) { eachDataPath(t, claimRealBytes) }

// eachDataPath runs test through each gateway, as a subtest named for it.
func eachDataPath(t *testing.T, test func(*testing.T, func(*testing.T) *dataPath)) {
	for _, tc := range []struct {
		name string
		path func(*testing.T) *dataPath
	}{
		{"proxy", proxyPath},
		{"nftables", nftPath},
	} {
		t.Run(tc.name, func(t *testing.T) { test(t, tc.path) })
	}
}

func claimRealBytes(t *testing.T, mkPath func(*testing.T) *dataPath) {
	const (
		buy  = 3 * MB
		warn = 1 * MB
		more = 3 * MB
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := harness.Start(t, nil)
	hostC, guestC := env.Device(t, "host"), env.Device(t, "guest")
	inst := instruction()
	inst.Tariff.MinPurchaseBytes = 1 * MB
	inst.WarnAtBytes = warn
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: inst}))
	if err != nil {
		t.Fatal(err)
	}
	env.Fund(t, guestC, currency, 10_000)

	p := mkPath(t)
	gwDone := make(chan error, 1)
	go func() { gwDone <- p.gw.Run(ctx) }()
	hostRun := &host.Host{C: hostC, GW: p.gw, Kind: p.kind, Threshold: warn, ReportEvery: time.Hour}
	hostDone := make(chan error, 1)
	go func() { hostDone <- hostRun.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-hostDone; err != nil {
			t.Errorf("host: %v", err)
		}
		if err := <-gwDone; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	g := &guest.Guest{C: guestC}
	harness.ListenGuest(t, g)

	// Claim 3 and C1.7, as in TestClaim.
	ses, err := g.BeginHotspot(ctx, res.Msg.Hotspot.Id, buy)
	if err != nil {
		t.Fatal(err)
	}
	grant, err := ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if grant.Gateway.GetKind() != p.kind || grant.GrantedBytes != buy {
		t.Fatalf("access response: %v", grant)
	}
	code, err := ses.Code(grant)
	if err != nil {
		t.Fatal(err)
	}
	gwAddr := grant.Gateway.GetAddress()
	var hc func(time.Duration) *http.Client // the verified guest's, counted
	outer := t
	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}

	step("C1.8_online_with_code_and_volume", func(t *testing.T) {
		// A wrong code gets the guest nowhere.
		wrong := bytes.Clone(code)
		wrong[0] ^= 1
		if err := p.online(ctx, gwAddr, ses.ID, wrong); err == nil {
			if n, err := p.fetch(ctx, p.client(gwAddr, ses.ID, wrong, 2*time.Second), 10_000); err == nil || n > 0 {
				t.Fatalf("a wrong code fetched %d bytes", n)
			}
		}
		hc, _ = verifiedOnline(outer, ctx, p, ses, gwAddr, code) // for the whole session
		n, err := p.fetch(ctx, hc(30*time.Second), 1*MB)
		if err != nil || n != 1*MB {
			t.Fatalf("fetched %d bytes through the gateway: %v", n, err)
		}
		used, quota, err := settledUsage(p.gw, ses.ID, 1*MB)
		if err != nil || used < 1*MB || quota != buy {
			t.Fatalf("gateway usage %d of %d: %v", used, quota, err)
		}
	})
	step("C1.9_low_quota_prompt", func(t *testing.T) {
		// Fetching 1.5 MB more takes the remaining volume below 1 MB: the
		// gateway's threshold event becomes the host's prompt.
		if n, err := p.fetch(ctx, hc(30*time.Second), 1_500_000); err != nil {
			t.Fatalf("second fetch: %d bytes: %v", n, err)
		}
		_, pr := harness.NextIn[*sharespotv1.Envelope_LowQuotaPrompt](t, ses.Messages())
		lp := pr.LowQuotaPrompt
		// At the warning level, or earlier when at the guest's rate what is
		// left lasts less than a top-up takes (an early prompt, which the
		// server takes below half of what was granted).
		if early := int64(max(warn, buy/2)); lp.UsedBytes <= buy-early || lp.RemainingBytes >= early || lp.GrantedBytes != buy || lp.UsedBytes+lp.RemainingBytes != buy {
			t.Fatalf("prompt = %v", lp)
		}
	})
	step("C1.15_add_data_response", func(t *testing.T) {
		// Before the top-up the guest is cut: 2 MB do not fit in what is
		// left.
		cut, err := p.fetch(ctx, hc(5*time.Second), 2*MB)
		if err == nil || cut >= 2*MB {
			t.Fatalf("before the top-up 2 MB fetched (%d bytes, %v)", cut, err)
		}
		usedBefore, _, _ := p.gw.Usage(ses.ID)
		if usedBefore > buy {
			t.Fatalf("used %d past the %d bought", usedBefore, buy)
		}
		ag, err := ses.TopUp(ctx, more, guest.BuyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ag.GrantedBytes != more || ag.TotalGrantedBytes != buy+more {
			t.Fatalf("add-data response = %v", ag)
		}
		// The host raises the gateway's volume once its Grant went through,
		// which is also when the server relays the grant to the guest: the
		// two race, so wait (bounded) for the gateway.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, q, _ := p.gw.Usage(ses.ID); q == buy+more {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the top-up did not reach the gateway within 10 s")
			}
		}
		// Now 1 MB more passes, and usage went on from where it was. (The
		// cut request's rest, held at the quota, also moves on after the
		// top-up, as a cancelled download's bytes in flight do: the
		// gateway and the guest's forwarder both count it.)
		n, err := p.fetch(ctx, hc(30*time.Second), 1*MB)
		if err != nil || n != 1*MB {
			ev, _ := p.gw.Evidence(ses.ID)
			u, q, _ := p.gw.Usage(ses.ID)
			t.Fatalf("after the top-up fetched %d bytes: %v (gateway: used %d of %d, acked %d, held %v)", n, err, u, q, ev.Acked, ev.Held)
		}
		used, quota, _ := settledUsage(p.gw, ses.ID, usedBefore+1*MB)
		if quota != buy+more || used < usedBefore+1*MB || used > quota {
			t.Fatalf("after the top-up used %d of %d (before %d)", used, quota, usedBefore)
		}
	})
}

// settledUsage reads a session's usage, waiting (up to 10 s) for it to
// reach atLeast: the proxy commits a copy step just after the guest may
// have read its bytes.
func settledUsage(gw gateway.Gateway, id string, atLeast int64) (used, quota int64, err error) {
	for range 100 {
		if used, quota, err = gw.Usage(id); err != nil || used >= atLeast {
			return used, quota, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return used, quota, err
}

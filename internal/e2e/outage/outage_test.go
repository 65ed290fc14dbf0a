// Package outage is the suite of server-side outages a paying guest must
// not notice: the server process gone for a minute, the database refusing
// connections for half a minute. The server is the real binary (a process
// of its own, killed and started again); the host (agent, userspace
// gateway) and the guest (forwarder, in-band acknowledgments) run as
// `sharespot share` and `sharespot connect` run them. Paid data flows on,
// and the money comes out exact afterwards.
package outage

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	_ "github.com/jackc/pgx/v5/stdlib"
	"golang.org/x/net/proxy"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/forward"
	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/loadgen"
	"github.com/sharespot/sharespot/internal/netns"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

const (
	mb     = 1_000_000
	buy    = 50 * mb // 10 cents a MB: 500
	funded = 10_000
	// during is what must arrive while the server is away.
	during = 25 * mb
)

// rig is a spawned server, a host and a guest online in a verified session.
type rig struct {
	srv          *loadgen.Proc
	dir, db      string
	hostC        *client.Client
	guestC       *client.Client
	gw           *gwproxy.Proxy
	ses          *guest.Session
	fetch        func(ctx context.Context, n int64) (int64, error)
	stopGuest    func()
	paid, window int64
	origin       string
}

func newRig(t *testing.T, db string) *rig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &rig{dir: t.TempDir(), db: db, window: protocol.Window(buy)}
	bin, err := harness.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r.srv, err = loadgen.Spawn{Bin: bin, Dir: r.dir, DB: db, Env: harness.CleanEnv(),
		Flags: []string{"--log-level", "warn"}}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.srv.Stop(10 * time.Second) })
	url := r.srv.URL()
	r.hostC, r.guestC = device(ctx, t, url, "host"), device(ctx, t, url, "guest")
	if err := loadgen.DBFunder(r.dir, db)(ctx, []string{r.guestC.AccountID()}, "EUR", funded); err != nil {
		t.Fatal(err)
	}
	// The host: the userspace gateway, to an origin on loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	org := netns.StartOrigin(t, ln, nil)
	r.origin = "http://" + org.Addr
	oap := netip.MustParseAddrPort(org.Addr)
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "gateway.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.gw, err = gwproxy.New(gwproxy.Config{Addr: "127.0.0.1:0", Store: st, AllowDestination: func(ap netip.AddrPort) bool { return ap == oap }}); err != nil {
		t.Fatal(err)
	}
	res, err := r.hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("Cafe"), Bssid: "02:5e:00:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: mb, MinPurchaseBytes: mb, TopupPriceMinor: 10},
		ShareableBytes: 1000 * mb, WarnAtBytes: 1 * mb,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { r.gw.Run(ctx) })
	h := &host.Host{C: r.hostC, GW: r.gw, Threshold: 1 * mb, ReportEvery: time.Second}
	wg.Go(func() { h.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	// The guest buys, and goes online through its forwarder, which counts.
	g := &guest.Guest{C: r.guestC, Retry: true, Wait: 30 * time.Second}
	if _, err := g.Listen(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if r.ses, err = g.BeginHotspot(ctx, res.Msg.Hotspot.Id, buy); err != nil {
		t.Fatal(err)
	}
	r.ses.Observe = func(e guest.Event) {
		if e.Step == guest.StepPaid {
			r.paid += e.Quote.AmountMinor
		}
	}
	grant, err := r.ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	code, err := r.ses.Code(grant)
	if err != nil {
		t.Fatal(err)
	}
	gwAddr := grant.Gateway.GetAddress()
	fwd, err := forward.Listen("127.0.0.1:0", gwAddr, r.ses.ID, seal.FormatCode(code), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &guest.Acker{Session: r.ses, Gateway: gwAddr, Code: code, Count: fwd.Bytes}
	fwd.SetOnGrow(a.Poke)
	r.ses.Acknowledging(a)
	gctx, gcancel := context.WithCancel(ctx)
	var gwg sync.WaitGroup
	gwg.Go(func() { fwd.Run(gctx) })
	gwg.Go(func() { a.Run(gctx) })
	var once sync.Once
	r.stopGuest = func() { once.Do(func() { gcancel(); gwg.Wait() }) }
	t.Cleanup(r.stopGuest)
	d, _ := proxy.SOCKS5("tcp", fwd.Addr(), nil, proxy.Direct)
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}}
	r.fetch = func(ctx context.Context, n int64) (int64, error) { return netns.Fetch(ctx, hc, r.origin, n) }
	return r
}

func device(ctx context.Context, t *testing.T, url, name string) *client.Client {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(url, key, client.Options{DeviceName: name})
	if err := loadgen.SignIn(ctx, c); err != nil {
		t.Fatal(err)
	}
	return c
}

// downloadWhileAway fetches during bytes in 1 MB pieces and returns how
// long it took and the longest wait for a piece: paid data must not stall
// while the server is away.
func (r *rig) downloadWhileAway(t *testing.T) (took, longest time.Duration) {
	t.Helper()
	start := time.Now()
	for got := int64(0); got < during; got += mb {
		piece := time.Now()
		if n, err := r.fetch(t.Context(), mb); err != nil || n != mb {
			t.Fatalf("with the server away, piece %d: %d bytes: %v", got/mb, n, err)
		}
		longest = max(longest, time.Since(piece))
	}
	return time.Since(start), longest
}

// settle ends the session (the guest's last word first) and checks the
// money to the cent, and the ledger.
func (r *rig) settle(t *testing.T) {
	t.Helper()
	r.stopGuest()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := r.ses.End(ctx, "done")
	if err != nil {
		t.Fatal(err)
	}
	used, _, _ := r.gw.Usage(r.ses.ID)
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.HostCountBytes != used || s.GuestAckedBytes < used || s.UsedBytes != used {
		t.Fatalf("settled %v on %d bytes: host counted %d (gateway %d), guest acknowledged %d", s.State, s.UsedBytes, s.HostCountBytes, used, s.GuestAckedBytes)
	}
	if used < during+2*mb {
		t.Fatalf("the gateway carried %d bytes, less than what was fetched", used)
	}
	charged, err := protocol.MulDiv(r.paid, used, buy, false)
	if err != nil {
		t.Fatal(err)
	}
	fee := charged * 500 / 10000
	if s.PaidMinor != r.paid || s.SettledHostMinor != charged-fee || s.SettledFeeMinor != fee || s.RefundedMinor != r.paid-charged {
		t.Fatalf("settlement: paid %d, host %d, fee %d, refunded %d; want paid %d, charged %d (host %d, fee %d)",
			s.PaidMinor, s.SettledHostMinor, s.SettledFeeMinor, s.RefundedMinor, r.paid, charged, charged-fee, fee)
	}
	for _, c := range []struct {
		who  *client.Client
		want int64
	}{{r.guestC, funded - charged}, {r.hostC, charged - fee}} {
		res, err := c.who.Payments.Balance(ctx, connect.NewRequest(&sharespotv1.BalanceRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		var got int64
		for _, m := range res.Msg.Balances {
			got += m.AmountMinor
		}
		if got != c.want {
			t.Errorf("wallet holds %d, want %d", got, c.want)
		}
	}
	r.srv.Stop(10 * time.Second)
	target, err := server.DBTarget(r.dir, r.db)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, target, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := harness.Audit(ctx, st); err != nil {
		t.Fatal(err)
	}
}

// TestServerAwayAMinute: the server is killed mid-download and comes back
// a minute later; 25 MB arrive meanwhile, at full speed, the credit window
// moving with the guest's in-band acknowledgments.
func TestServerAwayAMinute(t *testing.T) {
	r := newRig(t, "")
	if n, err := r.fetch(t.Context(), 2*mb); err != nil || n != 2*mb {
		t.Fatalf("before the outage: %d bytes: %v", n, err)
	}
	if _, err := r.srv.Kill(); err != nil {
		t.Fatal(err)
	}
	away := time.Now()
	took, longest := r.downloadWhileAway(t)
	t.Logf("server away: %d MB in %v, the longest piece %v", during/mb, took.Round(time.Millisecond), longest.Round(time.Millisecond))
	if ev, err := r.gw.Evidence(r.ses.ID); err != nil || ev.Acked < during {
		t.Fatalf("the gateway holds %+v (%v): the acknowledgments did not come in-band", ev, err)
	}
	time.Sleep(time.Until(away.Add(time.Minute)))
	if err := r.srv.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.settle(t)
}

// TestDatabaseRefusesHalfAMinute: on PostgreSQL, the database refuses
// every connection (and drops the server's) for 30 s mid-download; 25 MB
// arrive meanwhile.
func TestDatabaseRefusesHalfAMinute(t *testing.T) {
	dbURL := pgtest.New(t)
	r := newRig(t, dbURL)
	if n, err := r.fetch(t.Context(), 2*mb); err != nil || n != 2*mb {
		t.Fatalf("before the outage: %d bytes: %v", n, err)
	}
	refuse := pgtest.NewRefuser(t, dbURL).Refuse
	refuse(true)
	away := time.Now()
	took, longest := r.downloadWhileAway(t)
	t.Logf("database away: %d MB in %v, the longest piece %v", during/mb, took.Round(time.Millisecond), longest.Round(time.Millisecond))
	time.Sleep(time.Until(away.Add(30 * time.Second)))
	refuse(false)
	r.settle(t)
}

package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/browsertest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/dashboard"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

const mb = harness.BenchMB

// rig is a running server with two hosts and a guest, and flows between
// them driven by the real client library.
type rig struct {
	env          *harness.Env
	hostA, hostB *client.Client
	hsA, hsB     *sharespotv1.Hotspot
	// g asks for verified sessions, gu (the same device) for unverified
	// ones: a flow with no acknowledgment is a guest that could not give
	// one, not one that withheld it.
	g, gu *guest.Guest
}

func newRig(t *testing.T) *rig {
	t.Helper()
	env := harness.Start(t, nil)
	r := &rig{env: env, hostA: env.Device(t, "host-a"), hostB: env.Device(t, "host-b")}
	gc := env.Device(t, "guest")
	env.Fund(t, gc, "EUR", 100_00)
	r.g = &guest.Guest{C: gc, Suites: []seal.Suite{seal.Preset}}
	r.gu = &guest.Guest{C: gc, Suites: []seal.Suite{seal.Preset}, Unverified: true}
	ctx := context.Background()
	for i, h := range []*client.Client{r.hostA, r.hostB} {
		res, err := h.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(i + 1)}))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			r.hsA = res.Msg.Hotspot
		} else {
			r.hsB = res.Msg.Hotspot
		}
	}
	return r
}

// flow runs a paid flow of 10 MB for €1.00 up to the grant, reports used
// bytes, has the guest acknowledge ack bytes (0: an unverified session),
// and, when end is set, ends it on the host's count. It returns the
// session's ID.
func (r *rig) flow(t *testing.T, hostC *client.Client, hs *sharespotv1.Hotspot, used, ack int64, end bool) string {
	t.Helper()
	ctx := context.Background()
	g := r.g
	if ack == 0 {
		g = r.gu
	}
	// The guest's steps are guest.Session's; the test plays the host
	// (quote, grant) by hand, as harness.PaidFlow does.
	ses, err := g.BeginHotspot(ctx, hs.Id, 10*mb)
	if err != nil {
		t.Fatal(err)
	}
	defer ses.Close()
	q, err := hostC.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * mb, AmountMinor: 100, Currency: "EUR"}))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ses.Pay(ctx, q.Msg.Quote, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ses.Confirm(ctx, q.Msg.Quote, rc); err != nil {
		t.Fatal(err)
	}
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := seal.Seal(seal.Preset, g.PublicKey(ses.ID, seal.Preset), seal.Binding{SessionID: ses.ID, HostID: hostC.DeviceID(), GuestID: g.C.DeviceID()}, code)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hostC.Sessions.Grant(ctx, connect.NewRequest(&sharespotv1.GrantRequest{SessionId: ses.ID, QuoteId: q.Msg.Quote.Id, GrantedBytes: 10 * mb,
		SealedCode: &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext},
		Gateway:    &sharespotv1.Gateway{Kind: "proxy", Address: "192.0.2.1:1080"}})); err != nil {
		t.Fatal(err)
	}
	if used > 0 {
		if _, err := hostC.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: ses.ID, UsedBytes: used})); err != nil {
			t.Fatal(err)
		}
	}
	if ack > 0 {
		if _, err := ses.Acknowledge(ctx, ack); err != nil {
			t.Fatal(err)
		}
	}
	if end {
		if _, err := hostC.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, UsedBytes: used, Reason: "done"})); err != nil {
			t.Fatal(err)
		}
	}
	return ses.ID
}

func sessionsOf(t *testing.T, c *client.Client) []*sharespotv1.Session {
	t.Helper()
	res, err := c.Sessions.ListSessions(context.Background(), connect.NewRequest(&sharespotv1.ListSessionsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var out []*sharespotv1.Session
	for _, s := range res.Msg.Sessions {
		if s.HostDeviceId == c.DeviceID() {
			out = append(out, s)
		}
	}
	return out
}

// page is what a dashboard page shows, read in the browser: every
// [data-k] value, and every table row keyed by its data-* attribute with
// its [data-f] cells.
type page struct {
	K    map[string]string            `json:"k"`
	Rows map[string]map[string]string `json:"rows"`
	HTML string                       `json:"html"`
	Role string                       `json:"role"`
}

const readPage = `(() => {
  const k = {};
  document.querySelectorAll("[data-k]").forEach(e => { k[e.dataset.k] = e.textContent.trim(); });
  const rows = {};
  for (const attr of ["session", "ended", "declined", "hotspot", "day", "top", "usage"]) {
    document.querySelectorAll("tr[data-" + attr + "]").forEach(tr => {
      const f = {};
      tr.querySelectorAll("[data-f]").forEach(c => { if (c.dataset.f !== "meter") f[c.dataset.f] = c.textContent.trim(); });
      rows[attr + ":" + tr.getAttribute("data-" + attr)] = f;
    });
  }
  const main = document.querySelector("main");
  return {k, rows, html: document.documentElement.outerHTML, role: main ? (main.dataset.role || "") : ""};
})()`

func read(t *testing.T, ctx context.Context) page {
	t.Helper()
	p, err := chromedp.Run(ctx, chromedp.Evaluate[page](readPage))
	if err != nil {
		t.Fatalf("read the page: %v", err)
	}
	return p
}

// signIn follows a sign-in link in the tab and presses the button.
func signIn(t *testing.T, ctx context.Context, link string) page {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(link), chromedp.WaitVisible(chromedp.ID("signin"))); err != nil {
		t.Fatalf("open %s: %v", link, err)
	}
	press(t, ctx, "#signin", "main[data-role]")
	return read(t, ctx)
}

// press clicks the button (a form's submit button) and waits until the
// page that follows has an element matching then.
func press(t *testing.T, ctx context.Context, button, then string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(`(document.querySelector(%q).click(), true)`, button))); err != nil {
		t.Fatalf("press %s: %v", button, err)
	}
	waitFor(t, ctx, fmt.Sprintf(`document.querySelector(%q) !== null && document.readyState === "complete"`, then))
}

// waitFor evaluates cond in the page until it is true (across page loads,
// which interrupt an evaluation), for at most 20 s.
func waitFor(t *testing.T, ctx context.Context, cond string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](cond))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			dbg, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + " | " + document.body.innerText.slice(0, 300)`))
			t.Fatalf("waited 20 s for %s (last error %v); page: %s", cond, err, dbg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func heading(t *testing.T, ctx context.Context) string {
	t.Helper()
	h, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("h1")))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// awaitHeading waits, within 20 s, for the page a form's button sent to
// show want as its heading: until the answer replaces it, the old page's
// heading is still there to read.
func awaitHeading(t *testing.T, ctx context.Context, what, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		h, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("h1")))
		if err == nil {
			got = h
		}
		if got == want {
			return
		}
	}
	t.Errorf("%s: page shows %q after 20 s, want %q", what, got, want)
}

func check(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s: page shows %q, want %q", what, got, want)
	}
}

func TestHostDashboard(t *testing.T) {
	r := newRig(t)
	b := browsertest.Start(t)
	ctx := context.Background()
	// Host A: two settled sessions (one the guest acknowledged), one
	// request the guest declined, one live. Host B: one settled, one
	// live; none of it may reach A's page.
	r.flow(t, r.hostA, r.hsA, 7*mb, 0, true)
	r.flow(t, r.hostA, r.hsA, 4*mb, 4*mb, true)
	declinedA := r.declined(t, r.hostA, r.hsA)
	liveA := r.flow(t, r.hostA, r.hsA, 3*mb, 0, false)
	r.flow(t, r.hostB, r.hsB, 5*mb, 0, true)
	liveB := r.flow(t, r.hostB, r.hsB, 2*mb, 0, false)

	link, exp, err := r.hostA.DashboardLink(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// (the expiry is stored in milliseconds)
	if d := exp.Sub(r.env.Clock.Now()); !strings.HasPrefix(link, r.env.URL+"/dashboard/signin/ssl_") || d > dashboard.LinkTTL || d <= dashboard.LinkTTL-time.Millisecond {
		t.Fatalf("link %s expiring %v, want one on %s expiring in %v", link, exp, r.env.URL, dashboard.LinkTTL)
	}
	tab := b.Tab(t)
	p := signIn(t, tab, link)
	if p.Role != "host" {
		t.Fatalf("signed in as %q, want host", p.Role)
	}

	// Every number against the API.
	mine := sessionsOf(t, r.hostA)
	var earned int64
	var live, ended, declined []*sharespotv1.Session
	for _, s := range mine {
		switch {
		case s.State != sharespotv1.SessionState_SESSION_STATE_ENDED:
			live = append(live, s)
		case s.GrantedBytes == 0:
			declined = append(declined, s)
		default:
			earned += s.SettledHostMinor
			ended = append(ended, s)
		}
	}
	if len(ended) != 2 || len(live) != 1 || live[0].Id != liveA || len(declined) != 1 || declined[0].Id != declinedA {
		t.Fatalf("host A's sessions: %d ended, %d live, %d declined; the flows made 2, 1 and 1", len(ended), len(live), len(declined))
	}
	check(t, "earned", p.K["earned-EUR"], money.Format(earned, "EUR"))
	check(t, "wallet", p.K["wallet-EUR"], money.Format(harness.Balance(t, r.hostA, "EUR"), "EUR"))
	check(t, "live sessions", p.K["live-count"], "1")
	check(t, "account", p.K["account"], r.hostA.AccountID())
	for _, s := range live {
		row := p.Rows["session:"+s.Id]
		check(t, "live used", row["used"], size.Format(s.UsedBytes))
		check(t, "live granted", row["granted"], size.Format(s.GrantedBytes))
		check(t, "live paid", row["paid"], money.Format(s.PaidMinor, s.Currency))
		check(t, "live state", row["state"], "ACTIVE")
	}
	for _, s := range ended {
		row := p.Rows["ended:"+s.Id]
		check(t, "history used", row["used"], size.Format(s.UsedBytes)+" of "+size.Format(s.GrantedBytes))
		check(t, "history earned", row["host"], money.Format(s.SettledHostMinor, "EUR"))
		check(t, "history fee", row["fee"], money.Format(s.SettledFeeMinor, "EUR"))
		check(t, "history refunded", row["refunded"], money.Format(s.RefundedMinor, "EUR"))
		want := "not verified"
		if s.Verified {
			want = size.Format(s.GuestAckedBytes)
		}
		check(t, "history acknowledged", row["acked"], want)
	}
	// A declined request is apart from the history: no "0 B of 0 B …
	// not verified" row, a row of its own that says why.
	for _, s := range declined {
		if _, ok := p.Rows["ended:"+s.Id]; ok {
			t.Errorf("declined request %s is in the history of settled sessions", s.Id)
		}
		check(t, "declined reason", p.Rows["declined:"+s.Id]["reason"], s.EndReason)
	}
	day := r.env.Clock.Now().UTC().Format("2006-01-02") + "-EUR"
	var dayUsed, dayFee int64
	for _, s := range ended {
		dayUsed += s.UsedBytes
		dayFee += s.SettledFeeMinor
	}
	drow := p.Rows["day:"+day]
	check(t, "day settled", drow["settled"], "2")
	check(t, "day declined", drow["declined"], "1")
	check(t, "day used", drow["used"], size.Format(dayUsed))
	check(t, "day earned", drow["host"], money.Format(earned, "EUR"))
	check(t, "day fee", drow["fee"], money.Format(dayFee, "EUR"))
	hs, err := r.hostA.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(hs.Msg.Hotspots) != 1 {
		t.Fatalf("host A has %d hotspots", len(hs.Msg.Hotspots))
	}
	for _, h := range hs.Msg.Hotspots {
		row := p.Rows["hotspot:"+h.Id]
		check(t, "hotspot ssid", row["ssid"], string(h.Instruction.AccessPoint.Ssid))
		check(t, "hotspot price", row["price"], money.Format(h.Instruction.Tariff.PriceMinor, "EUR")+" / "+size.Format(h.Instruction.Tariff.UnitBytes))
		check(t, "hotspot shared", row["shareable"], size.Format(h.Instruction.ShareableBytes))
		check(t, "hotspot sold or used", row["committed"], size.Format(h.Instruction.ShareableBytes-h.AvailableBytes))
		// The record beside the price is the one guests see in discovery,
		// and agrees with the settled sessions the API lists.
		ap := h.Instruction.AccessPoint
		disc, err := r.hostA.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: []*sharespotv1.Candidate{{Bssid: ap.Bssid, Ssid: ap.Ssid}}}))
		if err != nil || len(disc.Msg.Available) != 1 {
			t.Fatalf("discover host A's hotspot: %v", err)
		}
		check(t, "hotspot record", row["record"], protocol.RecordText(disc.Msg.Available[0].HostRecord))
		rec := &sharespotv1.HostRecord{}
		for _, s := range ended {
			if s.UsageMode == sharespotv1.UsageMode_USAGE_MODE_VERIFIED && s.GrantedBytes > 0 {
				rec.VerifiedSessions++
				if s.HostCountBytes > s.GuestAckedBytes+s.CreditWindowBytes {
					rec.OverCountedSessions++
				}
			}
		}
		check(t, "hotspot record from the sessions", row["record"], protocol.RecordText(rec))
	}
	// The chart's bar for today says what the table says.
	check(t, "chart today", barTitle(t, tab, "#chart-day-EUR"), r.env.Clock.Now().UTC().Format("01-02")+": "+money.Format(earned, "EUR"))
	if n := len(p.Rows); n != 1+1+2+1+1 { // hotspot, live, 2 ended, 1 declined, 1 day
		t.Errorf("the page has %d rows, want 6: %v", n, p.Rows)
	}

	// Another host's data is never shown, on the page or in the live feed.
	bSessions := sessionsOf(t, r.hostB)
	live2 := fetchLive(t, tab)
	for _, secret := range append([]string{r.hostB.DeviceID(), r.hostB.AccountID(), r.hsB.Id, "bench-2"}, ids(bSessions)...) {
		if strings.Contains(p.HTML, secret) || strings.Contains(live2, secret) {
			t.Errorf("host A's dashboard shows host B's %s", secret)
		}
	}
	if !strings.Contains(live2, liveA) || strings.Contains(live2, liveB) {
		t.Errorf("live feed %s: want host A's live session only", live2)
	}

	// With one usage report the rate cannot be told yet.
	check(t, "rate after one report", p.Rows["session:"+liveA]["rate"], "–")

	// Live numbers: more usage reaches the open page without a reload,
	// with the rate between the two reports and the chart of both.
	waitFor(t, tab, `document.getElementById("livestate").textContent === "live"`) // the first poll is in
	r.env.Clock.Advance(5 * time.Second)
	if _, err := r.hostA.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: liveA, UsedBytes: 6 * mb})); err != nil {
		t.Fatal(err)
	}
	want := size.Format(6 * mb)
	waitFor(t, tab, fmt.Sprintf(`document.querySelector('tr[data-session=%q] [data-f=used]').textContent === %q`, liveA, want))
	rate := rateText(3*mb, 5*time.Second)
	waitFor(t, tab, fmt.Sprintf(`document.querySelector('tr[data-session=%q] [data-f=rate]').textContent === %q`, liveA, rate))
	var feed dashboard.Live
	if err := json.Unmarshal([]byte(fetchLive(t, tab)), &feed); err != nil || len(feed.Sessions) != 1 {
		t.Fatalf("live feed: %v, %d sessions", err, len(feed.Sessions))
	}
	if n := usagePoints(t, tab, liveA); n < 2 || n != len(feed.Sessions[0].Samples) {
		t.Errorf("usage chart draws %d points; the live feed has %d samples", n, len(feed.Sessions[0].Samples))
	}
	if got := feed.Sessions[0].Samples; got[len(got)-1][1] != 6*mb {
		t.Errorf("last usage sample %v, want 6 MB", got[len(got)-1])
	}

	browsertest.Screenshot(t, tab, "dashboard-host-desktop", 1280, 900, false)

	// At 390 px every column of every table is in view, labelled, and the
	// page says what it said wider.
	if bad := asPhone(t, tab); len(bad) > 0 {
		t.Errorf("host's dashboard at %d px:\n%s", phoneWidth, strings.Join(bad, "\n"))
	}
	pp := read(t, tab)
	if d := cmp.Diff(p.Rows, pp.Rows, ignoreLive(liveA)); d != "" {
		t.Errorf("rows at %d px differ (-wide +phone):\n%s", phoneWidth, d)
	}
	browsertest.Screenshot(t, tab, "dashboard-host-phone", phoneWidth, 844, true)
	asDesktop(t, tab)

	// Times are shown in the viewer's time zone (India: UTC+5:30, no
	// daylight saving), from the instant the page gives.
	inZone(t, tab, "Asia/Kolkata")
	for _, s := range append(ended, declined...) {
		attr := fmt.Sprintf(`data-ended=%q`, s.Id)
		if s.GrantedBytes == 0 {
			attr = fmt.Sprintf(`data-declined=%q`, s.Id)
		}
		text, ms := shownTime(t, tab, attr)
		if ms != s.UpdatedUnixMs {
			t.Errorf("session %s ended at %d by the API, the page says %d", s.Id, s.UpdatedUnixMs, ms)
		}
		check(t, "time in Asia/Kolkata", text, wantTime(s.UpdatedUnixMs, 5*time.Hour+30*time.Minute, "GMT+5:30"))
	}
	inZone(t, tab, "UTC")
	text, _ := shownTime(t, tab, fmt.Sprintf(`data-ended=%q`, ended[0].Id))
	check(t, "time in UTC", text, wantTime(ended[0].UpdatedUnixMs, 0, "UTC"))

	// The link was used: another browser cannot use it again.
	other := b.Incognito(t)
	if err := chromedp.Do(other, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	check(t, "used link", heading(t, other), "Link not valid")
	// Nor can it see the dashboard without signing in.
	if err := chromedp.Do(other, chromedp.Navigate(r.env.URL+"/dashboard/")); err != nil {
		t.Fatal(err)
	}
	check(t, "no cookie", heading(t, other), "Sign in")

	// Host B signs in and sees its own, never A's.
	linkB, _, err := r.hostB.DashboardLink(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pb := signIn(t, other, linkB)
	if _, ok := pb.Rows["session:"+liveB]; !ok {
		t.Errorf("host B's page lacks its live session %s", liveB)
	}
	for _, secret := range append([]string{r.hostA.DeviceID(), r.hostA.AccountID(), r.hsA.Id, "bench-1"}, ids(mine)...) {
		if strings.Contains(pb.HTML, secret) {
			t.Errorf("host B's dashboard shows host A's %s", secret)
		}
	}

	// Sign-out needs the page's CSRF token: a form from elsewhere (no
	// token) is refused, the page's own button works.
	forged, err := chromedp.Run(tab, chromedp.Evaluate[int](`fetch("/dashboard/signout", {method: "POST", body: new URLSearchParams({csrf: "x"})}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if forged != 403 {
		t.Errorf("sign-out without the CSRF token: status %d, want 403", forged)
	}
	if err := chromedp.Do(tab, chromedp.Navigate(r.env.URL+"/dashboard/"), chromedp.Click(chromedp.CSS("header form button"))); err != nil {
		t.Fatal(err)
	}
	awaitHeading(t, tab, "after sign-out", "Signed out")
	if err := chromedp.Do(tab, chromedp.Navigate(r.env.URL+"/dashboard/")); err != nil {
		t.Fatal(err)
	}
	check(t, "signed out", heading(t, tab), "Sign in")
}

// fetchLive is the live feed as the signed-in tab gets it.
func fetchLive(t *testing.T, ctx context.Context) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`fetch("/dashboard/live").then(r => r.text())`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ignoreLive leaves out the live session's row, whose numbers move
// between two reads.
func ignoreLive(id string) cmp.Option {
	return cmpopts.IgnoreMapEntries(func(k string, _ map[string]string) bool { return k == "session:"+id })
}

// barTitle is the title of a day chart's last bar (today's).
func barTitle(t *testing.T, ctx context.Context, chart string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(() => { const r = document.querySelectorAll(%q); return r[r.length-1].querySelector("title").textContent; })()`, chart+" rect")))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ids(ss []*sharespotv1.Session) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Id)
	}
	return out
}

// TestLinkExpires: a link is refused after LinkTTL, on its page and at its
// sign-in, also after a server restart (the link is in the database).
func TestLinkExpires(t *testing.T) {
	dir := t.TempDir()
	env := harness.StartIn(t, dir, nil)
	b := browsertest.Start(t)
	hostC := env.Device(t, "host")
	link, _, err := hostC.DashboardLink(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	late, _, err := hostC.DashboardLink(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A restart keeps an unused link.
	env.Stop()
	env = harness.StartIn(t, dir, nil)
	link = strings.Replace(link, link[:strings.Index(link, "/dashboard/")], env.URL, 1)
	late = strings.Replace(late, late[:strings.Index(late, "/dashboard/")], env.URL, 1)
	tab := b.Tab(t)
	// The page was shown in time; the button is pressed after expiry.
	if err := chromedp.Do(tab, chromedp.Navigate(late), chromedp.WaitVisible(chromedp.ID("signin"))); err != nil {
		t.Fatal(err)
	}
	env.Clock.Advance(dashboard.LinkTTL + time.Second)
	// Wait for the answer to the sign-in to replace the page (the old
	// page's heading is visible until it does), within a bound.
	if err := chromedp.Do(tab, chromedp.Click(chromedp.ID("signin"))); err != nil {
		t.Fatal(err)
	}
	awaitHeading(t, tab, "expired at sign-in", "Link not valid")
	if err := chromedp.Do(tab, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	check(t, "expired link", heading(t, tab), "Link not valid")
	if err := chromedp.Do(tab, chromedp.Navigate(env.URL+"/dashboard/")); err != nil {
		t.Fatal(err)
	}
	check(t, "after expired links", heading(t, tab), "Sign in")
}

// TestOperatorDashboard: the operator's view, every number against the
// database and the API.
func TestOperatorDashboard(t *testing.T) {
	r := newRig(t)
	b := browsertest.Start(t)
	ctx := context.Background()
	r.flow(t, r.hostA, r.hsA, 7*mb, 0, true)
	r.flow(t, r.hostA, r.hsA, 4*mb, 4*mb, true)
	// Host B counts 9 MB where its guest acknowledged 2 MB: over the window.
	r.flow(t, r.hostB, r.hsB, 9*mb, 2*mb, true)
	liveA := r.flow(t, r.hostA, r.hsA, 3*mb, 0, false)
	// A request the guest declined: ended, but neither settled nor
	// unverified.
	declinedB := r.declined(t, r.hostB, r.hsB)

	key, err := dashboard.LoadOrCreateKey(dashboard.KeyPath(r.env.Dir))
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := dashboard.OperatorLink(ctx, r.env.Srv.Store(), key, r.env.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A wrong key is refused.
	if _, _, err := dashboard.OperatorLink(ctx, r.env.Srv.Store(), make([]byte, dashboard.KeySize), r.env.Clock.Now()); err == nil {
		t.Error("an operator link was made with a key that is not the server's")
	}
	tab := b.Tab(t)
	p := signIn(t, tab, r.env.URL+dashboard.SignInPath(token))
	if p.Role != "operator" {
		t.Fatalf("signed in as %q, want operator", p.Role)
	}

	var rep session.AuditReport
	var fee int64
	states := map[string]int64{}
	err = r.env.Srv.Store().Read(ctx, func(tx *store.Tx) error {
		var err error
		if rep, err = session.Audit(tx); err != nil {
			return err
		}
		if fee, err = ledger.FeeTotal(tx, "EUR"); err != nil {
			return err
		}
		rows, err := tx.Query(`SELECT state FROM sessions`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var st int32
			if err := rows.Scan(&st); err != nil {
				return err
			}
			states[strings.TrimPrefix(sharespotv1.SessionState(st).String(), "SESSION_STATE_")]++
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("the flows left the ledger inconsistent: %+v", rep)
	}
	check(t, "open", p.K["open"], "1")
	check(t, "settled", p.K["settled"], "3")
	check(t, "declined", p.K["declined"], "1")
	check(t, "audit", p.K["audit"], "consistent")
	check(t, "fees", p.K["fee-EUR"], money.Format(fee, "EUR"))
	check(t, "ledger sum", p.K["sum-EUR"], money.Format(0, "EUR"))
	check(t, "negative", p.K["negative"], "0")
	check(t, "drift", p.K["drift"], "0")
	check(t, "held", p.K["held"], "0")
	if len(states) != 2 || states["ENDED"] != 4 || states["ACTIVE"] != 1 {
		t.Fatalf("states in the database: %v", states)
	}
	for st, n := range states {
		check(t, "state "+st, p.K["state-"+st], fmt.Sprint(n))
	}

	// Money, top hosts and reconciliation recomputed from each host's
	// sessions as the API gives them.
	all := append(sessionsOf(t, r.hostA), sessionsOf(t, r.hostB)...)
	var started, settled, declined, used, hostC, fees, refunded int64
	type hostSum struct{ n, used, host, fee int64 }
	per := map[string]*hostSum{}
	var verified, unverified, over int
	var hostBytes, acked int64
	for _, s := range all {
		started++
		if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED {
			continue
		}
		if s.GrantedBytes == 0 {
			declined++
			check(t, "declined request's reason", p.Rows["declined:"+s.Id]["reason"], s.EndReason)
			continue
		}
		settled++
		used += s.UsedBytes
		hostC += s.SettledHostMinor
		fees += s.SettledFeeMinor
		refunded += s.RefundedMinor
		if per[s.HostDeviceId] == nil {
			per[s.HostDeviceId] = &hostSum{}
		}
		h := per[s.HostDeviceId]
		h.n++
		h.used += s.UsedBytes
		h.host += s.SettledHostMinor
		h.fee += s.SettledFeeMinor
		if s.Verified {
			verified++
			hostBytes += s.HostCountBytes
			acked += s.GuestAckedBytes
			if s.HostCountBytes > s.GuestAckedBytes+s.CreditWindowBytes {
				over++
			}
		} else {
			unverified++
		}
	}
	if fees != fee {
		t.Errorf("fees settled %d, fee accounts hold %d", fees, fee)
	}
	d := p.Rows["day:"+r.env.Clock.Now().UTC().Format("2006-01-02")+"-EUR"]
	check(t, "day started", d["started"], fmt.Sprint(started))
	check(t, "day settled", d["settled"], fmt.Sprint(settled))
	check(t, "day declined", d["declined"], fmt.Sprint(declined))
	if declined != 1 || p.Rows["declined:"+declinedB] == nil {
		t.Errorf("the API lists %d declined requests, the page lacks %s", declined, declinedB)
	}
	check(t, "day used", d["used"], size.Format(used))
	check(t, "day charged", d["charged"], money.Format(hostC+fees, "EUR"))
	check(t, "day to hosts", d["host"], money.Format(hostC, "EUR"))
	check(t, "day fees", d["fee"], money.Format(fees, "EUR"))
	check(t, "day refunded", d["refunded"], money.Format(refunded, "EUR"))
	for id, h := range per {
		row := p.Rows["top:"+id+"-EUR"]
		check(t, "top sessions", row["sessions"], fmt.Sprint(h.n))
		check(t, "top used", row["used"], size.Format(h.used))
		check(t, "top earned", row["host"], money.Format(h.host, "EUR"))
		check(t, "top fees", row["fee"], money.Format(h.fee, "EUR"))
	}
	hosts := make([]string, 0, len(per))
	for id := range per {
		hosts = append(hosts, id)
	}
	sort.Strings(hosts)
	if len(hosts) != 2 {
		t.Fatalf("hosts with settled sessions: %v", hosts)
	}
	check(t, "verified", p.K["verified"], fmt.Sprint(verified))
	check(t, "unverified", p.K["unverified"], fmt.Sprint(unverified))
	check(t, "over the window", p.K["overclaimed"], fmt.Sprint(over))
	check(t, "host bytes", p.K["hostbytes"], size.Format(hostBytes))
	check(t, "acked bytes", p.K["ackedbytes"], size.Format(acked))
	check(t, "flagged hosts", p.K["flagged"], "1")
	if verified != 2 || over != 1 {
		t.Fatalf("the flows should give 2 verified sessions, 1 over the window; the API says %d and %d", verified, over)
	}
	check(t, "host B over the window", p.Rows["usage:"+r.hostB.DeviceID()]["overclaimed"], "1")
	check(t, "host A over the window", p.Rows["usage:"+r.hostA.DeviceID()]["overclaimed"], "0")
	lrow := p.Rows["session:"+liveA]
	check(t, "live used", lrow["used"], size.Format(3*mb))
	check(t, "live granted", lrow["granted"], size.Format(10*mb))

	// A day chart per currency; no chart that repeats the table of
	// states beside it.
	if n, err := chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll("#chart-states").length`)); err != nil || n != 0 {
		t.Errorf("a state chart is drawn (%d, %v): it says what the table beside it says", n, err)
	}
	if n, err := chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll("#chart-day-EUR rect").length`)); err != nil || n != dashboard.Days {
		t.Errorf("day chart has %d bars (%v), want %d", n, err, dashboard.Days)
	}
	check(t, "chart today", barTitle(t, tab, "#chart-day-EUR"), r.env.Clock.Now().UTC().Format("01-02")+": "+money.Format(hostC+fees, "EUR"))

	// The live session's rate and usage chart, from its host's reports.
	r.env.Clock.Advance(4 * time.Second)
	if _, err := r.hostA.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: liveA, UsedBytes: 5 * mb})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, tab, fmt.Sprintf(`document.querySelector('tr[data-session=%q] [data-f=rate]').textContent === %q`, liveA, rateText(2*mb, 4*time.Second)))
	waitFor(t, tab, fmt.Sprintf(`(document.querySelector('figure[data-usage=%q] polyline') || {}).getAttribute !== undefined`, liveA))

	browsertest.Screenshot(t, tab, "dashboard-operator-desktop", 1280, 900, false)
	if bad := asPhone(t, tab); len(bad) > 0 {
		t.Errorf("operator's dashboard at %d px:\n%s", phoneWidth, strings.Join(bad, "\n"))
	}
	pp := read(t, tab)
	if d := cmp.Diff(p.Rows, pp.Rows, ignoreLive(liveA)); d != "" {
		t.Errorf("rows at %d px differ (-wide +phone):\n%s", phoneWidth, d)
	}
	if d := cmp.Diff(p.K, pp.K); d != "" {
		t.Errorf("figures at %d px differ (-wide +phone):\n%s", phoneWidth, d)
	}
	browsertest.Screenshot(t, tab, "dashboard-operator-phone", phoneWidth, 844, true)

	// The operator's link is single-use too.
	other := b.Incognito(t)
	if err := chromedp.Do(other, chromedp.Navigate(r.env.URL+dashboard.SignInPath(token))); err != nil {
		t.Fatal(err)
	}
	check(t, "used operator link", heading(t, other), "Link not valid")
	if os.Getenv(browsertest.ScreenshotsEnv) == "" {
		t.Log("set SHARESPOT_SCREENSHOTS=DIR to write the screenshots")
	}
}

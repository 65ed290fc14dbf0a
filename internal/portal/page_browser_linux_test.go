package portal_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	_ "image/png"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"
	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/card"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/wg"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/portal"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/tunnel"
)

// fund signs the page in (it opens), then funds its account as the
// operator would, and reloads so the page shows it.
func (r *rig) fundPage(minor int64) {
	r.t.Helper()
	r.run("open the page", chromedp.Navigate(portal.PageURL(r.serverURL, bssid, ssid, "")), chromedp.WaitVisible(chromedp.ID("buy-h")))
	account := eval[string](r, "account", `SharespotPage.state.accountId`)
	if err := r.env.Srv.Store().Write(context.Background(), func(tx *store.Tx) error {
		_, err := payment.Fund(tx, time.Now().UnixMilli(), account, currency, minor, "", "browser page test")
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	r.run("reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("buy-h")))
}

// buy asks for n MB and pays the fee from the wallet.
func (r *rig) buy(n int) string {
	r.t.Helper()
	r.run(fmt.Sprintf("ask for %d MB", n), chromedp.SetValue(chromedp.ID("amount"), strconv.Itoa(n)), chromedp.Click(chromedp.ID("request")),
		chromedp.WaitVisible(chromedp.ID("pay-h")))
	r.run("pay from the wallet", chromedp.Click(chromedp.ID("pay-wallet")), chromedp.WaitVisible(chromedp.ID("online-h")))
	return eval[string](r, "session", `SharespotPage.state.session.id`)
}

// oneUnit checks that the online screen's figures are in one unit.
func (r *rig) oneUnit() {
	r.t.Helper()
	used, left := r.text("used"), r.text("remaining")
	u1, u2 := used[strings.LastIndexByte(used, ' ')+1:], left[strings.LastIndexByte(left, ' ')+1:]
	if u1 != u2 {
		r.t.Fatalf("used %q and remaining %q in different units", used, left)
	}
}

// TestBrowserReloadUserspace: the guest page with the userspace gateway
// always knows where it is. The whole device ID is shown with a copy
// button; the fee screen can be cancelled (nothing paid, the session
// settled); online, a reload and a new tab show the same proxy setup and
// the End button; End settles.
func TestBrowserReloadUserspace(t *testing.T) {
	r := newLoopRig(t, loopOptions{})
	r.fundPage(1000)
	id := eval[string](r, "device", `SharespotPage.state.deviceId`)
	if got := r.text("device"); got != id || len(id) != 63 {
		t.Fatalf("the page shows device %q; want the whole ID %q", got, id)
	}
	r.run("copy the device ID", chromedp.Click(chromedp.ID("copy-device")))
	r.waitFor("copied or selected", `document.getElementById("copied").textContent !== ""`)

	// Cancel at the fee.
	r.run("ask for 3 MB", chromedp.SetValue(chromedp.ID("amount"), "3"), chromedp.Click(chromedp.ID("request")),
		chromedp.WaitVisible(chromedp.ID("pay-h")))
	cancelled := eval[string](r, "session", `SharespotPage.state.session.id`)
	r.screenshot("7-fee-cancel.png")
	r.run("cancel", chromedp.Click(chromedp.ID("pay-cancel")), chromedp.WaitVisible(chromedp.ID("ended-h")))
	if s := r.session(cancelled); s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.PaidMinor != 0 {
		t.Fatalf("cancelled at the fee: %v, paid %d", s.State, s.PaidMinor)
	}

	r.run("start again", chromedp.Click(chromedp.ID("again")), chromedp.WaitVisible(chromedp.ID("buy-h")))
	sid := r.buy(3)
	r.waitFor("the proxy setup", `!document.getElementById("proxy-setup").hidden`)
	setup := func() string {
		return r.text("pac-url") + " " + r.text("proxy-user") + " " + r.text("proxy-pass")
	}
	before := setup()
	if !strings.Contains(before, sid) {
		t.Fatalf("proxy setup %q does not name the session", before)
	}
	r.oneUnit()
	for _, how := range []string{"reload", "new tab"} {
		if how == "reload" {
			r.run("reload online", chromedp.Reload())
		} else {
			// The tab lives as long as the context of its first action.
			tab, cancel := chromedp.NewContext(r.browser)
			defer cancel()
			if err := chromedp.Do(tab, chromedp.EmulateViewport(360, 740, chromedp.EmulateScale(1))); err != nil {
				t.Fatal(err)
			}
			r.browser = tab
			r.run("open in a new tab", chromedp.Navigate(portal.PageURL(r.serverURL, bssid, ssid, "")))
		}
		r.run(how+": online again", chromedp.WaitVisible(chromedp.ID("online-h")), chromedp.WaitVisible(chromedp.ID("end")))
		r.waitFor(how+": the proxy setup", `!document.getElementById("proxy-setup").hidden`)
		if got := setup(); got != before {
			t.Fatalf("after a %s the setup is %q, was %q", how, got, before)
		}
		r.oneUnit()
	}
	r.screenshot("8-reloaded-online.png")
	r.run("end", chromedp.Click(chromedp.ID("end")), chromedp.WaitVisible(chromedp.ID("ended-h")))
	if s := r.session(sid); s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.PaidMinor != 30 || s.RefundedMinor != 30 {
		t.Fatalf("ended: %v, paid %d, refunded %d; want 30 back", s.State, s.PaidMinor, s.RefundedMinor)
	}
	r.env.MustAudit(t)
}

// TestBrowserWireGuard: with the WireGuard gateway the page shows the
// session's configuration as a QR code and a download. The QR code, read
// from the page's pixels by ZXing, is the configuration; a real
// WireGuard peer (wireguard-go and the netstack, in this process) gets
// online with it: bytes exact by TCP, a UDP exchange, a transfer that
// outruns the volume waits at the cut and goes on, the same connection,
// after a top-up bought on the page. A reload shows the same code. The
// session settles on the gateway's exact count.
func TestBrowserWireGuard(t *testing.T) {
	origin := serveOrigin(t)
	echo := udpEcho(t)
	var gw *wg.Gateway
	r := newLoopRig(t, loopOptions{gw: func(ctx context.Context) (gateway.Gateway, string) {
		key, err := wg.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if gw, err = wg.New(wg.Config{Listen: "127.0.0.1:0", Key: key, DNS: []netip.AddrPort{},
			AllowDestination: func(ap netip.AddrPort) bool { return ap == origin || ap == echo }}); err != nil {
			t.Fatal(err)
		}
		go func() {
			for !gw.Ready() {
				time.Sleep(time.Millisecond)
			}
		}()
		return gw, wg.Kind
	}})
	r.fundPage(1000)
	sid := r.buy(5)
	r.waitFor("the WireGuard setup", `!document.getElementById("wg-setup").hidden`)
	conf := r.readQR("wg-qr")
	if shown := eval[string](r, "conf", `document.getElementById("wg-conf").textContent`); shown != conf {
		t.Fatalf("the QR code says\n%s\nthe page shows\n%s", conf, shown)
	}
	r.screenshot("9-wireguard.png")
	cfg, err := tunnel.ParseConf(conf)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := tunnel.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	if n, err := fetchVia(tn, origin, 2*mb, 20*time.Second); err != nil {
		t.Fatalf("2 MB through the tunnel: %d, %v", n, err)
	}
	c, err := tn.DialContext(context.Background(), "udp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("UDP through the tunnel: %q, %v", buf[:n], err)
	}
	c.Close()

	r.run("reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("online-h")))
	r.waitFor("the WireGuard setup again", `!document.getElementById("wg-setup").hidden`)
	if again := r.readQR("wg-qr"); again != conf {
		t.Fatalf("after a reload the QR code says\n%s\nwas\n%s", again, conf)
	}

	// 4 MB more outruns the 5 MB: the transfer waits at the cut; the
	// page prompts; a top-up bought there lets the same transfer finish.
	done := make(chan error, 1)
	go func() { _, err := fetchVia(tn, origin, 4*mb, 2*time.Minute); done <- err }()
	r.waitFor("the low-quota prompt", `!document.getElementById("prompt").hidden`)
	r.oneUnit()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		used, quota, err := gw.Usage(sid)
		if err != nil {
			t.Fatal(err)
		}
		if used > quota {
			t.Fatalf("the gateway let %d of %d pass", used, quota)
		}
		if quota-used < int64(tunnel.MTU) {
			break // at the cut
		}
		if time.Now().After(deadline) {
			t.Fatalf("the transfer never reached the cut: %d of %d", used, quota)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the transfer ended at the cut: %v", err)
	default:
	}
	r.run("top up 5 MB", chromedp.SetValue(chromedp.ID("topup-amount"), "5"), chromedp.Click(chromedp.ID("topup")),
		chromedp.WaitVisible(chromedp.ID("pay-h")))
	r.run("pay the top-up", chromedp.Click(chromedp.ID("pay-wallet")), chromedp.WaitVisible(chromedp.ID("online-h")))
	paid := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("the transfer after the top-up: %v", err)
	}
	// The transfer waited at the cut: TCP resumes with its next
	// retransmission, whose timer backs off while the page is paid.
	t.Logf("the transfer finished %v after the top-up was paid", time.Since(paid).Round(time.Millisecond))
	r.run("end", chromedp.Click(chromedp.ID("end")), chromedp.WaitVisible(chromedp.ID("ended-h")))
	used, _, _ := gw.Usage(sid) // revoked at the end: the final count
	s := r.session(sid)
	// Unverified (a phone's WireGuard app acknowledges nothing): billed
	// on the gateway's count, each MB at 10 cents, rounded down.
	want := used / 100_000
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.UsedBytes != used || s.Verified ||
		s.SettledHostMinor+s.SettledFeeMinor != want || s.PaidMinor != 100 || s.RefundedMinor != 100-want {
		t.Fatalf("settled %v: used %d (gateway %d), charged %d (want %d), paid %d, refunded %d, verified %v",
			s.State, s.UsedBytes, used, s.SettledHostMinor+s.SettledFeeMinor, want, s.PaidMinor, s.RefundedMinor, s.Verified)
	}
	r.env.MustAudit(t)
}

// readQR decodes the QR code the page draws in element id, from the
// screen's pixels.
//
// The element may be shown before the code is drawn in it (a busy
// machine's browser paints late), so an image that does not decode is
// taken again, for up to 10 s.
func (r *rig) readQR(id string) string {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		png := get(r, "screenshot #"+id, chromedp.Screenshot(chromedp.ID(id)))
		img, _, err := image.Decode(bytes.NewReader(png))
		if err != nil {
			r.t.Fatal(err)
		}
		bmp, err := gozxing.NewBinaryBitmapFromImage(img)
		if err != nil {
			r.t.Fatal(err)
		}
		res, err := qrcode.NewQRCodeReader().Decode(bmp, nil)
		if err == nil {
			return res.GetText()
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the QR code on the page does not decode: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serveOrigin runs an origin on loopback: GET /n/N answers N bytes.
func serveOrigin(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 1<<20)
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

// udpEcho answers each datagram with itself, on loopback.
func udpEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	return netip.MustParseAddrPort(c.LocalAddr().String())
}

// fetchVia downloads n bytes from origin through tn within d.
func fetchVia(tn *tunnel.Tunnel, origin netip.AddrPort, n int64, d time.Duration) (int64, error) {
	hc := &http.Client{Timeout: d, Transport: &http.Transport{DialContext: tn.DialContext, DisableKeepAlives: true}}
	res, err := hc.Get(fmt.Sprintf("http://%s/n/%d", origin, n))
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

// TestBrowserAddMoney: an empty wallet is no dead end on a server in
// Stripe test mode: the page adds money by card (pending until Stripe
// says paid, as its webhook does), shows the new balance, and the fee is
// paid from it. A server without cards says how to be funded instead.
func TestBrowserAddMoney(t *testing.T) {
	r, _ := newCardRig(t)
	r.run("open the page", chromedp.Navigate(portal.PageURL(r.serverURL, bssid, ssid, "")), chromedp.WaitVisible(chromedp.ID("buy-h")))
	r.waitFor("the card top-up offered", `!document.getElementById("fund").hidden && document.getElementById("no-cards").hidden`)
	r.screenshot("1b-add-money.png")
	r.run("add €5.00 by card", chromedp.SetValue(chromedp.ID("fund-amount"), "5"), chromedp.Click(chromedp.ID("fund-card")))
	r.waitFor("the funding pending", `document.getElementById("fund-state").textContent.startsWith("Adding")`)
	var waiting []card.Waiting
	for deadline := time.Now().Add(30 * time.Second); len(waiting) == 0; time.Sleep(50 * time.Millisecond) {
		var err error
		if waiting, err = card.WaitingForStripe(context.Background(), r.env.Srv.Store()); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the page's funding never reached Stripe")
		}
	}
	if len(waiting) != 1 || waiting[0].Kind != "fund" || waiting[0].Amount != 500 {
		t.Fatalf("waiting for Stripe: %+v; want one funding of 500", waiting)
	}
	r.post(waiting[0].Succeeded())
	r.waitFor("added", `document.getElementById("fund-state").textContent === "Added €5.00."`)
	if w := r.text("wallet"); w != "€5.00" {
		t.Fatalf("the wallet shows %q after the funding", w)
	}
	sid := r.buy(3)
	if s := r.session(sid); s.PaidMinor != 30 {
		t.Fatalf("paid %d from the funded wallet", s.PaidMinor)
	}
	r.run("end", chromedp.Click(chromedp.ID("end")), chromedp.WaitVisible(chromedp.ID("ended-h")))
	r.env.MustAudit(t)
}

// TestBrowserNoCards: without a card platform the page offers no card
// top-up and says how the wallet gets funded (the device ID, whole, with
// a copy button); a hotspot whose host is away is said to be offline,
// not offered.
func TestBrowserNoCards(t *testing.T) {
	r := newLoopRig(t, loopOptions{})
	r.run("open the page", chromedp.Navigate(portal.PageURL(r.serverURL, bssid, ssid, "")), chromedp.WaitVisible(chromedp.ID("buy-h")))
	r.waitFor("no cards, said", `document.getElementById("fund").hidden && !document.getElementById("no-cards").hidden`)
	if got := r.text("no-cards"); !strings.Contains(got, "takes no card payments") || !strings.Contains(got, "device ID") {
		t.Fatalf("the page says %q", got)
	}
	// A second hotspot whose host registered and never connected: once
	// the host-away bound passes, the page says it is offline.
	away := r.env.Device(t, "away host")
	inst := &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("Gone"), Bssid: "02:5e:00:00:00:09", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: currency, PriceMinor: 10, UnitBytes: mb, MinPurchaseBytes: mb, TopupPriceMinor: 10},
		ShareableBytes: 100 * mb,
	}
	if _, err := away.Hotspots.Register(context.Background(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: inst})); err != nil {
		t.Fatal(err)
	}
	r.env.Clock.Advance(2 * time.Minute)
	r.run("open the away host's hotspot", chromedp.Navigate(portal.PageURL(r.serverURL, "02:5e:00:00:00:09", "Gone", "")))
	r.waitFor("offline, said", `!document.getElementById("error").hidden`)
	if got := r.text("error"); !strings.Contains(got, "host is offline") || !strings.Contains(got, "cannot sell data now") {
		t.Fatalf("for an away host the page says %q", got)
	}
	if eval[bool](r, "buy shown", `!document.getElementById("buy").hidden`) {
		t.Fatal("the page offers an offline hotspot")
	}
	r.screenshot("1c-host-offline.png")
}

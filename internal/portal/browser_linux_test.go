package portal_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/nft"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/netns"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/portal"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/store"
)

const (
	mb       = 1_000_000
	ssid     = "Cafe"
	bssid    = "02:5e:00:00:00:01"
	currency = "EUR"
	funded   = 1000
)

// findChromium returns the browser, or skips (fails in CI).
func findChromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs chromium in PATH (CI=true: this test must run)")
	}
	t.Skip("needs chromium in PATH")
	return ""
}

// rig is a real server reachable from the internet namespace, a real host
// (agent and kernel gateway with the captive portal) and a guest
// namespace with Chromium in it.
type rig struct {
	t         *testing.T
	tp        *netns.Topology
	env       *harness.Env
	origin    *netns.Origin
	serverURL string
	originURL string
	hostC     *client.Client
	watch     *leakWatch
	browser   context.Context
}

func newRig(t *testing.T) *rig {
	netns.RequireRoot(t)
	netns.RequireTools(t, "ip")
	chromium := findChromium(t)
	tp := netns.NewTopology(t, 1)
	oln, err := tp.Internet.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, tp: tp}
	r.origin = netns.StartOrigin(t, oln, tp.Internet, tp.Net4.String())
	r.originURL = "http://" + tp.Net4.String()

	// The server: on loopback for the host agent, and over TLS on the
	// internet namespace's address for the guest's browser (WebCrypto
	// needs a secure context); Chromium trusts its self-signed
	// certificate by its key's hash.
	r.env = harness.Start(t, nil)
	serverAddr := netip.AddrPortFrom(tp.Net4, 8474)
	cert, spki := selfSigned(t, tp.Net4)
	sln, err := tp.Internet.Listen("tcp", serverAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	public := &http.Server{Handler: r.env.Srv.Handler(), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 10 * time.Second}
	go func() { served <- public.ServeTLS(sln, "", "") }()
	r.serverURL = "https://" + serverAddr.String()

	// The host: hotspot, kernel gateway with the walled garden and portal.
	hostC := r.env.Device(t, "host")
	r.hostC = hostC
	inst := &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(ssid), Bssid: bssid, Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: currency, PriceMinor: 10, UnitBytes: mb, MinPurchaseBytes: 1 * mb, TopupPriceMinor: 10},
		ShareableBytes: 100 * mb, WarnAtBytes: 1 * mb,
	}
	if _, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: inst})); err != nil {
		t.Fatal(err)
	}
	admit := net.JoinHostPort(tp.HostLAN4.String(), "8475")
	aln, err := tp.Host.Listen("tcp", admit)
	if err != nil {
		t.Fatal(err)
	}
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "gateway.json"))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := nft.New(nft.Config{LAN: tp.LAN, Uplink: tp.Uplink, Listener: aln, NetNS: tp.Host.FD(), Store: st,
		Garden: []netip.AddrPort{serverAddr}, PortalURL: portal.PageURL(r.serverURL, bssid, ssid, admit)})
	if err != nil {
		t.Fatal(err)
	}
	gwDone, hostDone := make(chan error, 1), make(chan error, 1)
	go func() { gwDone <- gw.Run(ctx) }()
	hostRun := &host.Host{C: hostC, GW: gw, Kind: nft.Kind, Threshold: inst.WarnAtBytes, ReportEvery: 200 * time.Millisecond, Log: hostLog(t)}
	go func() { hostDone <- hostRun.Run(ctx) }()
	r.watch = newLeakWatch(t, tp.Internet, serverAddr.Port())

	// The guest's global IPv6 address comes before the browser: Chromium
	// aborts a page load when an address of its namespace changes.
	tp.Guests[0].AddIPv6(t, tp)

	// The browser, in the guest's namespace: a wrapper runs it through
	// `ip netns exec`; chromedp talks to it over the inherited pipe.
	wrapper := filepath.Join(t.TempDir(), "chromium-in-guest")
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", tp.Guests[0].Name, chromium)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(wrapper), chromedp.Flag("headless", "new"), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(360, 740), chromedp.UserDataDir(t.TempDir()), chromedp.Flag("ignore-certificate-errors-spki-list", spki))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	r.browser = bctx
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(360, 740, chromedp.EmulateScale(1))); err != nil {
		t.Fatalf("start chromium in the guest namespace: %v", err)
	}
	t.Cleanup(func() {
		bcancel()
		acancel()
		cancel()
		if err := <-hostDone; err != nil {
			t.Errorf("host: %v", err)
		}
		if err := <-gwDone; err != nil {
			t.Errorf("gateway: %v", err)
		}
		public.Close()
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("server on the internet namespace: %v", err)
		}
	})
	return r
}

// run runs browser actions with a bound.
func (r *rig) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	r.t.Helper()
	_ = get(r, what, chromedp.Steps(actions...))
}

// get runs one action with a bound and returns its value; on failure it
// says where the page was and what error it showed.
func get[T any](r *rig, what string, a chromedp.Action[T]) T {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.browser, 2*time.Minute) // a bound, not a timing: CI runs this under -race beside other suites
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		ectx, ecancel := context.WithTimeout(r.browser, 2*time.Second)
		page, _ := chromedp.Run(ectx, chromedp.Location())
		errText, _ := chromedp.Run(ectx, chromedp.Evaluate[string](`document.getElementById("error") ? document.getElementById("error").textContent : ""`))
		state, _ := chromedp.Run(ectx, chromedp.Evaluate[string](`(() => {
  const shown = [...document.querySelectorAll("main > section")].filter((s) => !s.hidden).map((s) => s.id).join(",");
  const st = document.getElementById("status"), pw = document.getElementById("pay-wallet");
  return "section " + shown + ", status " + JSON.stringify(st ? st.textContent : "") + ", pay-wallet disabled " + (pw ? pw.disabled : "none");
})()`))
		ecancel()
		r.t.Fatalf("%s: %v (page %s, error shown: %q; %s)", what, err, page, errText, state)
	}
	return v
}

// text is an element's text.
func (r *rig) text(id string) string {
	r.t.Helper()
	return get(r, "text of #"+id, chromedp.Text(chromedp.ID(id)))
}

// eval evaluates JavaScript (awaiting a promise).
func eval[T any](r *rig, what, js string) T {
	r.t.Helper()
	return get(r, what, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
}

// screenshot saves the page at 360 × 740 under $SHARESPOT_SCREENSHOTS (or
// the test's directory).
func (r *rig) screenshot(name string) {
	r.t.Helper()
	png := get(r, "screenshot "+name, chromedp.CaptureScreenshot())
	dir := os.Getenv("SHARESPOT_SCREENSHOTS")
	if dir == "" {
		dir = r.t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// TestBrowserGuest is the whole flow in real Chromium in the guest's
// namespace, with no Sharespot software on the guest: the captive portal
// sends the browser to the server's guest page, which pays from the
// wallet, opens the sealed code, is admitted by the kernel gateway,
// downloads from the origin, is prompted, tops up, ends and is settled.
func TestBrowserGuest(t *testing.T) {
	r := newRig(t)
	guestC := r.tp.Guests[0]

	// The walled garden from outside the browser first: before admission
	// nothing reaches the internet but the server.
	walledGarden(t, r, guestC)

	// Any http:// address → intercepted → the portal page on the server.
	r.run("open any http:// address", chromedp.Navigate(r.originURL+"/n/100"),
		chromedp.WaitVisible(chromedp.ID("buy-h")))
	loc := get(r, "location", chromedp.Location())
	if !strings.HasPrefix(loc, r.serverURL+portal.Path) {
		t.Fatalf("intercepted request ended at %s, want the guest page at %s", loc, r.serverURL+portal.Path)
	}
	shownSSID, tariff := r.text("ssid"), r.text("tariff")
	if shownSSID != ssid || !strings.Contains(tariff, "0.10") {
		t.Fatalf("page shows %q at %q, want %q at €0.10 per MB", shownSSID, tariff, ssid)
	}

	// The operator funds the browser's account (C3.2 pays from it).
	accountID := eval[string](r, "account", `SharespotPage.state.accountId`)
	err := r.env.Srv.Store().Write(context.Background(), func(tx *store.Tx) error {
		_, err := payment.Fund(tx, time.Now().UnixMilli(), accountID, currency, funded, "", "browser test")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	r.run("reload to show the funded wallet", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("buy-h")))
	r.screenshot("1-hotspot.png")
	// Readable at 360 px (nothing wider than the screen) and every input
	// has a label.
	if bad := eval[string](r, "layout and labels", `(() => {
  if (document.documentElement.scrollWidth > 360) return "page is " + document.documentElement.scrollWidth + " px wide";
  const unlabelled = [...document.querySelectorAll("input, meter")].filter(e => e.labels.length === 0).map(e => e.id);
  return unlabelled.length ? "unlabelled: " + unlabelled.join(", ") : "";
})()`); bad != "" {
		t.Fatal(bad)
	}

	// C1.5 → C3.1: ask for 3 MB, see the fee.
	r.run("ask for 3 MB", chromedp.SetValue(chromedp.ID("amount"), "3"), chromedp.Click(chromedp.ID("request")),
		chromedp.WaitVisible(chromedp.ID("pay-h")))
	fee := r.text("fee")
	if !strings.Contains(fee, "0.30") {
		t.Fatalf("fee shown %q, want €0.30", fee)
	}
	r.screenshot("2-fee.png")
	// This server has no Stripe key: the page offers only the wallet.
	if eval[bool](r, "card choice", `!document.getElementById("pay-card").hidden`) {
		t.Fatal("the page offers cards on a server that takes none")
	}
	// A reload (or a phone that dropped the tab) resumes the session from
	// IndexedDB: the same fee, still to pay.
	r.run("reload with the fee shown", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("pay-h")))
	if again := r.text("fee"); again != fee {
		t.Fatalf("after a reload the fee shown is %q, was %q", again, fee)
	}
	if n := r.watch.leaked(t); n != 0 || r.origin.Received() != 0 {
		t.Fatalf("before admission %d packets reached the internet outside the server, the origin read %d bytes", n, r.origin.Received())
	}

	// C3.2–C3.3, C1.7–C1.8: pay, open the code in the page, be admitted.
	r.run("pay and be admitted", chromedp.Click(chromedp.ID("pay-wallet")), chromedp.WaitVisible(chromedp.ID("online-h")))
	r.screenshot("3-online.png")

	// Real bytes from the origin, through the gateway, in another tab.
	if got := r.download(2_500_000); got != 2_500_000 {
		t.Fatalf("downloaded %d bytes, want 2500000", got)
	}

	// C1.9–C1.10: the low-quota prompt shows in the page.
	r.run("low-quota prompt", chromedp.WaitVisible(chromedp.ID("prompt-h")))
	r.screenshot("4-prompt.png")

	// C1.11–C1.15: top up 3 MB, pay, more volume.
	r.run("top up", chromedp.SetValue(chromedp.ID("topup-amount"), "3"), chromedp.Click(chromedp.ID("topup")),
		chromedp.WaitVisible(chromedp.ID("pay-h")))
	r.run("pay the top-up", chromedp.Click(chromedp.ID("pay-wallet")), chromedp.WaitVisible(chromedp.ID("online-h")))
	sid := eval[string](r, "session", `SharespotPage.state.session.id`)
	r.waitGranted(sid, 6*mb)
	if got := r.download(1_000_000); got != 1_000_000 {
		t.Fatalf("downloaded %d bytes after the top-up, want 1000000", got)
	}
	r.screenshot("5-topped-up.png")
	// A reload mid-session (the kernel gateway keeps this address bound):
	// the page shows the session online again, with End, and bytes flow.
	r.run("reload online", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("online-h")), chromedp.WaitVisible(chromedp.ID("end")))
	if got := r.download(500_000); got != 500_000 {
		t.Fatalf("downloaded %d bytes after a reload, want 500000", got)
	}

	// End; the page shows the settlement.
	r.run("end", chromedp.Click(chromedp.ID("end")), chromedp.WaitVisible(chromedp.ID("ended-h")))
	r.screenshot("6-ended.png")
	ses := r.session(sid)
	if ses.State != sharespotv1.SessionState_SESSION_STATE_ENDED || ses.PaidMinor != 60 {
		t.Fatalf("session %v, paid %d: want ended, 60 paid", ses.State, ses.PaidMinor)
	}
	if ses.UsedBytes < 3_500_000 || ses.UsedBytes > 6*mb {
		t.Fatalf("used %d bytes, want between 3500000 (downloaded) and 6000000 (granted)", ses.UsedBytes)
	}
	charged := ses.SettledHostMinor + ses.SettledFeeMinor
	if charged+ses.RefundedMinor != ses.PaidMinor {
		t.Fatalf("charged %d + refunded %d != paid %d", charged, ses.RefundedMinor, ses.PaidMinor)
	}
	if errShown := eval[string](r, "errors shown", `document.getElementById("error").hidden ? "" : document.getElementById("error").textContent`); errShown != "" {
		t.Fatalf("the page shows an error at the end: %q", errShown)
	}
	shown := r.text("s-refunded")
	if want := fmt.Sprintf("%d.%02d", ses.RefundedMinor/100, ses.RefundedMinor%100); !strings.Contains(shown, want) {
		t.Fatalf("page shows refunded %q, server says %s", shown, want)
	}
	// Exact amounts: the guest's wallet lost exactly what it was charged.
	balance := eval[int64](r, "balance", `SharespotPage.call("PaymentService", "Balance", {}).then(b => Number((b.balances||[]).find(x => x.currency === "EUR").amountMinor))`)
	if balance != funded-charged {
		t.Fatalf("guest wallet %d, want %d − %d charged", balance, funded, charged)
	}
	r.env.MustAudit(t)
}

// download browses to the origin in a second tab and fetches n bytes
// there, returning how many arrived.
func (r *rig) download(n int64) int64 {
	r.t.Helper()
	tab, cancel := chromedp.NewContext(r.browser)
	defer cancel()
	ctx, cancelT := context.WithTimeout(tab, 60*time.Second)
	defer cancelT()
	if err := chromedp.Do(ctx, chromedp.Navigate(r.originURL+"/n/0")); err != nil {
		r.t.Fatalf("browse to the origin: %v", err)
	}
	got, err := chromedp.Run(ctx, chromedp.Evaluate[int64](fmt.Sprintf(`fetch("/n/%d").then(r => r.arrayBuffer()).then(b => b.byteLength)`, n), chromedp.EvalAwaitPromise))
	if err != nil {
		r.t.Fatalf("download %d bytes from the origin: %v", n, err)
	}
	return got
}

func (r *rig) session(id string) *sharespotv1.Session {
	r.t.Helper()
	// The host's view of the session (it is a party to it).
	res, err := r.hostC.Sessions.Get(context.Background(), connect.NewRequest(&sharespotv1.GetRequest{SessionId: id}))
	if err != nil {
		r.t.Fatal(err)
	}
	return res.Msg.Session
}

func (r *rig) waitGranted(id string, want int64) {
	r.t.Helper()
	for range 1200 { // at most two minutes
		if r.session(id).GrantedBytes >= want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("session %s never granted %d bytes", id, want)
}

// walledGarden tries, from the guest's namespace before any admission,
// every way out but the server: the origin directly on another port,
// port 80 (intercepted: the answer is the portal's redirect, not the
// origin's), DNS to an outside resolver, IPv6; and checks the server and
// the portal answer. Nothing may reach the internet namespace but the
// server's port.
func walledGarden(t *testing.T, r *rig, g *netns.Guest) {
	// g has its IPv6 address (newRig).
	hc := g.HTTPClient()
	hc.Timeout = 3 * time.Second
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	// Port 80 anywhere: the portal's redirect.
	res, err := hc.Get(r.originURL + "/n/1000")
	if err != nil {
		t.Fatalf("port 80 before admission: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound || !strings.HasPrefix(res.Header.Get("Location"), r.serverURL+portal.Path) {
		t.Fatalf("port 80 before admission: %s, Location %q; want 302 to the portal", res.Status, res.Header.Get("Location"))
	}
	// The Captive Portal API (RFC 8908) says captive, with the portal.
	res, err = hc.Get("http://" + net.JoinHostPort(r.tp.HostLAN4.String(), "8475") + nft.CaptivePath)
	if err != nil {
		t.Fatal(err)
	}
	var body strings.Builder
	buf := make([]byte, 4096)
	n, _ := res.Body.Read(buf)
	body.Write(buf[:n])
	res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != portal.CaptiveContentType || !strings.Contains(body.String(), `"captive":true`) ||
		!strings.Contains(body.String(), `"user-portal-url":"`+r.serverURL) {
		t.Fatalf("captive API: %s %q", ct, body.String())
	}
	// The server is reachable (the walled garden).
	tlsc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: g.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // the test's own certificate
	res, err = tlsc.Get(r.serverURL + "/healthz")
	if err != nil {
		t.Fatalf("the server through the walled garden: %v", err)
	}
	res.Body.Close()
	// Everything else is dropped: other ports, IPv6, DNS outside.
	for _, addr := range []string{net.JoinHostPort(r.tp.Net4.String(), "443"), net.JoinHostPort(r.tp.Net4.String(), "8080"),
		net.JoinHostPort(r.tp.Net6.String(), "8474"), net.JoinHostPort(r.tp.Net6.String(), "443")} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := g.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("before admission the guest connected to %s", addr)
		}
	}
	// IPv6 port 80 is intercepted too, never reaching the origin.
	if res, err := hc.Get("http://" + net.JoinHostPort(r.tp.Net6.String(), "80") + "/n/1000"); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusFound {
			t.Errorf("IPv6 port 80 before admission: %s, want the portal's 302", res.Status)
		}
	}
	pc, err := g.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		pc.WriteTo([]byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"),
			&net.UDPAddr{IP: r.tp.Net4.AsSlice(), Port: 53})
	}
	pc.Close()
	time.Sleep(200 * time.Millisecond) // let dropped datagrams be dropped (not a timed assertion: a drop has no later effect)
	if n := r.watch.leaked(t); n != 0 || r.origin.Received() != 0 || r.origin.DNSReceived() != 0 {
		t.Fatalf("before admission: %d packets reached the internet outside the server; origin read %d bytes, DNS sink %d",
			n, r.origin.Received(), r.origin.DNSReceived())
	}
}

// selfSigned is a certificate for addr and the base64 SHA-256 of its
// public key (what --ignore-certificate-errors-spki-list takes).
func selfSigned(t *testing.T, addr netip.Addr) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sharespot test server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{addr.AsSlice()}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, base64.StdEncoding.EncodeToString(sum[:])
}

// TestHPKEOpenInBrowser opens codes sealed by Go's crypto/hpke (package
// seal) with the page's hpke.js in Chromium, and checks that an altered
// ciphertext or another binding is refused.
func TestHPKEOpenInBrowser(t *testing.T) {
	r := newRig(t)
	r.run("open the page", chromedp.Navigate(r.serverURL+portal.Path+"?bssid="+bssid+"&ssid="+ssid), chromedp.WaitReady(chromedp.CSS("body")))
	b64 := base64.RawURLEncoding.EncodeToString
	std := base64.StdEncoding.EncodeToString
	for i, code := range [][]byte{[]byte("x"), make([]byte, 32), []byte(strings.Repeat("sharespot", 100))} {
		priv, err := seal.GenerateKey(seal.Preset)
		if err != nil {
			t.Fatal(err)
		}
		b := seal.Binding{SessionID: fmt.Sprintf("ses-%d", i), HostID: "HOST-ÄÖ", GuestID: "GUEST"}
		sealed, err := seal.Seal(seal.Preset, priv.PublicKey(), b, code)
		if err != nil {
			t.Fatal(err)
		}
		js := fmt.Sprintf(`(async () => {
  const u = (s) => Uint8Array.from(atob(s), c => c.charCodeAt(0));
  const key = await crypto.subtle.importKey("jwk", {kty: "OKP", crv: "X25519", d: %q, x: %q}, {name: "X25519"}, false, ["deriveBits"]);
  const pub = u(%q), enc = u(%q), ct = u(%q);
  const out = {};
  const code = await SharespotHPKE.open(key, pub, enc, ct, SharespotHPKE.binding(%q, %q, %q));
  out.code = btoa(String.fromCharCode(...code));
  const bad = ct.slice(); bad[0] ^= 1;
  try { await SharespotHPKE.open(key, pub, enc, bad, SharespotHPKE.binding(%q, %q, %q)); out.altered = "opened"; } catch (e) { out.altered = "refused"; }
  try { await SharespotHPKE.open(key, pub, enc, ct, SharespotHPKE.binding(%q, "other host", %q)); out.rebound = "opened"; } catch (e) { out.rebound = "refused"; }
  return out;
})()`, b64(priv.Bytes()), b64(priv.PublicKey()), std(priv.PublicKey()), std(sealed.Enc), std(sealed.Ciphertext),
			b.SessionID, b.HostID, b.GuestID, b.SessionID, b.HostID, b.GuestID, b.SessionID, b.GuestID)
		out := eval[struct{ Code, Altered, Rebound string }](r, "open a Go-sealed code", js)
		if out.Code != std(code) || out.Altered != "refused" || out.Rebound != "refused" {
			t.Fatalf("code %d: browser opened %q (want %q), altered: %s, other binding: %s", i, out.Code, std(code), out.Altered, out.Rebound)
		}
	}
	// Without JavaScript the page says what to do.
	tab, cancel := chromedp.NewContext(r.browser)
	defer cancel()
	nctx, ncancel := context.WithTimeout(tab, 2*time.Minute)
	defer ncancel()
	if _, err := chromedp.Call(nctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(nctx, chromedp.EmulateViewport(360, 740, chromedp.EmulateScale(1)), chromedp.Navigate(r.serverURL+portal.Path)); err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(nctx, chromedp.Text(chromedp.CSS("main")))
	if err != nil || !strings.Contains(text, "JavaScript is off") || !strings.Contains(text, "sharespot connect") {
		t.Fatalf("without JavaScript the page says %q (%v)", text, err)
	}
	if dir := os.Getenv("SHARESPOT_SCREENSHOTS"); dir != "" {
		png, err := chromedp.Run(nctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "0-no-javascript.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The code's text form, as the admission endpoint parses it.
	code, _ := seal.NewAccessCode()
	formatted := eval[string](r, "format", fmt.Sprintf(`SharespotHPKE.formatCode(Uint8Array.from(atob(%q), c => c.charCodeAt(0)))`, std(code)))
	if formatted != seal.FormatCode(code) {
		t.Fatalf("formatCode %q, want %q", formatted, seal.FormatCode(code))
	}
}

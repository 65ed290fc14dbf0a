// Package demo runs the whole claimed flow on one machine, in one process:
// a server, a host with the userspace metering gateway, a guest, and a
// local origin standing in for the internet. Real bytes cross the gateway;
// real money moves on the ledger. It prints each step with its claim ID.
package demo

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/proxy"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/forward"
	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/wifi"
)

const mb = 1_000_000

// Options tune the demo.
type Options struct {
	// Dir holds the server's database and the gateway's state; empty: a
	// temporary directory removed afterwards.
	Dir string
	// Buy is the first purchase; TopUp the additional data; Warn the
	// host's low-quota threshold.
	Buy, TopUp, Warn int64
}

// Defaults are the demo's sizes.
func Defaults() Options { return Options{Buy: 20 * mb, TopUp: 30 * mb, Warn: 3 * mb} }

type printer struct{ w io.Writer }

func (p printer) step(id, format string, a ...any) {
	fmt.Fprintf(p.w, "%-6s %s\n", id, fmt.Sprintf(format, a...))
}

// Run runs the demo, writing what happens to w.
func Run(ctx context.Context, w io.Writer, o Options) (err error) {
	if o.Buy <= 0 || o.TopUp <= 0 || o.Warn <= 0 || o.Warn >= o.Buy {
		return errors.New("demo: sizes must be positive, with the warning level below the first purchase")
	}
	p := printer{w}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "sharespot-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// ---- the internet, the server, the devices
	org, err := startOrigin()
	if err != nil {
		return err
	}
	defer org.Close()
	srv, err := server.Open(ctx, server.Config{DataDir: o.Dir, Limits: api.Limits{}, SweepInterval: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if serr := <-served; err == nil {
			err = serr
		}
	}()
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(w, "Sharespot demo: a server, a host and a guest on this machine — loopback only, userspace gateway, no radio.\n\n")
	p.step("server", "listening on %s (SQLite in %s)", url, o.Dir)

	hostC, err := newDevice(ctx, url, "demo host")
	if err != nil {
		return err
	}
	guestC, err := newDevice(ctx, url, "demo guest")
	if err != nil {
		return err
	}

	// ---- host: gateway and network-sharing instruction
	gwStore, err := gateway.OpenFileStore(filepath.Join(o.Dir, "gateway.json"))
	if err != nil {
		return err
	}
	originAddr := netip.MustParseAddrPort(org.ln.Addr().String())
	// A short grace period: the demo shows the cut, not a minute's wait
	// for a top-up that does not come.
	gw, err := gwproxy.New(gwproxy.Config{Addr: "127.0.0.1:0", Store: gwStore, Grace: time.Second,
		AllowDestination: func(ap netip.AddrPort) bool { return ap == originAddr }})
	if err != nil {
		return err
	}
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Run(ctx) }()
	defer func() { cancel(); <-gwDone }()

	inst := &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("Sharespot Demo"), Bssid: "02:5e:de:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: mb, MinPurchaseBytes: 5 * mb, TopupPriceMinor: 12},
		ShareableBytes: 1000 * mb,
		WarnAtBytes:    o.Warn,
	}
	_, err = hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: inst}))
	if err != nil {
		return fmt.Errorf("demo: register: %w", err)
	}
	p.step("host", "device %s registered %q (%s): %s per MB, top-ups %s per MB, sharing %s, warn below %s",
		short(hostC.DeviceID()), "Sharespot Demo", inst.AccessPoint.Bssid, client.FormatMoney(10, "EUR"), client.FormatMoney(12, "EUR"),
		size.Format(inst.ShareableBytes), size.Format(o.Warn))
	p.step("host", "metering gateway (SOCKS5 + HTTP CONNECT) on %s", gw.Addr())

	hostRun := &host.Host{C: hostC, GW: gw, Threshold: o.Warn}
	hostDone := make(chan error, 1)
	go func() { hostDone <- hostRun.Run(ctx) }()
	defer func() { cancel(); <-hostDone }()

	// The operator funds the guest's wallet.
	if err := srv.Store().Write(ctx, func(tx *store.Tx) error {
		_, err := payment.Fund(tx, time.Now().UnixMilli(), guestC.AccountID(), "EUR", 2000, "demo", "demo funding")
		return err
	}); err != nil {
		return err
	}
	p.step("guest", "device %s; the operator funded its wallet with %s", short(guestC.DeviceID()), client.FormatMoney(2000, "EUR"))
	fmt.Fprintln(w)

	g := &guest.Guest{C: guestC, Suites: []seal.Suite{seal.Preset}, Wait: 30 * time.Second}
	if _, err := g.Listen(ctx, nil); err != nil {
		return err
	}

	// ---- C1.1–C1.4: scan, discover, show
	air := []wifi.AccessPoint{
		{SSID: []byte("Sharespot Demo"), BSSID: "02:5e:de:00:00:01", SignalDBM: -47, FreqMHz: 5180, Security: sharespotv1.Security_SECURITY_WPA2},
		{SSID: []byte("Neighbour"), BSSID: "02:5e:de:00:00:02", SignalDBM: -70, FreqMHz: 2437, Security: sharespotv1.Security_SECURITY_WPA3},
		{SSID: []byte("Printer"), BSSID: "02:5e:de:00:00:03", SignalDBM: -81, FreqMHz: 2412, Security: sharespotv1.Security_SECURITY_WPA2},
	}
	p.step("C1.1", "guest scanned the air: %d access points (simulated: this machine has no radio)", len(air))
	disc, err := guestC.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: wifi.Candidates(air)}))
	if err != nil {
		return fmt.Errorf("demo: discover: %w", err)
	}
	p.step("C1.2", "guest sent the candidate set (%d) to the server", len(air))
	offers := disc.Msg.Available
	if len(offers) != 1 {
		return fmt.Errorf("demo: available set has %d entries, want 1", len(offers))
	}
	p.step("C1.3", "server answered with the available set: %d registered hotspot, with its tariff", len(offers))
	p.step("C1.4", "guest shows it:")
	tw := &indent{w: w, prefix: "         "}
	guest.ShowOffers(tw, offers)

	// ---- C1.5–C1.6, claim 3, C1.7, claim 2
	offer := offers[0]
	p.step("C1.5", "the user picks %q and asks for %s", client.SSIDText(offer.AccessPoint.Ssid), size.Format(o.Buy))
	ses, err := g.Begin(ctx, offer, o.Buy)
	if err != nil {
		return fmt.Errorf("demo: request access: %w", err)
	}
	p.step("C1.6", "access request → server → host (session %s)", ses.ID)
	var paid int64
	ses.Observe = func(e guest.Event) { paid += p.event(e) }
	grant, err := ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{})
	if err != nil {
		return fmt.Errorf("demo: buy: %w", err)
	}
	code, err := ses.Code(grant)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	p.step("C2.1", "guest opened the code with the preset suite %s (the server never saw it)", grant.SealedCode.Suite)

	// ---- C1.8: online through the host, through the guest's own
	// forwarder, which counts what arrives; the guest acknowledges it,
	// signed, to the host's gateway directly (verified usage).
	gwAddr := grant.Gateway.GetAddress()
	fwd, err := forward.Listen("127.0.0.1:0", gwAddr, ses.ID, seal.FormatCode(code), nil)
	if err != nil {
		return fmt.Errorf("demo: forwarder: %w", err)
	}
	acker := &guest.Acker{Session: ses, Gateway: gwAddr, Code: code, Count: fwd.Bytes}
	fwd.SetOnGrow(acker.Poke)
	ses.Acknowledging(acker)
	fctx, stopFwd := context.WithCancel(ctx)
	var fwg sync.WaitGroup
	fwg.Go(func() { fwd.Run(fctx) })
	fwg.Go(func() { acker.Run(fctx) })
	defer func() { stopFwd(); fwg.Wait() }()
	httpc := socksClient(fwd.Addr(), "", "")
	used, err := download(ctx, httpc, org.URL(), o.Buy-o.Warn+mb, mb)
	if err != nil {
		return fmt.Errorf("demo: download: %w", err)
	}
	p.step("C1.8", "guest online through the host: downloaded %s from the origin through the gateway; its own count, signed, went to the gateway as it arrived (acknowledged %s)",
		size.Format(used), size.Format(acker.Received()))

	// ---- C1.9–C1.15: prompt and top-up
	pr, err := awaitPrompt(ctx, ses)
	if err != nil {
		return err
	}
	// The gateway prompts as the usage crosses the warning level; the
	// download above went on past it before the guest read the prompt,
	// so the prompt's count is below the download's: say which is which.
	p.step("C1.9", "host's prompt → server → guest, sent as the usage crossed the warning level (the download went on meanwhile): %s left of %s at %s used",
		size.Format(pr.RemainingBytes), size.Format(pr.GrantedBytes), size.Format(pr.UsedBytes))
	var sb stringsBuilder
	guest.ShowPrompt(&sb, pr)
	p.step("C1.10", "guest shows: %q — the user says yes", sb.String())
	if err := ses.RequestTopUp(ctx, o.TopUp); err != nil {
		return fmt.Errorf("demo: top-up: %w", err)
	}
	p.step("C1.11", "add-data request for %s → server → host", size.Format(o.TopUp))
	tg, err := ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, guest.BuyOptions{})
	if err != nil {
		return fmt.Errorf("demo: top-up: %w", err)
	}
	// The host raises the gateway's quota once the server accepted its
	// grant, a moment after the guest may hear of it.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, q, _ := gw.Usage(ses.ID); q >= tg.TotalGrantedBytes {
			break
		}
	}
	more, err := download(ctx, httpc, org.URL(), tg.TotalGrantedBytes+5*mb, mb)
	gu, gq, _ := gw.Usage(ses.ID)
	p.step("C1.8", "guest kept going: %s more; the gateway stopped it at %s of %s (%v)", size.Format(more), size.Format(gu), size.Format(gq), describeCut(err))

	// ---- end and settle: the guest stops its forwarder (its last count
	// goes to the gateway) and ends with its last word; the host's
	// gateway revokes it and the host's final count settles the session.
	ses.Observe = nil
	stopFwd()
	fwg.Wait()
	s, err := ses.End(ctx, "demo over")
	if err != nil {
		return fmt.Errorf("demo: end: %w", err)
	}
	fmt.Fprintln(w)
	p.step("end", "guest ended the session; %s used of %s (host counted %s, guest acknowledged %s), %s paid", size.Format(s.UsedBytes), size.Format(s.GrantedBytes),
		size.Format(s.HostCountBytes), size.Format(s.GuestAckedBytes), client.FormatMoney(paid, "EUR"))
	p.step("settle", "host %s, platform fee %s, refunded to the guest %s",
		client.FormatMoney(s.SettledHostMinor, "EUR"), client.FormatMoney(s.SettledFeeMinor, "EUR"), client.FormatMoney(s.RefundedMinor, "EUR"))
	return showLedger(ctx, w, srv.Store(), guestC, hostC)
}

// event prints a step of the guest's purchase with its claim ID, and
// returns what it paid.
func (p printer) event(e guest.Event) int64 {
	switch e.Step {
	case guest.StepFee:
		p.step(e.Claim(), "host's fee → server → guest: %s for %s", client.FormatMoney(e.Quote.AmountMinor, e.Quote.Currency), size.Format(e.Quote.Bytes))
	case guest.StepPaid:
		p.step(e.Claim(), "guest paid through the payment platform: receipt signed by key %s, money held in escrow", e.Receipt.KeyId)
		return e.Quote.AmountMinor
	case guest.StepConfirmed:
		p.step(e.Claim(), "payment-success response → server → host; the host checks the platform's signature")
	case guest.StepGranted:
		if e.Kind == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP {
			p.step(e.Claim(), "add-data response → server → guest: +%s, %s in all; the gateway raised the quota in place", size.Format(e.Grant.GrantedBytes), size.Format(e.Grant.TotalGrantedBytes))
		} else {
			p.step(e.Claim(), "access response → server → guest: sealed access code, %s, gateway %s", size.Format(e.Grant.GrantedBytes), e.Grant.Gateway.GetAddress())
		}
	}
	return 0
}

// awaitPrompt waits for the host's low-quota prompt (C1.9).
func awaitPrompt(ctx context.Context, ses *guest.Session) (*sharespotv1.LowQuotaPrompt, error) {
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case e := <-ses.Messages():
			if pr := e.GetLowQuotaPrompt(); pr != nil {
				return pr, nil
			}
		case <-t.C:
			return nil, errors.New("demo: no low-quota prompt within 30s")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func newDevice(ctx context.Context, url, name string) (*client.Client, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	c := client.New(url, key, client.Options{DeviceName: name})
	if err := c.SignIn(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// socksClient is an HTTP client whose connections go through the gateway
// as SOCKS5 with the session's credentials.
func socksClient(gwAddr, user, pass string) *http.Client {
	var auth *proxy.Auth
	if user != "" {
		auth = &proxy.Auth{User: user, Password: pass}
	}
	d, _ := proxy.SOCKS5("tcp", gwAddr, auth, proxy.Direct)
	cd := d.(proxy.ContextDialer)
	return &http.Client{Transport: &http.Transport{DialContext: cd.DialContext, DisableKeepAlives: true}}
}

// download fetches up to total bytes in chunks, stopping at the first
// error (the gateway cutting the guest off), and returns the body bytes.
func download(ctx context.Context, c *http.Client, origin string, total, chunk int64) (int64, error) {
	var got int64
	for got < total {
		n := min(chunk, total-got)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/bytes?n=%d", origin, n), nil)
		res, err := c.Do(req)
		if err != nil {
			return got, err
		}
		m, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		got += m
		if err != nil {
			return got, err
		}
		if m != n {
			return got, io.ErrUnexpectedEOF
		}
	}
	return got, nil
}

func describeCut(err error) string {
	if err == nil {
		return "not cut"
	}
	return "connection closed at the limit"
}

func short(id string) string {
	if len(id) > 7 {
		return id[:7]
	}
	return id
}

// showLedger prints the wallets involved and checks the ledger sums to zero.
func showLedger(ctx context.Context, w io.Writer, st *store.Store, guestC, hostC *client.Client) error {
	return st.Read(ctx, func(tx *store.Tx) error {
		fmt.Fprintln(w, "\nledger")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		rows := []struct{ name, id string }{
			{"guest wallet", ledger.Wallet(guestC.AccountID(), "EUR").ID},
			{"host wallet", ledger.Wallet(hostC.AccountID(), "EUR").ID},
			{"platform fees", ""},
			{"funding (outside money)", ledger.Funding("EUR").ID},
		}
		for _, r := range rows {
			var b int64
			var err error
			if r.id == "" {
				b, err = ledger.FeeTotal(tx, "EUR")
			} else {
				b, err = ledger.Balance(tx, r.id)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(tw, "       %s\t%s\t\n", r.name, client.FormatMoney(b, "EUR"))
		}
		tw.Flush()
		a, err := ledger.Check(tx)
		if err != nil {
			return err
		}
		if !a.OK() {
			return fmt.Errorf("demo: ledger does not balance: %s", a)
		}
		fmt.Fprintf(w, "       all balances sum to %s: no money created or destroyed\n", client.FormatMoney(a.Sums["EUR"], "EUR"))
		return nil
	})
}

// indent prefixes every line written through it.
type indent struct {
	w      io.Writer
	prefix string
	mid    bool
}

func (d *indent) Write(p []byte) (int, error) {
	for i, b := range p {
		if !d.mid {
			io.WriteString(d.w, d.prefix)
			d.mid = true
		}
		if _, err := d.w.Write(p[i : i+1]); err != nil {
			return i, err
		}
		if b == '\n' {
			d.mid = false
		}
	}
	return len(p), nil
}

type stringsBuilder struct{ b []byte }

func (s *stringsBuilder) Write(p []byte) (int, error) { s.b = append(s.b, p...); return len(p), nil }
func (s *stringsBuilder) String() string {
	b := s.b
	for len(b) > 0 && (b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return string(b)
}

package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/wifi"
)

// deviceFlags are what every device-side command needs.
type deviceFlags struct {
	identityFlag
	Server string `default:"http://127.0.0.1:8474" env:"SHARESPOT_SERVER" help:"Server URL; several, comma-separated, are replicas of one deployment, tried in order when the one in use cannot be reached."`
	CAFile string `name:"ca-file" env:"SHARESPOT_CA_FILE" type:"existingfile" placeholder:"PEM" help:"Also trust the CA certificates in this PEM file for the server's TLS (a self-hosted CA); SSL_CERT_FILE instead replaces the system's roots."`
}

// options are opts with what the flags add.
func (f deviceFlags) options(opts client.Options) (client.Options, error) {
	if f.CAFile != "" {
		roots, err := client.LoadCAFile(f.CAFile)
		if err != nil {
			return opts, err
		}
		opts.HTTPClient = client.NewHTTPClientTrusting(roots)
	}
	return opts, nil
}

// serverURLs splits a --server value into its URLs and checks each.
func serverURLs(s string) ([]string, error) {
	var out []string
	for _, u := range strings.Split(s, ",") {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return nil, fmt.Errorf("--server %q: want http://host:port or https://host[:port] (several separated by commas)", u)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, errors.New("--server: give the server's URL, e.g. http://127.0.0.1:8474")
	}
	return out, nil
}

// newClient is a client of --server's URLs (failing over between them).
func newClient(server string, key ed25519.PrivateKey, opts client.Options) (*client.Client, error) {
	urls, err := serverURLs(server)
	if err != nil {
		return nil, err
	}
	opts.ServerURLs = urls[1:]
	if opts.AckWithin == 0 {
		opts.AckWithin = client.AckWindow
	}
	return client.New(urls[0], key, opts), nil
}

// connect loads the device key, which must exist (see identityFlag.key),
// and signs in: for the commands that read or change an account's state.
func (f deviceFlags) connect(env *runEnv, name string) (*client.Client, error) {
	return f.signIn(env, client.Options{DeviceName: name}, false)
}

// connectWith is connect with client options, for the commands a new
// device may start with: a missing key is created, and stderr told so.
func (f deviceFlags) connectWith(env *runEnv, opts client.Options) (*client.Client, error) {
	return f.signIn(env, opts, true)
}

// signIn checks the flags, loads (or with create makes) the device key
// and signs in.
func (f deviceFlags) signIn(env *runEnv, opts client.Options, create bool) (*client.Client, error) {
	if _, err := serverURLs(f.Server); err != nil { // a mistake in a flag before any key is made
		return nil, err
	}
	opts, err := f.options(opts)
	if err != nil {
		return nil, err
	}
	key, err := f.key(env.stderr, create)
	if err != nil {
		return nil, err
	}
	c, err := newClient(f.Server, key, opts)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(env.ctx, 15*time.Second)
	defer cancel()
	if err := c.SignIn(sctx); err != nil {
		return nil, fmt.Errorf("cannot reach the server at %s: %w", f.Server, err)
	}
	return c, nil
}

// scanFlags choose where the candidate set comes from (C1.1).
type scanFlags struct {
	ScanFile string `help:"Read the scan from a JSON file (machines without a radio)." type:"existingfile" placeholder:"FILE" xor:"scanner"`
	IW       string `name:"iw" help:"Scan with iw on this interface (needs root) instead of NetworkManager." placeholder:"IFACE" xor:"scanner"`
}

func (f scanFlags) scan(ctx context.Context) ([]wifi.AccessPoint, error) {
	var sc wifi.Scanner = wifi.NMCLIScanner{Runner: wifi.ExecRunner{}}
	switch {
	case f.ScanFile != "":
		sc = wifi.FileScanner{Path: f.ScanFile}
	case f.IW != "":
		sc = wifi.IWScanner{Runner: wifi.ExecRunner{}, Interface: f.IW}
	}
	aps, err := sc.Scan(ctx)
	switch {
	case err != nil && f.ScanFile != "":
		return nil, fmt.Errorf("--scan-file %s: %w", f.ScanFile, err)
	case err != nil && f.IW != "":
		return nil, fmt.Errorf("scan with iw on %s: %w (on a machine without a radio, use --scan-file FILE)", f.IW, err)
	case err != nil:
		return nil, fmt.Errorf("scan: %w (on a machine without a radio, use --scan-file FILE)", err)
	}
	// The server takes at most 256 candidates: keep the strongest.
	sort.SliceStable(aps, func(i, j int) bool { return aps[i].SignalDBM > aps[j].SignalDBM })
	if len(aps) > protocol.MaxCandidates {
		aps = aps[:protocol.MaxCandidates]
	}
	return aps, nil
}

// discover is C1.1–C1.3: scan, send the candidate set, get the available
// set (and the registered hotspots whose hosts are away).
func discover(ctx context.Context, c *client.Client, sf scanFlags) (*sharespotv1.DiscoverResponse, error) {
	aps, err := sf.scan(ctx)
	if err != nil {
		return nil, err
	}
	if len(aps) == 0 {
		return nil, errors.New("the scan found no access points")
	}
	res, err := c.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: wifi.Candidates(aps)}))
	if err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	return res.Msg, nil
}

// ScanCmd shows the hotspots for sale nearby.
type ScanCmd struct {
	deviceFlags
	scanFlags
	JSON bool `help:"Print the available set as JSON."`
}

// Run scans and shows the available set (C1.4).
func (c *ScanCmd) Run(env *runEnv) error {
	cl, err := c.connectWith(env, client.Options{DeviceName: "guest"})
	if err != nil {
		return err
	}
	found, err := discover(env.ctx, cl, c.scanFlags)
	if err != nil {
		return err
	}
	offers := found.Available
	if c.JSON {
		type row struct {
			HotspotID string `json:"hotspot_id"`
			SSID      string `json:"ssid"`
			BSSID     string `json:"bssid"`
			Signal    int32  `json:"signal_dbm,omitempty"` // 0: the scan gave none
			Currency  string `json:"currency"`
			Price     int64  `json:"price_minor"`
			Unit      int64  `json:"unit_bytes"`
			TopUp     int64  `json:"topup_price_minor"`
			Min       int64  `json:"min_purchase_bytes"`
			Available int64  `json:"available_bytes"`
			// The host's record from its settled verified sessions.
			VerifiedSessions    int64 `json:"host_verified_sessions"`
			OverCountedSessions int64 `json:"host_over_counted_sessions"`
			// Online: the host is there and the hotspot for sale; an
			// offline one has no tariff here, and when its host was
			// last there.
			Online bool  `json:"online"`
			SeenMS int64 `json:"seen_unix_ms,omitempty"`
		}
		out := []row{}
		for _, o := range offers {
			t := o.Tariff
			out = append(out, row{o.HotspotId, client.SSIDText(o.AccessPoint.Ssid), o.AccessPoint.Bssid, o.SignalDbm,
				t.Currency, t.PriceMinor, t.UnitBytes, t.TopupPriceMinor, t.MinPurchaseBytes, o.AvailableBytes,
				o.HostRecord.GetVerifiedSessions(), o.HostRecord.GetOverCountedSessions(), true, 0})
		}
		for _, o := range found.Offline {
			out = append(out, row{HotspotID: o.HotspotId, SSID: client.SSIDText(o.AccessPoint.GetSsid()), BSSID: o.AccessPoint.GetBssid(),
				Signal: o.SignalDbm, SeenMS: o.SeenUnixMs})
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(offers) == 0 {
		fmt.Fprintln(env.stdout, "No Sharespot hotspots for sale in range.")
	} else if err := guest.ShowOffers(env.stdout, offers); err != nil {
		return err
	}
	if len(found.Offline) > 0 {
		fmt.Fprintln(env.stdout, "\nOffline (registered, but the host is away: not for sale now):")
		for _, o := range found.Offline {
			fmt.Fprintf(env.stdout, "  %s  %s  %s\n", client.SSIDText(o.AccessPoint.GetSsid()), client.SafeText(o.AccessPoint.GetBssid()), lastThere(o.SeenUnixMs))
		}
	}
	return nil
}

// WalletBalanceCmd shows this device's wallet.
type WalletBalanceCmd struct {
	deviceFlags
	JSON bool `help:"Print the balances as JSON."`
}

// Run prints the balances.
func (c *WalletBalanceCmd) Run(env *runEnv) error {
	cl, err := c.connect(env, "wallet")
	if err != nil {
		return err
	}
	res, err := cl.Payments.Balance(env.ctx, connect.NewRequest(&sharespotv1.BalanceRequest{}))
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(env.stdout, balanceOf(res.Msg))
	}
	fmt.Fprintf(env.stdout, "account %s\n", res.Msg.AccountId)
	if len(res.Msg.Balances) == 0 {
		fmt.Fprintln(env.stdout, "  (empty)")
	}
	for _, m := range res.Msg.Balances {
		fmt.Fprintf(env.stdout, "  %s\n", client.FormatMoney(m.AmountMinor, m.Currency))
	}
	return nil
}

// WalletCardCmd funds this device's wallet by card.
type WalletCardCmd struct {
	deviceFlags
	Amount        int64         `required:"" help:"Amount in the currency's minor unit (1000 = EUR 10.00)."`
	Currency      string        `default:"EUR" help:"ISO 4217 currency."`
	PaymentMethod string        `name:"payment-method" help:"The Stripe PaymentMethod (pm_...) to charge; on a server in Stripe test mode the test card is used when empty." placeholder:"ID"`
	Wait          time.Duration `default:"2m" help:"How long to wait for Stripe to confirm the payment."`
}

// Run pays and waits for the credit: Stripe's payment_intent.succeeded
// webhook credits the wallet, once.
func (c *WalletCardCmd) Run(env *runEnv) error {
	cl, err := c.connect(env, "wallet")
	if err != nil {
		return err
	}
	idb := make([]byte, 12)
	rand.Read(idb)
	req := &sharespotv1.FundByCardRequest{RequestId: hex.EncodeToString(idb), AmountMinor: c.Amount, Currency: c.Currency, PaymentMethod: c.PaymentMethod}
	ctx, cancel := context.WithTimeout(env.ctx, c.Wait)
	defer cancel()
	shown := ""
	for {
		res, err := cl.Payments.FundByCard(ctx, connect.NewRequest(req))
		if err != nil {
			return fmt.Errorf("fund by card: %w", err)
		}
		switch m := res.Msg; m.Status {
		case sharespotv1.PayStatus_PAY_STATUS_PAID:
			fmt.Fprintf(env.stdout, "Wallet funded with %s by card.\n", client.FormatMoney(c.Amount, c.Currency))
			return nil
		case sharespotv1.PayStatus_PAY_STATUS_FAILED:
			return fmt.Errorf("card payment failed: %s", m.Failure)
		case sharespotv1.PayStatus_PAY_STATUS_REQUIRES_ACTION:
			if m.ActionUrl != shown {
				shown = m.ActionUrl
				fmt.Fprintf(env.stdout, "Your bank asks you to confirm the payment: open %s\n", m.ActionUrl)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("Stripe has not confirmed the payment within %v; the wallet is credited when it does (wallet balance)", c.Wait)
		case <-time.After(time.Second):
		}
	}
}

// WalletHistoryCmd lists this device's wallet movements.
type WalletHistoryCmd struct {
	deviceFlags
	Limit int32 `default:"20" help:"How many movements."`
	JSON  bool  `help:"Print the movements as JSON (an array, newest first)."`
}

// Run prints the history.
func (c *WalletHistoryCmd) Run(env *runEnv) error {
	cl, err := c.connect(env, "wallet")
	if err != nil {
		return err
	}
	res, err := cl.Payments.History(env.ctx, connect.NewRequest(&sharespotv1.HistoryRequest{Limit: c.Limit}))
	if err != nil {
		return err
	}
	// The wallet's movements, and the card's (payments held, captured,
	// released, refunded) and the transfers to a payout account, in words.
	moves := []movementJSON{}
	for _, t := range res.Msg.Transfers {
		moves = append(moves, movementOf(t, cl.AccountID()))
	}
	if c.JSON {
		return writeJSON(env.stdout, moves)
	}
	for _, t := range res.Msg.Transfers {
		sign, text := client.HistoryLine(t, cl.AccountID())
		fmt.Fprintf(env.stdout, "%s  %s%s  %s\n", time.UnixMilli(t.CreatedUnixMs).Format("2006-01-02 15:04:05"), sign,
			client.FormatMoney(t.AmountMinor, t.Currency), text)
	}
	return nil
}

package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/nft"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/gateway/wg"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/identity"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/portal"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/wifi"
)

// ShareCmd is the host: register the hotspot, run the gateway, sell data.
type ShareCmd struct {
	deviceFlags
	SSID       string        `required:"" help:"The access point's SSID (as guests see it)."`
	BSSID      string        `help:"The access point's BSSID (aa:bb:cc:dd:ee:ff); read from the interface with --hotspot or --iface."`
	Security   string        `default:"wpa2" enum:"open,wep,wpa,wpa2,wpa3,owe" help:"The access point's security."`
	Currency   string        `default:"EUR" help:"ISO 4217 currency of the tariff."`
	Price      int64         `required:"" help:"Price in minor units (cents) per --unit of data."`
	TopUpPrice int64         `name:"topup-price" help:"Top-up price per --unit (default: --price)."`
	Unit       string        `type:"size" default:"1MB" help:"The priced unit of data."`
	Min        string        `type:"size" default:"10MB" help:"The smallest first purchase."`
	Share      string        `type:"size" required:"" help:"How much data to share in all, e.g. 2GB."`
	Warn       string        `type:"size" default:"5MB" help:"Prompt a guest when less than this is left (C1.9)."`
	Listen     string        `default:"0.0.0.0:1080" help:"Where the userspace gateway (SOCKS5 + HTTP CONNECT) listens for guests."`
	Advertise  string        `help:"host:port guests are told to use (default: the listen address)."`
	Ask        bool          `help:"Ask before accepting each guest (default: accept every request at the tariff)."`
	Payouts    bool          `help:"Receive card earnings in a Stripe account: print the Stripe Connect onboarding link (the server must take cards)."`
	State      string        `help:"Directory for the host's persisted state (gateway usage, inbox cursor)." placeholder:"DIR"`
	AllowLocal bool          `help:"Let guests reach this machine's own addresses, loopback included (only for trying Sharespot on one machine)."`
	AllowLAN   []string      `name:"allow-lan" help:"With the userspace gateway: a private network (CIDR, e.g. 192.168.1.0/24) guests may reach; by default private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7: your router, your NAS) are refused. Repeat for several." placeholder:"CIDR"`
	Grace      time.Duration `default:"60s" help:"With the userspace gateway: how long a guest that used up its volume keeps its connections, stalled, for a top-up to resume them before they are closed (0: closed at once)."`

	// The metering gateway.
	GatewayKind string `name:"gateway" default:"proxy" enum:"proxy,nftables,wireguard" help:"The metering gateway: proxy (userspace SOCKS5 + HTTP CONNECT, any OS, no root), nftables (Linux kernel, root; guests present their code to the admission endpoint at --listen) or wireguard (userspace WireGuard on UDP --listen, no root: every app of a guest, TCP and UDP, with no proxy settings; a phone imports the configuration the guest page shows)."`
	WGNetwork   string `name:"wg-network" help:"With --gateway wireguard: the tunnel's IPv4 network (the gateway at its first address, guests from the second; default 10.77.0.0/16)." placeholder:"CIDR"`
	LAN         string `name:"lan" help:"With --gateway nftables: the interface guests are on (the access point, or its bridge)." placeholder:"IFACE"`
	Uplink      string `help:"With --gateway nftables: the interface guests' traffic leaves by (NAT)." placeholder:"IFACE"`
	Portal      bool   `default:"true" negatable:"" help:"With --gateway nftables: the captive portal and walled garden: guests not yet admitted reach only the server (--guest-server) and this host's endpoint, which redirects their port-80 requests to the server's guest page and serves the Captive Portal API (RFC 8908) at /captive-portal/api."`
	GuestServer string `name:"guest-server" help:"With --gateway nftables: the server's URL as guests reach it, https:// (default: --server); its addresses are resolved once at start for the walled garden." placeholder:"URL"`
	LANDNS      bool   `name:"lan-dns" help:"With --gateway nftables: let guests, admitted or not, ask this host's DNS resolver (port 53), which phones need to detect the portal by themselves; a DNS tunnel through the resolver is then possible before payment (see docs/router.md)."`
	wifiFlags
	Dashboard   bool `help:"Print a one-time link (10 minutes) that signs a browser in to this host's dashboard: its hotspots, live sessions, earnings and history."`
	store       gateway.Store
	ReportEvery time.Duration `name:"report-every" default:"5s" help:"How often metered usage is reported to the server (a session whose guest ended settles on the final count sent then, or on the last report if this host is away)."`
	Metrics     string        `name:"metrics" help:"Serve Prometheus metrics of the gateway (guests by state, bytes, threshold and exhaustion events, save latency) at http://ADDR/metrics; keep it on loopback or a management network." placeholder:"ADDR"`
}

func securityOf(s string) sharespotv1.Security {
	return map[string]sharespotv1.Security{"open": sharespotv1.Security_SECURITY_OPEN, "wep": sharespotv1.Security_SECURITY_WEP,
		"wpa": sharespotv1.Security_SECURITY_WPA, "wpa2": sharespotv1.Security_SECURITY_WPA2, "wpa3": sharespotv1.Security_SECURITY_WPA3,
		"owe": sharespotv1.Security_SECURITY_OWE}[s]
}

func (c *ShareCmd) instruction() (*sharespotv1.ShareInstruction, error) {
	var unit, minBuy, share, warn int64
	for _, f := range []struct {
		name string
		in   string
		out  *int64
	}{{"--unit", c.Unit, &unit}, {"--min", c.Min, &minBuy}, {"--share", c.Share, &share}, {"--warn", c.Warn, &warn}} {
		v, err := size.Parse(f.in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		*f.out = v
	}
	top := c.TopUpPrice
	if top == 0 {
		top = c.Price
	}
	return &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(c.SSID), Bssid: c.BSSID, Security: securityOf(c.Security)},
		Tariff:         &sharespotv1.Tariff{Currency: strings.ToUpper(c.Currency), PriceMinor: c.Price, UnitBytes: unit, MinPurchaseBytes: minBuy, TopupPriceMinor: top},
		ShareableBytes: share,
		WarnAtBytes:    warn,
	}, nil
}

// warnSwallows says, when the warning level is not below the smallest
// purchase, what guests who buy little get instead of a prompt at once:
// a prompt when half of what they bought is left (protocol.PromptLevel).
func warnSwallows(inst *sharespotv1.ShareInstruction) string {
	warn, least := inst.WarnAtBytes, inst.Tariff.GetMinPurchaseBytes()
	if warn <= 0 || warn < least {
		return ""
	}
	return fmt.Sprintf("note: your warning level (--warn %s) is not below the smallest purchase (--min %s), so it would swallow small purchases: "+
		"a guest who buys less than %s is prompted when half of it is left instead, not at once (a --warn below half of --min prompts every guest at it)",
		size.Format(warn), size.Format(least), size.Format(2*warn))
}

// Run shares until interrupted.
func (c *ShareCmd) Run(env *runEnv) error {
	ap, err := c.accessPoint(env.ctx, env.stdout, wifi.ExecRunner{}, os.ReadFile)
	if err != nil {
		return err
	}
	defer ap.down(env.stdout)
	inst, err := c.instruction()
	if err != nil {
		return err
	}
	state, codeKey, err := c.stateDir()
	if err != nil {
		return err
	}
	view := newGuestView(env.stdout, isTerminal(env.stdout), inst.Tariff.Currency)
	cl, err := c.connectWith(env, client.Options{DeviceName: "host", StreamStatus: func(server string, err error) {
		if env.ctx.Err() == nil {
			view.serverStatus(server, err)
		}
	}})
	if err != nil {
		return err
	}
	if err := c.payouts(env, cl); err != nil {
		return err
	}
	hs, err := registerOrUpdate(env.ctx, cl, inst)
	if err != nil {
		return err
	}
	gw, kind, gm, stop, err := c.gateway(env, inst, state)
	if err != nil {
		return err
	}
	defer stop()
	t := inst.Tariff
	fmt.Fprintf(env.stdout, "sharing %q (%s) as %s: %s per %s, top-ups %s, %s available\n", c.SSID, hs.Instruction.AccessPoint.Bssid,
		short(cl.DeviceID()), client.FormatMoney(t.PriceMinor, t.Currency), size.Format(t.UnitBytes), client.FormatMoney(t.TopupPriceMinor, t.Currency),
		size.Format(hs.AvailableBytes))
	fmt.Fprintf(env.stdout, "gateway for guests on %s; Ctrl-C stops (open sessions resume at the next start)\n", gw.Addr())
	if w := warnSwallows(inst); w != "" {
		fmt.Fprintln(env.stdout, w)
	}
	if c.Dashboard {
		link, exp, err := cl.DashboardLink(env.ctx)
		if err != nil {
			return fmt.Errorf("--dashboard: %w", err)
		}
		fmt.Fprintf(env.stdout, "dashboard: %s (open it once, before %s)\n", link, exp.Local().Format("15:04"))
	}
	h := &host.Host{C: cl, GW: gw, Kind: kind, Threshold: inst.WarnAtBytes, CursorFile: filepath.Join(state, "inbox.cursor"), CodeKey: codeKey,
		ReportEvery: c.ReportEvery, OnEvent: gm.Event,
		Notify: func(what, sid string, used, quota int64) {
			gm.State(sid, what, used)
			view.notify(what, sid, used, quota)
		}}
	if c.Ask {
		h.Decide = askHost(view, t)
	}
	return c.serve(env, h, view)
}

// serve runs the gateway, the host agent's loop and the live view until
// interrupted, then reports the final usage.
func (c *ShareCmd) serve(env *runEnv, h *host.Host, view *guestView) error {
	ctx, cancel := context.WithCancel(env.ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.GW.Run(ctx) }()
	go func() { defer wg.Done(); view.follow(ctx, h.C, h.GW) }()
	err := h.Run(ctx)
	h.ReportAll(context.WithoutCancel(env.ctx))
	if lerr := h.Leave(context.WithoutCancel(env.ctx)); lerr != nil {
		fmt.Fprintf(env.stderr, "could not tell the server this host is leaving (%s); its hotspot shows offline within seconds anyway\n", errText(lerr))
	}
	cancel()
	wg.Wait()
	fmt.Fprintln(env.stdout, "stopped sharing; usage reported")
	return err
}

// stateDir is --state (default: "host" beside the device key), made 0700,
// and the access-code key kept in it.
func (c *ShareCmd) stateDir() (string, []byte, error) {
	state := c.State
	if state == "" {
		state = filepath.Join(filepath.Dir(identity.DefaultPath()), "host")
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", nil, err
	}
	key, err := host.LoadOrCreateKey(filepath.Join(state, "access-code.key"))
	return state, key, err
}

// payouts prints the Stripe Connect onboarding link with --payouts.
func (c *ShareCmd) payouts(env *runEnv, cl *client.Client) error {
	if !c.Payouts {
		return nil
	}
	on, err := cl.Payments.PayoutOnboarding(env.ctx, connect.NewRequest(&sharespotv1.PayoutOnboardingRequest{}))
	if err != nil {
		return fmt.Errorf("payouts: %w", err)
	}
	if on.Msg.Ready {
		fmt.Fprintf(env.stdout, "Payouts: Stripe account %s receives your share of card payments.\n", on.Msg.AccountId)
	} else {
		fmt.Fprintf(env.stdout, "Payouts: finish setting up Stripe account %s at\n  %s\nUntil Stripe confirms it, card earnings stay in your wallet.\n", on.Msg.AccountId, on.Msg.Url)
	}
	return nil
}

// gateway opens the gateway's state and the gateway, and serves the
// gateway's metrics with --metrics (stop stops that).
func (c *ShareCmd) gateway(env *runEnv, inst *sharespotv1.ShareInstruction, state string) (gw gateway.Gateway, kind string, gm *metrics.Gateway, stop func(), err error) {
	stop = func() {}
	fst, err := gateway.OpenFileStore(filepath.Join(state, "gateway.json"))
	if err != nil {
		return nil, "", nil, stop, err
	}
	var st gateway.Store = fst
	var mreg *prometheus.Registry
	if c.Metrics != "" { // without --metrics, gm is nil and records nothing
		mreg = prometheus.NewRegistry()
		gm = metrics.NewGateway(mreg)
		st = gm.Store(fst)
	}
	c.store = st
	if gw, kind, err = c.openGateway(env, inst, state); err != nil {
		return nil, "", nil, stop, err
	}
	gm.SetUsage(gw.Usage)
	if c.Metrics != "" {
		var addr string
		if stop, addr, err = serveMetrics(c.Metrics, mreg); err != nil {
			return nil, "", nil, func() {}, err
		}
		fmt.Fprintf(env.stdout, "metrics on http://%s/metrics\n", addr)
	}
	return gw, kind, gm, stop, nil
}

// askHost asks the person at the terminal about each request (--ask).
func askHost(view *guestView, t *sharespotv1.Tariff) func(*sharespotv1.AccessRequested) (bool, string) {
	in := bufio.NewReader(os.Stdin)
	return func(r *sharespotv1.AccessRequested) (bool, string) {
		tariff := r.Tariff // the session's copy of the tariff (protocol 2)
		if tariff == nil {
			tariff = t
		}
		price, _ := protocol.TariffPrice(tariff, r.Bytes, false)
		view.ask(fmt.Sprintf("guest %s wants %s for %s. Accept? [Y/n] ", short(r.GuestDeviceId), size.Format(r.Bytes), client.FormatMoney(price, t.Currency)))
		line, _ := in.ReadString('\n')
		view.answered()
		if a := strings.ToLower(strings.TrimSpace(line)); a == "n" || a == "no" {
			return false, "the host said no"
		}
		return true, ""
	}
}

// openGateway opens the metering gateway --gateway names, and returns the
// kind guests are told.
func (c *ShareCmd) openGateway(env *runEnv, inst *sharespotv1.ShareInstruction, state string) (gateway.Gateway, string, error) {
	switch c.GatewayKind {
	case nft.Kind:
		return c.openKernel(env, inst)
	case wg.Kind:
		return c.openWireGuard(env, state)
	}
	policy, nets, err := c.policy()
	if err != nil {
		return nil, "", err
	}
	cfg := gwproxy.Config{Addr: c.Listen, Advertise: c.Advertise, Store: c.store, Grace: c.Grace, AllowDestination: policy, AllowNetworks: nets}
	if c.Grace <= 0 {
		cfg.Grace = -1 // closed at once
	}
	gw, err := gwproxy.New(cfg)
	if err != nil {
		return nil, "", err
	}
	return gw, "proxy", nil
}

// policy is the userspace gateways' destination policy: --allow-local's
// and --allow-lan's.
func (c *ShareCmd) policy() (func(netip.AddrPort) bool, []netip.Prefix, error) {
	var allow func(netip.AddrPort) bool
	if c.AllowLocal {
		allow = gateway.LocalDestinations
	}
	var nets []netip.Prefix
	for _, n := range c.AllowLAN {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(n))
		if err != nil {
			return nil, nil, fmt.Errorf("--allow-lan %q: want a network in CIDR form, e.g. 192.168.1.0/24", n)
		}
		nets = append(nets, pfx.Masked())
	}
	return allow, nets, nil
}

// openWireGuard opens the WireGuard gateway: its key kept in the state
// directory (guests' configurations name its public key), UDP on --listen,
// guests told --advertise (or --listen, when it names a host).
func (c *ShareCmd) openWireGuard(env *runEnv, state string) (gateway.Gateway, string, error) {
	advertise := c.Advertise
	if advertise == "" {
		advertise = c.Listen
	}
	if h, _, err := net.SplitHostPort(advertise); err != nil || h == "" || net.ParseIP(h).IsUnspecified() {
		return nil, "", fmt.Errorf("guests' WireGuard needs this host's address: give --listen ADDRESS:PORT (e.g. 192.168.12.1:51820) or --advertise, not %q", advertise)
	}
	key, err := wg.LoadOrCreateKey(filepath.Join(state, "wireguard.key"))
	if err != nil {
		return nil, "", err
	}
	policy, nets, err := c.policy()
	if err != nil {
		return nil, "", err
	}
	cfg := wg.Config{Listen: c.Listen, Advertise: advertise, Key: key, Store: c.store, AllowDestination: policy, AllowNetworks: nets}
	if c.WGNetwork != "" {
		if cfg.Network, err = netip.ParsePrefix(c.WGNetwork); err != nil {
			return nil, "", fmt.Errorf("--wg-network %q: want an IPv4 network in CIDR form, e.g. 10.77.0.0/16", c.WGNetwork)
		}
	}
	gw, err := wg.New(cfg)
	if err != nil {
		return nil, "", err
	}
	pub := gw.PublicKey()
	fmt.Fprintf(env.stdout, "WireGuard gateway: endpoint %s, public key %s, guests in %s\n", advertise, base64.StdEncoding.EncodeToString(pub[:]), cmp.Or(c.WGNetwork, wg.DefaultNetwork.String()))
	return gw, wg.Kind, nil
}

// openKernel opens the kernel gateway (and its captive portal).
func (c *ShareCmd) openKernel(env *runEnv, inst *sharespotv1.ShareInstruction) (gateway.Gateway, string, error) {
	if c.LAN == "" || c.Uplink == "" {
		return nil, "", errors.New("--gateway nftables needs --lan IFACE (where guests are) and --uplink IFACE (where their traffic leaves)")
	}
	changed, warnings, err := nft.EnableForwarding("/proc/sys")
	if err != nil {
		return nil, "", err
	}
	for _, s := range changed {
		fmt.Fprintf(env.stdout, "turned on IP forwarding (%s); it stays on after this host stops\n", s)
	}
	for _, w := range warnings {
		fmt.Fprintln(env.stdout, "warning:", w)
	}
	cfg := nft.Config{LAN: c.LAN, Uplink: c.Uplink, Listen: c.Listen, Advertise: c.Advertise, Store: c.store, AllowDNS: c.LANDNS}
	if c.Portal {
		guestServer := c.GuestServer
		if guestServer == "" {
			guestServer = c.Server
		}
		garden, err := nft.ResolveGarden(env.ctx, guestServer)
		if err != nil {
			return nil, "", err
		}
		advertise := c.Advertise
		if advertise == "" {
			advertise = c.Listen
		}
		if h, _, err := net.SplitHostPort(advertise); err != nil || h == "" || net.ParseIP(h).IsUnspecified() {
			return nil, "", fmt.Errorf("the captive portal sends guests to this host's endpoint, so it needs its LAN address: give --listen LAN-ADDRESS:PORT (e.g. 192.168.12.1:8475) or --advertise, not %q", advertise)
		}
		cfg.Garden = garden
		cfg.PortalURL = portal.PageURL(guestServer, inst.AccessPoint.Bssid, string(inst.AccessPoint.Ssid), advertise)
		fmt.Fprintf(env.stdout, "captive portal: guests reach only %v until admitted; port 80 goes to %s\n", garden, cfg.PortalURL)
		fmt.Fprintf(env.stdout, "Captive Portal API (DHCP option 114, RFC 8910): http://%s%s\n", advertise, nft.CaptivePath)
	}
	gw, err := nft.New(cfg)
	if err != nil {
		return nil, "", err
	}
	return gw, nft.Kind, nil
}

// registerOrUpdate registers the instruction, or updates this host's active
// hotspot with the same BSSID.
func registerOrUpdate(ctx context.Context, cl *client.Client, inst *sharespotv1.ShareInstruction) (*sharespotv1.Hotspot, error) {
	bssid, err := protocol.NormalizeBSSID(inst.AccessPoint.Bssid)
	if err != nil {
		return nil, err
	}
	list, err := cl.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
	if err != nil {
		return nil, err
	}
	for _, h := range list.Msg.Hotspots {
		if h.Active && h.Instruction.AccessPoint.Bssid == bssid {
			res, err := cl.Hotspots.Update(ctx, connect.NewRequest(&sharespotv1.UpdateRequest{HotspotId: h.Id, Instruction: inst}))
			if err != nil {
				return nil, fmt.Errorf("update hotspot: %w", err)
			}
			return res.Msg.Hotspot, nil
		}
	}
	res, err := cl.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: inst}))
	if err != nil {
		return nil, fmt.Errorf("register hotspot: %w", err)
	}
	return res.Msg.Hotspot, nil
}

func short(id string) string {
	if len(id) > 7 {
		return id[:7]
	}
	return id
}

// serveMetrics serves reg at http://addr/metrics (and /healthz) until stop.
func serveMetrics(addr string, reg *prometheus.Registry) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, MaxRequestsInFlight: 2}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	return func() { hs.Close() }, ln.Addr().String(), nil
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/hosting"
	"github.com/sharespot/sharespot/internal/identity"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/size"
)

// ShareCmd is the host: register the hotspot, run the gateway, sell data.
type ShareCmd struct {
	deviceFlags
	SSID       string `required:"" help:"The access point's SSID (as guests see it)."`
	BSSID      string `required:"" help:"The access point's BSSID (aa:bb:cc:dd:ee:ff)."`
	Security   string `default:"wpa2" enum:"open,wep,wpa,wpa2,wpa3,owe" help:"The access point's security."`
	Currency   string `default:"EUR" help:"ISO 4217 currency of the tariff."`
	Price      int64  `required:"" help:"Price in minor units (cents) per --unit of data."`
	TopUpPrice int64  `name:"topup-price" help:"Top-up price per --unit (default: --price)."`
	Unit       string `default:"1MB" help:"The priced unit of data."`
	Min        string `default:"10MB" help:"The smallest first purchase."`
	Share      string `required:"" help:"How much data to share in all, e.g. 2GB."`
	Warn       string `default:"5MB" help:"Prompt a guest when less than this is left (C1.9)."`
	Listen     string `default:"0.0.0.0:1080" help:"Where the userspace gateway (SOCKS5 + HTTP CONNECT) listens for guests."`
	Advertise  string `help:"host:port guests are told to use (default: the listen address)."`
	Ask        bool   `help:"Ask before accepting each guest (default: accept every request at the tariff)."`
	State      string `help:"Directory for the host's persisted state (gateway usage, inbox cursor)." placeholder:"DIR"`
	AllowLocal bool   `help:"Let guests reach this machine's loopback addresses (only for trying Sharespot on one machine)."`
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

// Run shares until interrupted.
func (c *ShareCmd) Run(env *runEnv) error {
	inst, err := c.instruction()
	if err != nil {
		return err
	}
	state := c.State
	if state == "" {
		state = filepath.Join(filepath.Dir(identity.DefaultPath()), "host")
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	codeKey, err := hosting.LoadOrCreateKey(filepath.Join(state, "access-code.key"))
	if err != nil {
		return err
	}
	cl, err := c.connect(env.ctx, "host")
	if err != nil {
		return err
	}
	hs, err := registerOrUpdate(env.ctx, cl, inst)
	if err != nil {
		return err
	}
	st, err := gateway.OpenFileStore(filepath.Join(state, "gateway.json"))
	if err != nil {
		return err
	}
	cfg := gwproxy.Config{Addr: c.Listen, Advertise: c.Advertise, Store: st}
	if c.AllowLocal {
		cfg.AllowDestination = func(ap netip.AddrPort) bool {
			return ap.Addr().IsLoopback() || gwproxy.DefaultDestinations(ap)
		}
	}
	gw, err := gwproxy.New(cfg)
	if err != nil {
		return err
	}
	t := inst.Tariff
	fmt.Fprintf(env.stdout, "sharing %q (%s) as %s: %s per %s, top-ups %s, %s available\n", c.SSID, hs.Instruction.AccessPoint.Bssid,
		short(cl.DeviceID()), client.FormatMoney(t.PriceMinor, t.Currency), size.Format(t.UnitBytes), client.FormatMoney(t.TopupPriceMinor, t.Currency),
		size.Format(hs.AvailableBytes))
	fmt.Fprintf(env.stdout, "gateway for guests on %s; Ctrl-C stops (open sessions resume at the next start)\n", gw.Addr())

	ctx, cancel := context.WithCancel(env.ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); gw.Run(ctx) }()
	var out sync.Mutex
	h := &hosting.Host{C: cl, GW: gw, Threshold: inst.WarnAtBytes, CursorFile: filepath.Join(state, "inbox.cursor"), CodeKey: codeKey,
		Notify: func(what, sid string, used, quota int64) {
			out.Lock()
			defer out.Unlock()
			switch what {
			case "request":
				fmt.Fprintf(env.stdout, "%s  a guest asks for %s\n", sid, size.Format(quota))
			case "granted":
				fmt.Fprintf(env.stdout, "%s  paid and granted: %s\n", sid, size.Format(quota))
			case "online":
				fmt.Fprintf(env.stdout, "%s  guest online\n", sid)
			case "low":
				fmt.Fprintf(env.stdout, "%s  %s of %s used: prompted the guest\n", sid, size.Format(used), size.Format(quota))
			case "exhausted":
				fmt.Fprintf(env.stdout, "%s  all %s used: guest cut off\n", sid, size.Format(quota))
			case "ended":
				fmt.Fprintf(env.stdout, "%s  ended after %s; you earned %s\n", sid, size.Format(used), client.FormatMoney(quota, t.Currency))
			}
		}}
	if c.Ask {
		in := bufio.NewReader(os.Stdin)
		h.Decide = func(r *sharespotv1.AccessRequested) (bool, string) {
			price, _ := registry.Price(r.Bytes, t.PriceMinor, t.UnitBytes)
			out.Lock()
			fmt.Fprintf(env.stdout, "guest %s wants %s for %s. Accept? [Y/n] ", short(r.GuestDeviceId), size.Format(r.Bytes), client.FormatMoney(price, t.Currency))
			out.Unlock()
			line, _ := in.ReadString('\n')
			if a := strings.ToLower(strings.TrimSpace(line)); a == "n" || a == "no" {
				return false, "the host said no"
			}
			return true, ""
		}
	}
	err = h.Run(ctx)
	h.ReportAll(context.WithoutCancel(env.ctx))
	cancel()
	wg.Wait()
	fmt.Fprintln(env.stdout, "stopped sharing; usage reported")
	return err
}

// registerOrUpdate registers the instruction, or updates this host's active
// hotspot with the same BSSID.
func registerOrUpdate(ctx context.Context, cl *client.Client, inst *sharespotv1.ShareInstruction) (*sharespotv1.Hotspot, error) {
	bssid, err := registry.NormalizeBSSID(inst.AccessPoint.Bssid)
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

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sharespot/sharespot/internal/wifi"
)

// wifiFlags choose the host's access point: one NetworkManager brings up
// (--hotspot), one already running (--iface), or one named by --bssid.
type wifiFlags struct {
	Hotspot         string `help:"Bring a Wi-Fi hotspot up on this interface through NetworkManager (nmcli), with --ssid; taken down on exit." placeholder:"IFACE" xor:"ap"`
	HotspotPassword string `name:"hotspot-password" env:"SHARESPOT_HOTSPOT_PASSWORD" help:"WPA2 passphrase for --hotspot (8–63 characters; default: NetworkManager makes one up and it is shown)." placeholder:"PASSWORD"`
	Iface           string `name:"iface" help:"Use the access point already running on this interface: its address is the BSSID." placeholder:"IFACE" xor:"ap"`
}

// upAP is the access point the host runs on; down takes down what share
// brought up.
type upAP struct {
	hotspot *wifi.Hotspot
}

func (a *upAP) down(out io.Writer) {
	if a == nil || a.hotspot == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.hotspot.Down(ctx); err != nil {
		fmt.Fprintf(out, "warning: %v\n", err)
		return
	}
	fmt.Fprintf(out, "hotspot on %s taken down\n", a.hotspot.Interface)
}

// accessPoint settles --ssid and --bssid: from the hotspot it brings up,
// from the interface, or as given.
func (c *ShareCmd) accessPoint(ctx context.Context, out io.Writer, r wifi.Runner, readFile func(string) ([]byte, error)) (*upAP, error) {
	switch {
	case c.Hotspot != "":
		if c.BSSID != "" {
			return nil, errors.New("--bssid goes without --hotspot: the hotspot's BSSID is its interface's address")
		}
		h := &wifi.Hotspot{Runner: r, Interface: c.Hotspot, SSID: c.SSID, Password: c.HotspotPassword}
		info, err := h.Up(ctx)
		if err != nil {
			return nil, fmt.Errorf("--hotspot: %w", err)
		}
		c.SSID, c.BSSID = info.SSID, info.BSSID
		fmt.Fprintf(out, "hotspot %q up on %s (BSSID %s, password %q)\n", info.SSID, c.Hotspot, info.BSSID, info.Password)
		return &upAP{hotspot: h}, nil
	case c.Iface != "":
		mac, err := wifi.InterfaceMAC(readFile, c.Iface)
		if err != nil {
			return nil, fmt.Errorf("--iface: %w", err)
		}
		if c.BSSID != "" && c.BSSID != mac {
			return nil, fmt.Errorf("--bssid %s is not the address of %s (%s)", c.BSSID, c.Iface, mac)
		}
		c.BSSID = mac
		return &upAP{}, nil
	case c.BSSID == "":
		return nil, errors.New("name the access point: --bssid aa:bb:cc:dd:ee:ff, --iface IFACE (one already running) or --hotspot IFACE (bring one up)")
	}
	if c.HotspotPassword != "" {
		return nil, errors.New("--hotspot-password goes with --hotspot")
	}
	return &upAP{}, nil
}

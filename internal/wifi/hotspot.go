package wifi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Hotspot is an access point brought up through NetworkManager:
//
//	nmcli device wifi hotspot ifname IFACE con-name NAME ssid SSID [password PW]
//
// NetworkManager makes a shared connection (NAT to its other uplinks,
// DHCP for the clients) and activates it. Without a password it makes up
// one; Up reads back what is really on the air: the SSID, the BSSID (the
// interface's address) and the password. Down deactivates and deletes the
// connection, so nothing is left behind. Every command goes through
// Runner, so tests need no radio.
type Hotspot struct {
	Runner    Runner
	Interface string
	SSID      string
	// Password: WPA2 passphrase (8–63 characters); empty: NetworkManager
	// makes one up.
	Password string
	// Name is the NetworkManager connection's name (default
	// "sharespot-" + Interface).
	Name string
}

// HotspotInfo is what a hotspot really is once up.
type HotspotInfo struct {
	SSID     string
	BSSID    string // lower-case aa:bb:cc:dd:ee:ff
	Password string
}

func (h *Hotspot) name() string {
	if h.Name != "" {
		return h.Name
	}
	return "sharespot-" + h.Interface
}

// Up brings the hotspot up and reads back its SSID, BSSID and password.
func (h *Hotspot) Up(ctx context.Context) (HotspotInfo, error) {
	if h.Interface == "" || strings.HasPrefix(h.Interface, "-") {
		return HotspotInfo{}, fmt.Errorf("wifi: hotspot: interface %q", h.Interface)
	}
	if h.SSID == "" || len(h.SSID) > 32 {
		return HotspotInfo{}, fmt.Errorf("wifi: hotspot: SSID %q must be 1 to 32 bytes", h.SSID)
	}
	if h.Password != "" && (len(h.Password) < 8 || len(h.Password) > 63) {
		return HotspotInfo{}, errors.New("wifi: hotspot: the password must be 8 to 63 characters (WPA2)")
	}
	args := []string{"device", "wifi", "hotspot", "ifname", h.Interface, "con-name", h.name(), "ssid", h.SSID}
	if h.Password != "" {
		args = append(args, "password", h.Password)
	}
	if _, err := h.Runner.Run(ctx, "nmcli", args...); err != nil {
		return HotspotInfo{}, fmt.Errorf("wifi: bring the hotspot up on %s: %w", h.Interface, err)
	}
	info, err := h.readBack(ctx)
	if err != nil {
		// Leave nothing half up.
		return HotspotInfo{}, errors.Join(err, h.Down(context.WithoutCancel(ctx)))
	}
	return info, nil
}

func (h *Hotspot) readBack(ctx context.Context) (HotspotInfo, error) {
	out, err := h.Runner.Run(ctx, "nmcli", "-g", "GENERAL.HWADDR", "device", "show", h.Interface)
	if err != nil {
		return HotspotInfo{}, fmt.Errorf("wifi: read the hotspot's BSSID: %w", err)
	}
	bssid, err := ParseNMCLIValue(out)
	if err != nil {
		return HotspotInfo{}, fmt.Errorf("wifi: read the hotspot's BSSID: %w", err)
	}
	if bssid, err = normalizeMAC(bssid); err != nil {
		return HotspotInfo{}, fmt.Errorf("wifi: read the hotspot's BSSID: %w", err)
	}
	out, err = h.Runner.Run(ctx, "nmcli", "-s", "-g", "802-11-wireless.ssid,802-11-wireless-security.psk", "connection", "show", h.name())
	if err != nil {
		return HotspotInfo{}, fmt.Errorf("wifi: read the hotspot's SSID: %w", err)
	}
	vals, err := parseNMCLIValues(out, 2)
	if err != nil {
		return HotspotInfo{}, fmt.Errorf("wifi: read the hotspot's SSID: %w", err)
	}
	if vals[0] == "" {
		return HotspotInfo{}, errors.New("wifi: read the hotspot's SSID: nmcli shows none")
	}
	return HotspotInfo{SSID: vals[0], BSSID: bssid, Password: vals[1]}, nil
}

// Down takes the hotspot down and deletes its connection.
func (h *Hotspot) Down(ctx context.Context) error {
	if _, err := h.Runner.Run(ctx, "nmcli", "connection", "delete", h.name()); err != nil {
		return fmt.Errorf("wifi: take the hotspot down: %w", err)
	}
	return nil
}

// ParseNMCLIValue reads the one value nmcli -g prints: like -t -e yes, it
// escapes ':' and '\' with '\' ("3C\:37\:86\:5A\:1B\:01").
func ParseNMCLIValue(out []byte) (string, error) {
	vals, err := parseNMCLIValues(out, 1)
	if err != nil {
		return "", err
	}
	return vals[0], nil
}

// parseNMCLIValues reads n values, one per line, as nmcli -g prints them.
func parseNMCLIValues(out []byte, n int) ([]string, error) {
	text := strings.TrimSuffix(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n")
	lines := strings.Split(text, "\n")
	if len(lines) != n {
		return nil, fmt.Errorf("nmcli printed %d lines, want %d", len(lines), n)
	}
	vals := make([]string, n)
	for i, l := range lines {
		f, err := splitTerse(l)
		if err != nil {
			return nil, fmt.Errorf("nmcli value %q: %w", l, err)
		}
		if len(f) != 1 {
			return nil, fmt.Errorf("nmcli value %q has an unescaped ':'", l)
		}
		vals[i] = f[0]
	}
	return vals, nil
}

// normalizeMAC checks an Ethernet address and writes it in lower case.
func normalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not a MAC address", s)
	}
	return hw.String(), nil
}

// InterfaceMAC reads an interface's address from sysfs
// (/sys/class/net/IFACE/address, "aa:bb:cc:dd:ee:ff\n"), the BSSID of an
// access point already running on it. readFile is os.ReadFile, or a fake.
func InterfaceMAC(readFile func(string) ([]byte, error), iface string) (string, error) {
	if iface == "" || strings.ContainsAny(iface, "/\x00") || iface == "." || iface == ".." {
		return "", fmt.Errorf("wifi: interface name %q", iface)
	}
	if readFile == nil {
		readFile = os.ReadFile
	}
	b, err := readFile(filepath.Join("/sys/class/net", iface, "address"))
	if err != nil {
		return "", fmt.Errorf("wifi: read the address of %s: %w", iface, err)
	}
	mac, err := normalizeMAC(string(b))
	if err != nil {
		return "", fmt.Errorf("wifi: address of %s: %w", iface, err)
	}
	return mac, nil
}

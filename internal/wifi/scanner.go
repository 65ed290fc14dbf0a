package wifi

import (
	"context"
	"fmt"
	"net"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// Scanner scans for access points (C1.1).
//
// NMCLIScanner and IWScanner return every access point once (by BSSID) and
// only entries the server can take as candidates: a unicast BSSID in lower-case colon form, an
// SSID of at most 32 bytes (none for a hidden network), a signal in
// [-150, 30] dBm, a frequency in [0, 100000] MHz. An entry that cannot be a
// candidate (a beacon with a 255-byte SSID or a multicast BSSID, which any
// neighbour can transmit) is dropped rather than let it make the server
// refuse the whole candidate set.
type Scanner interface {
	Scan(ctx context.Context) ([]AccessPoint, error)
}

var (
	_ Scanner = NMCLIScanner{}
	_ Scanner = IWScanner{}
	_ Scanner = FileScanner{}
)

// FileScanner reads the scan from a JSON scan file (see ParseScanFile), for
// machines without a radio. It returns the file as written, unchecked.
type FileScanner struct {
	Path string
}

// Scan reads the scan file.
func (s FileScanner) Scan(ctx context.Context) ([]AccessPoint, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return ReadScanFile(s.Path)
}

// Bounds of a candidate that the server accepts.
const (
	maxSSIDLen   = 32
	minSignalDBM = -150
	maxSignalDBM = 30
	maxFreqMHz   = 100000
)

// parseBSSID parses six colon-separated hex octets and returns them in
// lower-case form. station is false for an address that cannot be an access
// point's: multicast (which includes broadcast) or all zeros.
func parseBSSID(s string) (bssid string, station bool, err error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 || len(s) != 17 || s[2] != ':' {
		return "", false, fmt.Errorf("BSSID %q is not six colon-separated hex octets", s)
	}
	return mac.String(), mac[0]&1 == 0 && mac.String() != "00:00:00:00:00:00", nil
}

// hiddenSSID normalises the SSID of a hidden network (empty, or padded with
// NUL bytes as some access points do) to nil, as NetworkManager does.
func hiddenSSID(ssid []byte) []byte {
	for _, b := range ssid {
		if b != 0 {
			return ssid
		}
	}
	return nil
}

// clampSignal keeps a reported signal within what the server accepts.
func clampSignal(dbm int) int32 {
	return int32(min(max(dbm, minSignalDBM), maxSignalDBM))
}

// qualityToDBM converts NetworkManager's signal quality (0–100 %) to dBm. It
// inverts NetworkManager's own mapping (nm_wifi_utils_level_to_quality:
// -100..-40 dBm linearly onto 0..100 %, truncated), so a quality that NM
// computed from a whole dBm gives that dBm back exactly: 100 % → -40 dBm,
// 50 % → -70 dBm, 0 % → -100 dBm. It is still an estimate: NM clamps, so
// everything stronger than -40 dBm reads as 100 %.
//
// The common rule of thumb dBm = quality/2 - 100 is the Windows WLAN API's
// scale, not NetworkManager's; used on nmcli's numbers it would put a 100 %
// signal at -50 dBm, 10 dB below where NM saw it.
func qualityToDBM(q int) int32 {
	q = min(max(q, 0), 100)
	below := (3*(100-q) + 4) / 5 // dB below -40: ceil(0.6 × (100 - q))
	return int32(-40 - below)
}

// rank orders securities from weakest to strongest, to pick one when an
// access point offers several (WPA2/WPA3 transition mode is WPA3, WPA1+WPA2
// mixed mode is WPA2).
func rank(s sharespotv1.Security) int {
	switch s {
	case sharespotv1.Security_SECURITY_OPEN:
		return 1
	case sharespotv1.Security_SECURITY_WEP:
		return 2
	case sharespotv1.Security_SECURITY_OWE:
		return 3
	case sharespotv1.Security_SECURITY_WPA:
		return 4
	case sharespotv1.Security_SECURITY_WPA2:
		return 5
	case sharespotv1.Security_SECURITY_WPA3:
		return 6
	}
	return 0
}

func stronger(a, b sharespotv1.Security) sharespotv1.Security {
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// mergeByBSSID keeps one entry per BSSID (nmcli lists an access point once
// per Wi-Fi device): the strongest, connected if any was, in first-seen order.
func mergeByBSSID(aps []AccessPoint) []AccessPoint {
	out := make([]AccessPoint, 0, len(aps))
	at := make(map[string]int, len(aps))
	for _, ap := range aps {
		i, seen := at[ap.BSSID]
		if !seen {
			at[ap.BSSID] = len(out)
			out = append(out, ap)
			continue
		}
		connected := out[i].Connected || ap.Connected
		if ap.SignalDBM > out[i].SignalDBM {
			out[i] = ap
		}
		out[i].Connected = connected
	}
	return out
}

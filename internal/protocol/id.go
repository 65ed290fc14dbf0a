package protocol

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"net"
	"strings"
)

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewID returns prefix_ followed by 128 random bits in lower-case base32:
// the form of every ID the server makes (sessions, quotes, hotspots,
// messages) but device IDs (package deviceid).
func NewID(prefix string) string {
	var b [16]byte
	rand.Read(b[:])
	return prefix + "_" + strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// NormalizeBSSID parses a BSSID and returns its canonical lower-case
// colon form: six hex octets of a station (unicast, neither all zeros nor
// broadcast) address.
func NormalizeBSSID(s string) (string, error) {
	mac, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(mac) != 6 {
		return "", fmt.Errorf("BSSID %q is not six colon-separated hex octets", s)
	}
	if mac.String() == "00:00:00:00:00:00" || mac.String() == "ff:ff:ff:ff:ff:ff" {
		return "", fmt.Errorf("BSSID %s is not a station address", mac)
	}
	if mac[0]&1 == 1 {
		return "", fmt.Errorf("BSSID %s is a multicast address", mac)
	}
	return mac.String(), nil
}

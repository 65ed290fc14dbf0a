package protocol

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"net"
	"strings"
	"time"
)

// idAlphabet is the lower-case RFC 4648 base32 alphabet's characters in
// ASCII order, so that IDs compare as their bits do. IDs made before it
// used the same characters in the RFC's order; both are valid IDs.
const idAlphabet = "234567abcdefghijklmnopqrstuvwxyz"

var idEncoding = base32.NewEncoding(idAlphabet).WithPadding(base32.NoPadding)

// idLen is the length of an ID's part after prefix_: 128 bits in base32.
const idLen = 26

// NewID returns prefix_ followed by 128 bits in base32 (26 characters of
// idAlphabet): the form of every ID the server makes (sessions, quotes,
// hotspots, receipts, messages) but device IDs (package deviceid).
//
// The first 48 bits are the time in milliseconds and the other 80 random,
// as a UUIDv7's (RFC 9562): IDs made in the same moment sort together, so
// the rows a write inserts and the index entries keyed by them land on the
// same few B-tree pages instead of one random page each, and a database
// writes and caches fewer pages per commit (docs/benchmarks.md, "Eighth
// step"). 80 random bits keep an ID unguessable; an ID tells whoever sees
// it when it was made, which each party of a session knows anyway.
func NewID(prefix string) string {
	return newIDAt(prefix, time.Now())
}

func newIDAt(prefix string, t time.Time) string {
	var b [16]byte
	ms := uint64(t.UnixMilli())
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	rand.Read(b[6:])
	return prefix + "_" + idEncoding.EncodeToString(b[:])
}

// ShortID abbreviates an ID for people to tell IDs apart at a glance: an ID
// NewID made keeps its prefix and its last n characters (its first ones are
// the time, the same for IDs made the same season); any other ID (a device's)
// its first n+4 characters. The whole ID stays the reference.
func ShortID(id string, n int) string {
	if i := strings.LastIndexByte(id, '_'); i > 0 && len(id)-i-1 == idLen && n < idLen {
		return id[:i+1] + "…" + id[len(id)-n:]
	}
	if len(id) > n+4 {
		return id[:n+4] + "…"
	}
	return id
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

package wg

import (
	"encoding/binary"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pass decides a packet's fate, fromGuest or to one: an IPv4 packet of a
// live session's address, within its limit, is counted and passes; the
// control stream to or from the gateway passes uncounted; anything else
// (IPv6, which no guest is given, a malformed header, an unknown address)
// is dropped.
func (g *Gateway) pass(p []byte, fromGuest bool, now time.Time) bool {
	if len(p) < header.IPv4MinimumSize || p[0]>>4 != 4 {
		return false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < header.IPv4MinimumSize || len(p) < ihl {
		return false
	}
	src := netip.AddrFrom4([4]byte(p[12:16]))
	dst := netip.AddrFrom4([4]byte(p[16:20]))
	guest, other := dst, src
	if fromGuest {
		guest, other = src, dst
	}
	if other == g.self && isControl(p, ihl, fromGuest) {
		return g.bySource(guest) != nil
	}
	s := g.bySource(guest)
	if s == nil {
		return false
	}
	return s.take(int64(len(p)), now)
}

// isControl reports whether an IPv4 packet is of a TCP connection to the
// gateway's ControlPort (fromGuest: its destination port; else its
// source port).
func isControl(p []byte, ihl int, fromGuest bool) bool {
	if p[9] != uint8(header.TCPProtocolNumber) || len(p) < ihl+4 {
		return false
	}
	port := binary.BigEndian.Uint16(p[ihl:]) // source
	if fromGuest {
		port = binary.BigEndian.Uint16(p[ihl+2:])
	}
	return port == ControlPort
}

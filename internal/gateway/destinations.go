package gateway

import (
	"net"
	"net/netip"
	"slices"
)

// Policy says which destinations a gateway's guests may reach: the
// userspace gateways (the proxy, WireGuard) check it on every address
// they dial, after name resolution.
type Policy struct {
	// Allow is the base policy: DefaultDestinations unless set, and then
	// also none of this machine's own addresses, on any port (read from
	// its interfaces on every check, so an address that comes or goes
	// counts at once).
	Allow func(netip.AddrPort) bool
	// Networks are private networks the host shares with its guests (a
	// LAN it wants them to reach): destinations in them are allowed
	// although the default policy refuses private networks. Loopback,
	// link-local, cloud metadata and the host's own addresses stay
	// refused.
	Networks  []netip.Prefix
	refuseOwn bool
}

// NewPolicy is the policy of allow (nil: DefaultDestinations and the
// host's own addresses refused) and the shared networks.
func NewPolicy(allow func(netip.AddrPort) bool, networks []netip.Prefix) Policy {
	p := Policy{Allow: allow, Networks: networks}
	if p.Allow == nil {
		p.Allow, p.refuseOwn = DefaultDestinations, true
	}
	return p
}

// Allowed reports whether guests may reach ap.
func (p Policy) Allowed(ap netip.AddrPort) bool {
	if p.refuseOwn && IsOwn(ap.Addr()) {
		return false
	}
	return p.shared(ap) || p.Allow(ap)
}

// shared reports whether ap is in a network the host shares with its
// guests, and otherwise reachable.
func (p Policy) shared(ap netip.AddrPort) bool {
	a := embeddedIPv4(ap.Addr().WithZone(""))
	if ap.Port() == 0 || !reachable(a) {
		return false
	}
	for _, n := range p.Networks {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// DefaultDestinations allows public unicast addresses: not loopback,
// link-local (all of 169.254.0.0/16 and fe80::/10), unspecified or
// private ones (10/8, 172.16/12, 192.168/16, the carrier-grade NAT range
// 100.64/10, fc00::/7: the host's home router, its NAS, its provider's
// network), nor the cloud metadata and host endpoints (a guest must not
// reach the host's own services or its cloud's view of it through the
// gateway). An IPv4 address written as IPv6 (::ffff:a.b.c.d, the
// deprecated ::a.b.c.d, NAT64's 64:ff9b::a.b.c.d) is judged as the IPv4
// address it reaches. A gateway with the default policy also refuses the
// host's own interface addresses (Config.AllowDestination); a network the
// host shares is allowed with Config.AllowNetworks.
func DefaultDestinations(ap netip.AddrPort) bool {
	a := embeddedIPv4(ap.Addr().WithZone(""))
	return ap.Port() != 0 && reachable(a) && !a.IsPrivate() && !cgnat.Contains(a)
}

// reachable reports whether a may be a destination at all: a unicast
// address that is neither loopback, link-local, unspecified nor a cloud
// endpoint (the refusals no configuration lifts but --allow-local's
// loopback).
func reachable(a netip.Addr) bool {
	if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() ||
		a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() {
		return false
	}
	if a.Is4() && (a.As4()[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return false
	}
	return !slices.Contains(cloudEndpoints, a)
}

// embeddedIPv4 is the IPv4 address an IPv6 one reaches when it embeds
// one: IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96, deprecated,
// but a stack may still route it as IPv4) and NAT64 (64:ff9b::/96);
// otherwise a itself.
func embeddedIPv4(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if !a.Is6() {
		return a
	}
	b := a.As16()
	var four [4]byte
	copy(four[:], b[12:])
	switch {
	case [12]byte(b[:12]) == [12]byte{} && four != [4]byte{} && four != [4]byte{0, 0, 0, 1}: // ::a.b.c.d, not :: or ::1
		return netip.AddrFrom4(four)
	case nat64.Contains(a):
		return netip.AddrFrom4(four)
	}
	return a
}

var (
	cgnat = netip.MustParsePrefix("100.64.0.0/10")
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

// LocalDestinations is DefaultDestinations plus this machine's own
// addresses: loopback, and (given as the AllowDestination, it replaces the
// default policy) every interface address. For trying Sharespot on one
// machine (sharespot share --allow-local); cloud endpoints and private
// networks stay refused.
func LocalDestinations(ap netip.AddrPort) bool {
	return ap.Port() != 0 && embeddedIPv4(ap.Addr()).IsLoopback() || DefaultDestinations(ap)
}

// cloudEndpoints answer only the machine that asks them, with its
// credentials or its cloud's view of it. Those in 169.254.0.0/16 are
// refused as link-local anyway; they are listed to say what they are.
var cloudEndpoints = []netip.Addr{
	netip.AddrFrom4([4]byte{169, 254, 169, 254}), // metadata: AWS, GCP, Azure, OCI, OpenStack, DigitalOcean
	netip.AddrFrom4([4]byte{169, 254, 170, 2}),   // AWS ECS task metadata and credentials
	netip.MustParseAddr("fd00:ec2::254"),         // AWS metadata over IPv6
	netip.AddrFrom4([4]byte{100, 100, 100, 200}), // Alibaba Cloud metadata
	netip.AddrFrom4([4]byte{168, 63, 129, 16}),   // Azure WireServer
	netip.AddrFrom4([4]byte{192, 0, 0, 192}),     // Oracle Cloud metadata (IMDS v1)
}

// IsOwn reports whether a is an address of one of this machine's
// interfaces, read now (a dump over netlink, some 15 µs: cheap beside the
// dial, and never stale). When the interfaces cannot be read, every
// address counts as own: the dial is refused.
func IsOwn(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

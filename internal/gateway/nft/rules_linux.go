package nft

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside the table. Each guest session has a tag (tagOf): chain
// "g-TAG", quota object "q-TAG", counter object "c-TAG".
const (
	chainForward = "forward"
	chainInput   = "input"
	chainNAT     = "postrouting"
	chainPre     = "prerouting" // the captive portal's interception
	setAdm4      = "adm4"       // ipv4_addr . ether_addr: admitted guests
	setAdm6      = "adm6"       // ipv6_addr . ether_addr
	setUp4       = "up4"        // ipv4_addr . ether_addr : verdict
	setUp6       = "up6"        // ipv6_addr . ether_addr : verdict
	setDown4     = "down4"      // ipv4_addr : verdict
	setDown6     = "down6"      // ipv6_addr : verdict
)

// Registers: NFT_REG_1 is 16 bytes and overlaps NFT_REG32_00..03, so a
// concatenated key loaded into REG32_00 (address) and the next free 32-bit
// register (MAC) is looked up from register 1.
const (
	reg1    = 1
	reg32At = 8 // NFT_REG32_00
)

// layout is the table's static part: chains, maps, base rules.
type layout struct {
	table                  *nftables.Table
	forward, input, nat    *nftables.Chain
	up4, up6, down4, down6 *nftables.Set
	adm4, adm6             *nftables.Set
	pre                    *nftables.Chain
	lan, uplink            string
	admitPort              uint16
	// The walled garden: TCP destinations every guest reaches, admitted
	// or not (the Sharespot server); whether unadmitted guests' port-80
	// requests are redirected to the admission endpoint (the captive
	// portal); whether guests may ask the host's DNS resolver.
	garden    []netip.AddrPort
	intercept bool
	dns       bool
}

// walledGarden is the part of Config the layout needs.
type walledGarden struct {
	garden    []netip.AddrPort
	intercept bool
	dns       bool
}

func newLayout(table, lan, uplink string, admitPort uint16, wg walledGarden) *layout {
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	accept := nftables.ChainPolicyAccept
	l := &layout{table: t, lan: lan, uplink: uplink, admitPort: admitPort, garden: wg.garden, intercept: wg.intercept, dns: wg.dns}
	l.pre = &nftables.Chain{Name: chainPre, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept}
	l.adm4 = &nftables.Set{Table: t, Name: setAdm4, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeEtherAddr)}
	l.adm6 = &nftables.Set{Table: t, Name: setAdm6, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeEtherAddr)}
	l.forward = &nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	l.input = &nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	l.nat = &nftables.Chain{Name: chainNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept}
	l.up4 = &nftables.Set{Table: t, Name: setUp4, IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeEtherAddr), DataType: nftables.TypeVerdict}
	l.up6 = &nftables.Set{Table: t, Name: setUp6, IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeEtherAddr), DataType: nftables.TypeVerdict}
	l.down4 = &nftables.Set{Table: t, Name: setDown4, IsMap: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}
	l.down6 = &nftables.Set{Table: t, Name: setDown6, IsMap: true, KeyType: nftables.TypeIP6Addr, DataType: nftables.TypeVerdict}
	return l
}

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func metaIs(key expr.MetaKey, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: data},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// build queues the whole static part: table, chains (flushed and refilled,
// so that a reconcile replaces whatever rules an earlier version left),
// the four binding maps and the NAT rule. It is idempotent.
func (l *layout) build(c *nftables.Conn) error {
	c.AddTable(l.table)
	for _, ch := range []*nftables.Chain{l.forward, l.input, l.nat, l.pre} {
		c.AddChain(ch)
		c.FlushChain(ch)
	}
	for _, s := range []*nftables.Set{l.up4, l.up6, l.down4, l.down6, l.adm4, l.adm6} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("add map %s: %w", s.Name, err)
		}
	}
	lanIn := metaIs(expr.MetaKeyIIFNAME, ifname(l.lan))
	lanOut := metaIs(expr.MetaKeyOIFNAME, ifname(l.lan))
	v4 := metaIs(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4})
	v6 := metaIs(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV6})
	etherSrc := func(reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	}
	lookup := func(s *nftables.Set) expr.Any {
		return &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID, DestRegister: 0, IsDestRegSet: true}
	}
	// forward: the walled garden first (the server stays reachable when a
	// guest's volume is used up, to top up; its traffic is not metered),
	// then a guest's packets, either way, jump to its chain through the
	// maps; everything else from or to the LAN is dropped.
	var fwd [][]expr.Any
	for _, ap := range l.garden {
		fam, dst, src, n := v4, uint32(16), uint32(12), uint32(4)
		if ap.Addr().Is6() {
			fam, dst, src, n = v6, 24, 8, 16
		}
		addr := ap.Addr().AsSlice()
		fwd = append(fwd,
			cat(lanIn, fam, []expr.Any{
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: dst, Len: n},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addr}}, tcpPort(2, ap.Port()), verdict(expr.VerdictAccept)),
			cat(lanOut, fam, []expr.Any{
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: src, Len: n},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addr}}, tcpPort(0, ap.Port()), verdict(expr.VerdictAccept)))
	}
	fwd = append(fwd, [][]expr.Any{
		cat(lanIn, v4, []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			etherSrc(reg32At + 1), lookup(l.up4)}),
		cat(lanIn, v6, []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
			etherSrc(reg32At + 4), lookup(l.up6)}),
		cat(lanIn, verdict(expr.VerdictDrop)),
		cat(lanOut, v4, []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, lookup(l.down4)}),
		cat(lanOut, v6, []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}, lookup(l.down6)}),
		cat(lanOut, verdict(expr.VerdictDrop)),
	}...)
	for _, e := range fwd {
		c.AddRule(&nftables.Rule{Table: l.table, Chain: l.forward, Exprs: e})
	}
	// input: from the LAN only the admission endpoint (which is also the
	// captive portal's), DHCP, IPv6 neighbour/router discovery and, with
	// AllowDNS, the host's DNS resolver reach the host; the rest is
	// dropped, admitted or not.
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, l.admitPort)
	l4 := func(proto byte, dport uint16) []expr.Any {
		p := make([]byte, 2)
		binary.BigEndian.PutUint16(p, dport)
		return cat(metaIs(expr.MetaKeyL4PROTO, []byte{proto}), []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: p},
		})
	}
	icmp6 := func(typ byte) []expr.Any {
		return cat(metaIs(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMPV6}), []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{typ}},
		})
	}
	in := [][]expr.Any{
		cat(lanIn, l4(unix.IPPROTO_TCP, l.admitPort), verdict(expr.VerdictAccept)),
		cat(lanIn, l4(unix.IPPROTO_UDP, 67), verdict(expr.VerdictAccept)),
		cat(lanIn, l4(unix.IPPROTO_UDP, 547), verdict(expr.VerdictAccept)),
		cat(lanIn, icmp6(133), verdict(expr.VerdictAccept)), // router solicitation
		cat(lanIn, icmp6(135), verdict(expr.VerdictAccept)), // neighbour solicitation
		cat(lanIn, icmp6(136), verdict(expr.VerdictAccept)), // neighbour advertisement
	}
	if l.dns {
		in = append(in, cat(lanIn, l4(unix.IPPROTO_UDP, 53), verdict(expr.VerdictAccept)),
			cat(lanIn, l4(unix.IPPROTO_TCP, 53), verdict(expr.VerdictAccept)))
	}
	in = append(in, cat(lanIn, verdict(expr.VerdictDrop)))
	for _, e := range in {
		c.AddRule(&nftables.Rule{Table: l.table, Chain: l.input, Exprs: e})
	}
	// prerouting: a guest not admitted (its address and MAC in no
	// binding) that asks for anything on TCP port 80 is redirected to the
	// admission endpoint, which answers with the portal (captive portal
	// detection by Android, iOS and Windows probes).
	if l.intercept {
		redirect := func(fam []expr.Any, off, n uint32, macReg uint32, set *nftables.Set) []expr.Any {
			p := make([]byte, 2)
			binary.BigEndian.PutUint16(p, l.admitPort)
			return cat(lanIn, fam, tcpPort(2, 80), []expr.Any{
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				etherSrc(macReg),
				&expr.Lookup{SourceRegister: reg1, SetName: set.Name, SetID: set.ID, Invert: true},
				&expr.Immediate{Register: reg1, Data: p},
				&expr.Redir{RegisterProtoMin: reg1},
			})
		}
		c.AddRule(&nftables.Rule{Table: l.table, Chain: l.pre, Exprs: redirect(v4, 12, 4, reg32At+1, l.adm4)})
		c.AddRule(&nftables.Rule{Table: l.table, Chain: l.pre, Exprs: redirect(v6, 8, 16, reg32At+4, l.adm6)})
	}
	// postrouting: NAT to the uplink (IPv4 and IPv6).
	c.AddRule(&nftables.Rule{Table: l.table, Chain: l.nat, Exprs: cat(
		metaIs(expr.MetaKeyOIFNAME, ifname(l.uplink)), []expr.Any{&expr.Masq{}})})
	return nil
}

// tcpPort matches TCP with the given port at off in the transport header
// (0: source, 2: destination).
func tcpPort(off uint32, port uint16) []expr.Any {
	p := make([]byte, 2)
	binary.BigEndian.PutUint16(p, port)
	return cat(metaIs(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP}), []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: p},
	})
}

// guestChain is the chain a session's packets jump to.
func (l *layout) guestChain(tag string) *nftables.Chain {
	return &nftables.Chain{Name: "g-" + tag, Table: l.table}
}

func (l *layout) quotaObj(tag string, limit, consumed uint64) *nftables.QuotaObj {
	return &nftables.QuotaObj{Table: l.table, Name: "q-" + tag, Bytes: limit, Consumed: consumed, Over: true}
}

func (l *layout) counterObj(tag string, bytes uint64) *nftables.CounterObj {
	return &nftables.CounterObj{Table: l.table, Name: "c-" + tag, Bytes: bytes}
}

// guestMode says how addGuest treats a session's quota object.
type guestMode int

const (
	// create: new quota and counter objects, both at used.
	create guestMode = iota
	// update: the quota exists; change its limit in place (the kernel
	// keeps what it consumed); the counter exists and is left alone.
	update
	// replace: the quota exists and is used up; swap it for a new one
	// consumed at used, in the same transaction as the chain's rules.
	replace
)

// addGuest queues a session's objects, chain and rules. The quota object
// is made before the counter, so that a dump of the table lists it first.
func (l *layout) addGuest(c *nftables.Conn, tag string, limit, used uint64, mode guestMode) {
	ch := l.guestChain(tag)
	c.AddChain(ch)
	c.FlushChain(ch)
	switch mode {
	case create:
		c.AddObj(l.quotaObj(tag, limit, used))
		c.AddObj(l.counterObj(tag, used))
	case update:
		c.AddObj(l.quotaObj(tag, limit, 0))
	case replace:
		c.DeleteObject(l.quotaObj(tag, 0, 0))
		c.AddObj(l.quotaObj(tag, limit, used))
	}
	// quota over limit → drop; else count and accept.
	c.AddRule(&nftables.Rule{Table: l.table, Chain: ch, Exprs: []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeQuota), Name: "q-" + tag}, &expr.Verdict{Kind: expr.VerdictDrop}}})
	c.AddRule(&nftables.Rule{Table: l.table, Chain: ch, Exprs: []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: "c-" + tag}, &expr.Verdict{Kind: expr.VerdictAccept}}})
}

// delGuest queues the removal of a session's chain and objects; its map
// elements must be removed before, in the same batch.
func (l *layout) delGuest(c *nftables.Conn, tag string) {
	ch := l.guestChain(tag)
	c.FlushChain(ch)
	c.DelChain(ch)
	c.DeleteObject(l.quotaObj(tag, 0, 0))
	c.DeleteObject(l.counterObj(tag, 0))
}

// binding is one address (and MAC) a session's guest was admitted from.
type binding struct {
	addr netip.Addr
	mac  net.HardwareAddr
}

func (b binding) String() string { return b.addr.String() + "/" + b.mac.String() }

// elements returns the map elements for a binding: upload keyed by address
// and MAC, download keyed by address.
func (l *layout) elements(b binding, tag string) (up, down *nftables.Set, upEl, downEl nftables.SetElement) {
	jump := &expr.Verdict{Kind: expr.VerdictJump, Chain: "g-" + tag}
	mac := make([]byte, 8) // 6 bytes padded to the register's 4-byte boundary
	copy(mac, b.mac)
	a := b.addr.AsSlice()
	if b.addr.Is4() {
		up, down = l.up4, l.down4
	} else {
		up, down = l.up6, l.down6
	}
	upEl = nftables.SetElement{Key: append(append([]byte{}, a...), mac...), VerdictData: jump, Comment: tag}
	downEl = nftables.SetElement{Key: a, VerdictData: jump, Comment: tag}
	return up, down, upEl, downEl
}

// admitted returns the set and element that mark a binding admitted (the
// captive portal's interception skips it).
func (l *layout) admitted(b binding) (*nftables.Set, nftables.SetElement) {
	mac := make([]byte, 8)
	copy(mac, b.mac)
	set := l.adm4
	if b.addr.Is6() {
		set = l.adm6
	}
	return set, nftables.SetElement{Key: append(append([]byte{}, b.addr.AsSlice()...), mac...)}
}

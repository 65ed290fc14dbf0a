package portal_test

import (
	"encoding/binary"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/sharespot/sharespot/internal/netns"
)

// leakWatch counts, in the internet namespace, every IP packet that
// arrives on its uplink other than TCP to the server's port (and IPv6
// neighbour discovery): what a walled garden must keep at zero.
type leakWatch struct {
	nc    *nftables.Conn
	table *nftables.Table
	chain *nftables.Chain
}

func newLeakWatch(t *testing.T, ns *netns.NS, serverPort uint16) *leakWatch {
	t.Helper()
	nc, err := nftables.New(nftables.WithNetNSFd(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	w := &leakWatch{nc: nc, table: &nftables.Table{Name: "watch", Family: nftables.TableFamilyINet}}
	accept := nftables.ChainPolicyAccept
	w.chain = &nftables.Chain{Name: "pre", Table: w.table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRaw, Policy: &accept}
	nc.AddTable(w.table)
	nc.AddChain(w.chain)
	meta := func(k expr.MetaKey, op expr.CmpOp, v []byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: k, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: v}}
	}
	iif := make([]byte, unix.IFNAMSIZ)
	copy(iif, "eth0")
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, serverPort)
	rules := [][]expr.Any{
		append(append(append(meta(expr.MetaKeyIIFNAME, expr.CmpOpEq, iif), meta(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})...),
			meta(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{unix.IPPROTO_TCP})...),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port}, &expr.Verdict{Kind: expr.VerdictAccept}),
		append(append(meta(expr.MetaKeyIIFNAME, expr.CmpOpEq, iif), meta(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})...),
			&expr.Counter{}),
		append(append(append(meta(expr.MetaKeyIIFNAME, expr.CmpOpEq, iif), meta(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV6})...),
			meta(expr.MetaKeyL4PROTO, expr.CmpOpNeq, []byte{unix.IPPROTO_ICMPV6})...),
			&expr.Counter{}),
	}
	for _, e := range rules {
		nc.AddRule(&nftables.Rule{Table: w.table, Chain: w.chain, Exprs: e})
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("leak watch: %v", err)
	}
	return w
}

// leaked is the number of packets counted so far.
func (w *leakWatch) leaked(t *testing.T) uint64 {
	t.Helper()
	rules, err := w.nc.GetRules(w.table, w.chain)
	if err != nil {
		t.Fatalf("leak watch: %v", err)
	}
	var n uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				n += c.Packets
			}
		}
	}
	return n
}

package nft

// Reconciling the table with the store at start: what the kernel still
// holds of an earlier run, and the one batch that brings it to the desired
// state.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/sharespot/sharespot/internal/gateway"
)

// kernelState is what a table left by an earlier run holds.
type kernelState struct {
	counters map[string]uint64 // by tag
	quotas   map[string]*nftables.QuotaObj
	bindings map[string][]binding
	chains   []string // guest tags
}

func (g *Gateway) readKernel() (*kernelState, error) {
	ks := &kernelState{counters: map[string]uint64{}, quotas: map[string]*nftables.QuotaObj{}, bindings: map[string][]binding{}}
	if _, err := g.nc.ListTableOfFamily(g.lay.table.Name, g.lay.table.Family); err != nil {
		return ks, nil // no table yet
	}
	objs, err := g.nc.GetObjects(g.lay.table)
	if err != nil {
		return nil, fmt.Errorf("read objects: %w", err)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			if tag, ok := strings.CutPrefix(o.Name, "c-"); ok {
				ks.counters[tag] = o.Bytes
			}
		case *nftables.QuotaObj:
			if tag, ok := strings.CutPrefix(o.Name, "q-"); ok {
				ks.quotas[tag] = o
			}
		}
	}
	chains, err := g.nc.ListChainsOfTableFamily(g.lay.table.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == g.lay.table.Name {
			if tag, ok := strings.CutPrefix(c.Name, "g-"); ok {
				ks.chains = append(ks.chains, tag)
			}
		}
	}
	for _, s := range []*nftables.Set{g.lay.up4, g.lay.up6} {
		els, err := g.nc.GetSetElements(s)
		if err != nil {
			continue // the map does not exist yet
		}
		for _, e := range els {
			n := 4
			if s == g.lay.up6 {
				n = 16
			}
			if len(e.Key) < n+6 || e.Comment == "" {
				continue
			}
			a, _ := netip.AddrFromSlice(e.Key[:n])
			ks.bindings[e.Comment] = append(ks.bindings[e.Comment], binding{addr: a, mac: net.HardwareAddr(slices.Clone(e.Key[n : n+6]))})
		}
	}
	return ks, nil
}

// reconcile brings the table to the desired state: the static part, and
// one chain, quota and counter per stored session with the bindings the
// kernel still holds for it; everything else in the table goes. A session
// whose counter survived (the process restarted, the kernel did not) keeps
// its exact usage; otherwise its saved upper bound counts as used.
func (g *Gateway) reconcile() error {
	var recs []gateway.Record
	if g.store != nil {
		var err error
		if recs, err = g.store.Load(); err != nil {
			return fmt.Errorf("nft: load usage: %w", err)
		}
	}
	ks, err := g.readKernel()
	if err != nil {
		return fmt.Errorf("nft: read table %s: %w", g.lay.table.Name, err)
	}
	err = g.apply(recs, ks)
	if err != nil {
		// The old table does not fit (another version's layout): start
		// from scratch, every session at its saved bound.
		g.log.Warn("rebuilding the nftables table", "table", g.lay.table.Name, "err", err)
		g.nftMu.Lock()
		g.nc.DelTable(g.lay.table)
		derr := g.nc.Flush()
		g.nftMu.Unlock()
		if derr != nil && !errors.Is(derr, unix.ENOENT) {
			return fmt.Errorf("nft: delete table %s: %w", g.lay.table.Name, errors.Join(err, derr))
		}
		g.sessions, g.byAddr = map[string]*session{}, map[netip.Addr]*session{}
		empty := &kernelState{counters: map[string]uint64{}, quotas: map[string]*nftables.QuotaObj{}, bindings: map[string][]binding{}}
		if err := g.apply(recs, empty); err != nil {
			return fmt.Errorf("nft: build table %s: %w", g.lay.table.Name, err)
		}
	}
	if n := g.flowtables(); n > 0 {
		g.log.Warn("a flowtable exists in this network namespace; flows it offloads bypass the forward hook and are not metered",
			"flowtables", n)
	}
	return g.save()
}

// flowtables counts the flowtables of every table in the namespace. This
// gateway makes none: metered flows must not be offloaded past its
// forward chain.
func (g *Gateway) flowtables() int {
	g.nftMu.Lock()
	defer g.nftMu.Unlock()
	tables, err := g.nc.ListTables()
	if err != nil {
		return 0
	}
	n := 0
	for _, t := range tables {
		if fts, err := g.nc.ListFlowtables(t); err == nil {
			n += len(fts)
		}
	}
	return n
}

func (g *Gateway) apply(recs []gateway.Record, ks *kernelState) error {
	now := time.Now()
	want := map[string]bool{}
	g.nftMu.Lock()
	locked := true
	defer func() {
		if locked {
			g.nftMu.Unlock()
		}
	}()
	if err := g.lay.build(g.nc); err != nil {
		return err
	}
	sessions := map[string]*session{}
	byAddr := map[netip.Addr]*session{}
	for _, r := range recs {
		tag := tagOf(r.SessionID)
		c, haveCounter := ks.counters[tag]
		q, haveQuota := ks.quotas[tag]
		used, mode := r.Used, create
		if haveCounter && haveQuota {
			// The kernel's count is exact and never above the bound the
			// store holds (the limit was only ever raised after a save).
			used, mode = int64(c), update
			if q.Consumed >= q.Bytes {
				// Used up: nothing passes, the counter stands still, so a
				// new quota object starting at the counter is exact.
				mode = replace
			}
		}
		s := newSession(gateway.RestoreMeter(g.meter, r, used, mode != create, now))
		s.limitSet = s.bound()
		s.resetAt = s.m.Used()
		want[s.tag] = true
		g.lay.addGuest(g.nc, s.tag, uint64(s.limitSet), uint64(s.m.Used()), mode)
		for _, b := range ks.bindings[s.tag] {
			if len(s.bindings) < g.cfg.MaxBindings && byAddr[b.addr] == nil {
				s.bindings = append(s.bindings, b)
				byAddr[b.addr] = s
			}
		}
		sessions[s.id] = s
	}
	// Refill the maps: drop every element, add the kept bindings back.
	for _, m := range []*nftables.Set{g.lay.up4, g.lay.up6, g.lay.down4, g.lay.down6, g.lay.adm4, g.lay.adm6} {
		g.nc.FlushSet(m)
	}
	for _, s := range sessions {
		for _, b := range s.bindings {
			if err := g.addBindingLocked(b, s.tag); err != nil {
				return err
			}
		}
	}
	for _, tag := range ks.chains {
		if !want[tag] {
			g.lay.delGuest(g.nc, tag)
		}
	}
	if err := g.nc.Flush(); err != nil {
		return err
	}
	g.nftMu.Unlock()
	locked = false
	g.mu.Lock()
	g.sessions, g.byAddr = sessions, byAddr
	g.mu.Unlock()
	return nil
}

func (g *Gateway) addBindingLocked(b binding, tag string) error {
	up, down, ue, de := g.lay.elements(b, tag)
	if err := g.nc.SetAddElements(up, []nftables.SetElement{ue}); err != nil {
		return err
	}
	adm, ae := g.lay.admitted(b)
	if err := g.nc.SetAddElements(adm, []nftables.SetElement{ae}); err != nil {
		return err
	}
	return g.nc.SetAddElements(down, []nftables.SetElement{de})
}

func (g *Gateway) delBindingLocked(b binding, tag string) error {
	up, down, ue, de := g.lay.elements(b, tag)
	ue.VerdictData, de.VerdictData = nil, nil
	if err := g.nc.SetDeleteElements(up, []nftables.SetElement{ue}); err != nil {
		return err
	}
	adm, ae := g.lay.admitted(b)
	if err := g.nc.SetDeleteElements(adm, []nftables.SetElement{ae}); err != nil {
		return err
	}
	return g.nc.SetDeleteElements(down, []nftables.SetElement{de})
}

package nft

// Kernel limits: raising and lowering each session's quota object so that
// it never exceeds the bound its meter saved.

import (
	"fmt"
)

// owed reports whether a used-up quota object holds back bytes the session
// may still use: the quota also counts the packets it drops, so if a limit
// was raised in place while packets were being dropped, those count
// against the session until the object is replaced. Only worth it when at
// least a full-size packet fits, and once per movement of the counter.
func (s *session) owed(o guestObjs) bool {
	return o.frozen() && s.bound()-o.counter >= mtu && o.counter != s.resetAt
}

// setLimits brings each session's kernel quota to its current bound.
//
// The kernel's quota object counts every packet it sees, the ones it
// drops too, and a limit changed in place keeps what was counted. So:
//
//   - a quota that is not used up is raised in place: it has dropped
//     nothing since it was made (drops only start once it is used up), so
//     what it counted is what passed, and nothing is lost or gained;
//   - a used-up quota is replaced, in the same transaction as the rules
//     that use it, by a new object whose consumed bytes are the counter's:
//     nothing passes while it is used up, so the counter read before the
//     transaction is still exact when it commits.
//
// Either way the kernel passes at most the new bound in all. Limits only
// rise here (a replacement may also give back bytes counted for dropped
// packets, see owed).
func (g *Gateway) setLimits() error {
	g.limMu.Lock()
	defer g.limMu.Unlock()
	objs, err := g.readObjects()
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	type change struct {
		s       *session
		limit   int64
		counter int64
		mode    guestMode
	}
	var changes []change
	for _, s := range g.sessions {
		o, ok := objs[s.tag]
		if s.m.Revoked() || !ok || !o.haveQuota {
			continue
		}
		b := s.bound()
		switch {
		case o.frozen() && (b > s.limitSet || s.owed(o)):
			changes = append(changes, change{s: s, limit: b, counter: o.counter, mode: replace})
		case !o.frozen() && b > s.limitSet:
			changes = append(changes, change{s: s, limit: b, mode: update})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	g.nftMu.Lock()
	for _, c := range changes {
		g.lay.addGuest(g.nc, c.s.tag, uint64(c.limit), uint64(c.counter), c.mode)
	}
	err = g.nc.Flush()
	g.nftMu.Unlock()
	if err != nil {
		return fmt.Errorf("set quota limits: %w", err)
	}
	for _, c := range changes {
		c.s.limitSet = c.limit
		if c.mode == replace {
			c.s.resetAt = c.counter
			c.s.frozen = false
		}
	}
	return nil
}

// shrinkLimits lowers the kernel limit of idle sessions marked shrink to
// PersistAhead above their use, first in the kernel, then (by the caller's
// save) in the store: the store may hold more than the kernel allows,
// never less. A session that moved meanwhile is left alone; one whose
// next packet no longer fits is raised again by the next poll.
func (g *Gateway) shrinkLimits() error {
	g.limMu.Lock()
	defer g.limMu.Unlock()
	objs, err := g.readObjects()
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var low []*session
	prev := map[*session]int64{}
	g.nftMu.Lock()
	for _, s := range g.sessions {
		o, ok := objs[s.tag]
		if !s.shrink || s.m.Revoked() || !ok || o.frozen() || o.counter != s.m.Used() {
			s.shrink = false
			continue
		}
		s.shrink = false
		s.m.ResetLead()
		limit := min(s.m.Quota(), s.m.Used()+s.m.Lead())
		if limit >= s.limitSet {
			continue
		}
		g.nc.AddObj(g.lay.quotaObj(s.tag, uint64(limit), 0))
		prev[s] = s.limitSet
		s.limitSet = limit
		low = append(low, s)
	}
	if len(low) == 0 {
		g.nftMu.Unlock()
		return nil
	}
	err = g.nc.Flush()
	g.nftMu.Unlock()
	if err != nil {
		for _, s := range low { // the batch failed as a whole
			s.limitSet = prev[s]
		}
		return fmt.Errorf("lower quota limits: %w", err)
	}
	for _, s := range low {
		s.m.Lower(s.limitSet)
	}
	return nil
}

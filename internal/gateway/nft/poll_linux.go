package nft

// Polling: the kernel counters read every PollInterval, fed to each
// session's meter (events, save-ahead).

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/nftables"
)

func (g *Gateway) pollLoop(ctx context.Context) {
	t := time.NewTicker(g.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := g.poll(); err != nil {
			g.log.Error("cannot poll the kernel counters", "err", err)
		}
	}
}

// poll reads every quota and counter in one dump, sends the events the
// new usage calls for, saves further ahead for sessions close to their
// saved bound, and sets new kernel limits where they are due.
func (g *Gateway) poll() error {
	objs, err := g.readObjects()
	if err != nil {
		return err
	}
	now := time.Now()
	needSave, needLimits, needShrink := false, false, false
	g.mu.Lock()
	for _, s := range g.sessions {
		o, ok := objs[s.tag]
		m := s.m
		if m.Revoked() || !ok {
			continue
		}
		moved := m.Advance(o.counter, now)
		s.frozen = o.frozen()
		g.eventsLocked(s)
		if ev, ok, _ := m.IdleEvent(now, g.cfg.IdleAfter); ok {
			g.events.Emit(ev)
		}
		if g.store != nil && m.Durable() < m.Quota() {
			// Keep the lead above four polls' worth of this session's
			// traffic, so the kernel limit is raised long before traffic
			// reaches it; if it did reach it (packets were dropped and TCP
			// backs off), save sixteen times further ahead.
			if s.frozen {
				m.GrowLead(16 * m.Lead())
			} else {
				m.GrowLead(4 * moved)
			}
			if m.SaveDue(m.Used()) {
				needSave = true
			}
		}
		needLimits = needLimits || s.bound() > s.limitSet || s.owed(o)
		if g.store != nil && !s.frozen && now.Sub(m.Last()) >= shrinkAfter && s.limitSet > m.Used()+g.cfg.PersistAhead {
			// Idle with a long lead: bring the bound back near use, so
			// that losing the table (a reboot) costs this guest little.
			s.shrink = true
			needShrink = true
		}
	}
	g.mu.Unlock()
	if needShrink {
		if err := g.shrinkLimits(); err != nil {
			return err
		}
		needSave = true
	}
	if needSave {
		if err := g.save(); err != nil {
			return err
		}
		needLimits = true
	}
	if needLimits {
		return g.setLimits()
	}
	return nil
}

// guestObjs is one session's quota and counter as the kernel dumped them.
type guestObjs struct {
	counter         int64
	limit, consumed int64 // the quota's; consumed is capped at limit
	haveQuota       bool
}

// frozen: the quota is used up, so every further packet is dropped and the
// counter stands still.
func (o guestObjs) frozen() bool { return o.haveQuota && o.consumed >= o.limit }

func (g *Gateway) readObjects() (map[string]guestObjs, error) {
	g.nftMu.Lock()
	objs, err := g.nc.GetObjects(g.lay.table)
	g.nftMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("read the kernel counters: %w", err)
	}
	out := map[string]guestObjs{}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			if tag, ok := strings.CutPrefix(o.Name, "c-"); ok {
				x := out[tag]
				x.counter = int64(o.Bytes)
				out[tag] = x
			}
		case *nftables.QuotaObj:
			if tag, ok := strings.CutPrefix(o.Name, "q-"); ok {
				x := out[tag]
				x.limit, x.consumed, x.haveQuota = int64(o.Bytes), int64(o.Consumed), true
				out[tag] = x
			}
		}
	}
	return out, nil
}

// eventsLocked sends the events s's usage calls for.
func (g *Gateway) eventsLocked(s *session) {
	m := s.m
	evs := m.Events()
	// Exhausted also when not even a bare TCP segment fits any more, or the
	// kernel refuses packets at the full quota with less than a full-size
	// packet left (or no progress since the quota object was last
	// replaced: the guest's next packet is larger than what is left).
	left := m.Quota() - m.Used()
	full := s.frozen && s.limitSet >= m.Quota() && (left < mtu || m.Used() == s.resetAt)
	if full || left < minPacket {
		evs = append(evs, m.Exhaust()...)
	}
	g.events.Emit(evs...)
}

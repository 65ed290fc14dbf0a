package proxy

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sharespot/sharespot/internal/gateway"
)

// Errors a connection can meet on its session.
var (
	errExhausted    = errors.New("proxy: session quota used up")
	errTooManyConns = errors.New("proxy: too many connections for the session")
)

// session is one admitted session: its meter (quota, usage, events, the
// usage bound saved ahead of use) and the proxy's side of it (reservations,
// connections, waiters).
//
// Budget invariant (under mu): m.Used() + reserved ≤ m.Limit(), and
// m.Limit() never exceeds the usage bound the store holds, so every byte
// that may pass has been saved as used first.
type session struct {
	p     *Proxy
	id    string   // immutable
	hash  [32]byte // SHA-256 of the access code; immutable
	lim   *rate.Limiter
	chunk int64 // largest reservation of one copy step; immutable

	mu        sync.Mutex
	m         *gateway.Meter
	reserved  int64 // bytes reserved by copy steps in flight
	grewLead  bool  // lead already doubled since the last save
	conns     map[*pconn]struct{}
	wake      chan struct{} // closed when budget may have become available
	idle      *time.Timer
	idleArmed bool
	holding   bool        // ran out: connections held (stalled) for the grace period
	grace     *time.Timer // ends the hold
}

// wakeLocked wakes the connections waiting for budget.
func (s *session) wakeLocked() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

// register adds a connection to the session, enforcing the per-session
// limit; connections of exhausted or revoked sessions are refused.
func (s *session) register(c *pconn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.m.Revoked():
		return gateway.ErrRevoked
	case s.m.Used() >= s.m.Quota():
		return errExhausted
	case len(s.conns) >= s.p.cfg.MaxConnsPerSession:
		return errTooManyConns
	}
	s.conns[c] = struct{}{}
	return nil
}

func (s *session) unregister(c *pconn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if len(s.conns) == 0 {
		// Idle: the exact usage replaces the bound saved ahead, now
		// rather than at the next periodic save, so a host that crashes
		// after a download counts none of the lead as used.
		s.m.ResetLead()
		s.p.requestSave()
	}
}

// reserve blocks until it can reserve between 1 and want bytes of budget,
// and returns how many. It fails once the session is revoked, or exhausted
// and not held for a top-up, or when ctx ends.
func (s *session) reserve(ctx context.Context, want int64) (int64, error) {
	s.mu.Lock()
	for {
		m := s.m
		if m.Revoked() {
			s.mu.Unlock()
			return 0, gateway.ErrRevoked
		}
		if m.Used() >= m.Quota() && !s.holding {
			s.mu.Unlock()
			return 0, errExhausted
		}
		inflight := m.Used() + s.reserved
		if m.SaveDue(inflight) {
			s.p.requestSave()
		}
		if avail := m.Limit() - inflight; avail > 0 {
			n := min(want, avail)
			s.reserved += n
			s.mu.Unlock()
			return n, nil
		}
		if m.Durable() <= inflight && m.Durable() < m.Quota() && !s.grewLead {
			// The store is slower than the traffic: save further ahead.
			m.GrowLead(2 * m.Lead())
			s.grewLead = true
		}
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		s.mu.Lock()
	}
}

// commit settles a reservation of n bytes of which w were written, and
// sends the events the new usage calls for. When usage reaches the quota
// the session's connections are held for the grace period (their copy
// steps wait), then closed unless an Extend came first.
func (s *session) commit(n, w int64) {
	s.mu.Lock()
	s.reserved -= n
	if n > w {
		s.wakeLocked()
	}
	var cut []*pconn
	if w > 0 {
		m := s.m
		m.Advance(m.Used()+w, time.Now())
		evs := m.Events()
		for _, e := range evs {
			if e.Kind == gateway.Exhausted {
				s.p.requestSave()
				cut = s.holdLocked()
			}
		}
		s.p.events.Emit(evs...)
		s.armIdleLocked()
	}
	s.mu.Unlock()
	for _, c := range cut {
		c.close()
	}
}

// holdLocked starts the grace period of a session that ran out, or, with
// none, returns its connections for closing.
func (s *session) holdLocked() (cut []*pconn) {
	grace := s.p.cfg.Grace
	if grace <= 0 {
		s.wakeLocked()
		return s.connsLocked()
	}
	s.holding = true
	if s.grace == nil {
		s.grace = time.AfterFunc(grace, s.graceOver)
	} else {
		s.grace.Reset(grace)
	}
	return nil
}

// graceOver closes the connections of a session still held when its
// grace period ends.
func (s *session) graceOver() {
	s.mu.Lock()
	if !s.holding {
		s.mu.Unlock()
		return
	}
	s.holding = false
	s.wakeLocked()
	cut := s.connsLocked()
	s.mu.Unlock()
	for _, c := range cut {
		c.close()
	}
}

// releaseLocked ends a hold once the session has volume again.
func (s *session) releaseLocked() {
	if !s.holding || s.m.Used() >= s.m.Quota() {
		return
	}
	s.holding = false
	s.grace.Stop()
	s.wakeLocked()
}

func (s *session) connsLocked() []*pconn {
	cs := make([]*pconn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	return cs
}

// armIdleLocked makes sure the idle timer runs after traffic.
func (s *session) armIdleLocked() {
	if s.idleArmed || s.m.Revoked() {
		return
	}
	s.idleArmed = true
	if s.idle == nil {
		s.idle = time.AfterFunc(s.p.cfg.IdleAfter, s.idleCheck)
	} else {
		s.idle.Reset(s.p.cfg.IdleAfter)
	}
}

// idleCheck runs when the idle period may have passed since the last byte.
func (s *session) idleCheck() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.idleArmed || s.m.Revoked() {
		return
	}
	ev, ok, wait := s.m.IdleEvent(time.Now(), s.p.cfg.IdleAfter)
	if wait > 0 {
		s.idle.Reset(wait)
		return
	}
	s.idleArmed = false
	if ok {
		s.p.events.Emit(ev)
	}
}

// addToSave adds the session's change to a save: with connections open,
// the usage bound a lead ahead of use; without, exact usage.
func (s *session) addToSave(b *gateway.SaveBatch) bool {
	return b.Add(s.m, s.m.Used()+s.reserved, len(s.conns) > 0)
}

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

// session is one admitted session's metering state.
//
// Budget invariant (under mu): used + reserved ≤ min(quota, durable).
// durable is the usage bound last saved to the store (math.MaxInt64 without
// a store), so every byte that may pass has been saved as used first.
type session struct {
	p         *Proxy
	id        string
	hash      [32]byte // SHA-256 of the access code; immutable
	threshold int64    // immutable
	lim       *rate.Limiter
	chunk     int64 // largest reservation of one copy step; immutable

	mu        sync.Mutex
	quota     int64
	used      int64 // bytes written (committed)
	reserved  int64 // bytes reserved by copy steps in flight
	durable   int64 // usage bound saved to the store
	lead      int64 // how far ahead of use durable is pushed
	grewLead  bool  // lead already doubled since the last save
	warned    bool  // ThresholdCrossed sent, not re-armed
	seen      bool  // FirstTraffic sent
	exhausted bool  // Exhausted sent, not re-armed by Extend
	revoked   bool
	inStore   bool           // a record of this session is in the store
	saved     gateway.Record // what the store holds, when inStore
	conns     map[*pconn]struct{}
	wake      chan struct{} // closed when budget may have become available
	last      time.Time     // last byte committed
	idle      *time.Timer
	idleArmed bool
}

// wakeLocked wakes the connections waiting for budget.
func (s *session) wakeLocked() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

func (s *session) event(k gateway.EventKind) {
	s.p.emit(gateway.Event{Kind: k, SessionID: s.id, Used: s.used, Quota: s.quota})
}

// register adds a connection to the session, enforcing the per-session
// limit; connections of exhausted or revoked sessions are refused.
func (s *session) register(c *pconn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.revoked:
		return gateway.ErrRevoked
	case s.used >= s.quota:
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
		s.lead = s.p.cfg.PersistAhead
	}
}

// reserve blocks until it can reserve between 1 and want bytes of budget,
// and returns how many. It fails once the session is exhausted or revoked,
// or when ctx ends.
func (s *session) reserve(ctx context.Context, want int64) (int64, error) {
	s.mu.Lock()
	for {
		if s.revoked {
			s.mu.Unlock()
			return 0, gateway.ErrRevoked
		}
		if s.used >= s.quota {
			s.mu.Unlock()
			return 0, errExhausted
		}
		inflight := s.used + s.reserved
		if s.durable < s.quota && inflight+s.lead/2 >= s.durable {
			s.p.requestSave()
		}
		if avail := min(s.quota, s.durable) - inflight; avail > 0 {
			n := min(want, avail)
			s.reserved += n
			s.mu.Unlock()
			return n, nil
		}
		if s.durable <= inflight && s.durable < s.quota && !s.grewLead {
			// The store is slower than the traffic: save further ahead.
			s.lead = min(2*s.lead, maxLeadFactor*s.p.cfg.PersistAhead)
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
// sends the events the new usage calls for. When usage reaches the quota it
// closes every connection of the session.
func (s *session) commit(n, w int64) {
	s.mu.Lock()
	s.reserved -= n
	s.used += w
	if n > w {
		s.wakeLocked()
	}
	var cut []*pconn
	if w > 0 {
		s.last = time.Now()
		if !s.seen {
			s.seen = true
			s.event(gateway.FirstTraffic)
		}
		if s.threshold > 0 && !s.warned && s.quota-s.used < s.threshold {
			s.warned = true
			s.event(gateway.ThresholdCrossed)
		}
		if s.used >= s.quota && !s.exhausted {
			s.exhausted = true
			s.event(gateway.Exhausted)
			s.wakeLocked()
			cut = s.connsLocked()
			s.p.requestSave()
		}
		s.armIdleLocked()
	}
	s.mu.Unlock()
	for _, c := range cut {
		c.close()
	}
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
	if s.idleArmed || s.revoked {
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
	if !s.idleArmed || s.revoked {
		return
	}
	if since := time.Since(s.last); since < s.p.cfg.IdleAfter {
		s.idle.Reset(s.p.cfg.IdleAfter - since)
		return
	}
	s.idleArmed = false
	s.event(gateway.Idle)
}

// recordLocked is what the store should hold now. With connections open it
// saves lead bytes ahead of use; without, exact usage.
func (s *session) recordLocked() gateway.Record {
	bound := s.used + s.reserved
	if len(s.conns) > 0 {
		bound = max(s.durable, min(s.quota, bound+s.lead))
	}
	return gateway.Record{
		SessionID: s.id, CredentialHash: s.hash, Quota: s.quota, Used: bound,
		Threshold: s.threshold, Warned: s.warned,
	}
}

package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
)

// recordingStore remembers the usage bound saved for each session and
// takes a while to save, like a disk.
type recordingStore struct {
	mu    sync.Mutex
	saved map[string]int64
	saves int
	delay time.Duration
}

func (r *recordingStore) Load() ([]gateway.Record, error) { return nil, nil }

func (r *recordingStore) Save(put []gateway.Record, del []string) error {
	time.Sleep(r.delay)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.saves++
	for _, rec := range put {
		r.saved[rec.SessionID] = rec.Used
	}
	for _, id := range del {
		delete(r.saved, id)
	}
	return nil
}

func (r *recordingStore) get(id string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.saved[id]
}

// TestBudgetInvariant hammers one session's budget from many goroutines
// with a slow store: at every moment, use plus reservations stay within
// the usage bound already saved, the total never passes the quota, and it
// ends exactly at the quota.
func TestBudgetInvariant(t *testing.T) {
	const quota = 8 << 20
	st := &recordingStore{saved: map[string]int64{}, delay: 200 * time.Microsecond}
	p := newProxy(t, Config{Store: st, PersistAhead: 16 << 10})
	admit(t, p, "m", quota, 0)
	s, err := p.session("m")
	if err != nil {
		t.Fatal(err)
	}
	// A connection, so the gateway saves ahead of use.
	a, b := net.Pipe()
	defer b.Close()
	c := &pconn{p: p, client: a}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := s.register(c); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for {
				n, err := s.reserve(context.Background(), 1+rng.Int64N(64<<10))
				if errors.Is(err, errExhausted) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				s.mu.Lock()
				inflight, q := s.m.Used()+s.reserved, s.m.Quota()
				s.mu.Unlock()
				if saved := st.get("m"); inflight > saved || inflight > q {
					t.Errorf("in flight %d, saved %d, quota %d", inflight, saved, q)
					return
				}
				w := n
				if rng.IntN(4) == 0 {
					w = rng.Int64N(n + 1) // a short write gives budget back
				}
				s.commit(n, w)
			}
		})
	}
	wg.Wait()
	if used, _ := usage(t, p, "m"); used != quota {
		t.Errorf("used %d, want %d", used, quota)
	}
	nextEvent(t, p, "m", gateway.Exhausted)
	s.mu.Lock()
	lead := s.m.Lead()
	s.mu.Unlock()
	t.Logf("%d saves; lead grew to %d", st.saves, lead)
}

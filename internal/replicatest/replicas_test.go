package replicatest

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// flowBound is how long a whole flow may take before the test calls it
// stuck: a failure guard, not a benchmark (a healthy run takes well under
// a second of message delivery).
const flowBound = 60 * time.Second

// TestReplicas runs the flow with the host on replica A and the guest on
// replica B, and SIGKILLs B while the host handles the guest's payment
// confirmation: the guest's stream breaks while it waits for its access
// response, and its client fails over to replica C. The replicas poll
// their inboxes only once an hour, so every message that crossed replicas
// (all of them: host and guest never share one) was announced over NATS.
func TestReplicas(t *testing.T) {
	nats := natstest.Require(t)
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*flowBound)
	defer cancel()
	rs := startReplicas(t, db, []string{"--bus", nats, "--poll-interval", "1h"}, "A", "B", "C")
	a, b, c := rs[0], rs[1], rs[2]
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	f := newFlow(st, []string{a.URL}, []string{b.URL, c.URL})
	var killed atomic.Bool
	f.midFlow = func() {
		if err := b.kill(); err != nil {
			t.Error(err)
			return
		}
		killed.Store(true)
	}
	took := runFlow(t, ctx, f, "flow across replicas (B killed before the first grant)")
	if !killed.Load() {
		t.Fatal("replica B was not killed mid-flow")
	}
	if took > flowBound {
		t.Errorf("the flow took %v, more than %v: a wake-up went missing somewhere", took, flowBound)
	}
	for _, r := range []*replica{a, c} {
		if out := r.output(); strings.Contains(out, "bus: ") {
			t.Errorf("replica %s had bus trouble:\n%s", r.name, out)
		}
	}
	f.check(t, ctx)
}

// TestBusDown: with the bus pointing at nothing, replicas start, serve,
// and deliver every message across replicas by the fallback poll (1 s by
// default with a bus).
func TestBusDown(t *testing.T) {
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*flowBound)
	defer cancel()
	rs := startReplicas(t, db, []string{"--bus", "nats://127.0.0.1:1"}, "A", "B")
	a, b := rs[0], rs[1]
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	f := newFlow(st, []string{a.URL}, []string{b.URL})
	took := runFlow(t, ctx, f, "flow across replicas without a bus")
	if took > flowBound {
		t.Errorf("the flow took %v, more than %v", took, flowBound)
	}
	for _, r := range rs {
		if out := r.output(); !strings.Contains(out, "NATS not reachable") {
			t.Errorf("replica %s did not report the bus unreachable; its output:\n%s", r.name, out)
		}
	}
	f.check(t, ctx)
}

// runFlow runs the whole flow, drains both inboxes and stops them, logs each
// message's trip under label, and fails t if the flow failed.
func runFlow(t *testing.T, ctx context.Context, f *flow, label string) time.Duration {
	t.Helper()
	began := time.Now()
	err := f.run(ctx)
	took := time.Since(began)
	if err == nil {
		err = f.drain(ctx)
	}
	if serr := f.stop(); serr != nil {
		t.Error(serr)
	}
	t.Logf("%s took %v; each message's trip:\n%s", label, took.Round(time.Millisecond), f.report())
	if err != nil {
		t.Fatalf("flow: %v", err)
	}
	return took
}

package replicatest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// BenchmarkRelayAcrossReplicas measures one message's trip from the host's
// call to the guest's handler: the host, on replica A, sends a low-quota
// prompt (C1.9); A commits it to the guest's inbox and publishes a
// wake-up; the guest's stream, on replica B, wakes, reads the inbox from
// PostgreSQL and delivers it. Polling is off (1 h), so only NATS wakes B.
// same-replica is the baseline: both devices on A, woken in-process.
// Reported: p50 and p99 of the trip in microseconds; ns/op is its mean.
//
//	go test -run '^$' -bench RelayAcrossReplicas -benchtime 500x ./internal/replicatest
func BenchmarkRelayAcrossReplicas(b *testing.B) {
	nats := natstest.Require(b)
	db := pgtest.New(b)
	rs := startReplicas(b, db, []string{"--bus", nats, "--poll-interval", "1h"}, "A", "B")
	st, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for _, bc := range []struct {
		name    string
		guestOn *replica
	}{{"nats", rs[1]}, {"same-replica", rs[0]}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			f := newFlow(st, []string{rs[0].URL}, []string{bc.guestOn.URL})
			if _, err := f.open(ctx); err != nil {
				b.Fatal(err)
			}
			defer f.stop()
			var trips []time.Duration
			for b.Loop() {
				start := time.Now()
				if err := f.prompt(ctx); err != nil {
					b.Fatal(err)
				}
				trips = append(trips, time.Since(start))
			}
			slices.Sort(trips)
			pct := func(p float64) float64 {
				return float64(trips[min(len(trips)-1, int(p*float64(len(trips))))].Microseconds())
			}
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
		})
	}
}

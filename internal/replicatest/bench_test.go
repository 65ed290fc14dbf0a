package replicatest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/seal"
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

// BenchmarkFlowReplicas measures complete paid flows per second with one,
// two and three `sharespot server` replicas sharing one PostgreSQL and one
// NATS. Hosts and guests are spread round-robin over the replicas, and
// each worker runs harness.PaidFlow (the flow of harness.BenchmarkFlow:
// request → quote → pay → confirm → sealed grant → end and settle) with a
// host on one replica and a guest on another whenever there are two.
// Workers: SHARESPOT_BENCH_WORKERS (default 32). The client, the replicas
// and PostgreSQL share this machine's cores, so this measures what
// replication costs and where the database limits, not how it scales on
// separate machines.
//
//	go test -run '^$' -bench FlowReplicas -benchtime 1000x ./internal/replicatest
func BenchmarkFlowReplicas(b *testing.B) {
	nats := natstest.Require(b)
	workers := 32
	if v, err := strconv.Atoi(os.Getenv("SHARESPOT_BENCH_WORKERS")); err == nil && v > 0 {
		workers = v
	}
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			db := pgtest.New(b)
			names := []string{"A", "B", "C"}[:n]
			rs := startReplicas(b, db, []string{"--bus", nats}, names...)
			st, err := store.Open(ctx, db, store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			device := func(name string, i int) *client.Client {
				c := newDevice(name, []string{rs[i%n].URL})
				if err := c.SignIn(ctx); err != nil {
					b.Fatal(err)
				}
				return c
			}
			nHosts := min(workers, 16)
			hosts := make([]*client.Client, nHosts)
			spots := make([]*sharespotv1.Hotspot, nHosts)
			for i := range hosts {
				hosts[i] = device("host", i)
				res, err := hosts[i].Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(i)}))
				if err != nil {
					b.Fatal(err)
				}
				spots[i] = res.Msg.Hotspot
			}
			guests := make([]*guest.Guest, workers)
			for w := range guests {
				c := device("guest", w+1) // the next replica after its host's
				if err := st.Write(ctx, func(tx *store.Tx) error {
					_, err := payment.Fund(tx, time.Now().UnixMilli(), c.AccountID(), "EUR", 1<<50, "", "bench funding")
					return err
				}); err != nil {
					b.Fatal(err)
				}
				guests[w] = &guest.Guest{C: c, Suites: []seal.Suite{seal.Preset}}
			}
			lat := make([][]time.Duration, workers)
			var next, failed atomic.Int64
			var firstErr atomic.Value
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						if err := harness.PaidFlow(ctx, hosts[w%nHosts], spots[w%nHosts], guests[w]); err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err)
							continue
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if err := firstErr.Load(); err != nil {
				b.Fatalf("%d of %d flows failed; first: %v", failed.Load(), b.N, err)
			}
			all := slices.Concat(lat...)
			slices.Sort(all)
			pct := func(p float64) float64 {
				return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
			}
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "flows/s")
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			if err := harness.Audit(ctx, st); err != nil {
				b.Fatal(err)
			}
		})
	}
}

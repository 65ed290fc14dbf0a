package harness

import (
	"context"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkFlow runs complete paid flows against a real server on SQLite
// (WAL, synchronous=FULL) over HTTP/2 on loopback: discover → request →
// quote → pay → confirm → grant (HPKE-sealed code) → end and settle. Each
// worker plays a guest and calls the host's steps itself, without waiting
// for the host's inbox (relay latency is measured separately). Workers:
// SHARESPOT_BENCH_WORKERS (default 64).
func BenchmarkFlow(b *testing.B) {
	ctx := context.Background()
	env := Start(b, func(c *server.Config) { c.Limits = api.Limits{}; c.Logger = nil })
	workers := envInt("SHARESPOT_BENCH_WORKERS", 64)
	nHosts := min(workers, 16)
	type hostT struct {
		c  *client.Client
		hs *sharespotv1.Hotspot
	}
	hosts := make([]hostT, nHosts)
	for i := range hosts {
		c := env.Device(b, "host")
		res, err := c.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: BenchInstruction(i)}))
		if err != nil {
			b.Fatal(err)
		}
		hosts[i] = hostT{c, res.Msg.Hotspot}
	}
	guests := make([]*client.Client, workers)
	for i := range guests {
		guests[i] = env.Device(b, "guest")
		env.Fund(b, guests[i], "EUR", 1<<50)
	}
	gs := make([]*guest.Guest, workers)
	for i := range gs {
		gs[i] = &guest.Guest{C: guests[i], Suites: []seal.Suite{seal.Preset}}
	}
	lat := make([][]time.Duration, workers)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr sync.Once
	var errv error
	flow := func(w int) error {
		h := hosts[w%nHosts]
		return PaidFlow(ctx, h.c, h.hs, gs[w])
	}
	commits0 := env.Srv.Store().Stats()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := flow(w); err != nil {
					failed.Add(1)
					firstErr.Do(func() { errv = err })
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if errv != nil {
		b.Fatalf("%d flows failed; first: %v", failed.Load(), errv)
	}
	all := make([]time.Duration, 0, b.N)
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	st := env.Srv.Store().Stats()
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "flows/s")
	b.ReportMetric(float64(pct(all, 50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(all, 99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(st.Writes-commits0.Writes)/float64(max(1, st.Commits-commits0.Commits)), "writes/commit")
	b.ReportMetric(float64(st.Statements-commits0.Statements)/float64(len(all)), "stmts/flow")
	b.ReportMetric(float64(st.Retries-commits0.Retries)/float64(len(all)), "retries/flow")
	b.ReportMetric(100*float64(st.Busy-commits0.Busy)/float64(elapsed), "writer-busy-%")
	if err := Audit(ctx, env.Srv.Store()); err != nil {
		b.Fatal(err)
	}
}

func pct(s []time.Duration, p int) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, len(s)*p/100)]
}

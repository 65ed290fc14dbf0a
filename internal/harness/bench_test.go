package harness

import (
	"context"
	"fmt"
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
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
)

const mb = 1_000_000

func benchInstruction(i int) *sharespotv1.ShareInstruction {
	return &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(fmt.Sprintf("bench-%d", i)), Bssid: fmt.Sprintf("02:be:00:00:%02x:%02x", i>>8, i&0xff), Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: mb, MinPurchaseBytes: mb, TopupPriceMinor: 12},
		ShareableBytes: 1 << 50,
		WarnAtBytes:    mb,
	}
}

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
		res, err := c.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: benchInstruction(i)}))
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
	gs := make([]*client.Guest, workers)
	for i := range gs {
		gs[i] = &client.Guest{C: guests[i], Suites: []seal.Suite{seal.Preset}}
	}
	lat := make([][]time.Duration, workers)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr sync.Once
	var errv error
	flow := func(w int) error {
		h := hosts[w%nHosts]
		g := gs[w]
		ap := h.hs.Instruction.AccessPoint
		if _, err := g.C.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: []*sharespotv1.Candidate{{Bssid: ap.Bssid, Ssid: ap.Ssid, SignalDbm: -50}}})); err != nil {
			return err
		}
		ses, err := g.RequestAccess(ctx, h.hs.Id, 10*mb)
		if err != nil {
			return err
		}
		q, err := h.c.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.Id, Bytes: 10 * mb, AmountMinor: 100, Currency: "EUR"}))
		if err != nil {
			return err
		}
		pay, err := g.C.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Msg.Quote.Id}))
		if err != nil {
			return err
		}
		if _, err := g.C.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: ses.Id, Receipt: pay.Msg.Receipt})); err != nil {
			return err
		}
		code, _ := seal.NewAccessCode()
		guestKey := g.PublicKey(ses.Id, seal.Preset)
		sealed, err := seal.Seal(seal.Preset, guestKey, seal.Binding{SessionID: ses.Id, HostID: h.c.DeviceID(), GuestID: g.C.DeviceID()}, code)
		if err != nil {
			return err
		}
		if _, err := h.c.Sessions.Grant(ctx, connect.NewRequest(&sharespotv1.GrantRequest{SessionId: ses.Id, QuoteId: q.Msg.Quote.Id, GrantedBytes: 10 * mb,
			SealedCode: &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext},
			Gateway:    &sharespotv1.Gateway{Kind: "proxy", Address: "192.0.2.1:1080"}})); err != nil {
			return err
		}
		_, err = h.c.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.Id, UsedBytes: 7 * mb, Reason: "bench"}))
		g.Forget(ses.Id)
		return err
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

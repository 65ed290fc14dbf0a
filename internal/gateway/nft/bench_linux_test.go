package nft

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/netns"
)

// Run as root:
//
//	go test -run '^$' -bench . -benchtime 10x ./internal/gateway/nft/
//
// Results and the conditions they were taken in: docs/benchmarks.md,
// "Kernel gateway (nftables)".

const benchFetch = 64 << 20

// BenchmarkForward is one guest downloading through the host, with the
// host forwarding plainly (a NAT-only table: the same NAT, no metering)
// and with Sharespot's table holding 250 admitted guests, the measured one
// among them. Each op is one 64 MiB HTTP download.
func BenchmarkForward(b *testing.B) {
	b.Run("direct_nat_only", func(b *testing.B) {
		f := newFixture(b, 1)
		natOnly(b, f.tp)
		benchFetchLoop(b, f, guestClient(f.tp.Guests[0], wait))
	})
	for _, v := range []struct {
		name  string
		store bool
	}{{"sharespot_250_guests", true}, {"sharespot_250_guests_no_store", false}} {
		b.Run(v.name, func(b *testing.B) { benchSharespot(b, v.store) })
	}
}

// benchSharespot measures one guest among 250 through the kernel gateway;
// without a store the save-ahead (and its fsyncs) is out of the picture
// and only the per-packet cost of the rules remains.
func benchSharespot(b *testing.B, withStore bool) {
	f := newFixture(b, 1)
	f.persistAhead = 0 // the default, as `sharespot share` runs it
	if !withStore {
		f.store = nil
	}
	f.start()
	admitMany(b, f, 249)
	code := f.grant("measured", 1<<50, 0)
	if err := f.present(f.tp.Guests[0], "measured", code); err != nil {
		b.Fatal(err)
	}
	benchFetchLoop(b, f, guestClient(f.tp.Guests[0], wait))
	used, _ := usage(b, f.gw, "measured")
	if used < int64(b.N)*benchFetch {
		b.Fatalf("metered %d bytes for %d downloaded", used, int64(b.N)*benchFetch)
	}
}

func benchFetchLoop(b *testing.B, f *fixture, hc *http.Client) {
	b.Helper()
	// One long download first, so that ARP, TCP warm-up and the
	// gateway's save-ahead lead growing to the traffic's rate are out of
	// the measurement (the steady state is measured).
	if _, err := netns.Fetch(context.Background(), hc, f.base, 256<<20); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(benchFetch)
	b.ResetTimer()
	for range b.N {
		if n, err := netns.Fetch(context.Background(), hc, f.base, benchFetch); err != nil {
			b.Fatalf("fetch: %d bytes: %v", n, err)
		}
	}
}

// natOnly gives the host a table with masquerade to the uplink and
// nothing else: forwarding as a plain router does it.
func natOnly(b *testing.B, tp *netns.Topology) {
	c, err := nftables.New(nftables.WithNetNSFd(tp.Host.FD()))
	if err != nil {
		b.Fatal(err)
	}
	t := c.AddTable(&nftables.Table{Name: "bench-nat", Family: nftables.TableFamilyINet})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "post", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(metaIs(expr.MetaKeyOIFNAME, ifname(tp.Uplink)), []expr.Any{&expr.Masq{}})})
	if err := c.Flush(); err != nil {
		b.Fatal(err)
	}
}

// admitMany admits n sessions bound to made-up neighbours on the LAN
// (10.77.1.0 onwards), so that the maps hold n more guests.
func admitMany(b *testing.B, f *fixture, n int) {
	b.Helper()
	base := netip.MustParseAddr("10.77.1.0")
	for i := range n {
		id := fmt.Sprintf("other-%03d", i)
		f.grant(id, 1<<40, 0)
		s, err := f.gw.session(id)
		if err != nil {
			b.Fatal(err)
		}
		a := base
		for range i {
			a = a.Next()
		}
		if _, err := f.gw.bindMAC(s, binding{addr: a, mac: net.HardwareAddr{0x02, 0x78, 0, 0, byte(i >> 8), byte(i)}}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOvershoot downloads past a 4 MB quota and reports how many
// bytes the kernel let through beyond it (goal ≤ one packet) and how far
// below the quota the cut came.
func BenchmarkOvershoot(b *testing.B) {
	f := newFixture(b, 1)
	f.start()
	const quota = 4 * mB
	var over, under, body []int64
	for i := range b.N {
		id := fmt.Sprintf("o%d", i)
		code := f.grant(id, quota, 0)
		if err := f.present(f.tp.Guests[0], id, code); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := netns.StartFetch(ctx, guestClient(f.tp.Guests[0], wait), f.base, 2*quota)
		f.ev.wait(b, gateway.Exhausted, id, wait)
		stalled(r)
		cancel()
		r.Wait()
		used, _ := usage(b, f.gw, id)
		over = append(over, max(0, used-quota))
		under = append(under, max(0, quota-used))
		body = append(body, r.N())
		if err := f.gw.Revoke(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(slices.Max(over)), "max-overshoot-bytes")
	b.ReportMetric(float64(slices.Max(under)), "max-undershoot-bytes")
	b.ReportMetric(float64(slices.Min(body)), "min-body-bytes")
}

// BenchmarkThresholdLatency sends paced 1000-byte UDP datagrams (1028 IP
// bytes each) from a guest to a sink on the internet side, so the datagram
// that takes the remaining volume below the threshold is known, and
// reports the time from its sending to the ThresholdCrossed event (goal
// ≤ 250 ms).
func BenchmarkThresholdLatency(b *testing.B) {
	f := newFixture(b, 1)
	f.start()
	sink, err := f.tp.Internet.ListenPacket("udp", net.JoinHostPort(f.tp.Net4.String(), "9"))
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	const (
		quota     = 400 * kB
		threshold = 200 * kB
		ipLen     = 1028
	)
	var lat []time.Duration
	g := f.tp.Guests[0]
	for i := range b.N {
		id := fmt.Sprintf("t%d", i)
		code := f.grant(id, quota, threshold)
		if err := f.present(g, id, code); err != nil {
			b.Fatal(err)
		}
		c, err := g.DialContext(context.Background(), "udp", sink.LocalAddr().String())
		if err != nil {
			b.Fatal(err)
		}
		payload := make([]byte, ipLen-28)
		var sent int64
		var crossed time.Time
		for sent = 0; quota-sent >= threshold; sent += ipLen {
			crossed = time.Now()
			if _, err := c.Write(payload); err != nil {
				b.Fatal(err)
			}
			time.Sleep(500 * time.Microsecond)
		}
		ev := f.ev.wait(b, gateway.ThresholdCrossed, id, wait)
		lat = append(lat, time.Since(crossed))
		c.Close()
		if ev.Quota-ev.Used >= threshold {
			b.Fatalf("event at %d of %d", ev.Used, ev.Quota)
		}
		if err := f.gw.Revoke(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	b.ReportMetric(float64(sum.Milliseconds())/float64(len(lat)), "mean-ms-to-event")
	b.ReportMetric(float64(slices.Max(lat).Microseconds())/1000, "max-ms-to-event")
}

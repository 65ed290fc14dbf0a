package registry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"testing"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
)

// BenchmarkDiscover1M matches a 50-entry candidate set (5 registered, 45
// unknown) against 1,000,000 registered hotspots on SQLite, through the same
// Read transaction and query the API uses. It reports p50 and p99 per
// discovery; the goal is p99 ≤ 1 ms.
func BenchmarkDiscover1M(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(b.TempDir(), "bench.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	t0 := time.Now()
	err = st.Write(ctx, func(tx *store.Tx) error {
		if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('acct_bench', 0)`); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES ('dev', 'acct_bench', x'00', 'bench', 0)`); err != nil {
			return err
		}
		_, err := tx.Exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)
			INSERT INTO hotspots (id, host_device_id, bssid, ssid, security, currency, price_minor, unit_bytes, min_purchase_bytes,
				topup_price_minor, shareable_bytes, warn_at_bytes, committed_bytes, active, created_ms, updated_ms)
			SELECT 'hs_' || x, 'dev', printf('02:00:%02x:%02x:%02x:%02x', (x >> 24) & 255, (x >> 16) & 255, (x >> 8) & 255, x & 255),
				CAST('ap-' || x AS BLOB), 4, 'EUR', 10, 1000000, 1000000, 12, 1000000000, 1000000, 0, 1, 0, 0 FROM c`, n)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("inserted %d hotspots in %v", n, time.Since(t0).Round(time.Millisecond))
	rng := rand.New(rand.NewPCG(1, 2))
	cands := func() []*sharespotv1.Candidate {
		out := make([]*sharespotv1.Candidate, 0, 50)
		for i := range 50 {
			x := rng.IntN(n) + 1
			c := &sharespotv1.Candidate{Bssid: fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", (x>>24)&255, (x>>16)&255, (x>>8)&255, x&255),
				Ssid: []byte(fmt.Sprintf("ap-%d", x)), SignalDbm: -40 - int32(i)}
			if i >= 5 { // unknown to the server
				c.Bssid = fmt.Sprintf("06:11:%02x:%02x:%02x:%02x", (x>>24)&255, (x>>16)&255, (x>>8)&255, x&255)
			}
			out = append(out, c)
		}
		return out
	}
	sets := make([][]*sharespotv1.Candidate, 256)
	for i := range sets {
		sets[i] = cands()
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t := time.Now()
		offers, err := store.ReadT(ctx, st, func(tx *store.Tx) ([]*sharespotv1.Offer, error) {
			offers, _, err := Discover(tx, sets[i%len(sets)], 0, 0) // every host present
			return offers, err
		})
		lat = append(lat, time.Since(t))
		if err != nil || len(offers) != 5 {
			b.Fatalf("discover: %d offers, %v", len(offers), err)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e6, "p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Nanoseconds())/1e6, "p99-ms")
}

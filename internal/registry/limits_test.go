package registry

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

func instruction(i int, shareable int64) *sharespotv1.ShareInstruction {
	return &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(fmt.Sprintf("s%d", i)), Bssid: fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: 1_000_000, MinPurchaseBytes: 1_000_000, TopupPriceMinor: 10},
		ShareableBytes: shareable,
		WarnAtBytes:    1_000_000,
	}
}

// TestConcurrentRegistrationsKeepTheLimit: on PostgreSQL, where writes run
// side by side, more registrations than a host may have, all at once, end
// with exactly MaxHotspotsHost active hotspots.
func TestConcurrentRegistrationsKeepTheLimit(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, pgtest.New(t), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.Write(ctx, func(tx *store.Tx) error {
		if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a', 0)`); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES ('h', 'a', ?, '', 0)`, []byte{1})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var ok atomic.Int64
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range MaxHotspotsHost + 16 {
		done.Go(func() {
			start.Wait()
			if err := st.Write(ctx, func(tx *store.Tx) error { _, err := Register(tx, 1, "h", instruction(i, 1<<30)); return err }); err == nil {
				ok.Add(1)
			}
		})
	}
	start.Done()
	done.Wait()
	var active int
	if err := st.Read(ctx, func(tx *store.Tx) error {
		return tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE host_device_id = 'h' AND active = 1`).Scan(&active)
	}); err != nil {
		t.Fatal(err)
	}
	if active != MaxHotspotsHost || ok.Load() != MaxHotspotsHost {
		t.Fatalf("%d registrations succeeded, %d hotspots active; the limit is %d", ok.Load(), active, MaxHotspotsHost)
	}
}

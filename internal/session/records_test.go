package session

import (
	"fmt"
	"path/filepath"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// TestHostRecords: each host asked for gets its record, a zero one when it
// has none, a host asked twice its one record; more hosts than one
// statement's parameters are read in parts.
func TestHostRecords(t *testing.T) {
	onEngines(t, func(t *testing.T, st *store.Store, _ store.Engine) {
		const n = 1201
		var hosts []string
		err := st.Write(t.Context(), func(tx *store.Tx) error {
			for i := range n {
				h := fmt.Sprintf("h%04d", i)
				hosts = append(hosts, h)
				if i%2 == 1 {
					continue // no record
				}
				if _, err := tx.Exec(`INSERT INTO host_records (host_device_id, verified_sessions, over_counted_sessions, counted_bytes, acknowledged_bytes)
						VALUES (?, ?, ?, ?, ?)`, h, i+1, i/4, 1000*i, 900*i); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, "h0002", "h0003") // asked twice
		recs, err := store.ReadT(t.Context(), st, func(tx *store.Tx) (map[string]*sharespotv1.HostRecord, error) {
			return HostRecords(tx, hosts)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != n {
			t.Fatalf("%d records for %d hosts", len(recs), n)
		}
		for i := range n {
			h := fmt.Sprintf("h%04d", i)
			want := &sharespotv1.HostRecord{}
			if i%2 == 0 {
				want = &sharespotv1.HostRecord{VerifiedSessions: int64(i + 1), OverCountedSessions: int64(i / 4), CountedBytes: int64(1000 * i), AcknowledgedBytes: int64(900 * i)}
			}
			got := recs[h]
			if got == nil || got.VerifiedSessions != want.VerifiedSessions || got.OverCountedSessions != want.OverCountedSessions ||
				got.CountedBytes != want.CountedBytes || got.AcknowledgedBytes != want.AcknowledgedBytes {
				t.Fatalf("host %s: record %v, want %v", h, got, want)
			}
		}
		if recs, err := store.ReadT(t.Context(), st, func(tx *store.Tx) (map[string]*sharespotv1.HostRecord, error) {
			return HostRecords(tx, nil)
		}); err != nil || len(recs) != 0 {
			t.Fatalf("no hosts: %v, %v", recs, err)
		}
	})
}

// onEngines runs f on a new store of each engine.
func onEngines(t *testing.T, f func(t *testing.T, st *store.Store, e store.Engine)) {
	for _, e := range []store.Engine{store.SQLite, store.Postgres} {
		t.Run(string(e), func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "session.db")
			if e == store.Postgres {
				target = pgtest.New(t)
			}
			st, err := store.Open(t.Context(), target, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			f(t, st, e)
		})
	}
}

package dashboard_test

import (
	"context"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/dashboard"
	"github.com/sharespot/sharespot/internal/store"
)

// TestSweepPrunesUsageSamples: the sweep keeps a live session's samples of
// the last SampleKeep (what its chart and rate read) and deletes older
// ones, every sample of an ended session and samples of no session, so the
// table stays the size of the live sessions' last hour; the live session's
// chart still reads its recent samples.
func TestSweepPrunesUsageSamples(t *testing.T) {
	r := newRig(t)
	ended := r.flow(t, r.hostA, r.hsA, 7*mb, 0, true)
	live := r.flow(t, r.hostA, r.hsA, 3*mb, 0, false)
	st := r.env.Srv.Store()
	ctx := context.Background()
	now := r.env.Clock.Now().UnixMilli()
	old := now - dashboard.SampleKeep.Milliseconds() - 1
	recent := now - time.Minute.Milliseconds()
	add := func(tx *store.Tx, id string, at, used int64) error {
		_, err := tx.Exec(`INSERT INTO usage_samples (session_id, at_ms, used_bytes) VALUES (?, ?, ?)
			ON CONFLICT (session_id, at_ms) DO NOTHING`, id, at, used)
		return err
	}
	count := func(id string) (n int64) {
		t.Helper()
		if err := st.Read(ctx, func(tx *store.Tx) error {
			return tx.QueryRow(`SELECT COUNT(*) FROM usage_samples WHERE session_id = ?`, id).Scan(&n)
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := st.Write(ctx, func(tx *store.Tx) error {
		for _, s := range []struct {
			id       string
			at, used int64
		}{{ended, recent, mb}, {live, old, 1}, {live, recent, 2 * mb}, {"ses_none", recent, 1}} {
			if err := add(tx, s.id, s.at, s.used); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before := count(live)
	if count(ended) == 0 || before < 3 || count("ses_none") != 1 {
		t.Fatalf("before the sweep: %d samples of the ended session, %d of the live one, %d of none", count(ended), before, count("ses_none"))
	}
	if err := st.Write(ctx, func(tx *store.Tx) error { return dashboard.Sweep(tx, now) }); err != nil {
		t.Fatal(err)
	}
	if n := count(ended); n != 0 {
		t.Errorf("%d samples of the ended session left", n)
	}
	if n := count("ses_none"); n != 0 {
		t.Errorf("%d samples of no session left", n)
	}
	if n := count(live); n != before-1 {
		t.Errorf("the live session has %d samples after the sweep, want %d (all but the one older than %v)", n, before-1, dashboard.SampleKeep)
	}
	var oldest int64
	if err := st.Read(ctx, func(tx *store.Tx) error {
		return tx.QueryRow(`SELECT MIN(at_ms) FROM usage_samples WHERE session_id = ?`, live).Scan(&oldest)
	}); err != nil {
		t.Fatal(err)
	}
	if oldest <= old {
		t.Errorf("a sample from %d ms ago is left", now-oldest)
	}
}

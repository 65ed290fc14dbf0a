package metrics

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// fakeDB serves business figures and audits, counting the calls.
type fakeDB struct {
	reads, audits atomic.Int64
	readErr       atomic.Bool
	auditErr      atomic.Bool
	consistent    atomic.Bool
	release       chan struct{} // when set, audits wait for it
}

func (f *fakeDB) read(context.Context) (Business, error) {
	f.reads.Add(1)
	if f.readErr.Load() {
		return Business{}, errors.New("database away")
	}
	return Business{
		Sessions: map[sharespotv1.SessionState]int64{sharespotv1.SessionState_SESSION_STATE_ACTIVE: 3, sharespotv1.SessionState_SESSION_STATE_ENDED: 5},
		Verified: 4, Unverified: 1, SoldBytes: 123_456_789,
		Money: map[string]Money{
			"EUR": {Charged: 1234, Fees: 61, Refunded: 766, Escrow: 300},
			"JPY": {Charged: 500, Fees: 25, Refunded: 0, Escrow: 0},
		},
		Overdue: 2, OldestDeadlineMS: 1_000_000 - 90_500,
		OutboxPending: 4, OutboxFailed: 1, OutboxOldestMS: 1_000_000 - 600_000,
	}, nil
}

func (f *fakeDB) audit(context.Context) (bool, error) {
	if f.release != nil {
		<-f.release
	}
	f.audits.Add(1)
	if f.auditErr.Load() {
		return false, errors.New("audit failed")
	}
	return f.consistent.Load(), nil
}

func newFake(t *testing.T, f *fakeDB, opt BusinessOptions) (*prometheus.Registry, *BusinessCollector) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := NewBusiness(f.read, f.audit, func() time.Time { return time.UnixMilli(1_000_000) }, opt)
	reg.MustRegister(c)
	return reg, c
}

// awaitAudits scrapes until n audits have completed and their results are
// recorded.
func awaitAudits(t *testing.T, reg *prometheus.Registry, c *BusinessCollector, f *fakeDB, n int64) {
	t.Helper()
	idle := func() bool {
		c.amu.Lock()
		defer c.amu.Unlock()
		return !c.auditing
	}
	for end := time.Now().Add(10 * time.Second); f.audits.Load() < n || !idle(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d audits, want %d", f.audits.Load(), n)
		}
		reg.Gather()
	}
}

// TestBusinessExposition: every figure under its name, labels and unit,
// exactly as the text format shows it.
func TestBusinessExposition(t *testing.T) {
	f := &fakeDB{}
	f.consistent.Store(true)
	reg, c := newFake(t, f, BusinessOptions{})
	awaitAudits(t, reg, c, f, 1)
	want := `
# HELP sharespot_charged_minor_units_total Money settled sessions charged their guests (hosts' shares and fees), in the currency's minor unit (cents for EUR).` + deployment + `
# TYPE sharespot_charged_minor_units_total counter
sharespot_charged_minor_units_total{currency="EUR"} 1234
sharespot_charged_minor_units_total{currency="JPY"} 500
# HELP sharespot_fees_minor_units_total The platform's fees from settled sessions, in the currency's minor unit.` + deployment + `
# TYPE sharespot_fees_minor_units_total counter
sharespot_fees_minor_units_total{currency="EUR"} 61
sharespot_fees_minor_units_total{currency="JPY"} 25
# HELP sharespot_escrow_held_minor_units Money held in escrow now (paid, not yet settled), in the currency's minor unit.` + deployment + `
# TYPE sharespot_escrow_held_minor_units gauge
sharespot_escrow_held_minor_units{currency="EUR"} 300
sharespot_escrow_held_minor_units{currency="JPY"} 0
# HELP sharespot_sessions Sessions by state.` + deployment + `
# TYPE sharespot_sessions gauge
sharespot_sessions{state="active"} 3
sharespot_sessions{state="confirmed"} 0
sharespot_sessions{state="ended"} 5
sharespot_sessions{state="ending"} 0
sharespot_sessions{state="paid"} 0
sharespot_sessions{state="quoted"} 0
sharespot_sessions{state="requested"} 0
# HELP sharespot_sold_bytes_total Bytes billed to guests in settled sessions.` + deployment + `
# TYPE sharespot_sold_bytes_total counter
sharespot_sold_bytes_total 1.23456789e+08
# HELP sharespot_escrow_overdue_seconds How long past its deadline the most overdue session holding escrow is (0 when none).` + deployment + `
# TYPE sharespot_escrow_overdue_seconds gauge
sharespot_escrow_overdue_seconds 90.5
# HELP sharespot_outbox_oldest_pending_age_seconds Age of the oldest pending Stripe call (0 when none).` + deployment + `
# TYPE sharespot_outbox_oldest_pending_age_seconds gauge
sharespot_outbox_oldest_pending_age_seconds 600
# HELP sharespot_audit_consistent 1 when the last full audit found the ledger consistent, no ended session holding escrow and every host's record matching its sessions (sharespot wallet audit), 0 when not; absent until the first audit completes. Each replica audits the shared database in the background.
# TYPE sharespot_audit_consistent gauge
sharespot_audit_consistent 1
# HELP sharespot_audit_last_run_timestamp_seconds When the last full audit completed (Unix time).
# TYPE sharespot_audit_last_run_timestamp_seconds gauge
sharespot_audit_last_run_timestamp_seconds 1000
`
	names := []string{"sharespot_charged_minor_units_total", "sharespot_fees_minor_units_total", "sharespot_escrow_held_minor_units",
		"sharespot_sessions", "sharespot_sold_bytes_total", "sharespot_escrow_overdue_seconds", "sharespot_outbox_oldest_pending_age_seconds",
		"sharespot_audit_consistent", "sharespot_audit_last_run_timestamp_seconds"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	for name, want := range map[string]int{"sharespot_sessions_settled_total": 2, "sharespot_refunded_minor_units_total": 2,
		"sharespot_escrow_overdue_sessions": 1, "sharespot_outbox_ops": 2, "sharespot_audit_duration_seconds": 1, "sharespot_business_read_errors_total": 2} {
		if got := testutil.CollectAndCount(reg, name); got != want {
			t.Errorf("%s: %d series, want %d", name, got, want)
		}
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestBusinessCache: scrapes within the TTL share one read; a failed read
// leaves the figures out and is counted; the audit runs in the background
// (a scrape never waits for it), at most once per AuditEvery, and a
// failed audit leaves the last result standing.
func TestBusinessCache(t *testing.T) {
	t.Run("ttl", func(t *testing.T) {
		f := &fakeDB{}
		reg, _ := newFake(t, f, BusinessOptions{TTL: time.Hour, AuditEvery: time.Hour})
		for range 5 {
			reg.Gather()
		}
		if n := f.reads.Load(); n != 1 {
			t.Errorf("%d reads for 5 scrapes within the TTL, want 1", n)
		}
		reg, _ = newFake(t, f, BusinessOptions{TTL: time.Nanosecond, AuditEvery: time.Hour})
		for range 5 {
			time.Sleep(time.Millisecond)
			reg.Gather()
		}
		if n := f.reads.Load(); n != 6 {
			t.Errorf("%d reads for 5 scrapes past the TTL (and 1 before), want 6", n)
		}
	})
	t.Run("read error", func(t *testing.T) {
		f := &fakeDB{}
		f.readErr.Store(true)
		reg, c := newFake(t, f, BusinessOptions{TTL: time.Nanosecond, AuditEvery: time.Hour})
		if n := testutil.CollectAndCount(reg, "sharespot_sessions", "sharespot_charged_minor_units_total", "sharespot_outbox_ops"); n != 0 {
			t.Errorf("%d figures from a failed read, want none", n)
		}
		if got := testutil.ToFloat64(c.errs.WithLabelValues("figures")); got != 1 {
			t.Errorf("figures errors = %v, want 1", got)
		}
		f.readErr.Store(false)
		time.Sleep(time.Millisecond)
		if n := testutil.CollectAndCount(reg, "sharespot_sessions"); n != len(sessionStates) {
			t.Errorf("%d sessions series once the database answers, want %d", n, len(sessionStates))
		}
	})
	t.Run("audit", func(t *testing.T) {
		f := &fakeDB{release: make(chan struct{})}
		reg, c := newFake(t, f, BusinessOptions{AuditEvery: time.Nanosecond})
		// The audit is stuck: scrapes go on without it, and start no
		// second one.
		for range 3 {
			if n := testutil.CollectAndCount(reg, "sharespot_audit_consistent"); n != 0 {
				t.Fatalf("audit result before any audit completed: %d series", n)
			}
		}
		close(f.release)
		awaitAudits(t, reg, c, f, 1)
		// Inconsistent: 0.
		f.consistent.Store(false)
		n := f.audits.Load()
		awaitAudits(t, reg, c, f, n+2)
		if got := auditGauge(t, reg); got != 0 {
			t.Errorf("audit_consistent = %v after an inconsistent audit, want 0", got)
		}
		// Consistent: 1; then an audit that fails leaves 1 and is counted.
		f.consistent.Store(true)
		awaitAudits(t, reg, c, f, f.audits.Load()+2)
		f.auditErr.Store(true)
		awaitAudits(t, reg, c, f, f.audits.Load()+2)
		if got := auditGauge(t, reg); got != 1 {
			t.Errorf("audit_consistent = %v after failed audits, want the last result, 1", got)
		}
		if got := testutil.ToFloat64(c.errs.WithLabelValues("audit")); got < 1 {
			t.Errorf("audit errors = %v, want ≥ 1", got)
		}
	})
}

// auditGauge returns the audit gauge.
func auditGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "sharespot_audit_consistent" {
			return f.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no sharespot_audit_consistent")
	return 0
}

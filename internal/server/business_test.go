package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

const mb = harness.BenchMB

// sell plays the host in a guest's purchase: the fee for bytes at amount
// (cents), the guest's payment and confirmation, and, when grant, the
// grant (the session's first with a sealed code).
func sell(t *testing.T, host *client.Client, g *guest.Guest, ses *guest.Session, bytes, amount int64, grant bool) {
	t.Helper()
	ctx := context.Background()
	q, err := host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: bytes, AmountMinor: amount, Currency: "EUR"}))
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
	rc, err := ses.Pay(ctx, q.Msg.Quote, guest.BuyOptions{})
	if err != nil {
		t.Fatalf("pay: %v", err)
	}
	if err := ses.Confirm(ctx, q.Msg.Quote, rc); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	if grant {
		if err := harness.Grant(ctx, host, g, ses.ID, q.Msg.Quote, bytes); err != nil {
			t.Fatal(err)
		}
	}
}

// business is the business figures of a scrape, each series by its name
// and labels ("sharespot_sessions{state=active}").
func (s scrape) business() map[string]float64 {
	out := map[string]float64{}
	for name, f := range s {
		if !strings.HasPrefix(name, "sharespot_") || !isBusiness(name) {
			continue
		}
		for _, m := range f.Metric {
			key := name
			if len(m.Label) > 0 {
				var ls []string
				for _, l := range m.Label {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			}
		}
	}
	return out
}

func isBusiness(name string) bool {
	for _, p := range []string{"sharespot_sessions", "sharespot_sold_", "sharespot_charged_", "sharespot_fees_", "sharespot_refunded_",
		"sharespot_escrow_", "sharespot_outbox_", "sharespot_audit_consistent", "sharespot_business_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// TestBusinessMetrics runs real flows (a purchase with a top-up settled
// on the host's count, a verified purchase settled on the guest's
// acknowledgments, a payment never granted and refunded at its deadline,
// a session still active, one only requested, Stripe calls in the outbox)
// and checks every business figure on /metrics to the cent and the byte,
// before and after the sweeper acts on the overdue payment.
func TestBusinessMetrics(t *testing.T) {
	ctx := context.Background()
	// The sweeper runs only when the test calls it, so that a payment
	// overdue is seen holding its escrow first.
	env := harness.Start(t, func(c *server.Config) { c.Limits, c.SweepInterval = api.Limits{}, time.Hour })
	hostC := env.Device(t, "host")
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	hs := res.Msg.Hotspot // 10 cents per MB, top-ups 12 cents per MB
	newGuest := func(name string, unverified bool) *guest.Guest {
		c := env.Device(t, name)
		env.Fund(t, c, "EUR", 1000)
		return &guest.Guest{C: c, Suites: []seal.Suite{seal.Preset}, Unverified: unverified}
	}
	begin := func(g *guest.Guest, bytes int64) *guest.Session {
		ses, err := g.BeginHotspot(ctx, hs.Id, bytes)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ses.Close() })
		return ses
	}
	end := func(ses *guest.Session, used int64) {
		if _, err := hostC.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, UsedBytes: used, Reason: "test"})); err != nil {
			t.Fatal(err)
		}
	}

	// A: unverified; 10 MB for 100, a 5 MB top-up for 60; the host counts
	// 12 MB: 100 + 2/5 of 60 = 124 charged, fee 5 % = 6 (rounded down),
	// 36 refunded.
	ga := newGuest("guest-a", true)
	a := begin(ga, 10*mb)
	sell(t, hostC, ga, a, 10*mb, 100, true)
	if err := a.RequestTopUp(ctx, 5*mb); err != nil {
		t.Fatal(err)
	}
	sell(t, hostC, ga, a, 5*mb, 60, true)
	end(a, 12*mb)

	// B: verified; 10 MB for 100, the guest acknowledges 4 MB and the
	// host counts as much: 40 charged, fee 2, 60 refunded.
	gb := newGuest("guest-b", false)
	b := begin(gb, 10*mb)
	sell(t, hostC, gb, b, 10*mb, 100, true)
	if _, err := b.Acknowledge(ctx, 4*mb); err != nil {
		t.Fatal(err)
	}
	end(b, 4*mb)

	// C: paid (100) and confirmed, never granted. E: active, 100 held.
	gc := newGuest("guest-c", false)
	c := begin(gc, 10*mb)
	sell(t, hostC, gc, c, 10*mb, 100, false)
	e := begin(gb, 10*mb)
	sell(t, hostC, gb, e, 10*mb, 100, true)

	// C's grant deadline (30 s) passes by one second; D is requested
	// after, within its own deadline.
	env.Clock.Advance(session.DefaultConfig().GrantTimeout + time.Second)
	begin(gc, 10*mb)
	// The outbox: one Stripe call pending for 10 minutes, one failed.
	err = env.Srv.Store().Write(ctx, func(tx *store.Tx) error {
		for i, st := range []string{"pending", "failed", "done"} {
			if _, err := tx.Exec(`INSERT INTO stripe_ops (id, kind, session_id, target, amount_minor, currency, state, created_ms) VALUES (?, 'capture', ?, 'pi_test', 100, 'EUR', ?, ?)`,
				"op"+st, c.ID, st, env.Clock.Now().Add(-10*time.Minute).UnixMilli()+int64(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]float64{
		"sharespot_sessions{state=requested}":                1,
		"sharespot_sessions{state=quoted}":                   0,
		"sharespot_sessions{state=paid}":                     0,
		"sharespot_sessions{state=confirmed}":                1,
		"sharespot_sessions{state=active}":                   1,
		"sharespot_sessions{state=ending}":                   0,
		"sharespot_sessions{state=ended}":                    2,
		"sharespot_sessions_settled_total{usage=verified}":   1,
		"sharespot_sessions_settled_total{usage=unverified}": 1,
		"sharespot_sold_bytes_total":                         16 * mb,
		"sharespot_charged_minor_units_total{currency=EUR}":  164,
		"sharespot_fees_minor_units_total{currency=EUR}":     8,
		"sharespot_refunded_minor_units_total{currency=EUR}": 96,
		"sharespot_escrow_held_minor_units{currency=EUR}":    200,
		"sharespot_escrow_overdue_sessions":                  1,
		"sharespot_escrow_overdue_seconds":                   1,
		"sharespot_outbox_ops{state=pending}":                1,
		"sharespot_outbox_ops{state=failed}":                 1,
		"sharespot_outbox_oldest_pending_age_seconds":        600,
		"sharespot_audit_consistent":                         1,
		"sharespot_business_read_errors_total{what=figures}": 0,
		"sharespot_business_read_errors_total{what=audit}":   0,
	}
	// The audit runs in the background from the first scrape on.
	var got map[string]float64
	until(t, "the first audit", func() bool {
		got = scrapeOf(t, env.URL).business()
		_, ok := got["sharespot_audit_consistent"]
		return ok
	})
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("business figures (-want +got):\n%s", d)
	}

	// The sweeper refunds C: 100 more refunded, 100 less held, nothing
	// overdue. The figures change once the cached read expires.
	if err := env.Srv.SweepOnce(ctx); err != nil {
		t.Fatal(err)
	}
	want["sharespot_sessions{state=confirmed}"] = 0
	want["sharespot_sessions{state=ended}"] = 3
	want["sharespot_refunded_minor_units_total{currency=EUR}"] = 196
	want["sharespot_escrow_held_minor_units{currency=EUR}"] = 100
	want["sharespot_escrow_overdue_sessions"] = 0
	want["sharespot_escrow_overdue_seconds"] = 0
	until(t, "the figures read again", func() bool {
		got = scrapeOf(t, env.URL).business()
		return got["sharespot_sessions{state=ended}"] == 3
	})
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("business figures after the sweep (-want +got):\n%s", d)
	}
	env.MustAudit(t)

	// promlint finds nothing to fault on the whole registry.
	problems, err := testutil.CollectAndLint(env.Srv.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestBusinessAuditInconsistent: a ledger balance that no transfer
// explains makes the audit report 0.
func TestBusinessAuditInconsistent(t *testing.T) {
	env := harness.Start(t, nil)
	env.Fund(t, env.Device(t, "guest"), "EUR", 1000)
	if err := env.Srv.Store().Write(context.Background(), func(tx *store.Tx) error {
		_, err := tx.Exec(`UPDATE ledger_accounts SET balance = balance + 1 WHERE kind = 'wallet'`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var v float64
	until(t, "the first audit", func() bool {
		var ok bool
		v, ok = scrapeOf(t, env.URL).business()["sharespot_audit_consistent"]
		return ok
	})
	if v != 0 {
		t.Errorf("audit_consistent = %v with a wallet's balance off by a cent, want 0", v)
	}
}

// benchSessions starts a server whose database holds n sessions: 90 %
// settled, the rest open and holding escrow, 1 % past their deadline.
func benchSessions(b *testing.B, n int) (*harness.Env, int64) {
	ctx := context.Background()
	env := harness.Start(b, func(c *server.Config) { c.SweepInterval = time.Hour }) // the overdue stay overdue
	hostC, guestC := env.Device(b, "host"), env.Device(b, "guest")
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		b.Fatal(err)
	}
	now := env.Clock.Now().UnixMilli()
	ended, active := int32(sharespotv1.SessionState_SESSION_STATE_ENDED), int32(sharespotv1.SessionState_SESSION_STATE_ACTIVE)
	for start := 0; start < n; start += 10_000 { // batches, so that no one transaction is huge
		err := env.Srv.Store().Write(ctx, func(tx *store.Tx) error {
			for i := start; i < min(start+10_000, n); i++ {
				id := fmt.Sprintf("bench-%06d", i)
				state, deadline := ended, int64(0)
				if i%10 == 0 {
					state = active
					if i%100 == 0 {
						deadline = now - 1000
					}
					if _, err := tx.Exec(`INSERT INTO ledger_accounts (id, kind, owner, currency, balance) VALUES (?, 'escrow', ?, 'EUR', 100)`, "escrow:"+id, id); err != nil {
						return err
					}
				}
				if _, err := tx.Exec(`INSERT INTO sessions (id, hotspot_id, host_device_id, guest_device_id, state, requested_bytes, granted_bytes, used_bytes,
					currency, guest_keys, deadline_ms, settled_host_minor, settled_fee_minor, refunded_minor, usage_mode, created_ms, updated_ms)
					VALUES (?, ?, ?, ?, ?, 10000000, 10000000, 7000000, 'EUR', ?, ?, 67, 3, 30, 1, ?, ?)`,
					id, res.Msg.Hotspot.Id, hostC.DeviceID(), guestC.DeviceID(), state, []byte{0}, deadline, now, now); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return env, now
}

// BenchmarkBusinessRead measures one read of the business figures (what
// a scrape costs at most once per TTL) on 100,000 sessions.
// docs/benchmarks.md has the results.
func BenchmarkBusinessRead(b *testing.B) {
	const n = 100_000
	env, now := benchSessions(b, n)
	b.ResetTimer()
	for b.Loop() {
		fig, err := store.ReadT(context.Background(), env.Srv.Store(), func(tx *store.Tx) (metrics.Business, error) { return server.ReadBusiness(tx, now) })
		if err != nil {
			b.Fatal(err)
		}
		if fig.Overdue != n/100 || fig.Sessions[sharespotv1.SessionState_SESSION_STATE_ENDED] != n*9/10 {
			b.Fatalf("figures = %+v", fig)
		}
	}
}

// BenchmarkBusinessAudit measures the full audit each replica runs in the
// background every minute (session.Audit), on the same database.
func BenchmarkBusinessAudit(b *testing.B) {
	env, _ := benchSessions(b, 100_000)
	b.ResetTimer()
	for b.Loop() {
		if _, err := store.ReadT(context.Background(), env.Srv.Store(), session.Audit); err != nil {
			b.Fatal(err)
		}
	}
}

package host

import (
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/session"
)

// TestReportReconciledAfterRefusal: the host agent's usage reports against
// a real server, when the server refuses one (issue 10, item 4: clamp
// reports to the granted bytes and reconcile a refused report instead of
// dropping it). The guest buys 4 MB at 100 per MB.
//
//  1. The gateway counts 2 MB: reported as is.
//  2. The gateway's count falls to 1 MB (it lost its count): the report is
//     refused as below the 2 MB stored; reconciled, nothing lower is sent
//     and the session stays reported on.
//  3. The gateway holds 6 MB of volume, 2 more than the server granted (a
//     stale state file, or an extension whose grant was refused), and
//     counts 5 MB: the report is refused as above the grant; reconciled,
//     the granted 4 MB is sent.
//
// Then the host agent goes away and the guest ends: past the close
// deadline the server settles on the host's last report, so the exact
// money shows which report stood: 4 MB charged (400), 5 % fee (20), 380 to
// the host, nothing refunded. Without the reconcile the 2 MB report would
// stand (200 charged).
func TestReportReconciledAfterRefusal(t *testing.T) {
	const MB, funded = 1_000_000, 10_000
	r := newHostRig(t, 100, 4*MB)
	env, h, gw, hostC, guestC, ses := r.env, r.h, r.gw, r.hostC, r.guestC, r.ses
	sid := ses.ID
	ctx := t.Context() // r.ctx ends with the host agent

	counted := func(used, quota int64) {
		gw.mu.Lock()
		gw.used[sid], gw.quota[sid] = used, quota
		gw.mu.Unlock()
	}
	server := func() *sharespotv1.Session {
		t.Helper()
		res, err := hostC.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.Session
	}

	// 1. A plain report.
	counted(2*MB, 4*MB)
	h.ReportAll(ctx)
	if s := server(); s.UsedBytes != 2*MB || s.GrantedBytes != 4*MB {
		t.Fatalf("after reporting 2 MB the server has used %d of %d granted, want %d of %d", s.UsedBytes, s.GrantedBytes, 2*MB, 4*MB)
	}

	// 2. A count below the stored one: refused, nothing lower is sent.
	counted(1*MB, 4*MB)
	if _, err := hostC.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: sid, UsedBytes: 1 * MB})); harness.Code(err) != connect.CodeInvalidArgument {
		t.Fatalf("a report below the stored count: %v, want it refused (invalid argument)", err)
	}
	h.ReportAll(ctx)
	if s := server(); s.UsedBytes != 2*MB || s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		t.Fatalf("after a lower count the server has used %d (%v), want the stored %d, still active", s.UsedBytes, s.State, 2*MB)
	}
	h.mu.Lock()
	still := h.active[sid]
	h.mu.Unlock()
	if !still {
		t.Fatal("after a refused lower count the host agent stopped reporting on the session")
	}

	// 3. Volume above the grant: the 5 MB report is refused, the granted
	// 4 MB is sent in its place.
	counted(5*MB, 6*MB)
	if _, err := hostC.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: sid, UsedBytes: 5 * MB})); harness.Code(err) != connect.CodeInvalidArgument {
		t.Fatalf("a report above the grant: %v, want it refused (invalid argument)", err)
	}
	h.ReportAll(ctx)
	if s := server(); s.UsedBytes != 4*MB {
		t.Fatalf("after a refused report of 5 MB of 4 MB granted the server has used %d, want the reconciled %d", s.UsedBytes, 4*MB)
	}

	// The host goes away; the guest ends; past the close deadline the
	// last report stands.
	r.stopHost()
	var ending *sharespotv1.Session
	ses.Observe = func(e guest.Event) {
		if e.Step == guest.StepEnding {
			ending = e.Session
			env.Clock.Advance(session.DefaultConfig().CloseTimeout + time.Second)
		}
	}
	s, err := ses.End(ctx, "leaving")
	if err != nil {
		t.Fatalf("end and settle: %v", err)
	}
	if ending.GetState() != sharespotv1.SessionState_SESSION_STATE_ENDING {
		t.Fatalf("after the guest's End: %v, want ENDING", ending.GetState())
	}
	const charged, fee = 400, 20
	if s.UsedBytes != 4*MB || s.PaidMinor != 400 || s.SettledHostMinor != charged-fee || s.SettledFeeMinor != fee || s.RefundedMinor != 0 {
		t.Fatalf("settled on %d bytes: paid %d, host %d, fee %d, refunded %d; want %d bytes: paid 400, host %d, fee %d, refunded 0",
			s.UsedBytes, s.PaidMinor, s.SettledHostMinor, s.SettledFeeMinor, s.RefundedMinor, 4*MB, charged-fee, fee)
	}
	if got := harness.Balance(t, guestC, "EUR"); got != funded-charged {
		t.Errorf("the guest holds %d, want %d", got, funded-charged)
	}
	if got := harness.Balance(t, hostC, "EUR"); got != charged-fee {
		t.Errorf("the host holds %d, want %d", got, charged-fee)
	}
	env.MustAudit(t)
}

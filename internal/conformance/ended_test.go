package conformance

import (
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// TestEndedWithoutEndTime: a session ended by a replica of a release before
// schema 9 (during a rolling upgrade) has no ended_ms, so the indexes of
// unfinished sessions still hold it. It does not count against the guest's
// cap nor list as open; the audit names it; the next start sets its end
// time from its last update, and says so.
func TestEndedWithoutEndTime(t *testing.T) {
	dir := t.TempDir()
	oneOpen := func(c *server.Config) {
		c.Session = session.DefaultConfig()
		c.Session.MaxOpenPerGuest = 1
	}
	env := harness.StartIn(t, dir, oneOpen)
	hostC, guestC := env.Device(t, "host"), env.Device(t, "guest")
	res, err := hostC.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(0)}))
	if err != nil {
		t.Fatal(err)
	}
	env.Fund(t, guestC, currency, funds)
	g := &guest.Guest{C: guestC, Suites: []seal.Suite{seal.Preset}}
	if err := harness.PaidFlow(t.Context(), hostC, res.Msg.Hotspot, g); err != nil {
		t.Fatal(err)
	}
	type end struct{ endedMS, updatedMS int64 }
	ends := func(env *harness.Env) []end {
		out, err := store.ReadT(t.Context(), env.Srv.Store(), func(tx *store.Tx) ([]end, error) {
			var out []end
			rows, err := tx.Query(`SELECT ended_ms, updated_ms FROM sessions WHERE state = ?`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED))
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			for rows.Next() {
				var e end
				if err := rows.Scan(&e.endedMS, &e.updatedMS); err != nil {
					return nil, err
				}
				out = append(out, e)
			}
			return out, rows.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := ends(env)
	if len(before) != 1 || before[0].endedMS <= 0 {
		t.Fatalf("the ended session's end time: %+v", before)
	}
	// What an earlier release's replica leaves.
	if err := env.Srv.Store().Write(t.Context(), func(tx *store.Tx) error {
		_, err := tx.Exec(`UPDATE sessions SET ended_ms = 0`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := harness.Audit(t.Context(), env.Srv.Store()); err == nil || !strings.Contains(err.Error(), "end time disagrees") {
		t.Fatalf("the audit took an ended session without its end time: %v", err)
	}
	rep, err := store.ReadT(t.Context(), env.Srv.Store(), session.Audit)
	if err != nil {
		t.Fatal(err)
	}
	if rep.EndedUnmarked != 1 || rep.OK() {
		t.Fatalf("the operator's audit: %d ended without their end time, ok %v; want 1, false", rep.EndedUnmarked, rep.OK())
	}
	// The guest may open its one session: the ended one does not count.
	ses, err := g.BeginHotspot(t.Context(), res.Msg.Hotspot.Id, 10*harness.BenchMB)
	if err != nil {
		t.Fatalf("a request with one unfinished session allowed and none open: %v", err)
	}
	defer ses.Close()
	for name, cl := range map[string]*client.Client{"host": hostC, "guest": guestC} {
		l, err := cl.Sessions.ListSessions(t.Context(), connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Msg.Sessions) != 1 || l.Msg.Sessions[0].Id != ses.ID {
			t.Fatalf("the %s's open sessions: %d, want only %s", name, len(l.Msg.Sessions), ses.ID)
		}
	}
	env.Stop()
	logs := new(syncBuffer)
	env = harness.StartIn(t, dir, func(c *server.Config) {
		oneOpen(c)
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	if !strings.Contains(string(logs.Bytes()), "set from their last update") {
		t.Errorf("the start said nothing of the repair:\n%s", string(logs.Bytes()))
	}
	if after := ends(env); len(after) != 1 || after[0].endedMS != after[0].updatedMS {
		t.Fatalf("after the start, the ended session's end time: %+v, want its last update's", after)
	}
	env.MustAudit(t)
}

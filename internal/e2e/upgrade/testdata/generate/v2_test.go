package upgradefixture

// Schemas 2 and 3: the guest's signed acknowledgments, the guest's End
// (ENDING until the host's final count), the platform's keys sealed with
// the key in $SHARESPOT_FIXTURE_OUT/platform.key (one key for both
// engines' databases).

import (
	"context"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/server"
)

func configure(t *testing.T, c *server.Config, out string) {
	c.KeyFile = filepath.Join(out, "platform.key")
	configureCard(t, c)
	configureSchema(c)
}

func acknowledge(t *testing.T, c *client.Client, sid string, received int64) {
	t.Helper()
	if _, err := c.Acknowledge(context.Background(), sid, received); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
}

// moreSessions leaves a session the guest ended, waiting for the host's
// final count (ENDING), and what the card adds.
func moreSessions(t *testing.T, r *rig) {
	t.Helper()
	leaving := r.guest(t, "guest-leaving")
	sid := r.request(t, leaving, 10*MB)
	q := r.quote(t, sid, 10*MB, 100)
	r.confirm(t, leaving, sid, r.pay(t, leaving, q))
	r.grant(t, leaving, sid, q, true)
	acknowledge(t, leaving.C, sid, 3*MB)
	r.report(t, sid, 3*MB)
	res, err := leaving.C.Sessions.End(context.Background(), connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, Reason: "leaving"}))
	if err != nil {
		t.Fatalf("guest end: %v", err)
	}
	if res.Msg.Session.State != sharespotv1.SessionState_SESSION_STATE_ENDING {
		t.Fatalf("guest end: session %v, want ENDING", res.Msg.Session.State)
	}
	cardSessions(t, r)
}

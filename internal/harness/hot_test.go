package harness

import (
	"context"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// TestSessionSavesAreHOT: on PostgreSQL the saves of a paid flow's
// session that change only its state, counts and deadline write no index
// entry (a HOT update): no index holds the state or the deadline, which
// nearly every save changes (migration 0011).
// Only the grant (the gateway's address) and the end (ended_ms) may touch
// an index. An index on state or deadline_ms makes every save a full
// update, and fails this test.
func TestSessionSavesAreHOT(t *testing.T) {
	db := Postgres(t)
	env := Start(t, func(c *server.Config) { c.DB = db })
	flow := paidFlows(t, env)
	const flows = 20
	for range flows {
		flow()
	}
	// The server's backends report their counts when idle: wait for the
	// flows' saves (at least four a flow) to show, within a bound.
	ctx := context.Background()
	var updates, hot int64
	for deadline := time.Now().Add(45 * time.Second); ; {
		var err error
		if updates, hot, err = pgtest.Updates(ctx, db, "sessions"); err != nil {
			t.Fatal(err)
		}
		if updates >= 4*flows || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("sessions: %d updates, %d of them HOT", updates, hot)
	if updates < 4*flows {
		t.Fatalf("PostgreSQL reported %d session updates after %d flows, want at least %d", updates, flows, 4*flows)
	}
	// A flow saves its session five times; the quote's, the payment's and
	// the confirmation's saves are HOT (58 % here). A third leaves room
	// for a page without space for the new version.
	if 3*hot < updates {
		t.Errorf("%d of %d session updates were HOT, want at least a third: an index holds a column that the saves change", hot, updates)
	}
}

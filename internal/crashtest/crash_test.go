package crashtest

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// TestCrashAtEveryCommit kills the server just before and just after each
// commit of a whole flow, restarts it, lets the clients carry on, and
// checks the money and the inboxes (see the package comment).
//
// Counting commits: the calibration runs the same flow once against the
// same server code in-process, with the store's commit hook counting
// instead of killing; that gives C (about 30: payment keys at start-up,
// two sign-ins of two commits, registration, then one commit per flow step
// and per inbox acknowledgement (held, and written about 100 ms later),
// then the ends). The flow is driven so that
// its commits come one at a time in the same order in every run: after
// each message the driver waits until both devices are idle (every handled
// message acknowledged, as the devices' transports see the Ack answers),
// and the guest acknowledges only after the host has; an acknowledgment is
// held and written ~100 ms later by a commit no call waits for, so the
// driver also waits until the server holds none unwritten (its
// sharespot_inbox_acks_held gauge). What can still move
// is the tail (the credential sweep commits once, half a second after
// start, and the two acknowledgements of the final SessionEnded). So the
// grid does not use C as its bound: for each mode it crashes at N = 1, 2,
// 3, … and stops at the first N the hooked server survives (the flow made
// fewer than N commits). C checks that this happens about where it should;
// and each mode must have caught every kind of write in flight (the call
// re-sent to the restarted server), the after-mode every way of recovering
// a lost response. A busy machine moves which call a crash at commit N
// catches, so after each pass of the grid a write no crash caught is
// steered: the server dies at the first commit holding that call's write
// (SHARESPOT_TEST_CRASH=before:Call or after:Call); and the grid runs again
// (at most three times) while a condition is unmet. The whole grid (~60
// runs) takes about 25 s on 2 cores, so -short does not skip it.
func TestCrashAtEveryCommit(t *testing.T) {
	start := time.Now()
	bin, err := harness.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := calibrate(t, bin)
	t.Logf("calibration: the flow takes %d commits (built and calibrated in %v)", c, time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}

	const slack = 4 // how far batching may move the end of the flow
	// Which call a crash at commit N catches in flight depends on timing
	// (a busy machine moves it), so coverage is pursued: the grid runs
	// again, at most maxPasses times, until every kind of write was caught
	// and, after commits, every way of recovering was taken.
	const maxPasses = 3
	// (Not "Ack": an acknowledgment of what the stream sent is held and
	// written a moment later with others (relay.Acks), so no Ack call
	// waits for a commit; crashes before and after that write are in the
	// grid like every commit, and the inboxes are checked after each.)
	writes := []string{"Challenge", "SignIn", "Register", "RequestAccess", "Quote", "Pay", "Confirm", "Grant",
		"Prompt", "RequestTopUp", "Acknowledge", "ReportUsage", "End"}
	// (Not "ended a stray session": a request sent again after its
	// commit answers the session it made, so a stray session fails the
	// run; see endAll.)
	recoveries := []string{"sign-in: signed in on attempt 2", "register: found the hotspot in the list",
		"pay QUOTE_KIND_INITIAL: already_exists; receipt recovered", "pay QUOTE_KIND_TOPUP: already_exists; receipt recovered",
		"confirm QUOTE_KIND_INITIAL: failed_precondition; already confirmed", "confirm QUOTE_KIND_TOPUP: failed_precondition; already confirmed",
		"top-up request: failed_precondition"}
	var summary []string
	for _, mode := range []string{"before", "after"} {
		inFlight := map[string]bool{}
		var notes []string
		missing := func() (out []string) {
			// Every write the flow makes was caught by a crash in this
			// mode: its request was in flight when the server died, and
			// was sent again to the restarted one.
			for _, p := range writes {
				if !inFlight[p] {
					out = append(out, "no crash caught a "+p+" call in flight")
				}
			}
			// After a commit, the response is lost: each way of
			// recovering from that was taken at least once.
			if mode == "after" {
				for _, want := range recoveries {
					if !slices.ContainsFunc(notes, func(n string) bool { return strings.HasPrefix(n, want) }) {
						out = append(out, fmt.Sprintf("no run recovered by %q", want))
					}
				}
			}
			return out
		}
		for pass := 1; pass <= maxPasses; pass++ {
			survivedAt := 0
			for n := 1; n <= c+slack+1 && survivedAt == 0; n++ {
				t.Run(fmt.Sprintf("%s_%02d", mode, n), func(t *testing.T) {
					res := crashRun(t, bin, fmt.Sprintf("%s:%d", mode, n))
					if !res.crashed {
						survivedAt = n
					}
					for _, p := range res.procs {
						inFlight[p] = true
					}
					notes = append(notes, res.notes...)
					summary = append(summary, fmt.Sprintf("%s:%-3d %s", mode, n, res))
				})
			}
			switch {
			case survivedAt == 0:
				t.Errorf("%s: the server still crashed at commit %d: the flow takes more commits than the calibrated %d", mode, c+slack+1, c)
			case survivedAt < c-slack:
				t.Errorf("%s: the server survived the flow with its hook at commit %d, far below the calibrated %d commits", mode, survivedAt, c)
			default:
				t.Logf("%s pass %d: crashed at every commit 1..%d; the flow ended before commit %d", mode, pass, survivedAt-1, survivedAt)
			}
			// A write no crash of the grid caught (the machine's timing
			// moved the commits around it) is steered: the server dies at
			// the first commit holding that call's write.
			for _, p := range writes {
				if inFlight[p] || t.Failed() {
					continue
				}
				t.Run(fmt.Sprintf("%s_%s", mode, p), func(t *testing.T) {
					res := crashRun(t, bin, mode+":"+p)
					if !res.crashed {
						t.Errorf("the server survived its hook at the first commit holding a %s write", p)
					}
					for _, p := range res.procs {
						inFlight[p] = true
					}
					notes = append(notes, res.notes...)
					summary = append(summary, fmt.Sprintf("%s:%-3s %s", mode, p, res))
				})
			}
			m := missing()
			if len(m) == 0 || t.Failed() {
				break
			}
			if pass == maxPasses {
				for _, what := range m {
					t.Errorf("%s, after %d passes: %s", mode, maxPasses, what)
				}
				break
			}
			t.Logf("%s pass %d left %d conditions unmet (%s); running the grid again", mode, pass, len(m), strings.Join(m, "; "))
		}
	}
	t.Logf("runs:\n%s", strings.Join(summary, "\n"))
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// ackDelay is how long the servers here hold an acknowledgment before its
// write (SHARESPOT_TEST_ACK_DELAY; 100 ms by default): the driver waits for
// each held one to be written before its next step, and at the default
// that wait was most of a run's time (1.5-2 s a run instead of 0.5).
const ackDelay = 10 * time.Millisecond

// runResult is what one crash run did.
type runResult struct {
	crashed bool
	late    bool // the hook fired only while the server was being stopped
	outcome string
	procs   []string // calls sent again after a connection failure
	downFor time.Duration
	took    time.Duration
	notes   []string
}

func (r runResult) String() string {
	s := "survived"
	if r.crashed {
		s = fmt.Sprintf("crashed, back in %v", r.downFor.Round(time.Millisecond))
		if r.late {
			s = "crashed while stopping"
		}
	}
	return fmt.Sprintf("%-26s %-10s %6v  %s", s, r.outcome, r.took.Round(time.Millisecond), strings.Join(r.notes, "; "))
}

// crashRun runs the flow against a server hooked to die at the hook's
// spec (SHARESPOT_TEST_CRASH): before:N, after:N, before:Call, after:Call.
func crashRun(t *testing.T, bin, at string) runResult {
	began := time.Now()
	dir := t.TempDir()
	harness.DBFor(t, dir) // a PostgreSQL database when SHARESPOT_TEST_DB=postgres
	srv := startServer(t, bin, dir, at)
	r := newRun(bin, dir, srv.Addr)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if !srv.waitListening(20 * time.Second) {
		t.Error("no server listening within 20s")
	}

	outcome, err := r.flow(ctx)
	if err != nil {
		t.Errorf("flow: %v", err)
	}
	if r.recvCancel != nil {
		if err := r.endAll(ctx); err != nil {
			t.Errorf("%v", err)
		}
	}
	if err := r.stopInboxes(); err != nil {
		t.Error(err)
	}
	srv.stop()
	crashed, late, downFor, errs, log := srv.result()
	for _, err := range errs {
		t.Error(err)
	}
	res := runResult{crashed: crashed, late: late, outcome: outcome, downFor: downFor, notes: r.notesSoFar(), procs: r.procsSoFar()}
	if r.recvCancel != nil {
		for _, f := range append(r.hostIn.Failures(), r.guestIn.Failures()...) {
			res.notes = append(res.notes, "handler failed, message redelivered: "+f)
		}
	}
	if crashed && late {
		// The hook fired after the flow, on the way down: the flow made
		// fewer than n commits. The data must still be sound.
		res.crashed = false
	}
	checkRun(t, dir, r, outcome)
	if outcome != completed {
		t.Errorf("the flow did not complete: %q", outcome)
	}
	if r.noGauge.Load() {
		t.Error(errNoGauge)
	}
	res.took = time.Since(began)
	if t.Failed() {
		t.Logf("notes: %v\nserver output:\n%s", res.notes, log)
	}
	return res
}

// calibrate runs the flow once on an in-process server built like the
// binary's, counting its commits instead of crashing.
func calibrate(t *testing.T, bin string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	var commits atomic.Int64
	sc := session.DefaultConfig()
	sc.QuoteTimeout, sc.QuoteTTL, sc.GrantTimeout = 2*time.Second, 3*time.Second, 2*time.Second
	lim := api.DefaultLimits()
	lim.PerDevice, lim.PerIP = 0, 0
	type opened struct {
		srv *server.Server
		err error
	}
	openc := make(chan opened, 1)
	go func() {
		srv, err := server.Open(ctx, server.Config{DataDir: dir, DB: harness.DBFor(t, dir), Session: sc, Limits: lim, AckDelay: ackDelay, Crash: func(n int64, committed bool, _ []string) {
			if committed {
				commits.Store(n)
			}
		}})
		openc <- opened{srv, err}
	}()
	var srv *server.Server
	select {
	case o := <-openc:
		if o.err != nil {
			t.Fatal(o.err)
		}
		srv = o.srv
	case <-time.After(20 * time.Second):
		t.Fatal("in-process server did not open within 20s")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()
	r := newRun(bin, dir, func() string { return ln.Addr().String() })
	outcome, err := r.flow(ctx)
	if err != nil {
		t.Errorf("calibration flow: %v", err)
	}
	if outcome != completed {
		t.Errorf("calibration flow did not complete: %q", outcome)
	}
	if r.recvCancel != nil {
		if err := r.endAll(ctx); err != nil {
			t.Error(err)
		}
	}
	if err := r.stopInboxes(); err != nil {
		t.Error(err)
	}
	n := commits.Load()
	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("in-process server did not stop within 15s")
	}
	srv.Close()
	checkRun(t, dir, r, outcome)
	if r.noGauge.Load() {
		t.Error(errNoGauge)
	}
	return int(n)
}

// checkRun checks a stopped server's database and the clients' inboxes.
func checkRun(t *testing.T, dir string, r *run, outcome string) {
	t.Helper()
	ctx := context.Background()
	target, err := server.DBTarget(dir, harness.DBIn(dir))
	if err != nil {
		t.Error(err)
		return
	}
	st, err := store.Open(ctx, target, store.Options{})
	if err != nil {
		t.Errorf("open the database: %v", err)
		return
	}
	defer st.Close()
	if err := harness.Audit(ctx, st); err != nil {
		t.Errorf("audit: %v", err)
	}
	err = st.Read(ctx, func(tx *store.Tx) error {
		// Every session ended; none granted other than its granted quotes.
		rows, err := tx.Query(`SELECT s.id, s.state, s.granted_bytes,
			COALESCE((SELECT SUM(q.bytes) FROM quotes q WHERE q.session_id = s.id AND q.state = ?), 0)
			FROM sessions s`, int32(sharespotv1.QuoteState_QUOTE_STATE_GRANTED))
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			var state int32
			var granted, quoted int64
			if err := rows.Scan(&id, &state, &granted, &quoted); err != nil {
				rows.Close()
				return err
			}
			if sharespotv1.SessionState(state) != sharespotv1.SessionState_SESSION_STATE_ENDED {
				t.Errorf("session %s is %v after the run", id, sharespotv1.SessionState(state))
			}
			if granted != quoted {
				t.Errorf("session %s granted %d bytes; its granted quotes hold %d", id, granted, quoted)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if r.guest.AccountID() == "" || r.host.AccountID() == "" {
			return nil // the run failed before sign-in
		}

		// The money: what was funded is in the guest's, the host's and
		// the fee wallet (escrow is empty: all sessions ended).
		var bal [4]int64
		for i, id := range []string{ledger.Wallet(r.guest.AccountID(), currency).ID, ledger.Wallet(r.host.AccountID(), currency).ID,
			"", ledger.Funding(currency).ID} {
			if id == "" {
				bal[i], err = ledger.FeeTotal(tx, currency)
			} else {
				bal[i], err = ledger.Balance(tx, id)
			}
			if err != nil {
				return err
			}
		}
		guestC, hostC, fee, funding := bal[0], bal[1], bal[2], bal[3]
		if guestC+hostC+fee != funded || funding != -funded {
			t.Errorf("guest %d + host %d + fee %d != funded %d (funding account %d)", guestC, hostC, fee, funded, funding)
		}
		if outcome == completed && (guestC != funded-1240 || hostC != 1178 || fee != 62) {
			t.Errorf("completed flow settled guest %d, host %d, fee %d; want %d, 1178, 62 (tranches: 100 MB at 10, 20 MB at 12)", guestC, hostC, fee, funded-1240)
		}

		// The inboxes: each handled message handled once, none lost.
		if r.recvCancel == nil {
			return nil // the inboxes never ran
		}
		for _, d := range []struct {
			name, id string
			msgs     []handledMsg
		}{{"host", r.host.DeviceID(), r.hostIn.Handled()}, {"guest", r.guest.DeviceID(), r.guestIn.Handled()}} {
			for _, err := range harness.CheckDelivery(tx, d.id, d.msgs) {
				t.Errorf("%s inbox: %v", d.name, err)
			}
		}
		grants := map[string]int{}
		for _, m := range r.guestIn.Handled() {
			if m.QuoteID != "" {
				if grants[m.QuoteID]++; grants[m.QuoteID] > 1 {
					t.Errorf("quote %s granted twice", m.QuoteID)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("read the database: %v", err)
	}
}

package harness

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

// statementBudget is how many statements the single SQLite writer may run
// for one short paid flow (PaidFlow: request, quote, pay, confirm, grant,
// end and settle). It was 92 before the writer-path work (issue 16); each
// statement costs the writer ~15-25 µs of CPU, so a change that adds some
// should say why (docs/benchmarks.md). With the writer's memory (store
// memo.go) a flow's reads of its session, quotes, receipts and devices'
// accounts cost none after the request: 46. With a device's next inbox
// number kept by the writer alone, the device's row no longer written for
// each message (account.NextSeq): 40.
const statementBudget = 42

// TestStatementBudget counts, statement by statement, what the writer runs
// for a paid flow, and fails when the total goes over the budget. The count
// is exact (flows run one at a time, so no batch runs twice), not a timing.
func TestStatementBudget(t *testing.T) {
	// Verifying the writer's memory (as CI's suites do) reads each value
	// again: count what the writer runs without it.
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	env := Start(t, nil)
	flow := paidFlows(t, env)
	before := env.Srv.Store().StatementCounts()
	const flows = 20
	for range flows {
		flow()
	}
	table, perFlow := statementTable(before, env.Srv.Store().StatementCounts(), flows)
	t.Logf("statements per flow: %.2f\n%s", perFlow, table)
	if perFlow > statementBudget {
		t.Fatalf("a paid flow runs %.2f statements on the writer, over the budget of %d:\n%s", perFlow, statementBudget, table)
	}
}

// roundTripBudget is how many round trips to PostgreSQL the writes of one
// short paid flow may take, BEGIN and COMMIT included. Before the writes
// were pipelined (store/pgpipe.go) every statement was one, and BEGIN and
// COMMIT one each: 80 per flow; pipelined, 55; with each inbox append's
// sequence taken in the append's own statement (relay.Append), 50; with
// a transfer's common path one statement (ledger.Apply), 42; with each
// write's own memory (store/memo.go: a session's quotes read once a write)
// and an inbox append going with the COMMIT (store.Tx.InsertRowLater), 34;
// with the statements a write expects to succeed not waited for
// (store.Tx.ExpectN, Guarded) and a device's account kept store-wide
// (store.Fixed), 27; with the reads that follow a row lock sent with it
// (store.Tx.Together: a session's quotes, a request's caps, a bill's
// escrow and card holds), 20; with the expected statements guarded in the
// database so that they go with the COMMIT (store.Tx.Guarded) and the
// receipts read with the session, 17; with a settlement's closing of its
// quotes queued (ExecLater), a request's hotspot read with its lock and
// caps, and a payment's session found by its quote, 14; with an end's
// escrow balance and card holds read with its lock, 13; with a quote's
// hotspot read with its session, 12.
const roundTripBudget = 13

// TestRoundTripBudget counts the statements and round trips of a paid
// flow's writes on PostgreSQL, and fails when the round trips go over
// the budget or the pipelining stops saving any.
func TestRoundTripBudget(t *testing.T) {
	// Verifying a write's own memory (as CI's suites do) reads each value
	// again: count what a write sends without it.
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	env := Start(t, func(c *server.Config) { c.DB = Postgres(t) })
	flow := paidFlows(t, env)
	before := env.Srv.Store().Stats()
	const flows = 20
	for range flows {
		flow()
	}
	after := env.Srv.Store().Stats()
	stmts := float64(after.PgStatements-before.PgStatements) / flows
	trips := float64(after.PgRoundTrips-before.PgRoundTrips) / flows
	commits := float64(after.Commits-before.Commits) / flows
	reads := float64(after.PgReads-before.PgReads) / flows
	readTrips := float64(after.PgReadRoundTrips-before.PgReadRoundTrips) / flows
	t.Logf("per flow on PostgreSQL: writes %.2f statements (BEGIN and COMMIT included), %.2f round trips, %.2f commits; %.2f reads in %.2f round trips",
		stmts, trips, commits, reads, readTrips)
	if trips > roundTripBudget {
		t.Errorf("a paid flow's writes take %.2f round trips to PostgreSQL, over the budget of %d", trips, roundTripBudget)
	}
	if trips >= stmts {
		t.Errorf("%.2f round trips for %.2f statements: nothing was pipelined", trips, stmts)
	}
	// Each read of the flow (the guest's discovery, the deadline sweep) is
	// one round trip, its BEGIN and ROLLBACK included (store.Tx.Last).
	if readTrips > reads {
		t.Errorf("%.2f reads a flow take %.2f round trips; want one each", reads, readTrips)
	}
	if n := after.Replays - before.Replays; n != 0 {
		t.Errorf("%d writes of paid flows ran again: a statement sent ahead did not do what the write expected", n)
	}
}

// paidFlows registers a host and funds a guest on env, runs two flows
// (the first ones open the escrow and host accounts), and returns a
// function that runs one more.
func paidFlows(t *testing.T, env *Env) func() {
	ctx := context.Background()
	hostC := env.Device(t, "host")
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: BenchInstruction(0)}))
	if err != nil {
		t.Fatal(err)
	}
	gc := env.Device(t, "guest")
	env.Fund(t, gc, "EUR", 1<<40)
	g := &guest.Guest{C: gc, Suites: []seal.Suite{seal.Preset}}
	flow := func() {
		if err := PaidFlow(ctx, hostC, res.Msg.Hotspot, g); err != nil {
			t.Fatal(err)
		}
	}
	flow()
	flow()
	return flow
}

// statementTable lists the statements run between two StatementCounts,
// per flow, most frequent first.
func statementTable(before, after map[string]int64, flows int) (string, float64) {
	type row struct {
		q string
		n int64
	}
	var rows []row
	var total int64
	for q, n := range after {
		if d := n - before[q]; d > 0 {
			rows = append(rows, row{q, d})
			total += d
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].n > rows[j].n || rows[i].n == rows[j].n && rows[i].q < rows[j].q })
	var b strings.Builder
	for _, r := range rows {
		q := strings.Join(strings.Fields(r.q), " ")
		if len(q) > 110 {
			q = q[:110] + "…"
		}
		fmt.Fprintf(&b, "%6.2f  %s\n", float64(r.n)/float64(flows), q)
	}
	return b.String(), float64(total) / float64(flows)
}

var _ = store.SQLite // the budget is the SQLite writer's

// Package chaostest runs hundreds of concurrent paid flows against the
// real `sharespot server` binary while SIGKILLing and restarting it at
// random moments, again and again, and then checks that nothing a client
// was told went wrong, and no money moved that should not have.
//
// TestChaos builds the binary (harness.BuildBinary) and runs rounds. Each
// round starts a server on a fresh database (SQLite, or PostgreSQL with
// SHARESPOT_TEST_DB=postgres) with short deadlines and no rate limits,
// signs in hosts and guests (internal/loadgen; hosts answer their inboxes
// with the real host agent), funds the guests as the operator does, and
// lets every guest run complete flows with top-ups (request, fee, pay,
// confirm, grant, prompt, top-up, fee, pay, confirm, grant, end) for a few
// seconds while a killer SIGKILLs the server at random moments and
// restarts it on the same port after a random pause. That some flow
// completes is pursued, not asserted after one pass: if none has by the
// end of the load, the guests go on (no more kills) until one does, for
// at most a minute more. The clients behave as real ones: a call whose
// answer was lost (connection refused or reset, or an answer cut off
// mid-body, "unexpected EOF") is sent again; the guests run their flow
// through guest.Session with Retry, so a re-sent payment refused as
// already paid takes its receipt from the quote; a re-sent request leaves
// a stray session that the server's deadlines end; inbox streams
// (client.Inbox) reconnect and skip what they already handled.
//
// After the load, the round waits for the sweeper to move every session a
// crash left waiting (a quote never paid, a payment never granted) past
// its deadline, waits until the inboxes are quiet, stops the server and
// checks its database: harness.Audit (the ledger balances and sums to
// zero, no forbidden negative balance, no escrow left in an ended session,
// every paid quote of an ended session granted or refunded, a receipt for
// every payment, no hotspot oversold), harness.CheckSessions (every
// session ended, none granted other than its granted quotes),
// harness.CheckMoney (every cent funded is in a wallet or the fee
// accounts), and, for every device, harness.CheckDelivery (each inbox
// message handled exactly once, in order, none acknowledged and lost) and
// no quote granted twice to a guest.
//
// The seed (SHARESPOT_CHAOS_SEED, or random) is always logged. It fixes
// every choice the test makes: each round's seed, which host each flow
// buys from, when the server is killed and how long it stays down. It
// cannot fix the operating system's scheduling, so a failure found with a
// seed recurs with that seed often, not always. SHARESPOT_CHAOS_ROUNDS
// (default 2), SHARESPOT_CHAOS_FLOWS (concurrent guests, default 200),
// SHARESPOT_CHAOS_KILLS (per round, default 3) and
// SHARESPOT_CHAOS_LOAD_MS (load per round in milliseconds, default 6000)
// size a run.
//
// The package holds tests only.
package chaostest

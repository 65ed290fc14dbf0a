// Package crashtest proves that the Sharespot server is crash-safe at every
// transaction boundary of the claimed flow (claims 1–3, docs/claims.md).
//
// TestCrashAtEveryCommit builds the real binary and, for every database
// commit N the flow makes (sign-in, registration, request, quote, payment,
// confirmation, grant, prompt, top-up, usage, end, and every inbox
// acknowledgement: held by the server and written a moment later, here
// 10 ms through SHARESPOT_TEST_ACK_DELAY), starts the server with
// SHARESPOT_TEST_CRASH=before:N and then after:N, so that it SIGKILLs
// itself just before or just after that commit (and, for a call whose
// write no crash of the grid caught in flight, before:Call and after:Call:
// at the first commit holding that call's write). The test asserts the process really died of SIGKILL, restarts it
// without the hook on the same data directory (and port), and lets the
// clients carry on as real ones would: unary calls are re-sent on connection
// errors; the guest runs its flow as guest.Session does (with Retry), so a
// guest whose Pay response was lost takes its receipt from the quote
// instead of paying again; inbox streams (client.Inbox) reconnect and skip
// what they already handled.
//
// After each run, with the server stopped, it checks the database: the
// money invariants of harness.Audit, no quote granted twice, no session
// granted more than its granted quotes, every session ended, and the
// guest's, host's and fee wallets adding up to the funded amount (exactly
// the claimed settlement when the flow completed). On the client side, each
// device handled every inbox message exactly once, in an unbroken run of
// sequence numbers from 1, and every message it did not handle is still in
// its inbox: nothing acknowledged was lost.
//
// The package holds tests only.
package crashtest

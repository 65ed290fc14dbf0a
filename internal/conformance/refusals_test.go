package conformance

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

// TestRefusals proves that every message that does not fit — wrong order,
// wrong party, paid twice, forged or replayed receipts, expired quotes,
// missed deadlines, oversold volume, malformed fields, oversized requests,
// bad tokens, too many calls — is refused with the right Connect code and a
// message that says what was wrong, and that nothing changed: not the
// money, not a session, not a hotspot's committed volume, not an inbox.
func TestRefusals(t *testing.T) {
	t.Run("wrong_order", testWrongOrder)
	t.Run("wrong_party", testWrongParty)
	t.Run("double_payment", testDoublePayment)
	t.Run("forged_receipt", testForgedReceipt)
	t.Run("altered_receipt", testAlteredReceipt)
	t.Run("replayed_receipt", testReplayedReceipt)
	t.Run("expired_quote", testExpiredQuote)
	t.Run("deadlines", testDeadlines)
	t.Run("over_shareable_volume", testOverShareable)
	t.Run("unknown_or_withdrawn", testUnknownOrWithdrawn)
	t.Run("malformed_registration", testMalformedRegistration)
	t.Run("malformed_discovery", testMalformedDiscovery)
	t.Run("malformed_request_access", testMalformedRequestAccess)
	t.Run("malformed_grant", testMalformedGrant)
	t.Run("malformed_quote", testMalformedQuote)
	t.Run("bssid_taken", testBSSIDTaken)
	t.Run("oversized_request", testOversized)
	t.Run("bad_tokens", testBadTokens)
	t.Run("rate_limits", testRateLimits)
	t.Run("plain_json", testPlainJSON)
}

// ---------------------------------------------------------------- the rig

// rig is a server, a host with one registered hotspot (instruction()) and a
// funded guest. Unlike flow, no host agent answers: the test plays the host
// step by step, so it can send each message out of turn.
type rig struct {
	env             *harness.Env
	host, guest     *client.Client
	hostIn, guestIn *harness.Inbox
	hs              *sharespotv1.Hotspot
}

const funds = 10_000

func newRig(t *testing.T, mod func(*server.Config)) *rig {
	t.Helper()
	r := &rig{env: harness.Start(t, func(c *server.Config) {
		c.Session = sessionConfig()
		// The tests open many sessions per guest on one server.
		c.Session.MaxOpenPerGuest = 64
		c.Session.MaxUnpaidPerAccount = 64
		if mod != nil {
			mod(c)
		}
	})}
	r.host, r.guest = r.env.Device(t, "host"), r.env.Device(t, "guest")
	res, err := r.host.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: instruction()}))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	r.hs = res.Msg.Hotspot
	r.hostIn = harness.Listen(t, r.host, nil)
	r.guestIn = harness.Listen(t, r.guest, nil)
	r.env.Fund(t, r.guest, currency, funds)
	return r
}

// newGuest signs in and funds another guest.
func (r *rig) newGuest(t *testing.T, name string) *client.Client {
	t.Helper()
	g := r.env.Device(t, name)
	r.env.Fund(t, g, currency, funds)
	return g
}

// ses is one session as the test knows it.
type ses struct {
	id    string
	guest *client.Client
	key   *seal.PrivateKey // the guest's HPKE key (preset suite)
}

func guestKey(t *testing.T, s seal.Suite) (*seal.PrivateKey, *sharespotv1.GuestKey) {
	t.Helper()
	k, err := seal.GenerateKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k, &sharespotv1.GuestKey{Suite: string(s), PublicKey: k.PublicKey()}
}

// request is C1.6: guest asks for bytes at the rig's hotspot.
func (r *rig) request(t *testing.T, guest *client.Client, n int64) *ses {
	t.Helper()
	return r.requestMode(t, guest, n, sharespotv1.UsageMode_USAGE_MODE_UNSPECIFIED)
}

// requestMode is request in a usage mode (unspecified: unverified, as a
// guest older than protocol 5 asks).
func (r *rig) requestMode(t *testing.T, guest *client.Client, n int64, mode sharespotv1.UsageMode) *ses {
	t.Helper()
	k, gk := guestKey(t, seal.Preset)
	res, err := guest.Sessions.RequestAccess(t.Context(), connect.NewRequest(&sharespotv1.RequestAccessRequest{
		HotspotId: r.hs.Id, Bytes: n, GuestKeys: []*sharespotv1.GuestKey{gk}, UsageMode: mode}))
	if err != nil {
		t.Fatalf("request access: %v", err)
	}
	return &ses{id: res.Msg.Session.Id, guest: guest, key: k}
}

// price is what the tariff asks for n bytes (initial or top-up).
func price(t *testing.T, n int64, topUp bool) int64 {
	t.Helper()
	tf := instruction().Tariff
	unit := tf.PriceMinor
	if topUp {
		unit = tf.TopupPriceMinor
	}
	p, err := protocol.Price(n, unit, tf.UnitBytes)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// quote is C3.1 / C1.12 at the tariff's price.
func (r *rig) quote(t *testing.T, s *ses, n int64, topUp bool) *sharespotv1.Quote {
	t.Helper()
	res, err := r.host.Sessions.Quote(t.Context(), connect.NewRequest(&sharespotv1.QuoteRequest{
		SessionId: s.id, Bytes: n, AmountMinor: price(t, n, topUp), Currency: currency}))
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
	return res.Msg.Quote
}

// pay is C3.2 / C1.13.
func (r *rig) pay(t *testing.T, s *ses, q *sharespotv1.Quote) *sharespotv1.Receipt {
	t.Helper()
	res, err := s.guest.Payments.Pay(t.Context(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
	if err != nil {
		t.Fatalf("pay: %v", err)
	}
	return res.Msg.Receipt
}

// confirm is C3.3 / C1.14.
func (r *rig) confirm(t *testing.T, s *ses, rc *sharespotv1.Receipt) {
	t.Helper()
	if _, err := s.guest.Sessions.Confirm(t.Context(), connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.id, Receipt: rc})); err != nil {
		t.Fatalf("confirm: %v", err)
	}
}

// grantReq is a valid initial access response for q: a code sealed to the
// guest's key, the gateway, exactly the bytes paid for.
func (r *rig) grantReq(t *testing.T, s *ses, q *sharespotv1.Quote) *sharespotv1.GrantRequest {
	t.Helper()
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	sl, err := seal.Seal(s.key.Suite(), s.key.PublicKey(), seal.Binding{SessionID: s.id, HostID: r.host.DeviceID(), GuestID: s.guest.DeviceID()}, code)
	if err != nil {
		t.Fatal(err)
	}
	return &sharespotv1.GrantRequest{SessionId: s.id, QuoteId: q.Id, GrantedBytes: q.Bytes,
		SealedCode: &sharespotv1.SealedCode{Suite: string(sl.Suite), Enc: sl.Enc, Ciphertext: sl.Ciphertext},
		Gateway:    &sharespotv1.Gateway{Kind: "proxy", Address: "192.0.2.1:1080"}}
}

func (r *rig) grant(t *testing.T, req *sharespotv1.GrantRequest) {
	t.Helper()
	if _, err := r.host.Sessions.Grant(t.Context(), connect.NewRequest(req)); err != nil {
		t.Fatalf("grant: %v", err)
	}
}

// paid runs a session of n bytes up to a paid, unconfirmed quote.
func (r *rig) paid(t *testing.T, guest *client.Client, n int64) (*ses, *sharespotv1.Quote, *sharespotv1.Receipt) {
	t.Helper()
	s := r.request(t, guest, n)
	q := r.quote(t, s, n, false)
	return s, q, r.pay(t, s, q)
}

// confirmed runs a session of n bytes up to a confirmed, ungranted payment.
func (r *rig) confirmed(t *testing.T, guest *client.Client, n int64) (*ses, *sharespotv1.Quote) {
	t.Helper()
	s, q, rc := r.paid(t, guest, n)
	r.confirm(t, s, rc)
	return s, q
}

// active runs a session of n bytes up to the grant.
func (r *rig) active(t *testing.T, guest *client.Client, n int64) *ses {
	t.Helper()
	s, q := r.confirmed(t, guest, n)
	r.grant(t, r.grantReq(t, s, q))
	return s
}

// activeVerified is active for a verified session: its guest
// acknowledges what it receives, the bill is at most that plus the window.
func (r *rig) activeVerified(t *testing.T, guest *client.Client, n int64) *ses {
	t.Helper()
	s := r.requestMode(t, guest, n, sharespotv1.UsageMode_USAGE_MODE_VERIFIED)
	q := r.quote(t, s, n, false)
	r.confirm(t, s, r.pay(t, s, q))
	r.grant(t, r.grantReq(t, s, q))
	return s
}

// topUpQuoted asks for a top-up of n bytes on an active session and quotes it.
func (r *rig) topUpQuoted(t *testing.T, s *ses, n int64) *sharespotv1.Quote {
	t.Helper()
	if _, err := s.guest.Sessions.RequestTopUp(t.Context(), connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: s.id, Bytes: n})); err != nil {
		t.Fatalf("request top-up: %v", err)
	}
	return r.quote(t, s, n, true)
}

// session returns s as its host sees it.
func (r *rig) session(t *testing.T, id string) *sharespotv1.Session {
	t.Helper()
	res, err := r.host.Sessions.Get(t.Context(), connect.NewRequest(&sharespotv1.GetRequest{SessionId: id}))
	if err != nil {
		t.Fatalf("get session: %v", err)
	}
	return res.Msg.Session
}

func (r *rig) committed(t *testing.T) int64 {
	t.Helper()
	res, err := r.host.Hotspots.List(t.Context(), connect.NewRequest(&sharespotv1.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range res.Msg.Hotspots {
		if h.Id == r.hs.Id {
			return h.CommittedBytes
		}
	}
	t.Fatalf("hotspot %s not listed", r.hs.Id)
	return 0
}

// ---------------------------------------------------------------- assertions

// refused fails t unless err is a Connect error with code whose message
// contains every one of want.
func refused(t *testing.T, err error, code connect.Code, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want %v", code)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a Connect error", err)
	}
	if ce.Code() != code {
		t.Fatalf("refused with %v: %q; want %v", ce.Code(), ce.Message(), code)
	}
	for _, w := range want {
		if !strings.Contains(ce.Message(), w) {
			t.Errorf("message %q does not say %q", ce.Message(), w)
		}
	}
}

func message(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return ""
}

// state is every row a refusal could change, keyed "table/first column":
// money (every ledger account and transfer), sessions, quotes, receipts,
// hotspots (committed volume included), devices, accounts, and each inbox's
// next sequence number (so a relayed message shows even once acknowledged).
type state map[string]string

func snapshot(t *testing.T, env *harness.Env) state {
	t.Helper()
	queries := []struct{ table, q string }{
		{"accounts", `SELECT id FROM accounts`},
		{"devices", `SELECT id, account_id, ` + account.NextSeqSQL(env.Srv.Store().Engine()) + ` FROM devices`},
		{"hotspots", `SELECT * FROM hotspots`},
		{"sessions", `SELECT * FROM sessions`},
		{"quotes", `SELECT * FROM quotes`},
		{"receipts", `SELECT id, quote_id, confirmed FROM receipts`},
		{"ledger_accounts", `SELECT id, balance FROM ledger_accounts`},
		{"ledger_transfers", `SELECT id, debit, credit, amount FROM ledger_transfers`},
	}
	out := state{}
	err := env.Srv.Store().Read(t.Context(), func(tx *store.Tx) error {
		for _, q := range queries {
			rows, err := tx.Query(q.q)
			if err != nil {
				return err
			}
			cols, err := rows.Columns()
			if err != nil {
				rows.Close()
				return err
			}
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					rows.Close()
					return err
				}
				var b strings.Builder
				for i, v := range vals {
					if q.table == "hotspots" && cols[i] == "seen_ms" {
						// When its host was last seen: the server's presence
						// marks write it on their own schedule, at the
						// clock's time, whatever calls are refused.
						continue
					}
					if bs, ok := v.([]byte); ok {
						v = fmt.Sprintf("%x", bs)
					}
					fmt.Fprintf(&b, "%s=%v ", cols[i], v)
				}
				out[fmt.Sprintf("%s/%v", q.table, vals[0])] = b.String()
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return out
}

// unchanged fails t if anything in before changed.
func unchanged(t *testing.T, env *harness.Env, before state) {
	t.Helper()
	after := snapshot(t, env)
	var diffs []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, "- "+k)
		} else if w != v {
			diffs = append(diffs, fmt.Sprintf("~ %s\n    was %s\n    now %s", k, v, w))
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, "+ "+k+": "+v)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("a refused call changed state:\n%s", strings.Join(diffs, "\n"))
	}
}

// refusedQuietly runs call, asserts its refusal (code and message) and that
// it changed nothing.
func refusedQuietly(t *testing.T, env *harness.Env, call func() error, code connect.Code, want ...string) {
	t.Helper()
	before := snapshot(t, env)
	refused(t, call(), code, want...)
	unchanged(t, env, before)
}

// ranAgain runs call, a refusal that a PostgreSQL write finds only when a
// statement it expected to succeed (store.Tx.ExpectN, Guarded) did not:
// on PostgreSQL the write must have run again exactly once, statement by
// statement, for the refusal (and the amounts refusedQuietly checks) to
// come from the real outcome; on SQLite no write runs again.
func ranAgain(t *testing.T, env *harness.Env, call func()) {
	t.Helper()
	before := env.Srv.Store().Stats().Replays
	call()
	want := int64(0)
	if env.Srv.Store().Engine() == store.Postgres {
		want = 1
	}
	if n := env.Srv.Store().Stats().Replays - before; n != want {
		t.Errorf("%d writes ran again for the refusal, want %d", n, want)
	}
}

// waitFor polls cond for up to 5 s (the sweeper runs every 20 ms).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *rig) waitState(t *testing.T, id string, want sharespotv1.SessionState) *sharespotv1.Session {
	t.Helper()
	var s *sharespotv1.Session
	waitFor(t, fmt.Sprintf("session %s %v", id, want), func() bool {
		s = r.session(t, id)
		return s.State == want
	})
	return s
}

// ---------------------------------------------------------------- wrong order

func testWrongOrder(t *testing.T) {
	r := newRig(t, nil)
	ctx := t.Context()
	grant := func(req *sharespotv1.GrantRequest) func() error {
		return func() error { _, err := r.host.Sessions.Grant(ctx, connect.NewRequest(req)); return err }
	}

	t.Run("grant_before_payment", func(t *testing.T) {
		s := r.request(t, r.guest, 100*MB)
		q := r.quote(t, s, 100*MB, false)
		refusedQuietly(t, r.env, grant(r.grantReq(t, s, q)), connect.CodeFailedPrecondition,
			q.Id, "is open", "grant only after the payment is confirmed")
		r.env.MustAudit(t)
	})
	t.Run("grant_before_confirmation", func(t *testing.T) {
		s, q, _ := r.paid(t, r.guest, 100*MB)
		refusedQuietly(t, r.env, grant(r.grantReq(t, s, q)), connect.CodeFailedPrecondition,
			q.Id, "is paid", "grant only after the payment is confirmed")
		r.env.MustAudit(t)
	})
	t.Run("confirm_before_pay", func(t *testing.T) {
		s := r.request(t, r.guest, 100*MB)
		q := r.quote(t, s, 100*MB, false)
		// No receipt at all.
		refusedQuietly(t, r.env, func() error {
			_, err := r.guest.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.id}))
			return err
		}, connect.CodeInvalidArgument, "receipt is missing")
		// Even a receipt with the platform's genuine signature is refused
		// while the quote is unpaid: the state check stands on its own.
		rc := platformSigned(t, r, receipt.Payload{ReceiptID: "rcpt_made_up", SessionID: s.id, QuoteID: q.Id, Currency: currency,
			Payer: r.guest.DeviceID(), Payee: r.host.DeviceID(), Platform: "wallet", Amount: q.AmountMinor, Bytes: q.Bytes, IssuedAt: time.Now()})
		refusedQuietly(t, r.env, func() error {
			_, err := r.guest.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.id, Receipt: rc}))
			return err
		}, connect.CodeFailedPrecondition, q.Id, "is open", "not awaiting confirmation")
		r.env.MustAudit(t)
	})
	notActive := func(t *testing.T, s *ses, stateName string) {
		t.Helper()
		t.Run("prompt", func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: s.id, UsedBytes: 1}))
				return err
			}, connect.CodeFailedPrecondition, s.id, "is "+stateName, "no prompt")
		})
		t.Run("top_up", func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := s.guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: s.id, Bytes: 10 * MB}))
				return err
			}, connect.CodeFailedPrecondition, s.id, "is "+stateName, "top-ups need an active session")
		})
		t.Run("report_usage", func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: s.id, UsedBytes: 1}))
				return err
			}, connect.CodeFailedPrecondition, s.id, "is "+stateName, "no usage to report")
		})
		r.env.MustAudit(t)
	}
	t.Run("not_yet_active_requested", func(t *testing.T) { notActive(t, r.request(t, r.guest, 10*MB), "requested") })
	t.Run("not_yet_active_confirmed", func(t *testing.T) {
		s, _ := r.confirmed(t, r.guest, 10*MB)
		notActive(t, s, "confirmed")
	})
	t.Run("quote_twice", func(t *testing.T) {
		s := r.request(t, r.guest, 100*MB)
		r.quote(t, s, 100*MB, false)
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: s.id, Bytes: 100 * MB, AmountMinor: price(t, 100*MB, false), Currency: currency}))
			return err
		}, connect.CodeFailedPrecondition, s.id, "is quoted", "nothing to quote")
		r.env.MustAudit(t)
	})
	t.Run("decline_after_quote", func(t *testing.T) {
		s := r.request(t, r.guest, 10*MB)
		r.quote(t, s, 10*MB, false)
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: s.id, Reason: "changed my mind"}))
			return err
		}, connect.CodeFailedPrecondition, s.id, "is quoted", "nothing to decline")
		r.env.MustAudit(t)
	})
	t.Run("grant_twice", func(t *testing.T) {
		s, q := r.confirmed(t, r.guest, 10*MB)
		r.grant(t, r.grantReq(t, s, q))
		refusedQuietly(t, r.env, grant(r.grantReq(t, s, q)), connect.CodeFailedPrecondition, q.Id, "is granted")
		r.env.MustAudit(t)
	})
	t.Run("topup_while_one_under_way", func(t *testing.T) {
		s := r.active(t, r.guest, 10*MB)
		if _, err := r.guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: s.id, Bytes: 20 * MB})); err != nil {
			t.Fatal(err)
		}
		refusedQuietly(t, r.env, func() error {
			_, err := r.guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: s.id, Bytes: 30 * MB}))
			return err
		}, connect.CodeFailedPrecondition, "a top-up of 20 MB is already under way")
		r.env.MustAudit(t)
	})
	t.Run("topup_quote_twice", func(t *testing.T) {
		s := r.active(t, r.guest, 10*MB)
		q := r.topUpQuoted(t, s, 20*MB)
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: s.id, Bytes: 20 * MB, AmountMinor: price(t, 20*MB, true), Currency: currency}))
			return err
		}, connect.CodeFailedPrecondition, "the top-up is already quoted", q.Id)
		t.Run("decline_quoted_topup", func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: s.id}))
				return err
			}, connect.CodeFailedPrecondition, "already quoted", "expire or be paid")
		})
		t.Run("pay_topup_quote_twice", func(t *testing.T) {
			r.pay(t, s, q)
			refusedQuietly(t, r.env, func() error {
				_, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
				return err
			}, connect.CodeAlreadyExists, q.Id, "already paid")
			if got, want := escrowOf(t, r.env, s.id), price(t, 10*MB, false)+price(t, 20*MB, true); got != want {
				t.Fatalf("escrow %d, want %d", got, want)
			}
		})
		r.env.MustAudit(t)
	})
	t.Run("grant_after_end_refund", func(t *testing.T) {
		// Paid and confirmed, then the guest gives up: the refund is final
		// and the host can no longer grant (and so cannot be paid).
		s, q := r.confirmed(t, r.guest, 10*MB)
		bal := harness.Balance(t, r.guest, currency)
		if _, err := r.guest.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: s.id, Reason: "too slow"})); err != nil {
			t.Fatal(err)
		}
		if got := harness.Balance(t, r.guest, currency); got != bal+q.AmountMinor {
			t.Fatalf("guest balance %d after end, want %d (refunded)", got, bal+q.AmountMinor)
		}
		refusedQuietly(t, r.env, grant(r.grantReq(t, s, q)), connect.CodeFailedPrecondition, q.Id, "is refunded")
		r.env.MustAudit(t)
	})
}

// platformSigned signs p with the platform's real key, read from the
// database, as only the platform can.
func platformSigned(t *testing.T, r *rig, p receipt.Payload) *sharespotv1.Receipt {
	t.Helper()
	var id string
	stored, err := store.ReadT(t.Context(), r.env.Srv.Store(), func(tx *store.Tx) ([]byte, error) {
		var b []byte
		err := tx.QueryRow(`SELECT id, private_key FROM platform_keys ORDER BY created_ms DESC LIMIT 1`).Scan(&id, &b)
		return b, err
	})
	if err != nil {
		t.Fatal(err)
	}
	kek, err := os.ReadFile(filepath.Join(r.env.Dir, "platform.key"))
	if err != nil {
		t.Fatal(err)
	}
	seed, err := payment.OpenSeed(kek, id, stored)
	if err != nil {
		t.Fatal(err)
	}
	return signWith(t, ed25519.NewKeyFromSeed(seed), p)
}

func signWith(t *testing.T, key ed25519.PrivateKey, p receipt.Payload) *sharespotv1.Receipt {
	t.Helper()
	rc, err := receipt.NewSigner(key).Sign(p)
	if err != nil {
		t.Fatal(err)
	}
	return &sharespotv1.Receipt{KeyId: rc.KeyID, Payload: rc.Payload, Signature: rc.Signature}
}

// ---------------------------------------------------------------- wrong party

func testWrongParty(t *testing.T) {
	r := newRig(t, nil)
	ctx := t.Context()
	// An active session with a top-up asked for (so a quote, a decline or a
	// grant would each fit it, from the right party), and a confirmed one.
	act := r.active(t, r.guest, 100*MB)
	if _, err := r.guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: act.id, Bytes: 10 * MB})); err != nil {
		t.Fatal(err)
	}
	conf, confQ := r.confirmed(t, r.guest, 10*MB)
	quoted := r.request(t, r.guest, 10*MB)
	openQ := r.quote(t, quoted, 10*MB, false)
	_, paidQ, paidRc := r.paid(t, r.guest, 10*MB)
	topUpPrice, confGrant := price(t, 10*MB, true), r.grantReq(t, conf, confQ)

	type call struct {
		name string
		do   func(c *client.Client, sessionID string) error
	}
	quoteCall := call{"quote", func(c *client.Client, id string) error {
		_, err := c.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: id, Bytes: 10 * MB, AmountMinor: topUpPrice, Currency: currency}))
		return err
	}}
	grantCall := call{"grant", func(c *client.Client, id string) error {
		_, err := c.Sessions.Grant(ctx, connect.NewRequest(confGrant))
		return err
	}}
	promptCall := call{"prompt", func(c *client.Client, id string) error {
		_, err := c.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: id, UsedBytes: 99 * MB}))
		return err
	}}
	usageCall := call{"report_usage", func(c *client.Client, id string) error {
		_, err := c.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: id, UsedBytes: 1 * MB}))
		return err
	}}
	declineCall := call{"decline", func(c *client.Client, id string) error {
		_, err := c.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: id}))
		return err
	}}
	payCall := call{"pay", func(c *client.Client, id string) error {
		_, err := c.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: openQ.Id}))
		return err
	}}
	confirmCall := call{"confirm", func(c *client.Client, id string) error {
		_, err := c.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: paidQ.SessionId, Receipt: paidRc}))
		return err
	}}
	topUpCall := call{"request_top_up", func(c *client.Client, id string) error {
		_, err := c.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: id, Bytes: 10 * MB}))
		return err
	}}
	getCall := call{"get", func(c *client.Client, id string) error {
		_, err := c.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: id}))
		return err
	}}
	endCall := call{"end", func(c *client.Client, id string) error {
		_, err := c.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: id, Reason: "mine now"}))
		return err
	}}

	t.Run("guest_does_host_steps", func(t *testing.T) {
		for _, c := range []call{quoteCall, grantCall, promptCall, usageCall, declineCall} {
			t.Run(c.name, func(t *testing.T) {
				id := act.id
				if c.name == "grant" {
					id = conf.id
				}
				refusedQuietly(t, r.env, func() error { return c.do(r.guest, id) }, connect.CodePermissionDenied, "only the host of session "+id)
				r.env.MustAudit(t)
			})
		}
	})
	t.Run("host_does_guest_steps", func(t *testing.T) {
		for _, c := range []call{payCall, confirmCall, topUpCall} {
			t.Run(c.name, func(t *testing.T) {
				id := act.id
				switch c.name {
				case "pay":
					id = quoted.id
				case "confirm":
					id = paidQ.SessionId
				}
				refusedQuietly(t, r.env, func() error { return c.do(r.host, id) }, connect.CodePermissionDenied, "only the guest of session "+id)
				r.env.MustAudit(t)
			})
		}
	})
	t.Run("host_buys_from_itself", func(t *testing.T) {
		_, gk := guestKey(t, seal.Preset)
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Sessions.RequestAccess(ctx, connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: r.hs.Id, Bytes: 10 * MB, GuestKeys: []*sharespotv1.GuestKey{gk}}))
			return err
		}, connect.CodePermissionDenied, "cannot buy from its own hotspot")
		r.env.MustAudit(t)
	})
	t.Run("third_device_sees_nothing", func(t *testing.T) {
		// An outsider is told exactly what it would be told for an ID that
		// does not exist: the session's existence is not revealed.
		other := r.newGuest(t, "stranger")
		const ghost = "ses_doesnotexist"
		for _, c := range []call{getCall, endCall, quoteCall, grantCall, promptCall, usageCall, declineCall, payCall, confirmCall, topUpCall} {
			t.Run(c.name, func(t *testing.T) {
				id := act.id
				switch c.name {
				case "grant":
					id = conf.id
				case "confirm":
					id = paidQ.SessionId
				}
				var err error
				refusedQuietly(t, r.env, func() error { err = c.do(other, id); return err }, connect.CodeNotFound, "not found")
				switch c.name {
				case "pay": // Pay names a quote, not a session.
					_, gerr := other.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: "q_doesnotexist"}))
					if got, want := message(err), strings.ReplaceAll(message(gerr), "q_doesnotexist", openQ.Id); got != want {
						t.Errorf("outsider told %q; for a missing quote %q", got, want)
					}
				case "grant", "confirm": // the request carries its own session ID
					if want := "session " + id + " not found"; message(err) != want {
						t.Errorf("outsider told %q, want %q", message(err), want)
					}
				default:
					gerr := c.do(other, ghost)
					if got, want := message(err), strings.ReplaceAll(message(gerr), ghost, id); got != want || harness.Code(gerr) != connect.CodeNotFound {
						t.Errorf("outsider told %q; for a missing session %v %q", got, harness.Code(gerr), want)
					}
				}
				r.env.MustAudit(t)
			})
		}
	})
	t.Run("other_hosts_hotspot", func(t *testing.T) {
		other := r.env.Device(t, "other host")
		in := instruction()
		in.Tariff.PriceMinor = 1 // a cheaper tariff on someone else's hotspot
		t.Run("update", func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := other.Hotspots.Update(ctx, connect.NewRequest(&sharespotv1.UpdateRequest{HotspotId: r.hs.Id, Instruction: in}))
				return err
			}, connect.CodeNotFound, r.hs.Id, "not found")
		})
		t.Run("withdraw", func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := other.Hotspots.Withdraw(ctx, connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: r.hs.Id}))
				return err
			}, connect.CodeNotFound, r.hs.Id, "not found")
		})
		r.env.MustAudit(t)
	})
}

// ---------------------------------------------------------------- money

func testDoublePayment(t *testing.T) {
	r := newRig(t, nil)
	s, q, _ := r.paid(t, r.guest, 100*MB)
	refusedQuietly(t, r.env, func() error {
		_, err := r.guest.Payments.Pay(t.Context(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
		return err
	}, connect.CodeAlreadyExists, q.Id, "already paid")
	if got := harness.Balance(t, r.guest, currency); got != funds-q.AmountMinor {
		t.Fatalf("guest balance %d, want %d: money moved more than once", got, funds-q.AmountMinor)
	}
	if got := escrowOf(t, r.env, s.id); got != q.AmountMinor {
		t.Fatalf("escrow %d, want %d", got, q.AmountMinor)
	}
	r.env.MustAudit(t)
}

func testForgedReceipt(t *testing.T) {
	r := newRig(t, nil)
	s, q, rc := r.paid(t, r.guest, 100*MB)
	genuine, err := receipt.UnmarshalPayload(rc.Payload)
	if err != nil {
		t.Fatal(err)
	}
	forged := genuine
	forged.ReceiptID = "rcpt_forged"
	_, mallory, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	confirm := func(rc *sharespotv1.Receipt) func() error {
		return func() error {
			_, err := r.guest.Sessions.Confirm(t.Context(), connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.id, Receipt: rc}))
			return err
		}
	}
	t.Run("other_key_made_up_key_id", func(t *testing.T) {
		f := signWith(t, mallory, forged)
		f.KeyId = "0123456789abcdef"
		refusedQuietly(t, r.env, confirm(f), connect.CodePermissionDenied, "receipt refused", "unknown key")
		r.env.MustAudit(t)
	})
	t.Run("other_key_own_key_id", func(t *testing.T) {
		refusedQuietly(t, r.env, confirm(signWith(t, mallory, forged)), connect.CodePermissionDenied, "receipt refused", "unknown key")
	})
	t.Run("other_key_claims_platform_key_id", func(t *testing.T) {
		f := signWith(t, mallory, forged)
		f.KeyId = rc.KeyId
		refusedQuietly(t, r.env, confirm(f), connect.CodePermissionDenied, "receipt refused", "bad signature")
		r.env.MustAudit(t)
	})
	t.Run("genuine_still_accepted", func(t *testing.T) {
		// The forgeries burnt nothing: the real receipt still confirms.
		r.confirm(t, s, rc)
		_, pc := harness.Next[*sharespotv1.Envelope_PaymentConfirmed](t, r.hostIn)
		if pc.PaymentConfirmed.QuoteId != q.Id {
			t.Fatalf("host told %v", pc)
		}
		r.env.MustAudit(t)
	})
}

func testAlteredReceipt(t *testing.T) {
	r := newRig(t, nil)
	s, _, rc := r.paid(t, r.guest, 100*MB)
	confirm := func(rc *sharespotv1.Receipt) func() error {
		return func() error {
			_, err := r.guest.Sessions.Confirm(t.Context(), connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.id, Receipt: rc}))
			return err
		}
	}
	t.Run("flipped_payload_byte", func(t *testing.T) {
		for _, i := range []int{1, len(rc.Payload) / 2, len(rc.Payload) - 1} {
			f := &sharespotv1.Receipt{KeyId: rc.KeyId, Payload: bytes.Clone(rc.Payload), Signature: rc.Signature}
			f.Payload[i] ^= 0x01
			refusedQuietly(t, r.env, confirm(f), connect.CodePermissionDenied, "receipt refused", "bad signature")
		}
		r.env.MustAudit(t)
	})
	t.Run("changed_amount_same_signature", func(t *testing.T) {
		p, err := receipt.UnmarshalPayload(rc.Payload)
		if err != nil {
			t.Fatal(err)
		}
		p.Amount = 1
		f := &sharespotv1.Receipt{KeyId: rc.KeyId, Payload: p.Marshal(), Signature: rc.Signature}
		refusedQuietly(t, r.env, confirm(f), connect.CodePermissionDenied, "receipt refused", "bad signature")
		r.env.MustAudit(t)
	})
	t.Run("flipped_signature_byte", func(t *testing.T) {
		f := &sharespotv1.Receipt{KeyId: rc.KeyId, Payload: rc.Payload, Signature: bytes.Clone(rc.Signature)}
		f.Signature[0] ^= 0x80
		refusedQuietly(t, r.env, confirm(f), connect.CodePermissionDenied, "receipt refused", "bad signature")
		r.env.MustAudit(t)
	})
}

func testReplayedReceipt(t *testing.T) {
	r := newRig(t, nil)
	ctx := t.Context()
	t.Run("same_receipt_twice", func(t *testing.T) {
		s, q, rc := r.paid(t, r.guest, 100*MB)
		r.confirm(t, s, rc)
		refusedQuietly(t, r.env, func() error {
			_, err := r.guest.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.id, Receipt: rc}))
			return err
		}, connect.CodeFailedPrecondition, "receipt refused", q.Id, "is confirmed", "a receipt is accepted once")
		r.env.MustAudit(t)
	})
	t.Run("receipt_of_session_a_for_session_b", func(t *testing.T) {
		a, _, rcA := r.paid(t, r.guest, 10*MB)
		b, _, _ := r.paid(t, r.guest, 10*MB)
		refusedQuietly(t, r.env, func() error {
			_, err := r.guest.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: b.id, Receipt: rcA}))
			return err
		}, connect.CodePermissionDenied, "receipt refused", "not for a quote of session "+b.id)
		// Neither session moved on, and A's receipt is still good for A.
		if st := r.session(t, b.id).State; st != sharespotv1.SessionState_SESSION_STATE_PAID {
			t.Fatalf("session B is %v", st)
		}
		r.confirm(t, a, rcA)
		r.env.MustAudit(t)
	})
	t.Run("receipt_of_another_guest", func(t *testing.T) {
		// Another guest's genuine receipt, for its own session: not found.
		other := r.newGuest(t, "other guest")
		a, _, rcA := r.paid(t, r.guest, 10*MB)
		refusedQuietly(t, r.env, func() error {
			_, err := other.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: a.id, Receipt: rcA}))
			return err
		}, connect.CodeNotFound, "session "+a.id+" not found")
		r.env.MustAudit(t)
	})
}

// ---------------------------------------------------------------- time

func testExpiredQuote(t *testing.T) {
	r := newRig(t, nil)
	cfg := sessionConfig()
	s := r.request(t, r.guest, 100*MB)
	q := r.quote(t, s, 100*MB, false)
	if got := r.committed(t); got != 0 {
		t.Fatalf("committed %d after the quote, want 0: an unpaid quote reserves nothing", got)
	}
	r.env.Clock.Advance(cfg.QuoteTTL + time.Second)
	_, err := r.guest.Payments.Pay(t.Context(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
	refused(t, err, connect.CodeFailedPrecondition, q.Id, "expired", "ask for a new one")
	got := r.waitState(t, s.id, sharespotv1.SessionState_SESSION_STATE_ENDED)
	if !strings.Contains(got.EndReason, "quote expired unpaid") || got.RefundedMinor != 0 || got.SettledHostMinor != 0 {
		t.Fatalf("ended session = %v", got)
	}
	if c := r.committed(t); c != 0 {
		t.Fatalf("committed %d after expiry, want 0", c)
	}
	if b := harness.Balance(t, r.guest, currency); b != funds {
		t.Fatalf("guest balance %d, want %d: money moved", b, funds)
	}
	if b := harness.Balance(t, r.host, currency); b != 0 {
		t.Fatalf("host balance %d, want 0", b)
	}
	for _, qq := range got.Quotes {
		if qq.Id == q.Id && qq.State != sharespotv1.QuoteState_QUOTE_STATE_EXPIRED {
			t.Fatalf("quote state %v, want expired", qq.State)
		}
	}
	_, err = r.guest.Payments.Pay(t.Context(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
	refused(t, err, connect.CodeFailedPrecondition, "expired")
	r.env.MustAudit(t)
}

func testDeadlines(t *testing.T) {
	cfg := sessionConfig()
	t.Run("host_never_quotes", func(t *testing.T) {
		r := newRig(t, nil)
		s := r.request(t, r.guest, 100*MB)
		r.env.Clock.Advance(cfg.QuoteTimeout + time.Second)
		got := r.waitState(t, s.id, sharespotv1.SessionState_SESSION_STATE_ENDED)
		if !strings.Contains(got.EndReason, "host did not answer in time") {
			t.Fatalf("end reason %q", got.EndReason)
		}
		_, ended := harness.Next[*sharespotv1.Envelope_SessionEnded](t, r.guestIn)
		if ended.SessionEnded.Session.Id != s.id {
			t.Fatalf("guest told %v", ended)
		}
		if b := harness.Balance(t, r.guest, currency); b != funds || r.committed(t) != 0 {
			t.Fatalf("guest balance %d, committed %d", b, r.committed(t))
		}
		r.env.MustAudit(t)
	})
	t.Run("host_never_grants", func(t *testing.T) {
		r := newRig(t, nil)
		s, q := r.confirmed(t, r.guest, 100*MB)
		if b := harness.Balance(t, r.guest, currency); b != funds-q.AmountMinor {
			t.Fatalf("guest balance %d before the deadline, want %d", b, funds-q.AmountMinor)
		}
		r.env.Clock.Advance(cfg.GrantTimeout + time.Second)
		got := r.waitState(t, s.id, sharespotv1.SessionState_SESSION_STATE_ENDED)
		if !strings.Contains(got.EndReason, "host did not grant in time") || got.RefundedMinor != q.AmountMinor || got.SettledHostMinor != 0 || got.SettledFeeMinor != 0 {
			t.Fatalf("ended session = %v", got)
		}
		if b := harness.Balance(t, r.guest, currency); b != funds {
			t.Fatalf("guest balance %d, want %d (refunded in full)", b, funds)
		}
		if b := harness.Balance(t, r.host, currency); b != 0 {
			t.Fatalf("host balance %d, want 0", b)
		}
		if e, c := escrowOf(t, r.env, s.id), r.committed(t); e != 0 || c != 0 {
			t.Fatalf("escrow %d, committed %d; want 0, 0", e, c)
		}
		// The host's late grant is refused.
		_, err := r.host.Sessions.Grant(t.Context(), connect.NewRequest(r.grantReq(t, s, q)))
		refused(t, err, connect.CodeFailedPrecondition, "is refunded")
		r.env.MustAudit(t)
	})
	t.Run("topup_paid_never_granted", func(t *testing.T) {
		r := newRig(t, nil)
		s := r.active(t, r.guest, 100*MB)
		initial := price(t, 100*MB, false)
		q := r.topUpQuoted(t, s, 50*MB)
		r.confirm(t, s, r.pay(t, s, q))
		if e := escrowOf(t, r.env, s.id); e != initial+q.AmountMinor {
			t.Fatalf("escrow %d, want %d", e, initial+q.AmountMinor)
		}
		r.env.Clock.Advance(cfg.GrantTimeout + time.Second)
		var got *sharespotv1.Session
		waitFor(t, "top-up refunded", func() bool {
			got = r.session(t, s.id)
			for _, x := range got.Quotes {
				if x.Id == q.Id {
					return x.State == sharespotv1.QuoteState_QUOTE_STATE_REFUNDED
				}
			}
			return false
		})
		if got.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE || got.GrantedBytes != 100*MB {
			t.Fatalf("session after top-up refund = %v, want active with 100 MB", got)
		}
		if b := harness.Balance(t, r.guest, currency); b != funds-initial {
			t.Fatalf("guest balance %d, want %d (top-up refunded)", b, funds-initial)
		}
		if e, c := escrowOf(t, r.env, s.id), r.committed(t); e != initial || c != 100*MB {
			t.Fatalf("escrow %d, committed %d; want %d, %d", e, c, initial, 100*MB)
		}
		_, d := harness.Next[*sharespotv1.Envelope_Declined](t, r.guestIn)
		if !strings.Contains(d.Declined.Reason, "payment refunded") {
			t.Fatalf("guest told %q", d.Declined.Reason)
		}
		// The host's late top-up grant is refused.
		_, err := r.host.Sessions.Grant(t.Context(), connect.NewRequest(&sharespotv1.GrantRequest{SessionId: s.id, QuoteId: q.Id, GrantedBytes: q.Bytes}))
		refused(t, err, connect.CodeFailedPrecondition, "is refunded")
		r.env.MustAudit(t)
	})
}

// ---------------------------------------------------------------- volume

func testOverShareable(t *testing.T) {
	r := newRig(t, nil)
	ctx := t.Context()
	_, gk := guestKey(t, seal.Preset)
	ask := func(g *client.Client, n int64) func() error {
		return func() error {
			_, err := g.Sessions.RequestAccess(ctx, connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: r.hs.Id, Bytes: n, GuestKeys: []*sharespotv1.GuestKey{gk}}))
			return err
		}
	}
	t.Run("request_above_available", func(t *testing.T) {
		refusedQuietly(t, r.env, ask(r.guest, 1001*MB), connect.CodeResourceExhausted, "the hotspot has 1 GB (1000000000 B) left to share; you asked for 1 GB (1001000000 B)")
		r.env.MustAudit(t)
	})
	t.Run("two_payments_exceed_shareable", func(t *testing.T) {
		// Volume is reserved by payment, not by quote: both quotes stand,
		// the first payment takes 600 MB and the second is refused.
		b := r.newGuest(t, "guest B")
		sa, sb := r.request(t, r.guest, 600*MB), r.request(t, b, 600*MB)
		qa, qb := r.quote(t, sa, 600*MB, false), r.quote(t, sb, 600*MB, false)
		if c := r.committed(t); c != 0 {
			t.Fatalf("committed %d after two quotes, want 0", c)
		}
		r.pay(t, sa, qa)
		ranAgain(t, r.env, func() {
			refusedQuietly(t, r.env, func() error {
				_, err := b.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: qb.Id}))
				return err
			}, connect.CodeResourceExhausted, "the hotspot has 400 MB left to share; cannot sell 600 MB more")
		})
		if c := r.committed(t); c != 600*MB {
			t.Fatalf("committed %d, want %d", c, 600*MB)
		}
		if st := r.session(t, sb.id).State; st != sharespotv1.SessionState_SESSION_STATE_QUOTED {
			t.Fatalf("session B is %v", st)
		}
		if got := harness.Balance(t, b, currency); got != funds {
			t.Fatalf("guest B holds %d after the refused payment, want %d", got, funds)
		}
		t.Run("then_a_request_above_what_is_left", func(t *testing.T) {
			refusedQuietly(t, r.env, ask(r.newGuest(t, "guest C"), 500*MB), connect.CodeResourceExhausted, "the hotspot has 400 MB left to share; you asked for 500 MB")
		})
		r.env.MustAudit(t)
	})
}

// ---------------------------------------------------------------- registry

func testUnknownOrWithdrawn(t *testing.T) {
	r := newRig(t, nil)
	ctx := t.Context()
	ap := instruction().AccessPoint
	discover := func(t *testing.T, c ...*sharespotv1.Candidate) []*sharespotv1.Offer {
		t.Helper()
		res, err := r.guest.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: c}))
		if err != nil {
			t.Fatalf("discover: %v", err)
		}
		return res.Msg.Available
	}
	t.Run("unknown_bssid", func(t *testing.T) {
		if got := discover(t, &sharespotv1.Candidate{Ssid: ap.Ssid, Bssid: "02:5e:00:00:00:77", SignalDbm: -50}); len(got) != 0 {
			t.Fatalf("unknown BSSID matched %v", got)
		}
		// The registered BSSID on the air under another SSID is not ours.
		if got := discover(t, &sharespotv1.Candidate{Ssid: []byte("Evil Twin"), Bssid: ap.Bssid, SignalDbm: -50}); len(got) != 0 {
			t.Fatalf("BSSID with another SSID matched %v", got)
		}
		if got := discover(t, &sharespotv1.Candidate{Ssid: ap.Ssid, Bssid: ap.Bssid, SignalDbm: -50}); len(got) != 1 {
			t.Fatalf("registered candidate matched %d offers, want 1", len(got))
		}
	})
	_, gk := guestKey(t, seal.Preset)
	ask := func(id string) func() error {
		return func() error {
			_, err := r.guest.Sessions.RequestAccess(ctx, connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: id, Bytes: 10 * MB, GuestKeys: []*sharespotv1.GuestKey{gk}}))
			return err
		}
	}
	t.Run("unknown_hotspot_id", func(t *testing.T) {
		refusedQuietly(t, r.env, ask("hs_doesnotexist"), connect.CodeNotFound, "hotspot hs_doesnotexist not found")
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Hotspots.Withdraw(ctx, connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: "hs_doesnotexist"}))
			return err
		}, connect.CodeNotFound, "hotspot hs_doesnotexist not found")
		r.env.MustAudit(t)
	})
	t.Run("withdrawn_hotspot", func(t *testing.T) {
		if _, err := r.host.Hotspots.Withdraw(ctx, connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: r.hs.Id})); err != nil {
			t.Fatal(err)
		}
		if got := discover(t, &sharespotv1.Candidate{Ssid: ap.Ssid, Bssid: ap.Bssid, SignalDbm: -50}); len(got) != 0 {
			t.Fatalf("withdrawn hotspot still offered: %v", got)
		}
		refusedQuietly(t, r.env, ask(r.hs.Id), connect.CodeFailedPrecondition, r.hs.Id, "no longer offered")
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Hotspots.Update(ctx, connect.NewRequest(&sharespotv1.UpdateRequest{HotspotId: r.hs.Id, Instruction: instruction()}))
			return err
		}, connect.CodeFailedPrecondition, r.hs.Id, "is withdrawn", "register it again")
		r.env.MustAudit(t)
	})
}

func testMalformedRegistration(t *testing.T) {
	r := newRig(t, nil)
	// A fresh BSSID, so that without its check each case would register.
	base := func() *sharespotv1.ShareInstruction {
		in := instruction()
		in.AccessPoint.Bssid = "02:5e:00:00:00:99"
		return in
	}
	cases := []struct {
		name string
		mod  func(*sharespotv1.ShareInstruction)
		want []string
	}{
		{"no_access_point", func(in *sharespotv1.ShareInstruction) { in.AccessPoint = nil }, []string{"access_point"}},
		{"no_tariff", func(in *sharespotv1.ShareInstruction) { in.Tariff = nil }, []string{"tariff"}},
		{"ssid_empty", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Ssid = nil }, []string{"SSID must be 1 to 32 bytes, got 0"}},
		{"ssid_33_bytes", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Ssid = bytes.Repeat([]byte("x"), 33) }, []string{"SSID must be 1 to 32 bytes, got 33"}},
		{"bad_bssid", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Bssid = "02:5e:00:00:00" }, []string{`"02:5e:00:00:00"`, "six colon-separated hex octets"}},
		{"zero_bssid", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Bssid = "00:00:00:00:00:00" }, []string{"not a station address"}},
		{"multicast_bssid", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Bssid = "03:5e:00:00:00:99" }, []string{"03:5e:00:00:00:99", "multicast"}},
		{"unknown_security", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Security = 99 }, []string{"security 99", "not a known"}},
		{"unspecified_security", func(in *sharespotv1.ShareInstruction) { in.AccessPoint.Security = 0 }, []string{"security 0"}},
		{"bad_currency", func(in *sharespotv1.ShareInstruction) { in.Tariff.Currency = "euro" }, []string{`currency "euro"`, "ISO 4217"}},
		{"negative_price", func(in *sharespotv1.ShareInstruction) { in.Tariff.PriceMinor = -1 }, []string{"price_minor -1"}},
		{"negative_topup_price", func(in *sharespotv1.ShareInstruction) { in.Tariff.TopupPriceMinor = -5 }, []string{"topup_price_minor -5"}},
		{"zero_unit", func(in *sharespotv1.ShareInstruction) { in.Tariff.UnitBytes = 0 }, []string{"unit_bytes 0"}},
		{"min_purchase_0", func(in *sharespotv1.ShareInstruction) { in.Tariff.MinPurchaseBytes = 0 }, []string{"min_purchase_bytes 0"}},
		{"min_purchase_above_shareable", func(in *sharespotv1.ShareInstruction) { in.Tariff.MinPurchaseBytes = in.ShareableBytes + 1 }, []string{"min_purchase_bytes 1000000001", "shareable_bytes 1000000000"}},
		{"warn_at_equal_shareable", func(in *sharespotv1.ShareInstruction) { in.WarnAtBytes = in.ShareableBytes }, []string{"warn_at_bytes 1000000000", "below shareable_bytes"}},
		{"warn_at_negative", func(in *sharespotv1.ShareInstruction) { in.WarnAtBytes = -1 }, []string{"warn_at_bytes -1"}},
		{"shareable_0", func(in *sharespotv1.ShareInstruction) { in.ShareableBytes = 0 }, []string{"shareable_bytes 0"}},
		{"price_overflows", func(in *sharespotv1.ShareInstruction) {
			in.Tariff.UnitBytes, in.Tariff.PriceMinor, in.ShareableBytes = 1, registry.MaxPriceMinor, registry.MaxShareable
		}, []string{"beyond what can be paid"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := base()
			c.mod(in)
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: in}))
				return err
			}, connect.CodeInvalidArgument, c.want...)
			// Update validates the same way.
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Hotspots.Update(t.Context(), connect.NewRequest(&sharespotv1.UpdateRequest{HotspotId: r.hs.Id, Instruction: in}))
				return err
			}, connect.CodeInvalidArgument, c.want...)
			r.env.MustAudit(t)
		})
	}
	t.Run("base_is_valid", func(t *testing.T) {
		if _, err := r.host.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: base()})); err != nil {
			t.Fatalf("the unaltered instruction is refused, so the cases prove nothing: %v", err)
		}
	})
}

func testMalformedDiscovery(t *testing.T) {
	r := newRig(t, nil)
	cand := func(i int) *sharespotv1.Candidate {
		return &sharespotv1.Candidate{Ssid: []byte(fmt.Sprintf("net %d", i)), Bssid: fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), SignalDbm: -60}
	}
	set := func(n int) []*sharespotv1.Candidate {
		var cs []*sharespotv1.Candidate
		for i := range n {
			cs = append(cs, cand(i))
		}
		return cs
	}
	cases := []struct {
		name  string
		cands []*sharespotv1.Candidate
		want  []string
	}{
		{"no_candidates", nil, []string{"candidate set is empty"}},
		{"257_candidates", set(257), []string{"257 entries", "at most 256"}},
		{"bad_bssid_at_index_3", func() []*sharespotv1.Candidate { cs := set(6); cs[3].Bssid = "not-a-mac"; return cs }(), []string{"candidate 3:", `"not-a-mac"`}},
		{"multicast_bssid_at_index_5", func() []*sharespotv1.Candidate { cs := set(6); cs[5].Bssid = "01:00:5e:00:00:01"; return cs }(), []string{"candidate 5:", "multicast"}},
		{"ssid_33_bytes", func() []*sharespotv1.Candidate { cs := set(2); cs[1].Ssid = bytes.Repeat([]byte("y"), 33); return cs }(), []string{"candidate 1:", "SSID is 33 bytes"}},
		{"signal_out_of_range", func() []*sharespotv1.Candidate { cs := set(1); cs[0].SignalDbm = 99; return cs }(), []string{"candidate 0:", "signal 99 dBm"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := r.guest.Discovery.Discover(t.Context(), connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: c.cands}))
				return err
			}, connect.CodeInvalidArgument, c.want...)
			r.env.MustAudit(t)
		})
	}
	t.Run("256_candidates_accepted", func(t *testing.T) {
		if _, err := r.guest.Discovery.Discover(t.Context(), connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: set(256)})); err != nil {
			t.Fatalf("the largest allowed set is refused: %v", err)
		}
	})
}

func testMalformedRequestAccess(t *testing.T) {
	r := newRig(t, nil)
	_, good := guestKey(t, seal.Preset)
	_, pq := guestKey(t, seal.SuiteMLKEM768X25519)
	badKey := &sharespotv1.GuestKey{Suite: string(seal.Preset), PublicKey: []byte{1, 2, 3}}
	cases := []struct {
		name  string
		bytes int64
		keys  []*sharespotv1.GuestKey
		code  connect.Code
		want  []string
	}{
		{"bytes_zero", 0, []*sharespotv1.GuestKey{good}, connect.CodeInvalidArgument, []string{"bytes must be positive, got 0"}},
		{"bytes_negative", -1, []*sharespotv1.GuestKey{good}, connect.CodeInvalidArgument, []string{"bytes must be positive, got -1"}},
		{"below_min_purchase", 10*MB - 1, []*sharespotv1.GuestKey{good}, connect.CodeInvalidArgument, []string{"the smallest purchase here is 10 MB (10000000 B); you asked for 10 MB (9999999 B)"}},
		{"no_guest_keys", 10 * MB, nil, connect.CodeInvalidArgument, []string{"guest_keys must hold 1 to 8", "got 0"}},
		{"nine_guest_keys", 10 * MB, []*sharespotv1.GuestKey{good, good, good, good, good, good, good, good, good}, connect.CodeInvalidArgument, []string{"got 9"}},
		{"bad_key_bytes", 10 * MB, []*sharespotv1.GuestKey{good, badKey}, connect.CodeInvalidArgument, []string{"guest_keys[1]", "public key"}},
		{"unknown_suite", 10 * MB, []*sharespotv1.GuestKey{{Suite: "rot13", PublicKey: good.PublicKey}}, connect.CodeInvalidArgument, []string{"guest_keys[0]", "unknown suite", "rot13"}},
		{"no_accepted_suite", 10 * MB, []*sharespotv1.GuestKey{pq}, connect.CodeInvalidArgument, []string{"none of the guest's suites is accepted", string(seal.Preset)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			refusedQuietly(t, r.env, func() error {
				_, err := r.guest.Sessions.RequestAccess(t.Context(), connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: r.hs.Id, Bytes: c.bytes, GuestKeys: c.keys}))
				return err
			}, c.code, c.want...)
			r.env.MustAudit(t)
		})
	}
	t.Run("base_is_valid", func(t *testing.T) {
		if _, err := r.guest.Sessions.RequestAccess(t.Context(), connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: r.hs.Id, Bytes: 10 * MB, GuestKeys: []*sharespotv1.GuestKey{good}})); err != nil {
			t.Fatalf("the unaltered request is refused, so the cases prove nothing: %v", err)
		}
	})
}

func testMalformedGrant(t *testing.T) {
	r := newRig(t, nil)
	s, q := r.confirmed(t, r.guest, 100*MB)
	pqKey, _ := guestKey(t, seal.SuiteMLKEM768X25519)
	cases := []struct {
		name string
		mod  func(*sharespotv1.GrantRequest)
		code connect.Code
		want []string
	}{
		{"missing_sealed_code", func(g *sharespotv1.GrantRequest) { g.SealedCode = nil }, connect.CodeInvalidArgument, []string{"sealed_code is missing"}},
		{"wrong_suite", func(g *sharespotv1.GrantRequest) {
			other := r.grantReq(t, &ses{id: s.id, guest: s.guest, key: pqKey}, q)
			g.SealedCode = other.SealedCode
		}, connect.CodeInvalidArgument, []string{"sealed_code uses suite", string(seal.SuiteMLKEM768X25519), string(seal.Preset)}},
		{"empty_enc", func(g *sharespotv1.GrantRequest) { g.SealedCode.Enc = nil }, connect.CodeInvalidArgument, []string{"sealed_code enc"}},
		{"short_ciphertext", func(g *sharespotv1.GrantRequest) { g.SealedCode.Ciphertext = g.SealedCode.Ciphertext[:16] }, connect.CodeInvalidArgument, []string{"sealed_code ciphertext", "got 16"}},
		{"missing_gateway", func(g *sharespotv1.GrantRequest) { g.Gateway = nil }, connect.CodeInvalidArgument, []string{"gateway is missing"}},
		{"unknown_gateway_kind", func(g *sharespotv1.GrantRequest) { g.Gateway.Kind = "carrier-pigeon" }, connect.CodeInvalidArgument, []string{`gateway kind "carrier-pigeon"`}},
		{"granted_more_than_paid", func(g *sharespotv1.GrantRequest) { g.GrantedBytes = q.Bytes + 1 }, connect.CodeInvalidArgument, []string{"granted_bytes 100000001 differs from the 100000000 bytes paid for"}},
		{"granted_less_than_paid", func(g *sharespotv1.GrantRequest) { g.GrantedBytes = q.Bytes - 1 }, connect.CodeInvalidArgument, []string{"granted_bytes 99999999"}},
		{"unknown_quote", func(g *sharespotv1.GrantRequest) { g.QuoteId = "q_doesnotexist" }, connect.CodeNotFound, []string{"quote q_doesnotexist not found in session " + s.id}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := r.grantReq(t, s, q)
			c.mod(req)
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Sessions.Grant(t.Context(), connect.NewRequest(req))
				return err
			}, c.code, c.want...)
			r.env.MustAudit(t)
		})
	}
	t.Run("base_is_valid", func(t *testing.T) {
		r.grant(t, r.grantReq(t, s, q))
		if st := r.session(t, s.id).State; st != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
			t.Fatalf("session %v after the valid grant", st)
		}
	})
	t.Run("topup_grant_with_code", func(t *testing.T) {
		tq := r.topUpQuoted(t, s, 20*MB)
		r.confirm(t, s, r.pay(t, s, tq))
		req := r.grantReq(t, s, tq)
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Sessions.Grant(t.Context(), connect.NewRequest(req))
			return err
		}, connect.CodeInvalidArgument, "a top-up grant carries no access code")
		r.env.MustAudit(t)
	})
}

func testMalformedQuote(t *testing.T) {
	r := newRig(t, nil)
	s := r.request(t, r.guest, 100*MB)
	good := func() *sharespotv1.QuoteRequest {
		return &sharespotv1.QuoteRequest{SessionId: s.id, Bytes: 100 * MB, AmountMinor: price(t, 100*MB, false), Currency: currency}
	}
	cases := []struct {
		name string
		mod  func(*sharespotv1.QuoteRequest)
		want []string
	}{
		{"amount_above_tariff", func(q *sharespotv1.QuoteRequest) { q.AmountMinor++ }, []string{"quote of 1001 does not match the session's tariff, which gives 1000"}},
		{"amount_below_tariff", func(q *sharespotv1.QuoteRequest) { q.AmountMinor = 0 }, []string{"quote of 0 does not match"}},
		{"wrong_currency", func(q *sharespotv1.QuoteRequest) { q.Currency = "USD" }, []string{`quote currency "USD" differs from the tariff's EUR`}},
		{"bytes_not_requested", func(q *sharespotv1.QuoteRequest) { q.Bytes = 50 * MB; q.AmountMinor = price(t, 50*MB, false) }, []string{"quote is for 50000000 bytes but the guest asked for 100000000"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := good()
			c.mod(req)
			refusedQuietly(t, r.env, func() error {
				_, err := r.host.Sessions.Quote(t.Context(), connect.NewRequest(req))
				return err
			}, connect.CodeInvalidArgument, c.want...)
			r.env.MustAudit(t)
		})
	}
	t.Run("topup_at_initial_price", func(t *testing.T) {
		a := r.active(t, r.guest, 10*MB)
		if _, err := r.guest.Sessions.RequestTopUp(t.Context(), connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: a.id, Bytes: 10 * MB})); err != nil {
			t.Fatal(err)
		}
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Sessions.Quote(t.Context(), connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: a.id, Bytes: 10 * MB, AmountMinor: price(t, 10*MB, false), Currency: currency}))
			return err
		}, connect.CodeInvalidArgument, "quote of 100 does not match the session's tariff, which gives 120")
		r.env.MustAudit(t)
	})
	t.Run("base_is_valid", func(t *testing.T) {
		if _, err := r.host.Sessions.Quote(t.Context(), connect.NewRequest(good())); err != nil {
			t.Fatalf("the unaltered quote is refused, so the cases prove nothing: %v", err)
		}
	})
}

func testBSSIDTaken(t *testing.T) {
	r := newRig(t, nil)
	other := r.env.Device(t, "other host")
	in := instruction()
	in.AccessPoint.Bssid = strings.ToLower(in.AccessPoint.Bssid) // the same BSSID, written differently
	register := func() error {
		_, err := other.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: in}))
		return err
	}
	refusedQuietly(t, r.env, register, connect.CodeAlreadyExists, "BSSID 02:5e:00:00:00:01 is already registered")
	// Nor may the other host move one of its own hotspots onto it.
	mine := instruction()
	mine.AccessPoint.Bssid = "02:5e:00:00:00:42"
	res, err := other.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: mine}))
	if err != nil {
		t.Fatal(err)
	}
	refusedQuietly(t, r.env, func() error {
		_, err := other.Hotspots.Update(t.Context(), connect.NewRequest(&sharespotv1.UpdateRequest{HotspotId: res.Msg.Hotspot.Id, Instruction: in}))
		return err
	}, connect.CodeAlreadyExists, "BSSID 02:5e:00:00:00:01 is already registered")
	// Once withdrawn, the BSSID is free.
	if _, err := r.host.Hotspots.Withdraw(t.Context(), connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: r.hs.Id})); err != nil {
		t.Fatal(err)
	}
	if err := register(); err != nil {
		t.Fatalf("register a withdrawn BSSID: %v", err)
	}
	r.env.MustAudit(t)
}

// ---------------------------------------------------------------- transport

func testOversized(t *testing.T) {
	r := newRig(t, nil)
	// Connect reads at most api.MaxRequestBytes and answers
	// resource_exhausted, naming the limit.
	limit := fmt.Sprint(api.MaxRequestBytes)
	t.Run("register_huge_ssid", func(t *testing.T) {
		in := instruction()
		in.AccessPoint.Bssid = "02:5e:00:00:00:98"
		in.AccessPoint.Ssid = bytes.Repeat([]byte("s"), api.MaxRequestBytes+1)
		refusedQuietly(t, r.env, func() error {
			_, err := r.host.Hotspots.Register(t.Context(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: in}))
			return err
		}, connect.CodeResourceExhausted, "larger than configured max "+limit)
		r.env.MustAudit(t)
	})
	t.Run("discover_huge_ssids", func(t *testing.T) {
		var cs []*sharespotv1.Candidate
		for i := range 256 {
			cs = append(cs, &sharespotv1.Candidate{Ssid: bytes.Repeat([]byte{byte(i)}, 300), Bssid: fmt.Sprintf("02:00:00:00:00:%02x", i)})
		}
		refusedQuietly(t, r.env, func() error {
			_, err := r.guest.Discovery.Discover(t.Context(), connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: cs}))
			return err
		}, connect.CodeResourceExhausted, "larger than configured max "+limit)
	})
	t.Run("json_huge_body", func(t *testing.T) {
		body := `{"publicKey":"` + strings.Repeat("A", api.MaxRequestBytes) + `"}`
		code, msg := postJSON(t, r.env.URL+sharespotv1connect.AuthServiceChallengeProcedure, body, "")
		if code != "resource_exhausted" || !strings.Contains(msg, limit) {
			t.Fatalf("got %s %q, want resource_exhausted naming %s", code, msg, limit)
		}
	})
}

func testBadTokens(t *testing.T) {
	r := newRig(t, nil)
	ctx := t.Context()
	hc := client.NewHTTPClient()
	raw := sharespotv1connect.NewPaymentServiceClient(hc, r.env.URL)
	authc := sharespotv1connect.NewAuthServiceClient(hc, r.env.URL)
	balance := func(authz string) func() error {
		return func() error {
			req := connect.NewRequest(&sharespotv1.BalanceRequest{})
			if authz != "" {
				req.Header().Set("Authorization", authz)
			}
			_, err := raw.Balance(ctx, req)
			return err
		}
	}
	tok, err := r.guest.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := balance("Bearer " + tok)(); err != nil {
		t.Fatalf("the raw client with a good token is refused, so the cases prove nothing: %v", err)
	}
	unknown := make([]byte, 32)
	rand.Read(unknown)
	cases := []struct{ name, authz, want string }{
		{"no_header", "", "missing Authorization: Bearer token"},
		{"not_bearer", "Basic dXNlcjpwdw==", "missing Authorization: Bearer token"},
		{"garbage", "Bearer garbage", "malformed bearer token"},
		{"unknown_sst_token", "Bearer sst_" + base64.RawURLEncoding.EncodeToString(unknown), "token unknown or expired"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			refusedQuietly(t, r.env, balance(c.authz), connect.CodeUnauthenticated, c.want)
		})
	}

	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	challenge := func(t *testing.T) []byte {
		t.Helper()
		res, err := authc.Challenge(ctx, connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: pub}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.Nonce
	}
	signIn := func(nonce, sig []byte) func() error {
		return func() error {
			_, err := authc.SignIn(ctx, connect.NewRequest(&sharespotv1.SignInRequest{PublicKey: pub, Nonce: nonce, Signature: sig}))
			return err
		}
	}
	tokens := func(t *testing.T) int {
		t.Helper()
		n, err := store.ReadT(ctx, r.env.Srv.Store(), func(tx *store.Tx) (int, error) {
			var n int
			err := tx.QueryRow(`SELECT COUNT(*) FROM tokens`).Scan(&n)
			return n, err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Run("sign_in_wrong_signature", func(t *testing.T) {
		nonce := challenge(t)
		_, mallory, _ := ed25519.GenerateKey(rand.Reader)
		n := tokens(t)
		refusedQuietly(t, r.env, signIn(nonce, ed25519.Sign(mallory, protocol.SignInMessage(nonce))), connect.CodeUnauthenticated, "signature does not verify")
		// A signature over the bare nonce (no domain label) is wrong too.
		refusedQuietly(t, r.env, signIn(nonce, ed25519.Sign(key, nonce)), connect.CodeUnauthenticated, "signature does not verify")
		if tokens(t) != n {
			t.Fatal("a refused sign-in issued a token")
		}
	})
	t.Run("replayed_challenge_nonce", func(t *testing.T) {
		nonce := challenge(t)
		sig := ed25519.Sign(key, protocol.SignInMessage(nonce))
		if err := signIn(nonce, sig)(); err != nil {
			t.Fatalf("first sign-in: %v", err)
		}
		n := tokens(t)
		refusedQuietly(t, r.env, signIn(nonce, sig), connect.CodeUnauthenticated, "challenge unknown, used or expired")
		if tokens(t) != n {
			t.Fatal("a replayed sign-in issued a token")
		}
	})
	t.Run("expired_challenge", func(t *testing.T) {
		nonce := challenge(t)
		r.env.Clock.Advance(time.Minute + time.Second)
		refused(t, signIn(nonce, ed25519.Sign(key, protocol.SignInMessage(nonce)))(), connect.CodeUnauthenticated, "challenge unknown, used or expired")
	})
	t.Run("expired_token", func(t *testing.T) {
		r.env.Clock.Advance(time.Hour + time.Second)
		refusedQuietly(t, r.env, balance("Bearer "+tok), connect.CodeUnauthenticated, "token unknown or expired", "sign in again")
	})
	r.env.MustAudit(t)
}

func testRateLimits(t *testing.T) {
	slow := rate.Every(time.Hour) // no refill within the test
	t.Run("per_device", func(t *testing.T) {
		env := harness.Start(t, func(c *server.Config) { c.Limits = api.Limits{PerDevice: slow, PerDevBurst: 2} })
		a, b := env.Device(t, "a"), env.Device(t, "b")
		call := func(c *client.Client) error {
			_, err := c.Payments.Balance(t.Context(), connect.NewRequest(&sharespotv1.BalanceRequest{}))
			return err
		}
		for i := range 2 {
			if err := call(a); err != nil {
				t.Fatalf("call %d within the burst: %v", i+1, err)
			}
		}
		refused(t, call(a), connect.CodeResourceExhausted, "too many requests from this device")
		// The limit is per device: another device is still served.
		if err := call(b); err != nil {
			t.Fatalf("another device is limited too: %v", err)
		}
		env.MustAudit(t)
	})
	t.Run("per_address", func(t *testing.T) {
		env := harness.Start(t, func(c *server.Config) { c.Limits = api.Limits{PerIP: slow, PerIPBurst: 3} })
		authc := sharespotv1connect.NewAuthServiceClient(client.NewHTTPClient(), env.URL)
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		call := func() error {
			_, err := authc.Challenge(t.Context(), connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: pub}))
			return err
		}
		for i := range 3 {
			if err := call(); err != nil {
				t.Fatalf("call %d within the burst: %v", i+1, err)
			}
		}
		refused(t, call(), connect.CodeResourceExhausted, "too many requests from your address")
		env.MustAudit(t)
	})
}

// postJSON posts body as Connect JSON over HTTP/1.1 and returns the Connect
// error code ("" on success) and message (or the body on success).
func postJSON(t *testing.T, url, body, authz string) (code, msg string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode == http.StatusOK {
		return "", string(b)
	}
	var e struct{ Code, Message string }
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("HTTP %d with a body that is not a Connect error: %q", res.StatusCode, b)
	}
	return e.Code, e.Message
}

func testPlainJSON(t *testing.T) {
	r := newRig(t, nil)
	url := r.env.URL + sharespotv1connect.AuthServiceChallengeProcedure
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	t.Run("challenge_works", func(t *testing.T) {
		code, body := postJSON(t, url, `{"publicKey":"`+base64.StdEncoding.EncodeToString(pub)+`"}`, "")
		if code != "" {
			t.Fatalf("refused: %s %s", code, body)
		}
		var res struct{ Nonce, ExpiresUnixMs string }
		if err := json.Unmarshal([]byte(body), &res); err != nil {
			t.Fatal(err)
		}
		nonce, err := base64.StdEncoding.DecodeString(res.Nonce)
		if err != nil || len(nonce) != 32 || res.ExpiresUnixMs == "" {
			t.Fatalf("challenge response %s", body)
		}
	})
	cases := []struct{ name, url, body, authz, code, want string }{
		{"malformed_json", url, `{"publicKey":`, "", "invalid_argument", "unmarshal"},
		{"wrong_field_type", url, `{"publicKey":42}`, "", "invalid_argument", "unmarshal"},
		{"short_public_key", url, `{"publicKey":"AAAA"}`, "", "invalid_argument", "public_key must be a 32-byte Ed25519 key, got 3 bytes"},
		{"protected_without_token", r.env.URL + sharespotv1connect.SessionServiceGetProcedure, `{"sessionId":"x"}`, "", "unauthenticated", "missing Authorization"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(t, r.env)
			code, msg := postJSON(t, c.url, c.body, c.authz)
			if code != c.code || !strings.Contains(msg, c.want) {
				t.Fatalf("got %s %q, want %s saying %q", code, msg, c.code, c.want)
			}
			unchanged(t, r.env, before)
			r.env.MustAudit(t)
		})
	}
}

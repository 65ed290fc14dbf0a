package card_test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/sharespot/sharespot/internal/card/cardtest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

const (
	MB  = 1_000_000
	cur = "EUR"
)

// rig is a server with card payments against stripe-mock, a host with a
// hotspot (10 cents per MB, top-ups 12 cents per MB) and a guest.
type rig struct {
	env         *harness.Env // nil when the server is the binary (crash test)
	url         string
	mock        *cardtest.Mock
	host, guest *client.Client
	g           *guest.Guest
	hotspot     string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	mock := cardtest.Start(t)
	env := harness.Start(t, func(c *server.Config) {
		c.Stripe.Key, c.Stripe.WebhookSecret, c.Stripe.APIBase = cardtest.Key, cardtest.WebhookSecret, mock.URL
		c.Stripe.ReturnURL = "https://sharespot.example/paid"
	})
	r := &rig{env: env, url: env.URL, mock: mock, host: env.Device(t, "host"), guest: env.Device(t, "guest")}
	r.register(t)
	return r
}

// register makes the guest's helper and the host's hotspot.
func (r *rig) register(t *testing.T) {
	t.Helper()
	// Unverified sessions: these suites settle on the host's count, the
	// money paths of cards being what they test (verified usage has its
	// own attacks, in internal/conformance).
	r.g = &guest.Guest{C: r.guest, Unverified: true}
	res, err := r.host.Hotspots.Register(context.Background(), connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("Cafe"), Bssid: "02:5e:00:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: cur, PriceMinor: 10, UnitBytes: MB, MinPurchaseBytes: MB, TopupPriceMinor: 12},
		ShareableBytes: 1000 * MB, WarnAtBytes: 2 * MB,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	r.hotspot = res.Msg.Hotspot.Id
}

// post signs and posts an event now with the right secret.
func (r *rig) post(t *testing.T, payload []byte) {
	t.Helper()
	if code := cardtest.Post(t, r.url, cardtest.WebhookSecret, time.Now(), payload); code != http.StatusOK {
		t.Fatalf("webhook answered %d", code)
	}
}

// payByCard pays a quote by card as a guest does: Pay creates the intent
// (stripe-mock never authorises: its fixture says requires_payment_method,
// so the guest waits), Stripe's webhook reports the amount authorised, and
// Pay again returns the receipt. It checks what was sent to Stripe.
func (r *rig) payByCard(t *testing.T, q *sharespotv1.Quote) (*sharespotv1.Receipt, string) {
	t.Helper()
	ctx := context.Background()
	before := len(r.mock.Requests("/v1/payment_intents"))
	res, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
	if err != nil {
		t.Fatalf("pay by card: %v", err)
	}
	if res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_PENDING || res.Msg.Receipt != nil || res.Msg.IntentId == "" {
		t.Fatalf("before authorisation: status %v receipt %v intent %q; want pending, no receipt", res.Msg.Status, res.Msg.Receipt != nil, res.Msg.IntentId)
	}
	reqs := r.mock.Requests("/v1/payment_intents")
	if len(reqs) != before+1 {
		t.Fatalf("%d PaymentIntent calls, want 1 more than %d:\n%s", len(reqs), before, r.mock)
	}
	c := reqs[len(reqs)-1]
	if c.Path != "/v1/payment_intents" || c.Form.Get("amount") != strconv.FormatInt(q.AmountMinor, 10) || c.Form.Get("currency") != "eur" ||
		c.Form.Get("capture_method") != "manual" || c.Form.Get("confirm") != "true" || c.Form.Get("payment_method") != "pm_card_visa" ||
		c.IdempotencyKey != "sharespot-pay-"+q.Id || c.Form.Get("metadata[sharespot_payment]") != q.Id {
		t.Fatalf("create sent %s %v key %q; want amount %d eur, manual capture, key from quote %s", c.Path, c.Form, c.IdempotencyKey, q.AmountMinor, q.Id)
	}
	// Asking again before Stripe answered creates nothing new.
	if res, err = r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD})); err != nil ||
		res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_PENDING {
		t.Fatalf("pay again while pending: %v %v", res, err)
	}
	if n := len(r.mock.Requests("/v1/payment_intents")); n != before+1 {
		t.Fatalf("polling made %d PaymentIntent POSTs, want none", n-before-1)
	}
	pi := res.Msg.IntentId
	ev := cardtest.Event("evt_auth_"+q.Id, "payment_intent.amount_capturable_updated", cardtest.Intent(pi, q.AmountMinor, q.AmountMinor, cur, "requires_capture", q.Id))
	r.post(t, ev)
	r.post(t, ev) // a duplicate delivery
	res, err = r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
	if err != nil || res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_PAID || res.Msg.Receipt == nil {
		t.Fatalf("after authorisation: %v %v; want paid with a receipt", res, err)
	}
	// The wallet pays nothing twice: the quote is paid.
	if _, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id})); harness.Code(err) != connect.CodeAlreadyExists {
		t.Fatalf("wallet pay of a card-paid quote: %v; want already_exists", err)
	}
	return res.Msg.Receipt, pi
}

// confirmAndGrant has the guest confirm a paid quote (guest.Session's
// step) and grants it the way the host does.
func (r *rig) confirmAndGrant(t *testing.T, ses *guest.Session, q *sharespotv1.Quote, rc *sharespotv1.Receipt, first bool) {
	t.Helper()
	ctx := context.Background()
	if err := ses.Confirm(ctx, q, rc); err != nil {
		t.Fatal(err)
	}
	sid := ses.ID
	req := &sharespotv1.GrantRequest{SessionId: sid, QuoteId: q.Id, GrantedBytes: q.Bytes}
	if first {
		code, err := seal.NewAccessCode()
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := seal.Seal(seal.Preset, r.g.PublicKey(sid, seal.Preset), seal.Binding{SessionID: sid, HostID: r.host.DeviceID(), GuestID: r.guest.DeviceID()}, code)
		if err != nil {
			t.Fatal(err)
		}
		req.SealedCode = &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext}
		req.Gateway = &sharespotv1.Gateway{Kind: "proxy", Address: "192.0.2.1:1080"}
	}
	if _, err := r.host.Sessions.Grant(ctx, connect.NewRequest(req)); err != nil {
		t.Fatalf("grant: %v", err)
	}
}

// session runs the claimed flow paid by card: 10 MB (€1.00), a top-up of
// 5 MB (€0.60), the host ends having counted used bytes. It returns the
// session and the two PaymentIntents.
func (r *rig) session(t *testing.T, used int64) (*sharespotv1.Session, []string, []*sharespotv1.Quote) {
	t.Helper()
	ctx := context.Background()
	hostIn := harness.Listen(t, r.host, nil)
	defer hostIn.Stop()
	ses, err := r.g.BeginHotspot(ctx, r.hotspot, 10*MB)
	if err != nil {
		t.Fatal(err)
	}
	q1, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * MB, AmountMinor: 100, Currency: cur}))
	if err != nil {
		t.Fatal(err)
	}
	rc1, pi1 := r.payByCard(t, q1.Msg.Quote)
	r.confirmAndGrant(t, ses, q1.Msg.Quote, rc1, true)
	// C3.3: the host got the payment-success response through the server.
	for {
		env := <-hostIn.C()
		if pc := env.GetPaymentConfirmed(); pc != nil {
			if pc.QuoteId != q1.Msg.Quote.Id || string(pc.Receipt.Payload) != string(rc1.Payload) {
				t.Fatalf("host got a confirmation for %s", pc.QuoteId)
			}
			break
		}
	}
	if err := ses.RequestTopUp(ctx, 5*MB); err != nil {
		t.Fatal(err)
	}
	q2, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 5 * MB, AmountMinor: 60, Currency: cur}))
	if err != nil {
		t.Fatal(err)
	}
	rc2, pi2 := r.payByCard(t, q2.Msg.Quote)
	if pi2 == pi1 {
		t.Fatal("the top-up reused the first PaymentIntent")
	}
	r.confirmAndGrant(t, ses, q2.Msg.Quote, rc2, false)
	end, err := r.host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, UsedBytes: used, Reason: "test"}))
	if err != nil {
		if r.env == nil {
			// The binary may die (the crash test's hook) before it
			// answers; the caller ends again after the restart.
			return &sharespotv1.Session{Id: ses.ID}, []string{pi1, pi2}, []*sharespotv1.Quote{q1.Msg.Quote, q2.Msg.Quote}
		}
		t.Fatal(err)
	}
	return end.Msg.Session, []string{pi1, pi2}, []*sharespotv1.Quote{q1.Msg.Quote, q2.Msg.Quote}
}

// waitOutbox waits (at most 20 s) until the server made every queued
// Stripe call.
func waitOutbox(t *testing.T, st *store.Store) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var pending, failed int
		err := st.Read(context.Background(), func(tx *store.Tx) error {
			if err := tx.QueryRow(`SELECT COUNT(*) FROM stripe_ops WHERE state = 'pending'`).Scan(&pending); err != nil {
				return err
			}
			return tx.QueryRow(`SELECT COUNT(*) FROM stripe_ops WHERE state = 'failed'`).Scan(&failed)
		})
		if err != nil {
			t.Fatal(err)
		}
		if failed > 0 {
			t.Fatalf("%d Stripe calls failed for good", failed)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Stripe calls still pending after 20 s", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func balance(t *testing.T, st *store.Store, id string) int64 {
	t.Helper()
	b, err := store.ReadT(context.Background(), st, func(tx *store.Tx) (int64, error) { return ledger.Balance(tx, id) })
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fees(t *testing.T, st *store.Store) int64 {
	t.Helper()
	b, err := store.ReadT(context.Background(), st, func(tx *store.Tx) (int64, error) { return ledger.FeeTotal(tx, cur) })
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// captures returns the capture calls per PaymentIntent.
func captures(m *cardtest.Mock, pi string) []cardtest.Request {
	return m.Requests("/v1/payment_intents/" + pi + "/capture")
}

// TestCardFlow is the whole claimed flow paid by card: the first quote
// and the top-up each hold their amount on the card (manual capture, one
// PaymentIntent each), the receipt comes once Stripe reports the amount
// authorised, and settlement captures exactly the billed part of each and
// releases the rest. The guest used 12 MB: the first tranche whole (€1.00)
// and 2 MB of the top-up's 5 (60 × 2/5 = 24 cents): charged 124, fee 6,
// host 118, 36 released on the card.
func TestCardFlow(t *testing.T) {
	r := newRig(t)
	st := r.env.Srv.Store()
	s, pis, qs := r.session(t, 12*MB)
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.SettledHostMinor != 118 || s.SettledFeeMinor != 6 || s.RefundedMinor != 36 || s.PaidMinor != 160 {
		t.Fatalf("settled host %d fee %d refunded %d paid %d; want 118, 6, 36, 160", s.SettledHostMinor, s.SettledFeeMinor, s.RefundedMinor, s.PaidMinor)
	}
	waitOutbox(t, st)
	for i, want := range []int64{100, 24} {
		cs := captures(r.mock, pis[i])
		if len(cs) != 1 || cs[0].Form.Get("amount_to_capture") != strconv.FormatInt(want, 10) || cs[0].IdempotencyKey != "sharespot-capture-"+qs[i].Id {
			t.Fatalf("captures of %s: %+v; want one of amount_to_capture=%d, key from its quote", pis[i], cs, want)
		}
	}
	if n := len(r.mock.Requests("/v1/transfers")); n != 0 {
		t.Fatalf("%d transfers to a host without a payout account", n)
	}
	guestAcct := r.guest.AccountID()
	// Exact amounts: the card paid 124 (authorised 160, 36 released, never
	// into the wallet), the host's wallet holds 118, the platform 6.
	if got := balance(t, st, ledger.Card(guestAcct, cur).ID); got != -124 {
		t.Errorf("guest's card account %d, want -124", got)
	}
	if got := harness.Balance(t, r.guest, cur); got != 0 {
		t.Errorf("guest wallet %d, want 0: a release is not cash", got)
	}
	if got := harness.Balance(t, r.host, cur); got != 118 {
		t.Errorf("host wallet %d, want 118", got)
	}
	if got := fees(t, st); got != 6 {
		t.Errorf("fees %d, want 6", got)
	}
	r.env.MustAudit(t)

	t.Run("refund_and_dispute", func(t *testing.T) {
		refund := func(evID string, amount int64) []byte {
			return cardtest.Event(evID, "charge.refunded", map[string]any{"id": "ch_" + pis[1], "object": "charge", "amount": 24, "amount_captured": 24,
				"amount_refunded": amount, "currency": "eur", "payment_intent": pis[1], "refunded": amount == 24})
		}
		r.post(t, refund("evt_ref_2", 24)) // the later event first
		r.post(t, refund("evt_ref_1", 10)) // then the earlier: stale, moves nothing
		r.post(t, refund("evt_ref_2", 24)) // replayed
		dispute := func(evID string) []byte {
			return cardtest.Event(evID, "charge.dispute.created", map[string]any{"id": "dp_1", "object": "dispute", "amount": 100, "currency": "eur",
				"charge": "ch_" + pis[0], "payment_intent": pis[0], "status": "needs_response", "reason": "fraudulent"})
		}
		r.post(t, dispute("evt_dp_a"))
		r.post(t, dispute("evt_dp_b")) // the same dispute under another event ID
		got, err := r.guest.Sessions.Get(context.Background(), connect.NewRequest(&sharespotv1.GetRequest{SessionId: s.Id}))
		if err != nil {
			t.Fatal(err)
		}
		if got.Msg.Session.CardRefundedMinor != 24 || got.Msg.Session.DisputedMinor != 100 {
			t.Fatalf("session shows refunded %d disputed %d; want 24, 100", got.Msg.Session.CardRefundedMinor, got.Msg.Session.DisputedMinor)
		}
		if got := balance(t, st, ledger.Card(guestAcct, cur).ID); got != 0 {
			t.Errorf("guest's card account %d, want 0 (124 captured, 24 refunded, 100 disputed)", got)
		}
		if got := balance(t, st, ledger.CardLosses(cur).ID); got != -124 {
			t.Errorf("platform's card losses %d, want -124", got)
		}
		if got := harness.Balance(t, r.host, cur); got != 118 {
			t.Errorf("host wallet %d, want 118 (the platform bears refunds and disputes)", got)
		}
		h, err := r.guest.Payments.History(context.Background(), connect.NewRequest(&sharespotv1.HistoryRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, tr := range h.Msg.Transfers {
			seen[tr.Id] = true
		}
		for _, id := range []string{"dispute:dp_1", "cardrefund:ch_" + pis[1] + ":24", "settle:release:" + s.Id, "pay:" + qs[0].Id} {
			if !seen[id] {
				t.Errorf("wallet history lacks %s: %v", id, seen)
			}
		}
		r.env.MustAudit(t)
	})
}

// TestCardUnusedReleased: a guest that uses nothing is charged nothing:
// the hold is cancelled, not captured.
func TestCardUnusedReleased(t *testing.T) {
	r := newRig(t)
	st := r.env.Srv.Store()
	s, pis, _ := r.session(t, 0)
	if s.SettledHostMinor != 0 || s.RefundedMinor != 160 {
		t.Fatalf("settled host %d refunded %d; want 0, 160", s.SettledHostMinor, s.RefundedMinor)
	}
	waitOutbox(t, st)
	for _, pi := range pis {
		if cs := captures(r.mock, pi); len(cs) != 0 {
			t.Fatalf("captured %+v of an unused session", cs)
		}
		if cs := r.mock.Requests("/v1/payment_intents/" + pi + "/cancel"); len(cs) != 1 {
			t.Fatalf("cancels of %s: %d, want 1", pi, len(cs))
		}
	}
	if got := balance(t, st, ledger.Card(r.guest.AccountID(), cur).ID); got != 0 {
		t.Errorf("guest's card account %d, want 0", got)
	}
	r.env.MustAudit(t)
}

// TestCardAuthorisedTooLate: Stripe reports a hold after the quote
// expired. Nothing is paid, the hold is released, no money moves.
func TestCardAuthorisedTooLate(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	ses, err := r.g.BeginHotspot(ctx, r.hotspot, 10*MB)
	if err != nil {
		t.Fatal(err)
	}
	q, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * MB, AmountMinor: 100, Currency: cur}))
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Msg.Quote.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
	if err != nil {
		t.Fatal(err)
	}
	r.env.Clock.Advance(10 * time.Minute) // past the quote's TTL
	if err := r.env.Srv.SweepOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r.post(t, cardtest.Event("evt_late", "payment_intent.amount_capturable_updated", cardtest.Intent(res.Msg.IntentId, 100, 100, cur, "requires_capture", q.Msg.Quote.Id)))
	waitOutbox(t, r.env.Srv.Store())
	if cs := r.mock.Requests("/v1/payment_intents/" + res.Msg.IntentId + "/cancel"); len(cs) != 1 || cs[0].IdempotencyKey != "sharespot-cancel-"+q.Msg.Quote.Id {
		t.Fatalf("cancels: %+v; want one", cs)
	}
	again, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Msg.Quote.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
	if err != nil || again.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_FAILED || again.Msg.Receipt != nil {
		t.Fatalf("pay after the late hold: %v %v; want failed, no receipt", again, err)
	}
	if got := balance(t, r.env.Srv.Store(), ledger.Card(r.guest.AccountID(), cur).ID); got != 0 {
		t.Errorf("guest's card account %d, want 0", got)
	}
	if got := balance(t, r.env.Srv.Store(), ledger.Escrow(ses.ID, cur).ID); got != 0 {
		t.Errorf("escrow %d, want 0", got)
	}
	r.env.MustAudit(t)
}

// TestFundByCard: the wallet is credited on payment_intent.succeeded, once,
// whatever the create call said, however often and in whatever order the
// events come.
func TestFundByCard(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	req := &sharespotv1.FundByCardRequest{RequestId: "fund-0001", AmountMinor: 500, Currency: cur}
	res, err := r.guest.Payments.FundByCard(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_PENDING || res.Msg.IntentId == "" {
		t.Fatalf("funding: %v; want pending", res.Msg)
	}
	creates := r.mock.Requests("/v1/payment_intents")
	if len(creates) != 1 || creates[0].Form.Get("amount") != "500" || creates[0].Form.Get("capture_method") != "automatic" ||
		creates[0].IdempotencyKey != "sharespot-fund_"+r.guest.AccountID()+"_fund-0001" {
		t.Fatalf("create: %+v", creates)
	}
	if _, err := r.guest.Payments.FundByCard(ctx, connect.NewRequest(req)); err != nil {
		t.Fatal(err)
	}
	if n := len(r.mock.Requests("/v1/payment_intents")); n != 1 {
		t.Fatalf("a retried funding made %d creates", n)
	}
	req.AmountMinor = 900
	if _, err := r.guest.Payments.FundByCard(ctx, connect.NewRequest(req)); harness.Code(err) != connect.CodeInvalidArgument {
		t.Fatalf("request_id reused for another amount: %v", err)
	}
	if got := harness.Balance(t, r.guest, cur); got != 0 {
		t.Fatalf("wallet %d before Stripe reported success", got)
	}
	pi := res.Msg.IntentId
	obj := cardtest.Intent(pi, 500, 0, cur, "succeeded", "fund_"+r.guest.AccountID()+"_fund-0001")
	r.post(t, cardtest.Event("evt_f1", "payment_intent.succeeded", obj))
	r.post(t, cardtest.Event("evt_f1", "payment_intent.succeeded", obj)) // duplicate
	r.post(t, cardtest.Event("evt_f2", "payment_intent.succeeded", obj)) // another event, same payment
	proc := cardtest.Intent(pi, 500, 0, cur, "processing", "fund_"+r.guest.AccountID()+"_fund-0001")
	r.post(t, cardtest.Event("evt_f0", "payment_intent.processing", proc)) // late and stale
	if got := harness.Balance(t, r.guest, cur); got != 500 {
		t.Fatalf("wallet %d, want 500 credited once", got)
	}
	if got := balance(t, r.env.Srv.Store(), ledger.Card(r.guest.AccountID(), cur).ID); got != -500 {
		t.Errorf("card account %d, want -500", got)
	}
	res, err = r.guest.Payments.FundByCard(ctx, connect.NewRequest(&sharespotv1.FundByCardRequest{RequestId: "fund-0001", AmountMinor: 500, Currency: cur}))
	if err != nil || res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_PAID {
		t.Fatalf("after the credit: %v %v", res, err)
	}
	r.env.MustAudit(t)
}

// TestWebhookSignatures: only events signed with the endpoint's secret
// within five minutes are applied; a replayed event applies once.
func TestWebhookSignatures(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	res, err := r.guest.Payments.FundByCard(ctx, connect.NewRequest(&sharespotv1.FundByCardRequest{RequestId: "fund-sig-1", AmountMinor: 300, Currency: cur}))
	if err != nil {
		t.Fatal(err)
	}
	ev := cardtest.Event("evt_sig", "payment_intent.succeeded", cardtest.Intent(res.Msg.IntentId, 300, 0, cur, "succeeded", "fund_"+r.guest.AccountID()+"_fund-sig-1"))
	for _, c := range []struct {
		name   string
		secret string
		at     time.Time
	}{
		{"wrong_secret", "whsec_other", time.Now()},
		{"stale_timestamp", cardtest.WebhookSecret, time.Now().Add(-301 * time.Second)},
	} {
		if code := cardtest.Post(t, r.env.URL, c.secret, c.at, ev); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", c.name, code)
		}
	}
	// A body altered after signing.
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: ev, Secret: cardtest.WebhookSecret})
	altered := strings.Replace(string(ev), `"amount":300`, `"amount":30000`, 1)
	req, _ := http.NewRequest(http.MethodPost, r.env.URL+"/stripe/webhook", strings.NewReader(altered))
	req.Header.Set("Stripe-Signature", sp.Header)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("altered body: %v %v, want 400", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
	if got := harness.Balance(t, r.guest, cur); got != 0 {
		t.Fatalf("a refused event credited %d", got)
	}
	if code := cardtest.Post(t, r.env.URL, cardtest.WebhookSecret, time.Now().Add(-290*time.Second), ev); code != http.StatusOK {
		t.Fatalf("valid event within the tolerance: %d", code)
	}
	if code := cardtest.Post(t, r.env.URL, cardtest.WebhookSecret, time.Now(), ev); code != http.StatusOK {
		t.Fatalf("replayed event: %d", code)
	}
	if got := harness.Balance(t, r.guest, cur); got != 300 {
		t.Fatalf("wallet %d, want 300 once", got)
	}
	r.env.MustAudit(t)
}

// TestPayouts: the host onboards a Connect Express account; once Stripe
// says it can receive transfers, settlement transfers the host's share
// (after the captures) and the platform keeps its fee.
func TestPayouts(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	on, err := r.host.Payments.PayoutOnboarding(ctx, connect.NewRequest(&sharespotv1.PayoutOnboardingRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if on.Msg.Url == "" || on.Msg.AccountId == "" || on.Msg.Ready {
		t.Fatalf("onboarding: %v", on.Msg)
	}
	accts := r.mock.Requests("/v1/accounts")
	if len(accts) != 1 || accts[0].Form.Get("type") != "express" || accts[0].IdempotencyKey != "sharespot-account-"+r.host.AccountID() {
		t.Fatalf("account creation: %+v", accts)
	}
	if _, err := r.host.Payments.PayoutOnboarding(ctx, connect.NewRequest(&sharespotv1.PayoutOnboardingRequest{})); err != nil {
		t.Fatal(err)
	}
	if n := len(r.mock.Requests("/v1/accounts")); n != 1 {
		t.Fatalf("a second onboarding made %d accounts", n)
	}
	r.post(t, cardtest.Event("evt_acct", "account.updated", map[string]any{"id": on.Msg.AccountId, "object": "account", "payouts_enabled": true,
		"charges_enabled": true, "capabilities": map[string]string{"transfers": "active"}}))
	s, _, _ := r.session(t, 12*MB)
	waitOutbox(t, r.env.Srv.Store())
	trs := r.mock.Requests("/v1/transfers")
	if len(trs) != 1 || trs[0].Form.Get("amount") != "118" || trs[0].Form.Get("destination") != on.Msg.AccountId ||
		trs[0].Form.Get("transfer_group") != s.Id || trs[0].IdempotencyKey != "sharespot-transfer-"+s.Id {
		t.Fatalf("transfers: %+v; want one of 118 to %s", trs, on.Msg.AccountId)
	}
	if got := harness.Balance(t, r.host, cur); got != 0 {
		t.Errorf("host wallet %d, want 0 (transferred)", got)
	}
	if got := balance(t, r.env.Srv.Store(), ledger.Payout(r.host.AccountID(), cur).ID); got != 118 {
		t.Errorf("payout account %d, want 118", got)
	}
	if got := fees(t, r.env.Srv.Store()); got != 6 {
		t.Errorf("fees %d, want 6", got)
	}
	r.env.MustAudit(t)
}

// TestNoStripeKey: without a key the wallet is the only platform, and a
// card payment says so.
func TestNoStripeKey(t *testing.T) {
	env := harness.Start(t, nil)
	g := env.Device(t, "guest")
	_, err := g.Payments.Pay(context.Background(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: "q_x", Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
	if harness.Code(err) != connect.CodeFailedPrecondition {
		t.Fatalf("card payment without a key: %v", err)
	}
	if want := "no card payments"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	checkPayMethods(t, g, false, false)
}

// checkPayMethods: Balance says how the server takes payment of a quote.
func checkPayMethods(t *testing.T, c *client.Client, cards, withoutPM bool) {
	t.Helper()
	res, err := c.Payments.Balance(context.Background(), connect.NewRequest(&sharespotv1.BalanceRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	want := []sharespotv1.PayMethod{sharespotv1.PayMethod_PAY_METHOD_WALLET}
	if cards {
		want = append(want, sharespotv1.PayMethod_PAY_METHOD_CARD)
	}
	if !slices.Equal(res.Msg.PayMethods, want) || res.Msg.CardWithoutPaymentMethod != withoutPM {
		t.Fatalf("Balance says methods %v, card without a PaymentMethod %v; want %v, %v", res.Msg.PayMethods, res.Msg.CardWithoutPaymentMethod, want, withoutPM)
	}
}

// TestBalancePayMethods: with a test-mode key the server takes cards and
// needs no PaymentMethod from the device (what the guest page offers
// cards on); with a live key it takes cards only with one.
func TestBalancePayMethods(t *testing.T) {
	r := newRig(t)
	checkPayMethods(t, r.guest, true, true)
	mock := cardtest.Start(t)
	live := harness.Start(t, func(c *server.Config) {
		c.Stripe.Key, c.Stripe.WebhookSecret, c.Stripe.APIBase = "sk_live_sharespot", cardtest.WebhookSecret, mock.URL
	})
	checkPayMethods(t, live.Device(t, "guest"), true, false)
}

// TestCardAttacks plays a hostile guest (or a forged report) against each
// card money path and checks the exact money each party ends with.
func TestCardAttacks(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	st := r.env.Srv.Store()
	newQuote := func(t *testing.T) (*guest.Session, *sharespotv1.Quote) {
		t.Helper()
		ses, err := r.g.BeginHotspot(ctx, r.hotspot, 10*MB)
		if err != nil {
			t.Fatal(err)
		}
		q, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * MB, AmountMinor: 100, Currency: cur}))
		if err != nil {
			t.Fatal(err)
		}
		return ses, q.Msg.Quote
	}
	end := func(t *testing.T, sid string) {
		t.Helper()
		if _, err := r.guest.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, Reason: "done"})); err != nil {
			t.Fatal(err)
		}
	}
	card := sharespotv1.PayMethod_PAY_METHOD_CARD
	t.Run("stranger_pays_anothers_quote", func(t *testing.T) {
		ses, q := newQuote(t)
		defer end(t, ses.ID)
		mallory := r.env.Device(t, "mallory")
		before := len(r.mock.Requests("/v1/"))
		_, err := mallory.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: card}))
		if harness.Code(err) != connect.CodeNotFound {
			t.Fatalf("stranger's card payment: %v; want not_found", err)
		}
		if n := len(r.mock.Requests("/v1/")); n != before {
			t.Fatalf("a refused payment reached Stripe (%d calls)", n-before)
		}
	})
	t.Run("wallet_then_card", func(t *testing.T) {
		r.env.Fund(t, r.guest, cur, 100)
		defer func() { r.env.MustAudit(t) }()
		ses, q := newQuote(t)
		if _, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id})); err != nil {
			t.Fatal(err)
		}
		before := len(r.mock.Requests("/v1/"))
		if _, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: card})); harness.Code(err) != connect.CodeAlreadyExists {
			t.Fatalf("card payment of a wallet-paid quote: %v; want already_exists", err)
		}
		if n := len(r.mock.Requests("/v1/")); n != before {
			t.Fatalf("a paid quote reached Stripe (%d calls)", n-before)
		}
		if got := balance(t, st, ledger.Escrow(ses.ID, cur).ID); got != 100 {
			t.Fatalf("escrow %d, want 100 (paid once)", got)
		}
		end(t, ses.ID)
		if got := harness.Balance(t, r.guest, cur); got != 100 {
			t.Fatalf("guest wallet %d after the ungranted session, want 100 back", got)
		}
	})
	t.Run("partial_authorisation", func(t *testing.T) {
		ses, q := newQuote(t)
		res, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: card}))
		if err != nil {
			t.Fatal(err)
		}
		r.post(t, cardtest.Event("evt_partial", "payment_intent.amount_capturable_updated", cardtest.Intent(res.Msg.IntentId, 100, 50, cur, "requires_capture", q.Id)))
		res, err = r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: card}))
		if err != nil || res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_FAILED || res.Msg.Receipt != nil {
			t.Fatalf("after a partial hold: %v %v; want failed without receipt", res, err)
		}
		waitOutbox(t, st)
		if cs := r.mock.Requests("/v1/payment_intents/" + res.Msg.IntentId + "/cancel"); len(cs) != 1 {
			t.Fatalf("the partial hold was cancelled %d times, want once", len(cs))
		}
		if got := balance(t, st, ledger.Escrow(ses.ID, cur).ID); got != 0 {
			t.Fatalf("escrow %d, want 0", got)
		}
		end(t, ses.ID)
	})
	t.Run("report_of_another_intent", func(t *testing.T) {
		ses, q := newQuote(t)
		res, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: card}))
		if err != nil {
			t.Fatal(err)
		}
		// A hold on some other PaymentIntent that names this quote.
		r.post(t, cardtest.Event("evt_other", "payment_intent.amount_capturable_updated", cardtest.Intent("pi_not_ours", 100, 100, cur, "requires_capture", q.Id)))
		res, err = r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: card}))
		if err != nil || res.Msg.Status != sharespotv1.PayStatus_PAY_STATUS_PENDING {
			t.Fatalf("after another intent's report: %v %v; want still pending", res, err)
		}
		if got := balance(t, st, ledger.Escrow(ses.ID, cur).ID); got != 0 {
			t.Fatalf("escrow %d, want 0", got)
		}
		end(t, ses.ID)
	})
	t.Run("topup_never_granted", func(t *testing.T) {
		cardBefore := balance(t, st, ledger.Card(r.guest.AccountID(), cur).ID)
		hostBefore, feesBefore := harness.Balance(t, r.host, cur), fees(t, st)
		ses, q := newQuote(t)
		rc, _ := r.payByCard(t, q)
		r.confirmAndGrant(t, ses, q, rc, true)
		if err := ses.RequestTopUp(ctx, 5*MB); err != nil {
			t.Fatal(err)
		}
		q2, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 5 * MB, AmountMinor: 60, Currency: cur}))
		if err != nil {
			t.Fatal(err)
		}
		_, pi2 := r.payByCard(t, q2.Msg.Quote)
		// The host never grants the top-up: past the grant deadline its
		// hold is released on the card.
		r.env.Clock.Advance(time.Minute)
		if err := r.env.Srv.SweepOnce(ctx); err != nil {
			t.Fatal(err)
		}
		waitOutbox(t, st)
		if cs := r.mock.Requests("/v1/payment_intents/" + pi2 + "/cancel"); len(cs) != 1 || cs[0].IdempotencyKey != "sharespot-cancel-"+q2.Msg.Quote.Id {
			t.Fatalf("cancels of the ungranted top-up: %+v", cs)
		}
		if _, err := r.host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, UsedBytes: 5 * MB, Reason: "done"})); err != nil {
			t.Fatal(err)
		}
		waitOutbox(t, st)
		// Used 5 MB of the first 10: 50 captured, fee 2, host 48.
		if got := balance(t, st, ledger.Card(r.guest.AccountID(), cur).ID) - cardBefore; got != -50 {
			t.Errorf("guest's card moved %d, want -50", got)
		}
		if got := harness.Balance(t, r.host, cur) - hostBefore; got != 48 {
			t.Errorf("host got %d, want 48", got)
		}
		if got := fees(t, st) - feesBefore; got != 2 {
			t.Errorf("platform got %d, want 2", got)
		}
		if cs := captures(r.mock, pi2); len(cs) != 0 {
			t.Errorf("the ungranted top-up was captured: %+v", cs)
		}
	})
	r.env.MustAudit(t)
}

// TestThreeDSecure: the bank asks for 3-D Secure. The guest's client shows
// the confirmation URL once and waits; the receipt comes when Stripe
// reports the amount authorised. (stripe-mock never asks for 3-D Secure:
// the webhook brings the requires_action state here.)
func TestThreeDSecure(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ses, err := r.g.BeginHotspot(ctx, r.hotspot, 10*MB)
	if err != nil {
		t.Fatal(err)
	}
	q, err := r.host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * MB, AmountMinor: 100, Currency: cur}))
	if err != nil {
		t.Fatal(err)
	}
	shown := make(chan string, 4)
	type result struct {
		rc  *sharespotv1.Receipt
		err error
	}
	done := make(chan result, 1)
	go func() {
		rc, err := guest.PayQuote(ctx, r.guest, q.Msg.Quote, sharespotv1.PayMethod_PAY_METHOD_CARD, "", 20*time.Millisecond, func(u string) { shown <- u })
		done <- result{rc, err}
	}()
	// Wait for the intent the client's first Pay created.
	var pi string
	for pi == "" {
		if cs := r.mock.Requests("/v1/payment_intents"); len(cs) > 0 {
			res, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Msg.Quote.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
			if err != nil {
				t.Fatal(err)
			}
			pi = res.Msg.IntentId
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("no PaymentIntent created")
		case <-time.After(10 * time.Millisecond):
		}
	}
	const url = "https://hooks.stripe.com/3d_secure_2/hosted/test"
	obj := cardtest.Intent(pi, 100, 0, cur, "requires_action", q.Msg.Quote.Id)
	obj["next_action"] = map[string]any{"type": "redirect_to_url", "redirect_to_url": map[string]string{"url": url, "return_url": "https://sharespot.example/paid"}}
	r.post(t, cardtest.Event("evt_3ds", "payment_intent.requires_action", obj))
	select {
	case u := <-shown:
		if u != url {
			t.Fatalf("client showed %q, want %q", u, url)
		}
	case res := <-done:
		t.Fatalf("client returned before authorisation: %v", res.err)
	case <-ctx.Done():
		t.Fatal("the client never showed the 3-D Secure URL")
	}
	r.post(t, cardtest.Event("evt_3ds_ok", "payment_intent.amount_capturable_updated", cardtest.Intent(pi, 100, 100, cur, "requires_capture", q.Msg.Quote.Id)))
	res := <-done
	if res.err != nil || res.rc == nil {
		t.Fatalf("PayQuote: %v", res.err)
	}
	if len(shown) != 0 {
		t.Fatalf("the URL was shown more than once")
	}
	if err := ses.Confirm(ctx, q.Msg.Quote, res.rc); err != nil {
		t.Fatalf("with the card receipt: %v", err)
	}
	r.env.MustAudit(t)
}

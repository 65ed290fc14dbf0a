package upgradefixture

// Schema 3: card payments through Stripe (stripe-mock behind the
// recording proxy of cardtest): a session paid by card and settled, so the
// card tables hold an intent, its webhook event and the capture the
// outbox made.

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/card/cardtest"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

func configureCard(t *testing.T, c *server.Config) {
	if cardtest.Binary() == "" {
		t.Fatal("stripe-mock is needed: go install github.com/stripe/stripe-mock@latest")
	}
	mock := cardtest.Start(t)
	c.Stripe.Key, c.Stripe.WebhookSecret, c.Stripe.APIBase = cardtest.Key, cardtest.WebhookSecret, mock.URL
	c.Stripe.ReturnURL = "https://sharespot.example/paid"
}

func cardSessions(t *testing.T, r *rig) {
	t.Helper()
	ctx := context.Background()
	g := r.guest(t, "guest-card")
	sid := r.request(t, g, 10*MB)
	q := r.quote(t, sid, 10*MB, 100)
	pay := func() *sharespotv1.PayResponse {
		res, err := g.C.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: sharespotv1.PayMethod_PAY_METHOD_CARD}))
		if err != nil {
			t.Fatalf("pay by card: %v", err)
		}
		return res.Msg
	}
	pi := pay().IntentId
	ev := cardtest.Event("evt_auth_"+q.Id, "payment_intent.amount_capturable_updated", cardtest.Intent(pi, q.AmountMinor, q.AmountMinor, cur, "requires_capture", q.Id))
	if code := cardtest.Post(t, r.env.URL, cardtest.WebhookSecret, time.Now(), ev); code != http.StatusOK {
		t.Fatalf("webhook answered %d", code)
	}
	paid := pay()
	if paid.Status != sharespotv1.PayStatus_PAY_STATUS_PAID || paid.Receipt == nil {
		t.Fatalf("card payment after authorisation: %v", paid)
	}
	r.confirm(t, g, sid, paid.Receipt)
	r.grant(t, g, sid, q, true)
	acknowledge(t, g.C, sid, 6*MB)
	if _, err := r.host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, UsedBytes: 6 * MB, Reason: "card session over"})); err != nil {
		t.Fatalf("end: %v", err)
	}
	// The capture settlement queued, made by the outbox.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pending, failed int
		err := r.env.Srv.Store().Read(ctx, func(tx *store.Tx) error {
			if err := tx.QueryRow(`SELECT COUNT(*) FROM stripe_ops WHERE state = 'pending'`).Scan(&pending); err != nil {
				return err
			}
			return tx.QueryRow(`SELECT COUNT(*) FROM stripe_ops WHERE state = 'failed'`).Scan(&failed)
		})
		if err != nil {
			t.Fatal(err)
		}
		if failed > 0 {
			t.Fatalf("%d Stripe calls failed", failed)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Stripe calls not done after 30 s", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

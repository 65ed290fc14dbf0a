package card

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/sharespot/sharespot/internal/store"
)

// Stripe in test mode, with stripe-mock, sends no webhooks: a card
// payment stays pending for ever. What Stripe would send for a test card
// is made here, for `sharespot server stripe-test-events` and the tests.

// Waiting is a card payment or wallet funding that waits for Stripe.
type Waiting struct {
	// ID is the payment's (a quote's ID, or fund_<account>_<request>),
	// as the PaymentIntent's metadata names it; IntentID the
	// PaymentIntent's.
	ID, IntentID string
	// Kind: "quote" (a hold on the card) or "fund" (a wallet funding).
	Kind     string
	Amount   int64
	Currency string
}

// WaitingForStripe lists the card payments and fundings that have a
// PaymentIntent and wait for Stripe's word.
func WaitingForStripe(ctx context.Context, st *store.Store) ([]Waiting, error) {
	return store.ReadT(ctx, st, func(tx *store.Tx) ([]Waiting, error) {
		rows, err := tx.Query(`SELECT id, intent_id, kind, amount_minor, currency FROM card_intents
			WHERE intent_id <> '' AND status IN (?, ?, ?) ORDER BY created_ms, id`, statusCreating, statusPending, statusRequiresAction)
		if err != nil {
			return nil, fmt.Errorf("card: waiting payments: %w", err)
		}
		defer rows.Close()
		var out []Waiting
		for rows.Next() {
			var w Waiting
			if err := rows.Scan(&w.ID, &w.IntentID, &w.Kind, &w.Amount, &w.Currency); err != nil {
				return nil, err
			}
			out = append(out, w)
		}
		return out, rows.Err()
	})
}

// Succeeded is the event Stripe sends when w's card says yes: a hold
// authorised (payment_intent.amount_capturable_updated) or a funding paid
// (payment_intent.succeeded).
func (w Waiting) Succeeded() []byte {
	if w.Kind == "fund" {
		return EventPayload("evt_test_ok_"+w.ID, "payment_intent.succeeded",
			IntentObject(w.IntentID, w.Amount, 0, w.Currency, "succeeded", w.ID))
	}
	return EventPayload("evt_test_ok_"+w.ID, "payment_intent.amount_capturable_updated",
		IntentObject(w.IntentID, w.Amount, w.Amount, w.Currency, "requires_capture", w.ID))
}

// Declined is the event Stripe sends when w's card is declined.
func (w Waiting) Declined() []byte {
	obj := IntentObject(w.IntentID, w.Amount, 0, w.Currency, "requires_payment_method", w.ID)
	obj["last_payment_error"] = map[string]any{"type": "card_error", "code": "card_declined", "message": "Your card was declined."}
	return EventPayload("evt_test_declined_"+w.ID, "payment_intent.payment_failed", obj)
}

// EventPayload is a webhook event's body.
func EventPayload(id, typ string, object any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "type": typ, "api_version": "2025-01-01", "created": time.Now().Unix(),
		"livemode": false, "pending_webhooks": 1, "data": map[string]any{"object": object},
	})
	if err != nil {
		panic(err) // maps of strings and numbers
	}
	return b
}

// IntentObject is a PaymentIntent as events carry it.
func IntentObject(id string, amount, capturable int64, currency, status, metadataID string) map[string]any {
	return map[string]any{"id": id, "object": "payment_intent", "amount": amount, "amount_capturable": capturable,
		"amount_received": 0, "currency": strings.ToLower(currency), "status": status, "capture_method": "manual",
		"metadata": map[string]string{metadataKey: metadataID}}
}

// PostEvent signs payload with the endpoint's secret as of at, as Stripe
// signs, and posts it to the server's webhook; it returns the status.
func PostEvent(ctx context.Context, serverURL, secret string, at time.Time, payload []byte) (int, error) {
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(serverURL, "/")+WebhookPath, bytes.NewReader(payload))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Stripe-Signature", sp.Header)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, nil
}

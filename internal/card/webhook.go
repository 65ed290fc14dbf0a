package card

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v85"
	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/store"
)

// WebhookPath is where Stripe posts events.
const WebhookPath = "/stripe/webhook"

// WebhookTolerance is how old a signed event may be.
const WebhookTolerance = 300 * time.Second

// maxEventBytes caps a webhook's body.
const maxEventBytes = 512 << 10

// ServeHTTP is the webhook endpoint: it verifies the Stripe-Signature
// header with the endpoint's secret (refusing a body altered, signed with
// another secret or older than WebhookTolerance: 400) and applies the
// event once. An event it could not apply gets 500, and Stripe sends it
// again later.
func (c *Card) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEventBytes))
	if err != nil {
		http.Error(w, "body unreadable or too large", http.StatusBadRequest)
		return
	}
	ev, err := webhook.ConstructEventWithOptions(body, r.Header.Get("Stripe-Signature"), c.cfg.WebhookSecret,
		webhook.ConstructEventOptions{Tolerance: WebhookTolerance, IgnoreAPIVersionMismatch: true})
	if err != nil {
		c.log.Warn("card: webhook refused", "err", err, "from", r.RemoteAddr)
		http.Error(w, "signature refused: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := c.Apply(r.Context(), &ev); err != nil {
		c.log.Error("card: webhook event not applied", "event", ev.ID, "type", ev.Type, "err", err)
		http.Error(w, "not applied; send again", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// Apply applies a verified event once. Events arrive more than once and
// in any order: each is stored with its effect (a second delivery finds
// it and does nothing), a report that a payment is further along than the
// database knows moves it on, and a stale one changes nothing.
func (c *Card) Apply(ctx context.Context, ev *stripe.Event) error {
	if ev.Data == nil {
		return c.write(ctx, ev, func(*store.Tx) error { return nil })
	}
	switch ev.Type {
	case "payment_intent.amount_capturable_updated", "payment_intent.succeeded", "payment_intent.requires_action",
		"payment_intent.processing", "payment_intent.payment_failed", "payment_intent.canceled":
		var pi stripe.PaymentIntent
		if err := json.Unmarshal(ev.Data.Raw, &pi); err != nil {
			return fmt.Errorf("card: event %s: %w", ev.ID, err)
		}
		in, err := store.ReadT(ctx, c.st, func(tx *store.Tx) (*intent, error) {
			if id := pi.Metadata[metadataKey]; id != "" {
				return loadIntent(tx, id)
			}
			return intentByStripeID(tx, pi.ID)
		})
		if err != nil {
			return err
		}
		if in == nil || (in.IntentID != "" && in.IntentID != pi.ID) {
			c.log.Warn("card: event for a payment this server did not make", "event", ev.ID, "intent", pi.ID)
			return c.write(ctx, ev, func(*store.Tx) error { return nil })
		}
		failed := ev.Type == "payment_intent.payment_failed" || ev.Type == "payment_intent.canceled"
		return c.applyIntent(ctx, in.ID, &pi, ev, failed)
	case "charge.refunded":
		var ch stripe.Charge
		if err := json.Unmarshal(ev.Data.Raw, &ch); err != nil {
			return fmt.Errorf("card: event %s: %w", ev.ID, err)
		}
		if ch.PaymentIntent == nil {
			return c.write(ctx, ev, func(*store.Tx) error { return nil })
		}
		return c.adjust(ctx, ev, ch.PaymentIntent.ID, func(tx *store.Tx, in *intent) (string, int64, error) {
			// amount_refunded is cumulative: a stale event (a smaller
			// total) or a repeated one moves nothing.
			delta := ch.AmountRefunded - in.Refunded
			if delta <= 0 {
				return "", 0, nil
			}
			in.Refunded = ch.AmountRefunded
			return fmt.Sprintf("cardrefund:%s:%d", ch.ID, ch.AmountRefunded), delta, nil
		}, c.engine.RecordCardRefund, "refunded to the card by Stripe")
	case "charge.dispute.created":
		var d stripe.Dispute
		if err := json.Unmarshal(ev.Data.Raw, &d); err != nil {
			return fmt.Errorf("card: event %s: %w", ev.ID, err)
		}
		if d.PaymentIntent == nil || d.Amount <= 0 {
			return c.write(ctx, ev, func(*store.Tx) error { return nil })
		}
		return c.adjust(ctx, ev, d.PaymentIntent.ID, func(tx *store.Tx, in *intent) (string, int64, error) {
			in.Disputed += d.Amount
			return "dispute:" + d.ID, d.Amount, nil
		}, c.engine.RecordDispute, "disputed by the card holder (Stripe dispute "+d.ID+")")
	case "account.updated":
		var a stripe.Account
		if err := json.Unmarshal(ev.Data.Raw, &a); err != nil {
			return fmt.Errorf("card: event %s: %w", ev.ID, err)
		}
		ready := a.PayoutsEnabled || (a.Capabilities != nil && a.Capabilities.Transfers == stripe.AccountCapabilityStatusActive)
		return c.write(ctx, ev, func(tx *store.Tx) error {
			_, err := tx.Exec(`UPDATE payout_accounts SET ready = ? WHERE stripe_account = ?`, flag(ready), a.ID)
			return err
		})
	}
	// Other events: acknowledged, nothing to do.
	return c.write(ctx, ev, func(*store.Tx) error { return nil })
}

func flag(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

// adjust records money Stripe gave back to a card after capture (a refund,
// a dispute): the platform bears it (cardloss → the guest's card), and the
// session's history shows it (record, a session.Engine method). step
// returns the ledger key and amount, or 0 when there is nothing (more) to
// move.
func (c *Card) adjust(ctx context.Context, ev *stripe.Event, pi string, step func(*store.Tx, *intent) (string, int64, error),
	record func(tx *store.Tx, sessionID string, amount int64) error, memo string) error {
	return c.write(ctx, ev, func(tx *store.Tx) error {
		in, err := intentByStripeID(tx, pi)
		if err != nil {
			return err
		}
		if in == nil {
			c.log.Warn("card: event for a payment this server did not make", "event", ev.ID, "intent", pi)
			return nil
		}
		key, amount, err := step(tx, in)
		if err != nil || amount <= 0 {
			return err
		}
		now := c.nowMS()
		what := "funding " + in.ID
		if in.SessionID != "" {
			what = "session " + in.SessionID + ", quote " + in.ID
		}
		applied, err := ledger.Apply(tx, now, ledger.Transfer{ID: key, Debit: ledger.CardLosses(in.Currency), Credit: ledger.Card(in.AccountID, in.Currency),
			Amount: amount, Currency: in.Currency, Memo: what + ": " + memo})
		if err != nil || !applied {
			return err
		}
		if in.SessionID != "" {
			if err := record(tx, in.SessionID, amount); err != nil {
				return err
			}
		}
		return in.save(tx, now)
	})
}

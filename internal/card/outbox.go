package card

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v85"

	"github.com/sharespot/sharespot/internal/store"
)

// op is a stripe_ops row.
type op struct {
	stripeOp
	Attempts int
}

// Run performs the outbox's Stripe calls until ctx ends: at start (what a
// crash left), when woken, and every poll interval.
func (c *Card) Run(ctx context.Context, poll time.Duration) {
	if poll <= 0 {
		poll = time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if _, err := c.Drain(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("card: outbox", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.wake:
		}
	}
}

// Drain performs every op due now and returns how many it finished (done
// or failed for good). A session's transfer waits for its captures.
func (c *Card) Drain(ctx context.Context) (int, error) {
	ops, err := store.ReadT(ctx, c.st, func(tx *store.Tx) ([]op, error) {
		rows, err := tx.Query(`SELECT id, kind, session_id, target, amount_minor, currency, attempts FROM stripe_ops o
			WHERE state = 'pending' AND next_ms <= ?
			AND NOT (kind = ? AND EXISTS (SELECT 1 FROM stripe_ops p WHERE p.session_id = o.session_id AND p.kind <> ? AND p.state = 'pending'))
			ORDER BY created_ms, id LIMIT 100`, c.nowMS(), opTransfer, opTransfer)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []op
		for rows.Next() {
			var o op
			if err := rows.Scan(&o.ID, &o.Kind, &o.SessionID, &o.Target, &o.Amount, &o.Currency, &o.Attempts); err != nil {
				return nil, err
			}
			out = append(out, o)
		}
		return out, rows.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("card: read the outbox: %w", err)
	}
	n := 0
	for _, o := range ops {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		finished, err := c.do(ctx, o)
		if err != nil {
			return n, err
		}
		if finished {
			n++
		}
	}
	return n, nil
}

// do makes one op's Stripe call, its ID the idempotency key, and records
// the outcome. A call that succeeded but whose outcome was not recorded
// (a crash) is made again with the same key, and Stripe answers it with
// the first call's result.
func (c *Card) do(ctx context.Context, o op) (bool, error) {
	var result string
	var err error
	if c.cfg.BeforeCall != nil {
		c.cfg.BeforeCall(o.Kind)
	}
	switch o.Kind {
	case opCapture:
		p := &stripe.PaymentIntentCaptureParams{AmountToCapture: stripe.Int64(o.Amount)}
		p.SetIdempotencyKey(o.ID)
		var pi *stripe.PaymentIntent
		if pi, err = c.sc.V1PaymentIntents.Capture(ctx, o.Target, p); err == nil {
			result = pi.ID
		}
	case opCancel:
		p := &stripe.PaymentIntentCancelParams{}
		p.SetIdempotencyKey(o.ID)
		var pi *stripe.PaymentIntent
		if pi, err = c.sc.V1PaymentIntents.Cancel(ctx, o.Target, p); err == nil {
			result = pi.ID
		}
	case opTransfer:
		p := &stripe.TransferCreateParams{Amount: stripe.Int64(o.Amount), Currency: stripe.String(strings.ToLower(o.Currency)),
			Destination: stripe.String(o.Target), TransferGroup: stripe.String(o.SessionID)}
		p.AddMetadata("session_id", o.SessionID)
		p.SetIdempotencyKey(o.ID)
		var tr *stripe.Transfer
		if tr, err = c.sc.V1Transfers.Create(ctx, p); err == nil {
			result = tr.ID
		}
	default:
		err = fmt.Errorf("unknown op kind %q", o.Kind)
	}
	if err == nil && c.cfg.AfterCall != nil {
		c.cfg.AfterCall(o.Kind)
	}
	now := c.nowMS()
	state, finished := "done", true
	switch {
	case err == nil:
	case permanent(err):
		state, result = "failed", err.Error()
		c.log.Error("card: Stripe refused an outbox call; the operator must settle it by hand", "op", o.ID, "kind", o.Kind, "target", o.Target, "err", err)
	default:
		state, result, finished = "pending", err.Error(), false
		c.log.Warn("card: Stripe call failed; retrying", "op", o.ID, "attempt", o.Attempts+1, "err", err)
	}
	backoff := min(time.Duration(1<<min(o.Attempts, 9))*time.Second, 5*time.Minute)
	// Record the outcome even when shutdown began during the call: what
	// Stripe did is known now (a crash instead leaves the op pending, and
	// the retry with the same key is answered from Stripe's record).
	werr := c.st.Write(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		if _, err := tx.Exec(`UPDATE stripe_ops SET state = ?, result = ?, attempts = attempts + 1, next_ms = ? WHERE id = ? AND state = 'pending'`,
			state, result, now+backoff.Milliseconds(), o.ID); err != nil {
			return err
		}
		if state != "done" || o.Kind == opTransfer {
			return nil
		}
		status := statusCaptured
		if o.Kind == opCancel {
			status = statusReleased
		}
		_, err := tx.Exec(`UPDATE card_intents SET status = ?, updated_ms = ? WHERE intent_id = ? AND status IN (?, ?)`,
			status, now, o.Target, statusCapturing, statusReleasing)
		return err
	})
	if werr != nil {
		return false, fmt.Errorf("card: record op %s: %w", o.ID, werr)
	}
	return finished, nil
}

package session

import (
	"errors"
	"fmt"

	"github.com/sharespot/sharespot/internal/store"
)

// Card payments (internal/card) leave the session two things to do at its
// end: the escrow a card paid goes back to the card, not the wallet, and
// Stripe must capture what was billed, release the rest and transfer the
// host's share. Those Stripe calls are recorded here, in the settlement's
// transaction (the outbox, table stripe_ops), and made after its commit by
// internal/card with the op's ID as the idempotency key: a crash at any
// point neither loses a capture nor makes it twice.

// Kinds of Stripe op.
const (
	OpCapture  = "capture"  // capture amount of PaymentIntent target
	OpCancel   = "cancel"   // cancel PaymentIntent target, releasing its hold
	OpTransfer = "transfer" // transfer amount to connected account target
)

// Card intent states (card_intents.status) that settlement reads and sets.
const (
	CardAuthorised = "authorised" // the hold backs a paid quote
	CardCapturing  = "capturing"  // settlement queued its capture
	CardReleasing  = "releasing"  // settlement or an expiry queued its cancel
)

// cardHold is a quote paid by card: its PaymentIntent and the payer's
// account.
type cardHold struct {
	IntentID, AccountID string
}

// cardHolds returns the session's quotes paid by card whose hold is not yet
// settled, by quote ID.
func cardHolds(tx *store.Tx, sessionID string) (map[string]cardHold, error) {
	rows, err := tx.Query(`SELECT id, intent_id, account_id FROM card_intents WHERE kind = 'quote' AND session_id = ? AND status = ?`,
		sessionID, CardAuthorised)
	if err != nil {
		return nil, fmt.Errorf("session: card payments of %s: %w", sessionID, err)
	}
	defer rows.Close()
	out := map[string]cardHold{}
	for rows.Next() {
		var q string
		var h cardHold
		if err := rows.Scan(&q, &h.IntentID, &h.AccountID); err != nil {
			return nil, err
		}
		out[q] = h
	}
	return out, rows.Err()
}

// settleHold queues the Stripe call that ends a card hold: capture billed
// (amount_to_capture) or, with nothing billed, cancel it.
func settleHold(tx *store.Tx, nowMS int64, sessionID, quoteID string, h cardHold, billed int64, currency string) error {
	op, status := StripeOp{ID: "sharespot-capture-" + quoteID, Kind: OpCapture, SessionID: sessionID, Target: h.IntentID, Amount: billed, Currency: currency}, CardCapturing
	if billed == 0 {
		op, status = StripeOp{ID: "sharespot-cancel-" + quoteID, Kind: OpCancel, SessionID: sessionID, Target: h.IntentID, Currency: currency}, CardReleasing
	}
	if err := Enqueue(tx, nowMS, op); err != nil {
		return err
	}
	if _, err := tx.Exec(`UPDATE card_intents SET status = ?, updated_ms = ? WHERE id = ?`, status, nowMS, quoteID); err != nil {
		return fmt.Errorf("session: card payment of %s: %w", quoteID, err)
	}
	return nil
}

// StripeOp is one Stripe call in the outbox.
type StripeOp struct {
	ID        string // also the idempotency key
	Kind      string
	SessionID string
	Target    string
	Amount    int64
	Currency  string
}

// Enqueue records op in the outbox within tx; an op already recorded is
// left as it is.
func Enqueue(tx *store.Tx, nowMS int64, op StripeOp) error {
	_, err := tx.Exec(`INSERT INTO stripe_ops (id, kind, session_id, target, amount_minor, currency, state, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)`,
		op.ID, op.Kind, op.SessionID, op.Target, op.Amount, op.Currency, nowMS)
	if errors.Is(err, store.ErrConflict) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("session: queue Stripe %s %s: %w", op.Kind, op.Target, err)
	}
	return nil
}

// PayoutAccount returns a user account's Stripe connected account and
// whether Stripe reports it able to receive transfers; "" if it has none.
func PayoutAccount(tx *store.Tx, accountID string) (string, bool, error) {
	var acct string
	var ready int32
	err := tx.QueryRow(`SELECT stripe_account, ready FROM payout_accounts WHERE account_id = ?`, accountID).Scan(&acct, &ready)
	if errors.Is(err, store.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("session: payout account of %s: %w", accountID, err)
	}
	return acct, ready != 0, nil
}

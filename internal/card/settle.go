package card

import (
	"errors"
	"fmt"

	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// Settlement's side of card payments. The session engine decides what a
// session's card holds come to (session.Cards); Settler records it in this
// package's tables, within the settlement's transaction: the holds' new
// status in card_intents and the Stripe calls in the outbox (stripe_ops),
// which Run makes after the commit, with the op's ID as the idempotency
// key. A crash at any point neither loses a capture nor makes it twice.

// Settler is session.Cards on this package's tables. It needs no Stripe
// client, only the transaction it is given: a server started without a
// Stripe key still settles the holds an earlier run left, and the calls
// wait in the outbox until a run with a key makes them.
type Settler struct{}

var _ session.Cards = Settler{}

// Kinds of Stripe op.
const (
	opCapture  = "capture"  // capture amount of PaymentIntent target
	opCancel   = "cancel"   // cancel PaymentIntent target, releasing its hold
	opTransfer = "transfer" // transfer amount to connected account target
)

// Statuses of a card intent that settlement reads and sets (the others
// are in card.go).
const (
	statusAuthorised = "authorised" // the hold backs a paid quote
	statusCapturing  = "capturing"  // settlement queued its capture
	statusReleasing  = "releasing"  // settlement or an expiry queued its cancel
)

// Holds returns the session's quotes paid by card whose hold is not yet
// settled, by quote ID.
func (c Settler) Holds(tx *store.Tx, sessionID string) (map[string]session.CardHold, error) {
	out := map[string]session.CardHold{}
	if err := tx.Together(c.ReadingHolds(sessionID, out)); err != nil {
		return nil, fmt.Errorf("card: card payments of %s: %w", sessionID, err)
	}
	return out, nil
}

// ReadingHolds is Holds as a reading (store.Tx.Together): the holds go
// into into.
func (Settler) ReadingHolds(sessionID string, into map[string]session.CardHold) store.Reading {
	return store.Reading{Query: `SELECT id, intent_id, account_id FROM card_intents WHERE kind = 'quote' AND session_id = ? AND status = ?`,
		Args: []any{sessionID, statusAuthorised}, Row: func(sc store.Scanner) error {
			var q string
			var h session.CardHold
			if err := sc.Scan(&q, &h.Intent, &h.AccountID); err != nil {
				return fmt.Errorf("card: card payments of %s: %w", sessionID, err)
			}
			into[q] = h
			return nil
		}}
}

// Capture queues the capture of amount (amount_to_capture) from a quote's
// hold.
func (Settler) Capture(tx *store.Tx, nowMS int64, sessionID, quoteID string, h session.CardHold, amount int64, currency string) error {
	return endHold(tx, nowMS, quoteID, stripeOp{ID: "sharespot-capture-" + quoteID, Kind: opCapture, SessionID: sessionID, Target: h.Intent,
		Amount: amount, Currency: currency}, statusCapturing)
}

// Release queues the cancel of a quote's hold.
func (Settler) Release(tx *store.Tx, nowMS int64, sessionID, quoteID string, h session.CardHold, currency string) error {
	return endHold(tx, nowMS, quoteID, stripeOp{ID: "sharespot-cancel-" + quoteID, Kind: opCancel, SessionID: sessionID, Target: h.Intent,
		Currency: currency}, statusReleasing)
}

// endHold queues the Stripe call that ends a quote's hold and marks the
// hold as being ended.
func endHold(tx *store.Tx, nowMS int64, quoteID string, op stripeOp, status string) error {
	if err := enqueue(tx, nowMS, op); err != nil {
		return err
	}
	if _, err := tx.Exec(`UPDATE card_intents SET status = ?, updated_ms = ? WHERE id = ?`, status, nowMS, quoteID); err != nil {
		return fmt.Errorf("card: card payment of %s: %w", quoteID, err)
	}
	return nil
}

// Payee returns the account's Stripe connected account if Stripe reports
// it able to receive transfers, "" otherwise.
func (Settler) Payee(tx *store.Tx, accountID string) (string, error) {
	acct, ready, err := payoutAccount(tx, accountID)
	if err != nil || !ready {
		return "", err
	}
	return acct, nil
}

// Transfer queues the transfer of a session's host share to payee.
func (Settler) Transfer(tx *store.Tx, nowMS int64, sessionID, payee string, amount int64, currency string) error {
	return enqueue(tx, nowMS, stripeOp{ID: "sharespot-transfer-" + sessionID, Kind: opTransfer, SessionID: sessionID, Target: payee,
		Amount: amount, Currency: currency})
}

// stripeOp is one Stripe call in the outbox.
type stripeOp struct {
	ID        string // also the idempotency key
	Kind      string
	SessionID string
	Target    string
	Amount    int64
	Currency  string
}

// enqueue records op in the outbox within tx; an op already recorded is
// left as it is.
func enqueue(tx *store.Tx, nowMS int64, op stripeOp) error {
	_, err := tx.Exec(`INSERT INTO stripe_ops (id, kind, session_id, target, amount_minor, currency, state, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)`,
		op.ID, op.Kind, op.SessionID, op.Target, op.Amount, op.Currency, nowMS)
	if errors.Is(err, store.ErrConflict) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("card: queue Stripe %s %s: %w", op.Kind, op.Target, err)
	}
	return nil
}

// payoutAccount returns a user account's Stripe connected account and
// whether Stripe reports it able to receive transfers; "" if it has none.
func payoutAccount(tx *store.Tx, accountID string) (string, bool, error) {
	var acct string
	var ready int32
	err := tx.QueryRow(`SELECT stripe_account, ready FROM payout_accounts WHERE account_id = ?`, accountID).Scan(&acct, &ready)
	if errors.Is(err, store.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("card: payout account of %s: %w", accountID, err)
	}
	return acct, ready != 0, nil
}

package session

import (
	"errors"
	"fmt"

	"github.com/sharespot/sharespot/internal/store"
)

// Card payments (internal/card) leave the session two things to do at its
// end: the escrow a card paid goes back to the card, not the wallet, and
// Stripe must capture what was billed, release the rest and transfer the
// host's share. The session decides the amounts; package card owns the
// tables that hold the card payments and the outbox of Stripe calls, and
// implements Cards. Every method runs in the settlement's transaction, so
// the Stripe calls are queued with the settlement or not at all, and made
// by internal/card after its commit with each call's idempotency key: a
// crash at any point neither loses a capture nor makes it twice.

// Cards is the card payment platform as settlement needs it.
type Cards interface {
	// Holds returns the session's quotes paid by a card hold not yet
	// settled, by quote ID.
	Holds(tx *store.Tx, sessionID string) (map[string]CardHold, error)
	// ReadingHolds is Holds as a reading, to send with others
	// (store.Tx.Together): its rows go into into.
	ReadingHolds(sessionID string, into map[string]CardHold) store.Reading
	// Capture queues the capture of amount (> 0) from a quote's hold;
	// Stripe releases the rest.
	Capture(tx *store.Tx, nowMS int64, sessionID, quoteID string, h CardHold, amount int64, currency string) error
	// Release queues the cancel of a quote's hold: nothing is captured.
	Release(tx *store.Tx, nowMS int64, sessionID, quoteID string, h CardHold, currency string) error
	// Payee returns the Stripe account a host account's share of card
	// money is transferred to: "" when it has none Stripe lets receive
	// transfers, and the share stays in the host's wallet.
	Payee(tx *store.Tx, accountID string) (string, error)
	// Transfer queues the transfer of a session's host share to payee.
	Transfer(tx *store.Tx, nowMS int64, sessionID, payee string, amount int64, currency string) error
}

// CardHold is a quote paid by card: the card's hold (its PaymentIntent,
// which only package card reads) and the payer's account.
type CardHold struct {
	Intent, AccountID string
}

// noCards is Cards where no card payment exists: no holds, no payee.
type noCards struct{}

func (noCards) Holds(*store.Tx, string) (map[string]CardHold, error)   { return nil, nil }
func (noCards) ReadingHolds(string, map[string]CardHold) store.Reading { return store.Reading{} }
func (noCards) Payee(*store.Tx, string) (string, error)                { return "", nil }
func (noCards) Capture(*store.Tx, int64, string, string, CardHold, int64, string) error {
	return errNoCards
}
func (noCards) Release(*store.Tx, int64, string, string, CardHold, string) error { return errNoCards }
func (noCards) Transfer(*store.Tx, int64, string, string, int64, string) error   { return errNoCards }

var errNoCards = errors.New("session: a card hold, but no card platform to settle it")

// After settlement Stripe may give a card back some of what it paid: a
// refund made in Stripe's dashboard, a dispute the card holder opened.
// Package card moves the money (cardloss → the guest's card account) and
// records it on the session through these, in the same transaction, so the
// session's history shows it. Each adds to a running total; the caller
// applies each refund or dispute once.

// RecordCardRefund adds amount to what Stripe refunded to the card of
// sessionID's guest (card_refunded_minor).
func (e *Engine) RecordCardRefund(tx *store.Tx, sessionID string, amount int64) error {
	return addCardAdjustment(tx, sessionID, "card_refunded_minor", amount)
}

// RecordDispute adds amount to what the card holder of sessionID disputed
// (disputed_minor).
func (e *Engine) RecordDispute(tx *store.Tx, sessionID string, amount int64) error {
	return addCardAdjustment(tx, sessionID, "disputed_minor", amount)
}

func addCardAdjustment(tx *store.Tx, sessionID, column string, amount int64) error {
	if _, err := tx.Exec(`UPDATE sessions SET `+column+` = `+column+` + ? WHERE id = ?`, amount, sessionID); err != nil {
		return fmt.Errorf("session: record %s of %s: %w", column, sessionID, err)
	}
	tx.Forget(sessionKey(sessionID)) // the sum is the database's
	return nil
}

package session

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/store"
)

// Expire moves one overdue session on: a host that never quoted, a quote
// the guest let expire, a host that never granted after payment (the guest
// is refunded), a host that sent no final count after the guest ended (the
// last report stands). It does nothing if the session is no longer overdue.
func (e *Engine) Expire(tx *store.Tx, sessionID string) error {
	now := e.nowMS()
	s, err := loadRow(tx, sessionID)
	if err != nil {
		return err
	}
	if s.DeadlineMS == 0 || s.DeadlineMS > now {
		return nil
	}
	switch s.State {
	case sharespotv1.SessionState_SESSION_STATE_REQUESTED:
		return e.finish(tx, s, 0, "host did not answer in time")
	case sharespotv1.SessionState_SESSION_STATE_QUOTED:
		return e.finish(tx, s, 0, "quote expired unpaid")
	case sharespotv1.SessionState_SESSION_STATE_PAID, sharespotv1.SessionState_SESSION_STATE_CONFIRMED:
		return e.finish(tx, s, 0, "host did not grant in time; payment refunded")
	case sharespotv1.SessionState_SESSION_STATE_ACTIVE:
		return e.expireTopUp(tx, s, now)
	case sharespotv1.SessionState_SESSION_STATE_ENDING:
		return e.finish(tx, s, s.Used, s.EndReason+"; the host sent no final count in time, settled on its last report")
	}
	s.DeadlineMS = 0
	return s.save(tx, now)
}

func (e *Engine) expireTopUp(tx *store.Tx, s *row, now int64) error {
	q, err := e.pendingQuote(tx, s.ID)
	if err != nil {
		return err
	}
	reason := "host did not answer the top-up in time"
	if q != nil {
		switch q.State {
		case sharespotv1.QuoteState_QUOTE_STATE_OPEN:
			reason = "top-up quote expired unpaid"
			q.State = sharespotv1.QuoteState_QUOTE_STATE_EXPIRED
		default: // paid or confirmed, never granted
			reason = "host did not grant the top-up in time; payment refunded"
			to, memo := ledger.Wallet(s.GuestAccount, s.Currency), "top-up "+q.ID+" not granted, refunded"
			holds, err := e.cards.Holds(tx, s.ID)
			if err != nil {
				return err
			}
			if h, ok := holds[q.ID]; ok {
				// Paid by card: release the hold, nothing captured.
				to, memo = ledger.Card(h.AccountID, s.Currency), "top-up "+q.ID+" not granted, released on the card"
				if err := e.cards.Release(tx, now, s.ID, q.ID, h, s.Currency); err != nil {
					return err
				}
			}
			if q.Amount > 0 {
				if _, err := ledger.Apply(tx, now, ledger.Transfer{ID: "refund:" + q.ID, Debit: ledger.Escrow(s.ID, s.Currency),
					Credit: to, Amount: q.Amount, Currency: s.Currency, Memo: memo}); err != nil {
					return fmt.Errorf("session: refund top-up %s: %w", q.ID, err)
				}
			}
			q.State = sharespotv1.QuoteState_QUOTE_STATE_REFUNDED
			// The payment reserved the volume; give it back.
			if err := registry.Release(tx, s.HotspotID, q.Bytes); err != nil {
				return err
			}
			s.Reserved -= q.Bytes
		}
		if err := q.save(tx); err != nil {
			return err
		}
	}
	s.PendingTopUp, s.DeadlineMS = 0, 0
	if err := s.save(tx, now); err != nil {
		return err
	}
	for _, to := range []string{s.Guest, s.Host} {
		if err := e.send(tx, to, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_Declined{Declined: &sharespotv1.Declined{
			Reason: reason, Kind: sharespotv1.QuoteKind_QUOTE_KIND_TOPUP}}}); err != nil {
			return err
		}
	}
	return nil
}

// overdue selects the sessions whose deadline has passed, soonest first:
// the time now and how many.
const overdue = `SELECT id FROM sessions WHERE ended_ms = 0 AND deadline_ms > 0 AND deadline_ms <= ? ORDER BY deadline_ms LIMIT ?`

// Overdue lists up to limit sessions whose deadline has passed. It is a
// read's last statement (store.Tx.Last). It reads the unfinished sessions
// (an end sets the deadline to 0): no index holds the deadline, which
// nearly every save changes (migration 0011).
func (e *Engine) Overdue(tx *store.Tx, limit int) ([]string, error) {
	var ids []string
	err := tx.Last(store.Reading{Query: overdue,
		Args: []any{e.nowMS(), limit}, Row: func(sc store.Scanner) error {
			var id string
			err := sc.Scan(&id)
			ids = append(ids, id)
			return err
		}})
	if err != nil {
		return nil, fmt.Errorf("session: overdue sessions: %w", err)
	}
	return ids, nil
}

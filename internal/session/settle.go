package session

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/store"
)

// Settlement, in three steps: the bill (bill.go computes it from what the
// session's rows, its escrow and its card holds say), the ledger moves
// that carry it out, and the effects: the tranches' and the session's
// records, the Stripe calls that end the card holds (queued in this
// transaction; package card makes them after its commit), the volume
// given back to the hotspot, and both parties told.

// settlement is a session's bill with what its moves and effects need.
type settlement struct {
	Bill
	// quotes are the session's quotes in tranche order, one for each of
	// the bill's payments.
	quotes []*quote
	// holds are the card holds among them, by quote ID.
	holds map[string]CardHold
	// host is the host's account; payee the Stripe account its share of
	// card money goes to ("" when it stays in the wallet).
	host, payee string
}

// billInputs is what a bill rests on beside the session's row and quotes:
// its escrow's balance and its card holds. End reads them with the
// session's lock and keeps them in the write's own memory (PostgreSQL) for
// its bill, which takes them once: the bill's moves then change the escrow.
type billInputs struct {
	held  int64
	holds map[string]CardHold
}

func billKey(sessionID string) string { return "bill-inputs/" + sessionID }

// finish settles and ends s with used bytes consumed.
func (e *Engine) finish(tx *store.Tx, s *row, used int64, reason string) error {
	now := e.nowMS()
	st, err := e.bill(tx, s, used)
	if err != nil {
		return err
	}
	if err := st.move(tx, now, s); err != nil {
		return err
	}
	return e.effects(tx, now, s, st, reason)
}

// bill reads what s's bill rests on and computes it.
func (e *Engine) bill(tx *store.Tx, s *row, used int64) (*settlement, error) {
	// The escrow's balance and the card holds: read with the session's
	// lock (End) or else here, in one round trip (PostgreSQL); the quotes
	// came with the session's row (loadQuoted).
	in, ok := store.Recall[*billInputs](tx, billKey(s.ID))
	if ok {
		tx.Forget(billKey(s.ID)) // for this bill only: the moves change the escrow
	} else {
		in = &billInputs{holds: map[string]CardHold{}}
		if err := tx.Together(ledger.ReadingBalance(ledger.Escrow(s.ID, s.Currency).ID, &in.held), e.cards.ReadingHolds(s.ID, in.holds)); err != nil {
			return nil, fmt.Errorf("session: what the bill of %s rests on: %w", s.ID, err)
		}
	}
	held := in.held
	st := &settlement{holds: in.holds}
	var err error
	if st.quotes, err = quotesOf(tx, s.ID); err != nil {
		return nil, err
	}
	s.Window = protocol.Window(s.Granted) // one rule, on everything granted
	payments := make([]Payment, len(st.quotes))
	for i, q := range st.quotes { // ordered by tranche: 0 (not granted) first
		_, card := st.holds[q.ID]
		payments[i] = Payment{Bytes: q.Bytes, Amount: q.Amount, Card: card,
			Granted:  q.State == sharespotv1.QuoteState_QUOTE_STATE_GRANTED,
			Refunded: q.State == sharespotv1.QuoteState_QUOTE_STATE_REFUNDED} // top-ups refunded when their grant timed out
	}
	if st.Bill, err = NewBill(BillInput{
		Payments: payments,
		Usage:    Usage{HostCount: used, Granted: s.Granted, Verified: s.verified(), Acked: s.GuestAcked, Window: s.Window},
		Held:     held,
		FeeBPS:   e.cfg.FeeBPS,
	}); err != nil {
		return nil, fmt.Errorf("session: settle %s: %w", s.ID, err)
	}
	if st.host, err = account.Of(tx, s.Host); err != nil {
		return nil, err
	}
	// The host's share of what the card paid goes to its Stripe account,
	// when it has one Stripe lets receive transfers; the platform keeps its
	// fee. Otherwise the share stays in the host's wallet.
	if st.Payout() > 0 {
		if st.payee, err = e.cards.Payee(tx, st.host); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// move makes the bill's ledger transfers: out of escrow to the host, the
// platform's fee and the guest (the wallet, and the card for what card
// holds paid and was not billed), then the host's share of card money on
// to its Stripe account.
func (st *settlement) move(tx *store.Tx, nowMS int64, s *row) error {
	// Both parties' figures go into the memos, so `wallet history` shows
	// what the bill rested on.
	figures := fmt.Sprintf(" (%d bytes billed: host counted %d, unverified)", st.Used, st.HostCount)
	if st.Verified {
		figures = fmt.Sprintf(" (%d bytes billed: host counted %d, guest acknowledged %d + window %d; difference %+d)",
			st.Used, st.HostCount, s.GuestAcked, s.Window, st.HostCount-s.GuestAcked)
	}
	escrow, hostWallet := ledger.Escrow(s.ID, s.Currency), ledger.Wallet(st.host, s.Currency)
	moves := []ledger.Transfer{
		{ID: "settle:host:" + s.ID, Debit: escrow, Credit: hostWallet, Amount: st.Host, Memo: "session " + s.ID + ": data used" + figures},
		{ID: "settle:fee:" + s.ID, Debit: escrow, Credit: ledger.FeeShard(s.Currency, s.ID), Amount: st.Fee, Memo: "session " + s.ID + ": platform fee"},
		{ID: "settle:refund:" + s.ID, Debit: escrow, Credit: ledger.Wallet(s.GuestAccount, s.Currency), Amount: st.ToWallet(), Memo: "session " + s.ID + ": unused, refunded" + figures},
	}
	if st.Released > 0 {
		// Back to the card (never into the wallet as cash).
		var guestCard ledger.Account
		for _, q := range st.quotes {
			if h, ok := st.holds[q.ID]; ok {
				guestCard = ledger.Card(h.AccountID, s.Currency)
			}
		}
		moves = append(moves, ledger.Transfer{ID: "settle:release:" + s.ID, Debit: escrow, Credit: guestCard, Amount: st.Released,
			Memo: "session " + s.ID + ": unused, released on the card (not captured)" + figures})
	}
	if st.payee != "" {
		moves = append(moves, ledger.Transfer{ID: "settle:payout:" + s.ID, Debit: hostWallet, Credit: ledger.Payout(st.host, s.Currency),
			Amount: st.Payout(), Memo: "session " + s.ID + ": host share transferred to Stripe account " + st.payee})
	}
	for _, t := range moves {
		if t.Amount == 0 {
			continue
		}
		t.Currency = s.Currency
		if _, err := ledger.Apply(tx, nowMS, t); err != nil {
			return fmt.Errorf("session: settle %s: %w", s.ID, err)
		}
	}
	return nil
}

// effects records the settled bill and acts on it: each tranche's use and
// bill, the Stripe calls for the card holds and the host's transfer, the
// volume reserved and not used given back, the quotes closed, the session
// ended, and both parties told.
func (e *Engine) effects(tx *store.Tx, nowMS int64, s *row, st *settlement, reason string) error {
	for i, q := range st.quotes {
		if q.State != sharespotv1.QuoteState_QUOTE_STATE_GRANTED {
			continue
		}
		q.Used, q.Billed = st.Payments[i].Used, st.Payments[i].Amount
		if err := q.saveBill(tx); err != nil {
			return err
		}
	}
	if err := e.settleCards(tx, nowMS, s, st); err != nil {
		return err
	}
	// Give back the volume reserved but not used.
	if err := registry.Release(tx, s.HotspotID, s.Reserved-st.Used); err != nil {
		return err
	}
	s.Reserved = min(s.Reserved, st.Used)
	if err := tx.ExecLater("session: close the quotes of "+s.ID, `UPDATE quotes SET state = CASE WHEN state = ? THEN ? WHEN state IN (?, ?) THEN ? ELSE state END WHERE session_id = ?`,
		int32(sharespotv1.QuoteState_QUOTE_STATE_OPEN), int32(sharespotv1.QuoteState_QUOTE_STATE_EXPIRED),
		int32(sharespotv1.QuoteState_QUOTE_STATE_PAID), int32(sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED), int32(sharespotv1.QuoteState_QUOTE_STATE_REFUNDED),
		s.ID); err != nil {
		return err
	}
	changeQuotes(tx, s.ID, func(qs []quote) []quote {
		for i := range qs {
			switch qs[i].State {
			case sharespotv1.QuoteState_QUOTE_STATE_OPEN:
				qs[i].State = sharespotv1.QuoteState_QUOTE_STATE_EXPIRED
			case sharespotv1.QuoteState_QUOTE_STATE_PAID, sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED:
				qs[i].State = sharespotv1.QuoteState_QUOTE_STATE_REFUNDED
			}
		}
		return qs
	})
	s.State = sharespotv1.SessionState_SESSION_STATE_ENDED
	s.Used, s.PendingTopUp, s.DeadlineMS, s.EndReason = st.Used, 0, 0, reason
	s.HostCount, s.Verified = st.HostCount, st.Verified
	s.SettledHost, s.SettledFee, s.Refunded = st.Host, st.Fee, st.Refund+st.RefundedBefore
	if err := s.save(tx, nowMS); err != nil {
		return err
	}
	for _, to := range []string{s.Guest, s.Host} {
		view, err := e.render(tx, s, Party{DeviceID: to})
		if err != nil {
			return err
		}
		if err := e.send(tx, to, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_SessionEnded{SessionEnded: &sharespotv1.SessionEnded{Session: view}}}); err != nil {
			return err
		}
	}
	e.log.Info("session settled", "session", s.ID, "used", st.Used, "host_count", s.HostCount, "guest_acked", s.GuestAcked, "verified", s.Verified,
		"charged", st.Charged, "host", st.Host, "fee", st.Fee, "refund", st.Refund, "reason", reason)
	return nil
}

// settleCards queues the Stripe calls that end the session's card holds
// (the billed part of each captured, a hold with nothing billed released)
// and the host's transfer.
func (e *Engine) settleCards(tx *store.Tx, nowMS int64, s *row, st *settlement) error {
	for i, q := range st.quotes {
		h, ok := st.holds[q.ID]
		if !ok {
			continue
		}
		var err error
		if billed := st.Payments[i].Amount; billed > 0 {
			err = e.cards.Capture(tx, nowMS, s.ID, q.ID, h, billed, s.Currency)
		} else {
			err = e.cards.Release(tx, nowMS, s.ID, q.ID, h, s.Currency)
		}
		if err != nil {
			return err
		}
	}
	if st.payee != "" {
		return e.cards.Transfer(tx, nowMS, s.ID, st.payee, st.Payout(), s.Currency)
	}
	return nil
}

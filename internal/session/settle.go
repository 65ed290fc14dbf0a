package session

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/store"
)

// Settlement. The bytes billed are the host's count, but where the guest
// acknowledged what it received (evidence.go) at most its last signed count
// plus the credit window: min(host count, acknowledged + window). A session
// with no acknowledgment is billed on the host's count and marked
// unverified. Each granted quote is a tranche with its own bytes and price.
// The bytes billed are consumed tranche by tranche in grant order; tranche
// i is billed
//
//	billed_i = amount_i × used_i ÷ bytes_i, rounded down to the minor unit
//
// (a tranche used whole is billed its amount exactly). The guest is charged
// Σ billed_i; the platform's fee is FeeBPS of that, rounded down; the host
// gets the charge less the fee; everything else in escrow (unused tranches,
// payments never granted) goes back to the guest.

// Tranche is one granted quote as settlement sees it.
type Tranche struct {
	Bytes, Amount int64
}

// Bill consumes used bytes from tranches in order and returns what each
// tranche's used part costs at its own price, and the bytes used in each.
func Bill(tranches []Tranche, used int64) (billed, usedIn []int64, err error) {
	billed, usedIn = make([]int64, len(tranches)), make([]int64, len(tranches))
	for i, t := range tranches {
		u := min(max(used, 0), t.Bytes)
		used -= u
		if u > 0 {
			if billed[i], err = registry.MulDiv(t.Amount, u, t.Bytes, false); err != nil {
				return nil, nil, err
			}
		}
		usedIn[i] = u
	}
	return billed, usedIn, nil
}

// finish settles and ends s with used bytes consumed.
func (e *Engine) finish(tx *store.Tx, s *row, used int64, reason string) error {
	now := e.nowMS()
	used = min(max(used, 0), s.Granted)
	s.HostCount, s.Verified = used, s.GuestAcked > 0
	if s.Verified {
		used = min(used, s.GuestAcked+s.Window)
	}
	escrow := ledger.Escrow(s.ID, s.Currency)
	held, err := ledger.Balance(tx, escrow.ID)
	if err != nil {
		return err
	}
	qs, err := quotesOf(tx, s.ID)
	if err != nil {
		return err
	}
	var tranches []Tranche
	var granted []*quote
	var refundedBefore int64 // top-ups refunded when their grant timed out
	for _, q := range qs {   // ordered by tranche: 0 (not granted) first
		switch q.State {
		case sharespotv1.QuoteState_QUOTE_STATE_GRANTED:
			tranches = append(tranches, Tranche{Bytes: q.Bytes, Amount: q.Amount})
			granted = append(granted, q)
		case sharespotv1.QuoteState_QUOTE_STATE_REFUNDED:
			refundedBefore += q.Amount
		}
	}
	billed, usedIn, err := Bill(tranches, used)
	if err != nil {
		return fmt.Errorf("session: settle %s: %w", s.ID, err)
	}
	var charged int64
	for i, q := range granted {
		q.Used, q.Billed = usedIn[i], billed[i]
		charged += billed[i]
		if err := q.saveBill(tx); err != nil {
			return err
		}
	}
	if charged > held {
		// Never: escrow holds every granted tranche's amount.
		return fmt.Errorf("session: settle %s: charge %d exceeds the %d held in escrow", s.ID, charged, held)
	}
	fee, err := registry.MulDiv(charged, e.cfg.FeeBPS, 10000, false)
	if err != nil {
		return fmt.Errorf("session: settle %s fee: %w", s.ID, err)
	}
	hostAccount, err := account.Of(tx, s.Host)
	if err != nil {
		return err
	}
	guestAccount := s.GuestAccount
	refund := held - charged
	// Card holds: the billed part of each is captured, the rest released
	// back to the card (never into the wallet as cash); the Stripe calls
	// go into the outbox in this transaction.
	holds, err := e.cards.Holds(tx, s.ID)
	if err != nil {
		return err
	}
	var released, cardCharged int64
	var guestCard ledger.Account
	for _, q := range qs {
		h, ok := holds[q.ID]
		if !ok {
			continue
		}
		var b int64
		if q.State == sharespotv1.QuoteState_QUOTE_STATE_GRANTED {
			b = q.Billed
		}
		released += q.Amount - b
		cardCharged += b
		guestCard = ledger.Card(h.AccountID, s.Currency)
		if b > 0 {
			err = e.cards.Capture(tx, now, s.ID, q.ID, h, b, s.Currency)
		} else {
			err = e.cards.Release(tx, now, s.ID, q.ID, h, s.Currency)
		}
		if err != nil {
			return err
		}
	}
	// Both parties' figures go into the memos, so `wallet history` shows
	// what the bill rested on.
	figures := fmt.Sprintf(" (%d bytes billed: host counted %d, unverified)", used, s.HostCount)
	if s.Verified {
		figures = fmt.Sprintf(" (%d bytes billed: host counted %d, guest acknowledged %d + window %d; difference %+d)",
			used, s.HostCount, s.GuestAcked, s.Window, s.HostCount-s.GuestAcked)
	}
	hostWallet := ledger.Wallet(hostAccount, s.Currency)
	moves := []ledger.Transfer{
		{ID: "settle:host:" + s.ID, Debit: escrow, Credit: hostWallet, Amount: charged - fee, Memo: "session " + s.ID + ": data used" + figures},
		{ID: "settle:fee:" + s.ID, Debit: escrow, Credit: ledger.FeeShard(s.Currency, s.ID), Amount: fee, Memo: "session " + s.ID + ": platform fee"},
		{ID: "settle:refund:" + s.ID, Debit: escrow, Credit: ledger.Wallet(guestAccount, s.Currency), Amount: refund - released, Memo: "session " + s.ID + ": unused, refunded" + figures},
	}
	if released > 0 {
		moves = append(moves, ledger.Transfer{ID: "settle:release:" + s.ID, Debit: escrow, Credit: guestCard, Amount: released,
			Memo: "session " + s.ID + ": unused, released on the card (not captured)" + figures})
	}
	// The host's share of what the card paid goes to its Stripe account,
	// when it has one Stripe lets receive transfers; the platform keeps its
	// fee. Otherwise the share stays in the host's wallet.
	if payout := min(charged-fee, cardCharged); payout > 0 {
		acct, err := e.cards.Payee(tx, hostAccount)
		if err != nil {
			return err
		}
		if acct != "" {
			moves = append(moves, ledger.Transfer{ID: "settle:payout:" + s.ID, Debit: hostWallet, Credit: ledger.Payout(hostAccount, s.Currency),
				Amount: payout, Memo: "session " + s.ID + ": host share transferred to Stripe account " + acct})
			if err := e.cards.Transfer(tx, now, s.ID, acct, payout, s.Currency); err != nil {
				return err
			}
		}
	}
	for _, t := range moves {
		if t.Amount == 0 {
			continue
		}
		t.Currency = s.Currency
		if _, err := ledger.Apply(tx, now, t); err != nil {
			return fmt.Errorf("session: settle %s: %w", s.ID, err)
		}
	}
	// Give back the volume reserved but not used.
	if err := registry.Release(tx, s.HotspotID, s.Reserved-used); err != nil {
		return err
	}
	s.Reserved = min(s.Reserved, used)
	if _, err := tx.Exec(`UPDATE quotes SET state = CASE WHEN state = ? THEN ? WHEN state IN (?, ?) THEN ? ELSE state END WHERE session_id = ?`,
		int32(sharespotv1.QuoteState_QUOTE_STATE_OPEN), int32(sharespotv1.QuoteState_QUOTE_STATE_EXPIRED),
		int32(sharespotv1.QuoteState_QUOTE_STATE_PAID), int32(sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED), int32(sharespotv1.QuoteState_QUOTE_STATE_REFUNDED),
		s.ID); err != nil {
		return fmt.Errorf("session: close quotes: %w", err)
	}
	s.State = sharespotv1.SessionState_SESSION_STATE_ENDED
	s.Used, s.PendingTopUp, s.DeadlineMS, s.EndReason = used, 0, 0, reason
	s.SettledHost, s.SettledFee, s.Refunded = charged-fee, fee, refund+refundedBefore
	if err := s.save(tx, now); err != nil {
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
	e.log.Info("session settled", "session", s.ID, "used", used, "host_count", s.HostCount, "guest_acked", s.GuestAcked, "verified", s.Verified, "charged", charged, "host", charged-fee, "fee", fee, "refund", refund, "reason", reason)
	return nil
}

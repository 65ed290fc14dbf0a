package harness

import (
	"fmt"
	"math/big"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/store"
)

// CheckSessions checks every session after a run whose sessions should
// all be over: each is ended, and each was granted exactly the bytes of
// its granted quotes (a quote granted twice, or a grant without its quote,
// shows as a difference).
func CheckSessions(tx *store.Tx) []error {
	rows, err := tx.Query(`SELECT s.id, s.state, s.granted_bytes,
		COALESCE((SELECT SUM(q.bytes) FROM quotes q WHERE q.session_id = s.id AND q.state = ?), 0)
		FROM sessions s ORDER BY s.id`, int32(sharespotv1.QuoteState_QUOTE_STATE_GRANTED))
	if err != nil {
		return []error{err}
	}
	defer rows.Close()
	var errs []error
	for rows.Next() {
		var id string
		var state int32
		var granted, quoted int64
		if err := rows.Scan(&id, &state, &granted, &quoted); err != nil {
			return append(errs, err)
		}
		if sharespotv1.SessionState(state) != sharespotv1.SessionState_SESSION_STATE_ENDED {
			errs = append(errs, fmt.Errorf("session %s is %v after the run", id, sharespotv1.SessionState(state)))
		}
		if granted != quoted {
			errs = append(errs, fmt.Errorf("session %s granted %d bytes; its granted quotes hold %d", id, granted, quoted))
		}
	}
	if err := rows.Err(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// CheckMoney checks that the money funded in currency is all in wallets
// and fee accounts (escrow empty), and that the funding account holds
// exactly minus what was funded.
func CheckMoney(tx *store.Tx, accounts []string, currency string, funded int64) error {
	var sum int64
	for _, a := range accounts {
		b, err := ledger.Balance(tx, ledger.Wallet(a, currency).ID)
		if err != nil {
			return fmt.Errorf("balance of %s: %w", a, err)
		}
		if b < 0 {
			return fmt.Errorf("wallet of %s is negative: %d", a, b)
		}
		sum += b
	}
	fee, err := ledger.FeeTotal(tx, currency)
	if err != nil {
		return fmt.Errorf("fee total: %w", err)
	}
	funding, err := ledger.Balance(tx, ledger.Funding(currency).ID)
	if err != nil {
		return fmt.Errorf("funding balance: %w", err)
	}
	if sum+fee != funded || funding != -funded {
		return fmt.Errorf("wallets %d + fees %d != funded %d (funding account %d)", sum, fee, funded, funding)
	}
	return nil
}

// CheckFairness checks every settled session against the settlement rules,
// computed here independently of the server's code: each paid quote is
// priced at the session's tariff (the one the guest was shown); the bytes
// used are consumed from the granted quotes (tranches) in grant order, each
// billed at its own price rounded down; the guest is charged the sum, never
// more than the shown tariff gives for the bytes used; the platform keeps
// feeBPS of the charge (rounded down) and the host gets the rest; all else
// paid goes back to the guest. In a verified session (the guest chose to
// acknowledge what it receives), the bytes billed are min(host's count,
// acknowledged + credit window); in an unverified one, the host's count.
func CheckFairness(tx *store.Tx, feeBPS int64) []error {
	type sess struct {
		acked, window, hostCount  int64
		verified                  bool
		mode                      int32
		id                        string
		used, host, fee, refunded int64
		price, topUp, unit        int64
	}
	rows, err := tx.Query(`SELECT id, used_bytes, settled_host_minor, settled_fee_minor, refunded_minor,
		tariff_price_minor, tariff_topup_price_minor, tariff_unit_bytes, guest_acked_bytes, credit_window_bytes, host_count_bytes, verified, usage_mode
		FROM sessions WHERE state = ? ORDER BY id`,
		int32(sharespotv1.SessionState_SESSION_STATE_ENDED))
	if err != nil {
		return []error{err}
	}
	var ss []sess
	for rows.Next() {
		var s sess
		var verified int32
		if err := rows.Scan(&s.id, &s.used, &s.host, &s.fee, &s.refunded, &s.price, &s.topUp, &s.unit, &s.acked, &s.window, &s.hostCount, &verified, &s.mode); err != nil {
			rows.Close()
			return []error{err}
		}
		s.verified = verified != 0
		ss = append(ss, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return []error{err}
	}
	// floorDiv and ceilDiv compute a*b/c exactly.
	div := func(a, b, c int64, up bool) int64 {
		q, r := new(big.Int).QuoRem(new(big.Int).Mul(big.NewInt(a), big.NewInt(b)), big.NewInt(c), new(big.Int))
		if up && r.Sign() > 0 {
			q.Add(q, big.NewInt(1))
		}
		return q.Int64()
	}
	var errs []error
	for _, s := range ss {
		qrows, err := tx.Query(`SELECT id, kind, bytes, amount_minor, state, tranche, used_bytes, billed_minor
			FROM quotes WHERE session_id = ? ORDER BY tranche, id`, s.id)
		if err != nil {
			return append(errs, err)
		}
		rest := s.used
		var paid, charged, atTariff int64
		var tranche int32
		for qrows.Next() {
			var id string
			var kind, state, tr int32
			var bytes, amount, used, billed int64
			if err := qrows.Scan(&id, &kind, &bytes, &amount, &state, &tr, &used, &billed); err != nil {
				qrows.Close()
				return append(errs, err)
			}
			rate := s.price
			if sharespotv1.QuoteKind(kind) == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP {
				rate = s.topUp
			}
			qs := sharespotv1.QuoteState(state)
			if qs != sharespotv1.QuoteState_QUOTE_STATE_OPEN && qs != sharespotv1.QuoteState_QUOTE_STATE_EXPIRED {
				paid += amount
				if s.unit > 0 && amount != div(bytes, rate, s.unit, true) {
					errs = append(errs, fmt.Errorf("session %s: quote %s asks %d for %d bytes; the session's tariff gives %d", s.id, id, amount, bytes, div(bytes, rate, s.unit, true)))
				}
			}
			if qs != sharespotv1.QuoteState_QUOTE_STATE_GRANTED {
				continue
			}
			if tranche++; tr != tranche {
				errs = append(errs, fmt.Errorf("session %s: granted quote %s is tranche %d, want %d", s.id, id, tr, tranche))
			}
			u := min(rest, bytes)
			rest -= u
			b := div(amount, u, bytes, false)
			if used != u || billed != b {
				errs = append(errs, fmt.Errorf("session %s: tranche %d used %d billed %d; want %d bytes billed %d", s.id, tr, used, billed, u, b))
			}
			charged += b
			if s.unit > 0 {
				atTariff += div(u, rate, s.unit, true)
			}
		}
		qrows.Close()
		if err := qrows.Err(); err != nil {
			return append(errs, err)
		}
		fee := div(charged, feeBPS, 10000, false)
		billable := s.hostCount
		if s.mode == int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED) {
			billable = min(s.hostCount, s.acked+s.window)
		}
		switch {
		case s.verified != (s.mode == int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED)):
			errs = append(errs, fmt.Errorf("session %s: verified %v in usage mode %d", s.id, s.verified, s.mode))
		case s.mode != int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED) && s.acked != 0:
			errs = append(errs, fmt.Errorf("session %s: unverified, yet %d bytes acknowledged", s.id, s.acked))
		case s.used != billable:
			errs = append(errs, fmt.Errorf("session %s: billed on %d bytes; the host counted %d, the guest acknowledged %d (window %d): want %d",
				s.id, s.used, s.hostCount, s.acked, s.window, billable))
		case rest != 0:
			errs = append(errs, fmt.Errorf("session %s: %d bytes used beyond its tranches", s.id, rest))
		case s.host+s.fee != charged || s.fee != fee:
			errs = append(errs, fmt.Errorf("session %s: host %d + fee %d; want the charge %d less a fee of %d", s.id, s.host, s.fee, charged, fee))
		case s.refunded != paid-charged:
			errs = append(errs, fmt.Errorf("session %s: refunded %d; want paid %d − charged %d", s.id, s.refunded, paid, charged))
		case s.unit > 0 && charged > atTariff:
			errs = append(errs, fmt.Errorf("session %s: charged %d, above the %d the shown tariff gives for the bytes used", s.id, charged, atTariff))
		}
	}
	return errs
}

// CheckDelivery checks a device's handled messages against its inbox on the
// server: sequence numbers 1..L handled once each and in order, message
// IDs unique, nothing acknowledged beyond L, and every message not yet
// acknowledged still stored, with the ID the client saw.
func CheckDelivery(tx *store.Tx, deviceID string, msgs []client.Handled) []error {
	var errs []error
	next, acked, err := account.Cursor(tx, deviceID, false)
	if err != nil {
		return []error{err}
	}
	stored := map[int64]string{}
	rows, err := tx.Query(`SELECT seq, message_id FROM inbox WHERE device_id = ? ORDER BY seq`, deviceID)
	if err != nil {
		return []error{err}
	}
	for rows.Next() {
		var seq int64
		var id string
		if err := rows.Scan(&seq, &id); err != nil {
			rows.Close()
			return []error{err}
		}
		stored[seq] = id
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return []error{err}
	}
	ids := map[string]bool{}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			errs = append(errs, fmt.Errorf("handled message #%d has seq %d: handled twice or a gap before it", i+1, m.Seq))
		}
		if ids[m.ID] {
			errs = append(errs, fmt.Errorf("message %s (seq %d) handled twice", m.ID, m.Seq))
		}
		ids[m.ID] = true
	}
	last := int64(len(msgs))
	if last != next-1 {
		errs = append(errs, fmt.Errorf("the client handled %d messages, the server stored %d", last, next-1))
	}
	if acked > last {
		errs = append(errs, fmt.Errorf("the server holds messages up to %d acknowledged, the client handled only %d", acked, last))
	}
	for seq := acked + 1; seq < next; seq++ {
		id, ok := stored[seq]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("message %d lost: not acknowledged, yet not in the inbox", seq))
		case seq <= last && id != msgs[seq-1].ID:
			errs = append(errs, fmt.Errorf("message %d is %s in the inbox, but the client handled %s", seq, id, msgs[seq-1].ID))
		}
	}
	for seq := range stored {
		if seq <= acked || seq >= next {
			errs = append(errs, fmt.Errorf("message %d stored outside the unacknowledged range (%d, %d)", seq, acked, next))
		}
	}
	return errs
}

package harness

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
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

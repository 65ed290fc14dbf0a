package session

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/store"
)

// AuditReport is the operator's audit of money and sessions: the ledger's
// own check, sessions open and ended, ended sessions still holding escrow,
// and the usage reconciliation between hosts and guests. `sharespot wallet
// audit` prints it; the operator's dashboard shows it.
type AuditReport struct {
	Ledger       ledger.Audit
	Open, Ended  int64
	HeldAfterEnd int64
	Usage        Reconciliation
	// RecordDrift names each host whose kept record (what discovery shows
	// guests) differs from its settled verified sessions.
	RecordDrift []string
	// EndedUnmarked counts the ended sessions without their end time
	// (ended_ms), which the indexes of unfinished sessions still hold.
	EndedUnmarked int64
}

// OK reports whether the ledger is consistent, no ended session holds
// money in escrow, every host's record matches its sessions and every
// ended session has its end time.
func (a AuditReport) OK() bool {
	return a.Ledger.OK() && a.HeldAfterEnd == 0 && len(a.RecordDrift) == 0 && a.EndedUnmarked == 0
}

// Audit runs the operator's audit in tx.
func Audit(tx *store.Tx) (AuditReport, error) {
	var a AuditReport
	var err error
	if a.Ledger, err = ledger.Check(tx); err != nil {
		return a, err
	}
	if a.Usage, err = Reconcile(tx); err != nil {
		return a, err
	}
	if a.RecordDrift, err = CheckHostRecords(tx); err != nil {
		return a, err
	}
	if a.EndedUnmarked, err = CountEndedUnmarked(tx); err != nil {
		return a, err
	}
	ended := int64(sharespotv1.SessionState_SESSION_STATE_ENDED)
	if err := tx.QueryRow(`SELECT COUNT(*) FROM sessions WHERE state <> ?`, ended).Scan(&a.Open); err != nil {
		return a, fmt.Errorf("session: audit: count open sessions: %w", err)
	}
	if err := tx.QueryRow(`SELECT COUNT(*) FROM sessions WHERE state = ?`, ended).Scan(&a.Ended); err != nil {
		return a, fmt.Errorf("session: audit: count ended sessions: %w", err)
	}
	if err := tx.QueryRow(`SELECT COUNT(*) FROM sessions s JOIN ledger_accounts a ON a.id = 'escrow:' || s.id
		WHERE s.state = ? AND a.balance <> 0`, ended).Scan(&a.HeldAfterEnd); err != nil {
		return a, fmt.Errorf("session: audit: escrow of ended sessions: %w", err)
	}
	return a, nil
}

package server

import (
	"context"
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// business is the collector of the business figures (metrics.Business):
// read from the database, which all replicas share, so every replica
// reports the deployment's totals.
func (s *Server) business() *metrics.BusinessCollector {
	return metrics.NewBusiness(func(ctx context.Context) (metrics.Business, error) {
		return store.ReadT(ctx, s.st, func(tx *store.Tx) (metrics.Business, error) { return ReadBusiness(tx, s.cfg.Now().UnixMilli()) })
	}, func(ctx context.Context) (bool, error) {
		return store.ReadT(ctx, s.st, func(tx *store.Tx) (bool, error) {
			rep, err := session.Audit(tx)
			return rep.OK(), err
		})
	}, s.cfg.Now, metrics.BusinessOptions{})
}

// ReadBusiness reads the business figures in tx with five aggregate
// queries, the same SQL on SQLite and PostgreSQL. Three scan a table (the
// sessions by state, the settled sessions, the ledger's accounts for
// escrow); the overdue sessions are found among the unfinished ones, and
// the outbox through its index (stripe_ops_pending). docs/benchmarks.md has what a
// read costs.
func ReadBusiness(tx *store.Tx, nowMS int64) (metrics.Business, error) {
	b := metrics.Business{Sessions: map[sharespotv1.SessionState]int64{}, Money: map[string]metrics.Money{}}
	ended := int32(sharespotv1.SessionState_SESSION_STATE_ENDED)
	if err := scanRows(tx, func(scan func(...any) error) error {
		var state int32
		var n int64
		if err := scan(&state, &n); err != nil {
			return err
		}
		b.Sessions[sharespotv1.SessionState(state)] = n
		return nil
	}, `SELECT state, COUNT(*) FROM sessions GROUP BY state`); err != nil {
		return b, fmt.Errorf("server: business figures: sessions by state: %w", err)
	}
	// What settlement recorded on each ended session (settle.go: the
	// ledger's settle:host, settle:fee and refund transfers), by currency.
	if err := scanRows(tx, func(scan func(...any) error) error {
		var cur string
		var m metrics.Money
		var sold, verified, unverified int64
		if err := scan(&cur, &m.Charged, &m.Fees, &m.Refunded, &sold, &verified, &unverified); err != nil {
			return err
		}
		b.Money[cur] = m
		b.SoldBytes += sold
		b.Verified += verified
		b.Unverified += unverified
		return nil
	}, `SELECT currency, COALESCE(SUM(settled_host_minor + settled_fee_minor), 0), COALESCE(SUM(settled_fee_minor), 0),
		COALESCE(SUM(refunded_minor), 0), COALESCE(SUM(used_bytes), 0),
		COALESCE(SUM(CASE WHEN granted_bytes > 0 AND usage_mode = ? THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN granted_bytes > 0 AND usage_mode <> ? THEN 1 ELSE 0 END), 0)
		FROM sessions WHERE state = ? GROUP BY currency`,
		int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED), int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED), ended); err != nil {
		return b, fmt.Errorf("server: business figures: settled sessions: %w", err)
	}
	if err := scanRows(tx, func(scan func(...any) error) error {
		var cur string
		var held int64
		if err := scan(&cur, &held); err != nil {
			return err
		}
		m := b.Money[cur]
		m.Escrow = held
		b.Money[cur] = m
		return nil
	}, `SELECT currency, COALESCE(SUM(balance), 0) FROM ledger_accounts WHERE kind = 'escrow' GROUP BY currency`); err != nil {
		return b, fmt.Errorf("server: business figures: escrow: %w", err)
	}
	if err := tx.QueryRow(`SELECT COUNT(*), COALESCE(MIN(s.deadline_ms), 0) FROM sessions s JOIN ledger_accounts a ON a.id = 'escrow:' || s.id
		WHERE s.ended_ms = 0 AND s.deadline_ms > 0 AND s.deadline_ms <= ? AND a.balance > 0`, nowMS).Scan(&b.Overdue, &b.OldestDeadlineMS); err != nil {
		return b, fmt.Errorf("server: business figures: overdue escrow: %w", err)
	}
	if err := tx.QueryRow(`SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0),
		COALESCE(MIN(CASE WHEN state = 'pending' THEN created_ms END), 0)
		FROM stripe_ops WHERE state IN ('pending', 'failed')`).Scan(&b.OutboxPending, &b.OutboxFailed, &b.OutboxOldestMS); err != nil {
		return b, fmt.Errorf("server: business figures: outbox: %w", err)
	}
	return b, nil
}

// scanRows runs query and calls row for each row it returns.
func scanRows(tx *store.Tx, row func(scan func(...any) error) error, query string, args ...any) error {
	rows, err := tx.Query(query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := row(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
}

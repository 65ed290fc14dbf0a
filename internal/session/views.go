package session

import (
	"fmt"
	"sort"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
)

// Get returns a session to one of its parties.
func (e *Engine) Get(tx *store.Tx, p Party, sessionID string) (*sharespotv1.Session, error) {
	s, err := e.load(tx, sessionID, p, roleEither)
	if err != nil {
		return nil, err
	}
	return e.render(tx, s, p)
}

// List returns p's sessions as host or guest, newest first; openOnly keeps
// those not yet ended (ending ones included).
func (e *Engine) List(tx *store.Tx, p Party, openOnly bool, limit int) ([]*sharespotv1.Session, error) {
	if limit <= 0 || limit > 200 {
		limit = 200
	}
	notState := int32(-1)
	if openOnly {
		notState = int32(sharespotv1.SessionState_SESSION_STATE_ENDED)
	}
	var ids []string
	for _, col := range []string{"host_device_id", "guest_device_id"} {
		rows, err := tx.Query(`SELECT id FROM sessions WHERE `+col+` = ? AND state <> ? ORDER BY created_ms DESC LIMIT ?`, p.DeviceID, notState, limit)
		if err != nil {
			return nil, fmt.Errorf("session: list: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var out []*sharespotv1.Session
	for _, id := range ids {
		s, err := loadRow(tx, id)
		if err != nil {
			return nil, err
		}
		v, err := e.render(tx, s, p)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedUnixMs > out[j].CreatedUnixMs })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// render returns the session as p may see it.
func (e *Engine) render(tx *store.Tx, s *row, p Party) (*sharespotv1.Session, error) {
	out := &sharespotv1.Session{
		Id: s.ID, HotspotId: s.HotspotID, HostDeviceId: s.Host, GuestDeviceId: s.Guest, State: s.State,
		RequestedBytes: s.Requested, GrantedBytes: s.Granted, UsedBytes: s.Used, Currency: s.Currency, Suite: s.Suite,
		DeadlineUnixMs: s.DeadlineMS, EndReason: s.EndReason, SettledHostMinor: s.SettledHost, SettledFeeMinor: s.SettledFee,
		RefundedMinor: s.Refunded, CreatedUnixMs: s.CreatedMS, UpdatedUnixMs: s.UpdatedMS, Tariff: s.Tariff.Proto(),
		GuestAckedBytes: s.GuestAcked, CreditWindowBytes: s.Window, HostCountBytes: s.HostCount, Verified: s.Verified,
		CardRefundedMinor: s.CardRefunded, DisputedMinor: s.Disputed,
	}
	qs, err := quotesOf(tx, s.ID)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(qs, func(i, j int) bool { return qs[i].CreatedMS < qs[j].CreatedMS })
	for _, q := range qs {
		if q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN && q.State != sharespotv1.QuoteState_QUOTE_STATE_EXPIRED {
			out.PaidMinor += q.Amount
		}
		var rc *sharespotv1.Receipt
		if p.DeviceID == s.Guest && q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN {
			// The guest may fetch its receipt again (after a crash).
			if rc, err = e.pay.Stored(tx, q.ID); err != nil {
				return nil, fmt.Errorf("session: receipt of %s: %w", q.ID, err)
			}
		}
		out.Quotes = append(out.Quotes, q.proto(rc))
	}
	return out, nil
}

// HostReconciliation compares one host's counts with its guests'
// acknowledgments over its settled sessions.
type HostReconciliation struct {
	Host string
	// Verified sessions (the guest acknowledged), unverified ones.
	Verified, Unverified int
	// Overclaimed: verified sessions whose host count ran ahead of the
	// guest's acknowledgment by more than the credit window.
	Overclaimed int
	// HostBytes and AckedBytes sum the verified sessions' figures.
	HostBytes, AckedBytes int64
}

// Reconcile returns, per host with settled sessions, its counts against
// its guests' acknowledgments; hosts with overclaimed sessions first.
func Reconcile(tx *store.Tx) ([]HostReconciliation, error) {
	rows, err := tx.Query(`SELECT host_device_id, verified, host_count_bytes, guest_acked_bytes, credit_window_bytes
		FROM sessions WHERE state = ? ORDER BY host_device_id`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED))
	if err != nil {
		return nil, fmt.Errorf("session: reconcile: %w", err)
	}
	defer rows.Close()
	var out []HostReconciliation
	for rows.Next() {
		var host string
		var verified int32
		var count, acked, window int64
		if err := rows.Scan(&host, &verified, &count, &acked, &window); err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].Host != host {
			out = append(out, HostReconciliation{Host: host})
		}
		r := &out[len(out)-1]
		if verified == 0 {
			r.Unverified++
			continue
		}
		r.Verified++
		r.HostBytes += count
		r.AckedBytes += acked
		if count > acked+window {
			r.Overclaimed++
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Overclaimed > out[j].Overclaimed })
	return out, rows.Err()
}

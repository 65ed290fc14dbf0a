package session

import (
	"errors"
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/store"
)

// row is a sessions row.
type row struct {
	ID, HotspotID, Host, Guest string
	State                      sharespotv1.SessionState
	Requested, Reserved        int64
	Granted, Used              int64
	PendingTopUp               int64
	Currency, Suite            string
	GuestKeys                  []byte
	DeadlineMS                 int64
	EndReason                  string
	SettledHost, SettledFee    int64
	Refunded                   int64
	CreatedMS, UpdatedMS       int64
}

const rowCols = `id, hotspot_id, host_device_id, guest_device_id, state, requested_bytes, reserved_bytes, granted_bytes,
	used_bytes, pending_topup_bytes, currency, suite, guest_keys, deadline_ms, end_reason, settled_host_minor,
	settled_fee_minor, refunded_minor, created_ms, updated_ms`

func (s *row) insert(tx *store.Tx) error {
	_, err := tx.Exec(`INSERT INTO sessions (`+rowCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.HotspotID, s.Host, s.Guest, int32(s.State), s.Requested, s.Reserved, s.Granted, s.Used, s.PendingTopUp,
		s.Currency, s.Suite, s.GuestKeys, s.DeadlineMS, s.EndReason, s.SettledHost, s.SettledFee, s.Refunded, s.CreatedMS, s.UpdatedMS)
	if err != nil {
		return fmt.Errorf("session: insert %s: %w", s.ID, err)
	}
	return nil
}

func (s *row) save(tx *store.Tx, nowMS int64) error {
	s.UpdatedMS = nowMS
	_, err := tx.Exec(`UPDATE sessions SET state = ?, reserved_bytes = ?, granted_bytes = ?, used_bytes = ?, pending_topup_bytes = ?,
		suite = ?, deadline_ms = ?, end_reason = ?, settled_host_minor = ?, settled_fee_minor = ?, refunded_minor = ?, updated_ms = ?
		WHERE id = ?`,
		int32(s.State), s.Reserved, s.Granted, s.Used, s.PendingTopUp, s.Suite, s.DeadlineMS, s.EndReason,
		s.SettledHost, s.SettledFee, s.Refunded, s.UpdatedMS, s.ID)
	if err != nil {
		return fmt.Errorf("session: save %s: %w", s.ID, err)
	}
	return nil
}

func loadRow(tx *store.Tx, id string) (*row, error) {
	// Lock the row in a PostgreSQL write, so that a concurrent transition
	// of the same session waits here (and is retried) rather than after
	// doing its work; a read takes no lock.
	q := `SELECT ` + rowCols + ` FROM sessions WHERE id = ?` + tx.ForUpdate()
	s := new(row)
	var state int32
	err := tx.QueryRow(q, id).Scan(&s.ID, &s.HotspotID, &s.Host, &s.Guest, &state, &s.Requested, &s.Reserved, &s.Granted,
		&s.Used, &s.PendingTopUp, &s.Currency, &s.Suite, &s.GuestKeys, &s.DeadlineMS, &s.EndReason, &s.SettledHost,
		&s.SettledFee, &s.Refunded, &s.CreatedMS, &s.UpdatedMS)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("session %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("session: load %s: %w", id, err)
	}
	s.State = sharespotv1.SessionState(state)
	return s, nil
}

type role int

const (
	roleHost role = iota + 1
	roleGuest
	roleEither
)

// load reads a session for p, refusing a party that is not in it (as not
// found, so session IDs reveal nothing) or plays the wrong role in it.
func (e *Engine) load(tx *store.Tx, id string, p Party, want role) (*row, error) {
	s, err := loadRow(tx, id)
	if err != nil {
		return nil, err
	}
	isHost, isGuest := p.DeviceID == s.Host, p.DeviceID == s.Guest
	switch {
	case !isHost && !isGuest:
		return nil, problem.NotFoundf("session %s not found", id)
	case want == roleHost && !isHost:
		return nil, problem.Deniedf("only the host of session %s may do this", id)
	case want == roleGuest && !isGuest:
		return nil, problem.Deniedf("only the guest of session %s may do this", id)
	}
	return s, nil
}

// render returns the session as p may see it.
func (e *Engine) render(tx *store.Tx, s *row, p Party) (*sharespotv1.Session, error) {
	out := &sharespotv1.Session{
		Id: s.ID, HotspotId: s.HotspotID, HostDeviceId: s.Host, GuestDeviceId: s.Guest, State: s.State,
		RequestedBytes: s.Requested, GrantedBytes: s.Granted, UsedBytes: s.Used, Currency: s.Currency, Suite: s.Suite,
		DeadlineUnixMs: s.DeadlineMS, EndReason: s.EndReason, SettledHostMinor: s.SettledHost, SettledFeeMinor: s.SettledFee,
		RefundedMinor: s.Refunded, CreatedUnixMs: s.CreatedMS, UpdatedUnixMs: s.UpdatedMS,
	}
	rows, err := tx.Query(`SELECT `+quoteCols+` FROM quotes WHERE session_id = ? ORDER BY created_ms, id`, s.ID)
	if err != nil {
		return nil, fmt.Errorf("session: quotes of %s: %w", s.ID, err)
	}
	var qs []*quote
	for rows.Next() {
		q, err := scanQuote(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		qs = append(qs, q)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, q := range qs {
		if q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN && q.State != sharespotv1.QuoteState_QUOTE_STATE_EXPIRED {
			out.PaidMinor += q.Amount
		}
		var rc *sharespotv1.Receipt
		if p.DeviceID == s.Guest && q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN {
			// The guest may fetch its receipt again (after a crash).
			rc = new(sharespotv1.Receipt)
			err := tx.QueryRow(`SELECT key_id, payload, signature FROM receipts WHERE quote_id = ?`, q.ID).Scan(&rc.KeyId, &rc.Payload, &rc.Signature)
			if errors.Is(err, store.ErrNotFound) {
				rc = nil
			} else if err != nil {
				return nil, fmt.Errorf("session: receipt of %s: %w", q.ID, err)
			}
		}
		out.Quotes = append(out.Quotes, q.proto(rc))
	}
	return out, nil
}

// quote is a quotes row.
type quote struct {
	ID, SessionID string
	Kind          sharespotv1.QuoteKind
	Bytes, Amount int64
	Currency      string
	State         sharespotv1.QuoteState
	ExpiresMS     int64
	CreatedMS     int64
}

const quoteCols = `id, session_id, kind, bytes, amount_minor, currency, state, expires_ms, created_ms`

func scanQuote(sc interface{ Scan(...any) error }) (*quote, error) {
	q := new(quote)
	var kind, state int32
	if err := sc.Scan(&q.ID, &q.SessionID, &kind, &q.Bytes, &q.Amount, &q.Currency, &state, &q.ExpiresMS, &q.CreatedMS); err != nil {
		return nil, err
	}
	q.Kind, q.State = sharespotv1.QuoteKind(kind), sharespotv1.QuoteState(state)
	return q, nil
}

func loadQuote(tx *store.Tx, id string) (*quote, error) {
	q, err := scanQuote(tx.QueryRow(`SELECT `+quoteCols+` FROM quotes WHERE id = ?`, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("quote %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("session: load quote %s: %w", id, err)
	}
	return q, nil
}

func (q *quote) insert(tx *store.Tx) error {
	_, err := tx.Exec(`INSERT INTO quotes (`+quoteCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		q.ID, q.SessionID, int32(q.Kind), q.Bytes, q.Amount, q.Currency, int32(q.State), q.ExpiresMS, q.CreatedMS)
	if err != nil {
		return fmt.Errorf("session: insert quote: %w", err)
	}
	return nil
}

func (q *quote) save(tx *store.Tx) error {
	if _, err := tx.Exec(`UPDATE quotes SET state = ? WHERE id = ?`, int32(q.State), q.ID); err != nil {
		return fmt.Errorf("session: save quote %s: %w", q.ID, err)
	}
	return nil
}

func (q *quote) proto(rc *sharespotv1.Receipt) *sharespotv1.Quote {
	return &sharespotv1.Quote{Id: q.ID, SessionId: q.SessionID, Kind: q.Kind, Bytes: q.Bytes, AmountMinor: q.Amount,
		Currency: q.Currency, ExpiresUnixMs: q.ExpiresMS, State: q.State, Receipt: rc}
}

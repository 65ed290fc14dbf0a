package relay

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
)

// Handled is one inbox message as the application handled it.
type Handled struct {
	Seq     uint64
	ID      string
	Session string
	Body    string
	QuoteID string // of an AccessGranted
}

// HandledOf records env as handled.
func HandledOf(env *sharespotv1.Envelope) Handled {
	m := Handled{Seq: env.Seq, ID: env.MessageId, Session: env.SessionId, Body: fmt.Sprintf("%T", env.Body)}
	if g := env.GetAccessGranted(); g != nil {
		m.QuoteID = g.QuoteId
	}
	return m
}

// CheckDelivery checks a device's handled messages against its inbox on the
// server: sequence numbers 1..L handled once each and in order, message
// IDs unique, nothing acknowledged beyond L, and every message not yet
// acknowledged still stored, with the ID the client saw.
func CheckDelivery(tx *store.Tx, deviceID string, msgs []Handled) []error {
	var errs []error
	var next, acked int64
	if err := tx.QueryRow(`SELECT next_seq, acked_seq FROM devices WHERE id = ?`, deviceID).Scan(&next, &acked); err != nil {
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

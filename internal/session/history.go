package session

import (
	"errors"
	"fmt"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
)

// Describe fills in what a ledger transfer of wallet history was for,
// from its ID: the movement's kind, its session and hotspot, the data
// bought or billed and, for a settlement, what the bill rested on. The
// IDs are those the movements are made with: fund:, defund: and pay: in
// internal/payment, cardfund: in internal/card, refund: and settle:… here.
// A transfer of any other kind is left as it is.
func Describe(tx *store.Tx, t *sharespotv1.Transfer) error {
	kind, ref, _ := strings.Cut(t.Id, ":")
	var quoteID, sessionID string
	switch kind {
	case "fund", "defund":
	case "cardfund":
		kind = "card_fund"
	case "pay":
		quoteID = ref
	case "refund":
		kind, quoteID = "top_up_refund", ref
	case "settle":
		what, sid, _ := strings.Cut(ref, ":")
		switch what {
		case "host", "fee", "refund", "release":
			kind = "settle_" + what
		case "payout":
			kind = "payout"
		default:
			return nil
		}
		sessionID = sid
	default:
		return nil
	}
	t.Kind = kind
	if quoteID != "" {
		var qkind int32
		err := tx.QueryRow(`SELECT session_id, kind, bytes FROM quotes WHERE id = ?`, quoteID).Scan(&sessionID, &qkind, &t.Bytes)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("session: describe transfer %s: %w", t.Id, err)
		}
		if kind == "pay" && sharespotv1.QuoteKind(qkind) == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP {
			t.Kind = "top_up"
		}
	}
	if sessionID == "" {
		return nil
	}
	t.SessionId = sessionID
	var used, hostCount, acked, window, verified int64
	err := tx.QueryRow(`SELECT h.ssid, s.used_bytes, s.host_count_bytes, s.guest_acked_bytes, s.credit_window_bytes, s.verified
		FROM sessions s JOIN hotspots h ON h.id = s.hotspot_id WHERE s.id = ?`, sessionID).Scan(&t.Ssid, &used, &hostCount, &acked, &window, &verified)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("session: describe transfer %s: %w", t.Id, err)
	}
	if quoteID == "" { // a settlement: the data billed, and on what
		t.Bytes, t.HostCountBytes, t.Verified = used, hostCount, verified != 0
		if t.Verified {
			t.GuestAckedBytes, t.WindowBytes = acked, window
		}
	}
	return nil
}

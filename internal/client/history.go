package client

import (
	"fmt"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/size"
)

// HistoryLine says in words what a wallet history entry was to the
// account accountID: "+" when it brought money in, "-" when it took money
// out, and what it was for ("paid for 5 MB at Cafe (session ses_…)"),
// from the server's description of the transfer (Transfer.kind and the
// fields beside it); a transfer the server did not describe is its memo.
func HistoryLine(t *sharespotv1.Transfer, accountID string) (sign, text string) {
	mine := func(id, kind string) bool { return strings.HasPrefix(id, kind+":"+accountID+":") }
	sign, where := "-", ""
	switch {
	case mine(t.Credit, "wallet") && !mine(t.Debit, "wallet"):
		sign = "+"
	case mine(t.Credit, "card"):
		sign, where = "+", "  [card]"
	case mine(t.Debit, "card"):
		where = "  [card]"
	case mine(t.Credit, "payout"):
		where = "  [to your Stripe account]"
	}
	card := mine(t.Debit, "card") || mine(t.Credit, "card")
	at := ""
	if len(t.Ssid) > 0 {
		at = " at " + SSIDText(t.Ssid)
	}
	ses := ""
	if t.SessionId != "" {
		ses = " (session " + SafeText(t.SessionId) + ")"
	}
	data := size.Format(t.Bytes)
	switch t.Kind {
	case "fund":
		text = "wallet funded by the operator"
	case "card_fund":
		text = "wallet funded by card"
	case "pay":
		text = "paid for " + data + at + ses
		if card {
			text = "held on your card for " + data + at + ses + ": authorised, charged only for what is used"
		}
	case "top_up":
		text = "paid for " + data + " more" + at + ses
		if card {
			text = "held on your card for " + data + " more" + at + ses + ": authorised, charged only for what is used"
		}
	case "top_up_refund":
		text = "refunded: the host did not grant the " + data + " top-up" + at + ses
		if card {
			text = "released on your card: the host did not grant the " + data + " top-up" + at + ses
		}
	case "settle_host":
		text = "earned for " + data + " used" + at + billedOn(t)
	case "settle_fee":
		text = "platform fee" + ses
	case "settle_refund":
		text = "unused data refunded" + at + ": " + data + " billed" + billedOn(t)
	case "settle_release":
		text = "unused data released on your card" + at + ": " + data + " billed" + billedOn(t)
	case "payout":
		text = "your share" + at + ses + " transferred to your Stripe account"
		where = ""
	default:
		text = SafeText(t.Memo)
	}
	return sign, text + where
}

// billedOn is a settlement's session and what its bill rested on: the
// host's count, and the guest's acknowledged count and the credit window
// when verified.
func billedOn(t *sharespotv1.Transfer) string {
	if !t.Verified {
		return fmt.Sprintf(" (session %s; on the host's count, %s, unverified)", SafeText(t.SessionId), size.Format(t.HostCountBytes))
	}
	d := size.Format(t.HostCountBytes - t.GuestAckedBytes)
	if t.HostCountBytes >= t.GuestAckedBytes {
		d = "+" + d
	}
	return fmt.Sprintf(" (session %s; host counted %s, guest acknowledged %s + window %s; difference %s)",
		SafeText(t.SessionId), size.Format(t.HostCountBytes), size.Format(t.GuestAckedBytes), size.Format(t.WindowBytes), d)
}

package session

import (
	"fmt"

	"github.com/sharespot/sharespot/internal/protocol"
)

// The bill. The bytes billed are the host's count, within what was granted;
// in a verified session (the guest chose it at its request: evidence.go)
// at most the guest's last signed count plus the credit window:
// min(host count, acknowledged + window), where the window is
// max(1 MB, 2 % of everything granted) — one rule with the gateways, which
// hold a verified guest to the same bound from its first byte. An
// unverified session is billed on the host's count, at most what was
// bought. Each granted quote is a tranche with its own bytes and price.
// The bytes billed are consumed tranche by tranche in grant order; tranche
// i is billed
//
//	billed_i = amount_i × used_i ÷ bytes_i, rounded down to the minor unit
//
// (a tranche used whole is billed its amount exactly). The guest is charged
// Σ billed_i; the platform's fee is FeeBPS of that, rounded down; the host
// gets the charge less the fee; everything else in escrow (unused tranches,
// payments never granted) goes back to the guest: to the card for what a
// card hold paid, to the wallet for the rest.
//
// NewBill computes all that from figures alone; finish (settle.go) reads
// them, moves the money and records the outcome.

// Payment is one of a session's quotes as the bill sees it.
type Payment struct {
	// Bytes and Amount: the volume and its price.
	Bytes, Amount int64
	// Granted: the quote is a tranche. Granted payments are consumed in
	// the order given (grant order).
	Granted bool
	// Refunded: refunded before the end (a top-up whose grant timed out),
	// so no longer in escrow.
	Refunded bool
	// Card: paid by a card hold not yet settled. Its billed part is
	// captured, the rest released on the card rather than refunded to the
	// wallet.
	Card bool
}

// Usage is the evidence the bill rests on.
type Usage struct {
	// HostCount is the host's count of the bytes used.
	HostCount int64
	// Granted is the volume granted (the tranches' bytes); the host's
	// count is held within 0..Granted.
	Granted int64
	// Verified: the session's mode is verified, so the bill is at most
	// Acked + Window.
	Verified bool
	// Acked is the guest's last signed count of bytes received (0: none).
	Acked int64
	// Window is the credit window beyond Acked (protocol.Window of
	// Granted).
	Window int64
}

// BillInput is what a session's bill is computed from.
type BillInput struct {
	// Payments are the session's quotes, granted ones in grant order.
	Payments []Payment
	Usage    Usage
	// Held is what the session's escrow holds: every payment not refunded.
	Held int64
	// FeeBPS is the platform's fee in basis points of the charge.
	FeeBPS int64
}

// Billed is one payment's part of a bill: the bytes of it used and what
// they cost (both 0 for a payment not granted).
type Billed struct {
	Used, Amount int64
}

// Bill is a session's settlement in figures.
type Bill struct {
	// HostCount is the host's count held within 0..Granted; Verified says
	// the session is verified, so Used is at most Acked + Window.
	HostCount int64
	Verified  bool
	// Used is the bytes billed.
	Used int64
	// Payments is, for each input payment in order, its used bytes and
	// billed amount.
	Payments []Billed
	// Charged is what the guest pays (Σ billed), Fee the platform's part
	// of it, Host the rest.
	Charged, Fee, Host int64
	// Refund is the escrow not charged, which goes back to the guest;
	// Released is the part of it that card holds paid (released on the
	// card, not captured), Refund − Released goes to the wallet.
	Refund, Released int64
	// CardCharged is the part of Charged that card holds paid (captured).
	CardCharged int64
	// RefundedBefore is what was refunded before the end (top-ups never
	// granted).
	RefundedBefore int64
}

// ToWallet is the part of the refund that goes to the guest's wallet.
func (b Bill) ToWallet() int64 { return b.Refund - b.Released }

// Payout is the host's share of what cards paid: what may go on to the
// host's Stripe account rather than stay in its wallet.
func (b Bill) Payout() int64 { return min(b.Host, b.CardCharged) }

// NewBill computes a session's bill. It fails only on figures no session
// can have: a charge above what escrow holds, or amounts that overflow.
func NewBill(in BillInput) (Bill, error) {
	u := in.Usage
	b := Bill{HostCount: min(max(u.HostCount, 0), u.Granted), Verified: u.Verified}
	b.Used = b.HostCount
	if b.Verified {
		b.Used = min(b.Used, u.Acked+u.Window)
	}
	b.Payments = make([]Billed, len(in.Payments))
	rest := b.Used
	for i, p := range in.Payments {
		switch {
		case p.Granted:
			used := min(max(rest, 0), p.Bytes)
			rest -= used
			b.Payments[i].Used = used
			if used > 0 {
				billed, err := protocol.MulDiv(p.Amount, used, p.Bytes, false)
				if err != nil {
					return Bill{}, err
				}
				b.Payments[i].Amount = billed
				b.Charged += billed
			}
		case p.Refunded:
			b.RefundedBefore += p.Amount
		}
		if p.Card {
			b.Released += p.Amount - b.Payments[i].Amount
			b.CardCharged += b.Payments[i].Amount
		}
	}
	if b.Charged > in.Held {
		// Never: escrow holds every granted tranche's amount.
		return Bill{}, fmt.Errorf("charge %d exceeds the %d held in escrow", b.Charged, in.Held)
	}
	fee, err := protocol.MulDiv(b.Charged, in.FeeBPS, 10000, false)
	if err != nil {
		return Bill{}, fmt.Errorf("fee: %w", err)
	}
	b.Fee, b.Host, b.Refund = fee, b.Charged-fee, in.Held-b.Charged
	return b, nil
}

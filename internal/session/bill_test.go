package session

import (
	"math"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// granted, paid, refunded and card build the payments of the tests.
func granted(bytes, amount int64) Payment {
	return Payment{Bytes: bytes, Amount: amount, Granted: true}
}
func paid(bytes, amount int64) Payment { return Payment{Bytes: bytes, Amount: amount} }
func refunded(bytes, amount int64) Payment {
	return Payment{Bytes: bytes, Amount: amount, Refunded: true}
}
func card(p Payment) Payment { p.Card = true; return p }

func TestNewBill(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   BillInput
		want Bill
	}{
		{
			name: "zero use refunds everything",
			in:   BillInput{Payments: []Payment{granted(1000, 100)}, Usage: Usage{HostCount: 0, Granted: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{Payments: []Billed{{0, 0}}, Refund: 100},
		},
		{
			name: "a tranche used whole is billed its amount exactly",
			in:   BillInput{Payments: []Payment{granted(3, 100)}, Usage: Usage{HostCount: 3, Granted: 3}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 3, Used: 3, Payments: []Billed{{3, 100}}, Charged: 100, Fee: 5, Host: 95},
		},
		{
			name: "a tranche's bill is rounded down",
			in:   BillInput{Payments: []Payment{granted(3, 100)}, Usage: Usage{HostCount: 2, Granted: 3}, Held: 100, FeeBPS: 500},
			// 100 × 2 ÷ 3 = 66.67; the fee 66 × 5 % = 3.3
			want: Bill{HostCount: 2, Used: 2, Payments: []Billed{{2, 66}}, Charged: 66, Fee: 3, Host: 63, Refund: 34},
		},
		{
			name: "one byte of a tranche priced below a minor unit per byte costs nothing",
			in:   BillInput{Payments: []Payment{granted(1_000_000, 10)}, Usage: Usage{HostCount: 99_999, Granted: 1_000_000}, Held: 10, FeeBPS: 500},
			want: Bill{HostCount: 99_999, Used: 99_999, Payments: []Billed{{99_999, 0}}, Refund: 10},
		},
		{
			name: "a tranche used whole is exact, the one used in part rounded down",
			in:   BillInput{Payments: []Payment{granted(3, 2), granted(3, 2)}, Usage: Usage{HostCount: 5, Granted: 6}, Held: 4, FeeBPS: 0},
			// 2 + 2 × 2 ÷ 3 = 2 + 1.33
			want: Bill{HostCount: 5, Used: 5, Payments: []Billed{{3, 2}, {2, 1}}, Charged: 3, Host: 3, Refund: 1},
		},
		{
			name: "tranches at different prices are consumed in grant order",
			in: BillInput{Payments: []Payment{granted(1000, 10), granted(1000, 12), granted(1000, 30)},
				Usage: Usage{HostCount: 1500, Granted: 3000}, Held: 52, FeeBPS: 500},
			want: Bill{HostCount: 1500, Used: 1500, Payments: []Billed{{1000, 10}, {500, 6}, {0, 0}}, Charged: 16, Fee: 0, Host: 16, Refund: 36},
		},
		{
			name: "the order given is the grant order, whatever the prices",
			in: BillInput{Payments: []Payment{granted(1000, 30), granted(1000, 10)},
				Usage: Usage{HostCount: 1000, Granted: 2000}, Held: 40, FeeBPS: 500},
			want: Bill{HostCount: 1000, Used: 1000, Payments: []Billed{{1000, 30}, {0, 0}}, Charged: 30, Fee: 1, Host: 29, Refund: 10},
		},
		{
			name: "the fee is rounded down",
			in:   BillInput{Payments: []Payment{granted(199, 199)}, Usage: Usage{HostCount: 199, Granted: 199}, Held: 199, FeeBPS: 100},
			// 199 × 1 % = 1.99
			want: Bill{HostCount: 199, Used: 199, Payments: []Billed{{199, 199}}, Charged: 199, Fee: 1, Host: 198},
		},
		{
			name: "no fee",
			in:   BillInput{Payments: []Payment{granted(100, 50)}, Usage: Usage{HostCount: 100, Granted: 100}, Held: 50},
			want: Bill{HostCount: 100, Used: 100, Payments: []Billed{{100, 50}}, Charged: 50, Host: 50},
		},
		{
			name: "use beyond what was granted is clamped",
			in:   BillInput{Payments: []Payment{granted(1000, 10), granted(1000, 12)}, Usage: Usage{HostCount: 5000, Granted: 2000}, Held: 22, FeeBPS: 500},
			want: Bill{HostCount: 2000, Used: 2000, Payments: []Billed{{1000, 10}, {1000, 12}}, Charged: 22, Fee: 1, Host: 21},
		},
		{
			name: "a negative count is none",
			in:   BillInput{Payments: []Payment{granted(1000, 10)}, Usage: Usage{HostCount: -5, Granted: 1000}, Held: 10, FeeBPS: 500},
			want: Bill{Payments: []Billed{{0, 0}}, Refund: 10},
		},
		{
			name: "nothing granted: everything paid goes back",
			in:   BillInput{Payments: []Payment{paid(1000, 10)}, Usage: Usage{HostCount: 0}, Held: 10, FeeBPS: 500},
			want: Bill{Payments: []Billed{{0, 0}}, Refund: 10},
		},
		{
			name: "a verified session is billed at most the acknowledgment plus the window",
			in:   BillInput{Payments: []Payment{granted(10_000, 100)}, Usage: Usage{Verified: true, HostCount: 5000, Granted: 10_000, Acked: 3000, Window: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 5000, Verified: true, Used: 4000, Payments: []Billed{{4000, 40}}, Charged: 40, Fee: 2, Host: 38, Refund: 60},
		},
		{
			name: "a verified session's host count below acknowledgment plus window is billed",
			in:   BillInput{Payments: []Payment{granted(10_000, 100)}, Usage: Usage{Verified: true, HostCount: 3500, Granted: 10_000, Acked: 3000, Window: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 3500, Verified: true, Used: 3500, Payments: []Billed{{3500, 35}}, Charged: 35, Fee: 1, Host: 34, Refund: 65},
		},
		{
			name: "the window caps after the grant clamp",
			in:   BillInput{Payments: []Payment{granted(1000, 100)}, Usage: Usage{Verified: true, HostCount: 9000, Granted: 1000, Acked: 900, Window: 500}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 1000, Verified: true, Used: 1000, Payments: []Billed{{1000, 100}}, Charged: 100, Fee: 5, Host: 95},
		},
		{
			name: "an unverified session: the window does not count",
			in:   BillInput{Payments: []Payment{granted(10_000, 100)}, Usage: Usage{HostCount: 5000, Granted: 10_000, Window: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 5000, Used: 5000, Payments: []Billed{{5000, 50}}, Charged: 50, Fee: 2, Host: 48, Refund: 50},
		},
		{
			name: "an unverified session: an acknowledgment does not count either",
			in:   BillInput{Payments: []Payment{granted(10_000, 100)}, Usage: Usage{HostCount: 5000, Granted: 10_000, Acked: 1, Window: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 5000, Used: 5000, Payments: []Billed{{5000, 50}}, Charged: 50, Fee: 2, Host: 48, Refund: 50},
		},
		{
			name: "a verified session never acknowledged is billed at most the window",
			in:   BillInput{Payments: []Payment{granted(10_000, 100)}, Usage: Usage{Verified: true, HostCount: 5000, Granted: 10_000, Window: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 5000, Verified: true, Used: 1000, Payments: []Billed{{1000, 10}}, Charged: 10, Host: 10, Refund: 90},
		},
		{
			name: "a top-up paid and never granted is refunded whole",
			in: BillInput{Payments: []Payment{paid(500, 6), granted(1000, 10)},
				Usage: Usage{HostCount: 1000, Granted: 1000}, Held: 16, FeeBPS: 500},
			want: Bill{HostCount: 1000, Used: 1000, Payments: []Billed{{0, 0}, {1000, 10}}, Charged: 10, Host: 10, Refund: 6},
		},
		{
			name: "a top-up refunded before the end is counted, not in escrow",
			in: BillInput{Payments: []Payment{refunded(500, 6), granted(1000, 10)},
				Usage: Usage{HostCount: 400, Granted: 1000}, Held: 10, FeeBPS: 500},
			want: Bill{HostCount: 400, Used: 400, Payments: []Billed{{0, 0}, {400, 4}}, Charged: 4, Host: 4, Refund: 6, RefundedBefore: 6},
		},
		{
			name: "a card hold: the billed part is captured, the rest released on the card",
			in:   BillInput{Payments: []Payment{card(granted(1000, 100))}, Usage: Usage{HostCount: 250, Granted: 1000}, Held: 100, FeeBPS: 500},
			want: Bill{HostCount: 250, Used: 250, Payments: []Billed{{250, 25}}, Charged: 25, Fee: 1, Host: 24, Refund: 75, Released: 75, CardCharged: 25},
		},
		{
			name: "a card hold never granted is released whole",
			in: BillInput{Payments: []Payment{card(paid(500, 60)), granted(1000, 100)},
				Usage: Usage{HostCount: 1000, Granted: 1000}, Held: 160, FeeBPS: 500},
			want: Bill{HostCount: 1000, Used: 1000, Payments: []Billed{{0, 0}, {1000, 100}}, Charged: 100, Fee: 5, Host: 95, Refund: 60, Released: 60},
		},
		{
			name: "wallet and card tranches: each goes back where it came from",
			in: BillInput{Payments: []Payment{granted(1000, 100), card(granted(1000, 120))},
				Usage: Usage{HostCount: 1500, Granted: 2000}, Held: 220, FeeBPS: 500},
			want: Bill{HostCount: 1500, Used: 1500, Payments: []Billed{{1000, 100}, {500, 60}}, Charged: 160, Fee: 8, Host: 152,
				Refund: 60, Released: 60, CardCharged: 60},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NewBill(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("bill (-want +got):\n%s", d)
			}
		})
	}
}

func TestBillShares(t *testing.T) {
	for _, tc := range []struct {
		name             string
		bill             Bill
		toWallet, payout int64
	}{
		{"wallet only", Bill{Charged: 100, Fee: 5, Host: 95, Refund: 20}, 20, 0},
		{"card only: the host's share goes on, the fee stays", Bill{Charged: 100, Fee: 5, Host: 95, Refund: 20, Released: 20, CardCharged: 100}, 0, 95},
		{"card part below the host's share", Bill{Charged: 100, Fee: 5, Host: 95, Refund: 20, Released: 5, CardCharged: 30}, 15, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if w, p := tc.bill.ToWallet(), tc.bill.Payout(); w != tc.toWallet || p != tc.payout {
				t.Errorf("to wallet %d, payout %d; want %d, %d", w, p, tc.toWallet, tc.payout)
			}
		})
	}
}

func TestNewBillRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   BillInput
		want string
	}{
		{"a charge above what escrow holds", BillInput{Payments: []Payment{granted(100, 50)}, Usage: Usage{HostCount: 100, Granted: 100}, Held: 49},
			"charge 50 exceeds the 49 held in escrow"},
		{"a negative fee", BillInput{Payments: []Payment{granted(100, 50)}, Usage: Usage{HostCount: 100, Granted: 100}, Held: 50, FeeBPS: -1},
			"fee: "},
		{"a fee that overflows", BillInput{Payments: []Payment{granted(100, 20_000)}, Usage: Usage{HostCount: 100, Granted: 100}, Held: 20_000, FeeBPS: math.MaxInt64},
			"overflows"},
		{"a negative amount", BillInput{Payments: []Payment{granted(100, -50)}, Usage: Usage{HostCount: 100, Granted: 100}, Held: 50},
			"negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBill(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewBill = %+v, %v; want an error with %q", b, err, tc.want)
			}
		})
	}
}

// TestNewBillRules checks random bills against the rules computed apart,
// with big integers: each granted tranche consumed in order and billed
// amount × used ÷ bytes rounded down, the fee rounded down, and every
// minor unit held accounted for.
func TestNewBillRules(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	floor := func(a, b, c int64) int64 {
		return new(big.Int).Quo(new(big.Int).Mul(big.NewInt(a), big.NewInt(b)), big.NewInt(c)).Int64()
	}
	for i := range 2000 {
		var in BillInput
		var granted int64
		for range r.IntN(5) {
			p := Payment{Bytes: 1 + r.Int64N(1<<30), Amount: r.Int64N(1 << 20), Card: r.IntN(3) == 0}
			switch r.IntN(4) {
			case 0:
				// Refunded before the end: its hold, if any, was released
				// then (expireTopUp), so no card hold is left on it.
				p.Refunded, p.Card = true, false
			case 1:
			default:
				p.Granted = true
				granted += p.Bytes
			}
			if !p.Refunded {
				in.Held += p.Amount
			}
			in.Payments = append(in.Payments, p)
		}
		in.Usage = Usage{HostCount: r.Int64N(granted+2) - 1, Granted: granted}
		// Verified or not, with or without an acknowledgment (an
		// unverified session's is ignored; a verified session with none
		// is billed at most the window).
		in.Usage.Verified = r.IntN(2) == 0
		if r.IntN(2) == 0 {
			in.Usage.Acked = r.Int64N(granted + 1)
		}
		in.Usage.Window = r.Int64N(1 << 20)
		in.FeeBPS = r.Int64N(10_001)
		b, err := NewBill(in)
		if err != nil {
			t.Fatalf("#%d %+v: %v", i, in, err)
		}
		want := min(max(in.Usage.HostCount, 0), granted)
		if in.Usage.Verified {
			want = min(want, in.Usage.Acked+in.Usage.Window)
		}
		rest := want
		var charged, released, cardCharged, before int64
		for j, p := range in.Payments {
			var w Billed
			if p.Granted {
				w.Used = min(rest, p.Bytes)
				rest -= w.Used
				w.Amount = floor(p.Amount, w.Used, p.Bytes)
			}
			if p.Refunded {
				before += p.Amount
			}
			if p.Card {
				released += p.Amount - w.Amount
				cardCharged += w.Amount
			}
			charged += w.Amount
			if b.Payments[j] != w {
				t.Fatalf("#%d %+v: payment %d billed %+v, want %+v", i, in, j, b.Payments[j], w)
			}
		}
		fee := floor(charged, in.FeeBPS, 10_000)
		if b.Used != want || b.Charged != charged || b.Fee != fee || b.Host+b.Fee != b.Charged || b.Refund != in.Held-charged ||
			b.Released != released || b.CardCharged != cardCharged || b.RefundedBefore != before || b.ToWallet() < 0 {
			t.Fatalf("#%d %+v:\n got %+v\nwant used %d charged %d fee %d released %d card %d before %d", i, in, b, want, charged, fee, released, cardCharged, before)
		}
	}
}

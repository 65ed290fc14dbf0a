package protocol

import (
	"fmt"
	"math"
	"math/bits"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// Price returns what bytes cost at priceMinor per unitBytes, rounded up to
// the next minor unit, or an error if it overflows.
func Price(bytes, priceMinor, unitBytes int64) (int64, error) {
	if bytes < 0 || priceMinor < 0 || unitBytes <= 0 {
		return 0, fmt.Errorf("protocol: price of %d bytes at %d per %d: bad input", bytes, priceMinor, unitBytes)
	}
	return MulDiv(bytes, priceMinor, unitBytes, true)
}

// TariffPrice is what bytes cost at t: its first-purchase price, or its
// top-up price.
func TariffPrice(t *sharespotv1.Tariff, bytes int64, topUp bool) (int64, error) {
	unit := t.GetPriceMinor()
	if topUp {
		unit = t.GetTopupPriceMinor()
	}
	return Price(bytes, unit, t.GetUnitBytes())
}

// MulDiv returns a*b/c without intermediate overflow, rounded up or down,
// for non-negative a, b and positive c.
func MulDiv(a, b, c int64, roundUp bool) (int64, error) {
	if a < 0 || b < 0 || c <= 0 {
		return 0, fmt.Errorf("protocol: %d*%d/%d: negative input", a, b, c)
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi >= uint64(c) {
		return 0, fmt.Errorf("protocol: %d*%d/%d overflows", a, b, c)
	}
	q, r := bits.Div64(hi, lo, uint64(c))
	if r != 0 && roundUp {
		q++
	}
	if q > math.MaxInt64 {
		return 0, fmt.Errorf("protocol: %d*%d/%d overflows", a, b, c)
	}
	return int64(q), nil
}

// PromptLevel is the remaining volume below which a session bought with a
// first purchase of bought bytes is prompted to top up, on a hotspot whose
// warning level is warn: the warning level, but never more than half of
// the purchase, so that a purchase at or below the warning level is not
// prompted at once and a guest that tops up at each prompt holds at most
// one tranche and the unused half of another. 0 (no prompt) stays 0.
func PromptLevel(warn, bought int64) int64 {
	if warn <= 0 {
		return 0
	}
	return max(min(warn, bought/2), 1)
}

// Package money formats amounts, which Sharespot keeps as integer counts
// of a currency's minor unit.
package money

import (
	"fmt"
	"strconv"
	"strings"
)

// minorDigits gives the minor-unit exponent (ISO 4217) of currencies that
// do not use 2.
var minorDigits = map[string]int{"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0, "XAF": 0, "XOF": 0,
	"BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3}

// symbols are the signs written before the amount for currencies whose
// sign is read one way only. Any other currency is written with its ISO
// code after the amount ("12.34 CHF"), which nobody misreads: "$" alone
// would say nothing about CAD or AUD, "¥" nothing about CNY.
var symbols = map[string]string{"EUR": "€", "GBP": "£", "USD": "$", "JPY": "¥", "INR": "₹", "KRW": "₩"}

// Digits is the number of minor-unit digits of currency (2 when unknown).
func Digits(currency string) int {
	if d, ok := minorDigits[currency]; ok {
		return d
	}
	return 2
}

// Format formats minor units in the currency's usual form: 1234 EUR is
// "€12.34", 1234 JPY is "¥1234" (the yen has no minor unit), 1234 KWD is
// "1.234 KWD", -2000 EUR is "-€20.00".
func Format(minor int64, currency string) string {
	d := Digits(currency)
	neg := minor < 0
	// The magnitude, as an unsigned value so the most negative int64 has one.
	mag := uint64(minor)
	if neg {
		mag = -mag
	}
	s := strconv.FormatUint(mag, 10)
	if d > 0 {
		for len(s) <= d {
			s = "0" + s
		}
		s = s[:len(s)-d] + "." + s[len(s)-d:]
	}
	sign := ""
	if neg {
		sign = "-"
	}
	if sym, ok := symbols[currency]; ok {
		return sign + sym + s
	}
	return sign + s + " " + currency
}

// Parse reads an amount of currency as people write it, in major units:
// "5", "5.50", "€5.50", "5.50 EUR", "¥1234", "1.234 KWD"; it returns the
// count of minor units. More fraction digits than the currency has, a
// sign, or another currency's symbol or code are refused.
func Parse(s, currency string) (int64, error) {
	t := strings.TrimSpace(s)
	if sym, ok := symbols[currency]; ok {
		t = strings.TrimSpace(strings.TrimPrefix(t, sym))
	}
	t = strings.TrimSpace(strings.TrimSuffix(t, currency))
	t = strings.TrimSpace(strings.TrimSuffix(t, strings.ToLower(currency)))
	whole, frac, hasFrac := strings.Cut(t, ".")
	d := Digits(currency)
	bad := func(why string) (int64, error) {
		return 0, fmt.Errorf("amount %q: %s; write it like %s", s, why, Format(int64(1050*pow10(d)/100), currency))
	}
	if whole == "" || strings.Trim(whole, "0123456789") != "" || (hasFrac && (frac == "" || strings.Trim(frac, "0123456789") != "")) {
		return bad("not an amount in " + currency)
	}
	if len(frac) > d {
		return bad(fmt.Sprintf("%s has %d digits after the point", currency, d))
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > (1<<53)/pow10(d) {
		return bad("too large")
	}
	f := int64(0)
	if frac != "" {
		f, _ = strconv.ParseInt(frac+strings.Repeat("0", d-len(frac)), 10, 64)
	}
	return w*pow10(d) + f, nil
}

func pow10(n int) int64 {
	p := int64(1)
	for range n {
		p *= 10
	}
	return p
}

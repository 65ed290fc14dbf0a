// Package money formats amounts, which Sharespot keeps as integer counts
// of a currency's minor unit.
package money

import "strconv"

// minorDigits gives the minor-unit exponent of currencies that do not use 2.
var minorDigits = map[string]int{"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0, "XAF": 0, "XOF": 0,
	"BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3}

// Format formats minor units in the currency's usual form: 1234 EUR
// is "12.34 EUR".
func Format(minor int64, currency string) string {
	d, ok := minorDigits[currency]
	if !ok {
		d = 2
	}
	neg := minor < 0
	if neg {
		minor = -minor
	}
	s := strconv.FormatInt(minor, 10)
	if d > 0 {
		for len(s) <= d {
			s = "0" + s
		}
		s = s[:len(s)-d] + "." + s[len(s)-d:]
	}
	if neg {
		s = "-" + s
	}
	return s + " " + currency
}

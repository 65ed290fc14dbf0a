package money

import (
	"math"
	"testing"
)

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		minor int64
		cur   string
		want  string
	}{
		{120, "EUR", "€1.20"},
		{1234, "EUR", "€12.34"},
		{5, "EUR", "€0.05"},
		{0, "EUR", "€0.00"},
		{0, "USD", "$0.00"},
		{-2000, "EUR", "-€20.00"},
		{199, "GBP", "£1.99"},
		{1234, "JPY", "¥1234"}, // no minor unit
		{0, "JPY", "¥0"},
		{1234, "KRW", "₩1234"},
		{1234, "KWD", "1.234 KWD"}, // three minor digits, code after the amount
		{7, "BHD", "0.007 BHD"},
		{1234, "CHF", "12.34 CHF"},
		{-5, "CHF", "-0.05 CHF"},
		{math.MinInt64, "CHF", "-92233720368547758.08 CHF"},
		{math.MaxInt64, "EUR", "€92233720368547758.07"},
	} {
		t.Run(tt.cur+"/"+tt.want, func(t *testing.T) {
			if got := Format(tt.minor, tt.cur); got != tt.want {
				t.Errorf("Format(%d, %s) = %q, want %q", tt.minor, tt.cur, got, tt.want)
			}
		})
	}
}

func TestDigits(t *testing.T) {
	for cur, want := range map[string]int{"EUR": 2, "JPY": 0, "KWD": 3, "XYZ": 2} {
		t.Run(cur, func(t *testing.T) {
			if got := Digits(cur); got != want {
				t.Errorf("Digits(%s) = %d, want %d", cur, got, want)
			}
		})
	}
}

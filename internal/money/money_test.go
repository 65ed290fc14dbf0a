package money

import "testing"

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		minor int64
		cur   string
		want  string
	}{
		{1234, "EUR", "12.34 EUR"}, {5, "EUR", "0.05 EUR"}, {0, "USD", "0.00 USD"}, {-2000, "EUR", "-20.00 EUR"},
		{1234, "JPY", "1234 JPY"}, {1234, "KWD", "1.234 KWD"},
	} {
		if got := Format(tt.minor, tt.cur); got != tt.want {
			t.Errorf("Format(%d, %s) = %q, want %q", tt.minor, tt.cur, got, tt.want)
		}
	}
}

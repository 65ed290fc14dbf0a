package money

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, cur string
		want    int64
	}{
		{"5", "EUR", 500}, {"5.5", "EUR", 550}, {"5.50", "EUR", 550}, {"€5.50", "EUR", 550}, {"5.50 EUR", "EUR", 550},
		{" € 12.34 ", "EUR", 1234}, {"0.01", "EUR", 1}, {"¥1234", "JPY", 1234}, {"1.234 KWD", "KWD", 1234}, {"7 chf", "CHF", 700},
	} {
		if got, err := Parse(tc.in, tc.cur); err != nil || got != tc.want {
			t.Errorf("Parse(%q, %s) = %d, %v; want %d", tc.in, tc.cur, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, cur string }{
		{"", "EUR"}, {"-5", "EUR"}, {"5.555", "EUR"}, {"1.5", "JPY"}, {"$5", "EUR"}, {"5 USD", "EUR"}, {"5.", "EUR"}, {"abc", "EUR"},
		{"99999999999999999999", "EUR"}, {"1e3", "EUR"},
	} {
		if got, err := Parse(tc.in, tc.cur); err == nil {
			t.Errorf("Parse(%q, %s) = %d, accepted", tc.in, tc.cur, got)
		}
	}
	if Format(mustParse(t, "12.34", "EUR"), "EUR") != "€12.34" {
		t.Error("Parse and Format disagree")
	}
}

func mustParse(t *testing.T, s, cur string) int64 {
	n, err := Parse(s, cur)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

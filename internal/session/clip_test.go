package session

import (
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"done", "done"},
		{"\x1b]0;owned\a\x1b[2Jbye", "]0;owned[2Jbye"},
		{"caf\xc3\xa9\xff ok", "café ok"},
		{"\u009b31m red", "31m red"},
		{"ééééé", "éé"}, // 5 bytes max: no rune cut in half
	} {
		n := 200
		if tc.in == "ééééé" {
			n = 5
		}
		got := clip(tc.in, n)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("clip(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

package client

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// SafeText makes text from the other party (an end or decline reason, an
// SSID, a hotspot's name, a server's message) safe to print on a
// terminal: control characters (C0, DEL, C1, among them ESC, which starts
// the sequences that retitle a window or clear the screen) and the
// bidirectional overrides and isolates (which make text read other than it
// is stored) are written as Go escapes (\x1b, \n, \u009b, \u202e), and each
// byte of invalid UTF-8 as \xNN. Everything else, ordinary Unicode
// included, is kept as it is; a backslash is not escaped, so the result is
// for people to read, not to parse back.
func SafeText(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, escaped) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case escaped(r):
			b.WriteString(escape(r))
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// escaped reports a rune SafeText does not print as it is.
func escaped(r rune) bool { return unicode.IsControl(r) || isBidiControl(r) }

// isBidiControl reports the bidirectional embeddings, overrides and
// isolates (U+202A–U+202E, U+2066–U+2069).
func isBidiControl(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

func escape(r rune) string {
	switch r {
	case '\a':
		return `\a`
	case '\b':
		return `\b`
	case '\f':
		return `\f`
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	case '\v':
		return `\v`
	}
	if r < 0x80 {
		return fmt.Sprintf(`\x%02x`, r)
	}
	return fmt.Sprintf(`\u%04x`, r)
}

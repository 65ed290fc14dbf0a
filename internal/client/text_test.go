package client

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// unsafeRune reports a rune that must not reach a terminal as it is.
func unsafeRune(r rune) bool { return unicode.IsControl(r) || isBidiControl(r) }

// checkSafe fails t if s could steer a terminal.
func checkSafe(t *testing.T, in, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Fatalf("SafeText(%q) = %q: invalid UTF-8", in, s)
	}
	if i := strings.IndexFunc(s, unsafeRune); i >= 0 {
		t.Fatalf("SafeText(%q) = %q: control character at %d", in, s, i)
	}
}

func TestSafeText(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "declined by host: busy", "declined by host: busy"},
		{"empty", "", ""},
		{"ordinary unicode", "Café ☕ 東京 Ωmega — ok", "Café ☕ 東京 Ωmega — ok"},
		{"emoji and combining", "e\u0301 👍🏽", "e\u0301 👍🏽"},
		{"title and clear", "\x1b]0;pwned\a\x1b[2J", `\x1b]0;pwned\a\x1b[2J`},
		{"newline and tab", "a\nb\tc\r", `a\nb\tc\r`},
		{"NUL and DEL", "a\x00b\x7f", `a\x00b\x7f`},
		{"C1 CSI and OSC", "x\u009b2Jy\u009d0;t\u009c", `x\u009b2Jy\u009d0;t\u009c`},
		{"invalid UTF-8", "ok\xff\xfe\xc3", `ok\xff\xfe\xc3`},
		{"C1 as raw bytes", "\x9b2J", `\x9b2J`},
		{"bidi override", "abc\u202Etxt.exe", `abc\u202etxt.exe`},
		{"bidi isolate", "\u2066x\u2069", `\u2066x\u2069`},
		{"backslash kept", `C:\path`, `C:\path`},
		{"replacement character kept", "a\uFFFDb", "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SafeText(tt.in)
			if got != tt.want {
				t.Errorf("SafeText(%q) = %q, want %q", tt.in, got, tt.want)
			}
			checkSafe(t, tt.in, got)
		})
	}
}

func FuzzSafeText(f *testing.F) {
	for _, s := range []string{"", "plain", "\x1b]0;t\a\x1b[2J", "\u009b", "\xff", "Café", "\u202e", "a\r\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := SafeText(in)
		checkSafe(t, in, out)
		// Text that was safe already is shown as it is.
		if utf8.ValidString(in) && !strings.ContainsFunc(in, unsafeRune) && out != in {
			t.Fatalf("SafeText(%q) = %q: changed safe text", in, out)
		}
	})
}

func TestSSIDText(t *testing.T) {
	tests := []struct {
		in   []byte
		want string
	}{
		{[]byte("Cafe"), "Cafe"},
		{[]byte("Café ☕"), "Café ☕"},
		{[]byte("\x1b[2J"), "0x1b5b324a"},
		{[]byte("x\u009by"), "0x78c29b79"}, // C1 CSI in UTF-8
		{[]byte{0xff, 0x00}, "0xff00"},
		{[]byte("a\u202eb"), "0x61e280ae62"},
	}
	for _, tt := range tests {
		if got := SSIDText(tt.in); got != tt.want {
			t.Errorf("SSIDText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// The reason in a decline or an end comes from the other party: the error
// that reaches the person's terminal has no control characters in it.
func TestAwaitErrorsAreSafe(t *testing.T) {
	evil := "\x1b]0;pwned\a\x1b[2J\u009b31m"
	for _, e := range []*sharespotv1.Envelope{
		{Body: &sharespotv1.Envelope_Declined{Declined: &sharespotv1.Declined{Reason: evil}}},
		{Body: &sharespotv1.Envelope_SessionEnded{SessionEnded: &sharespotv1.SessionEnded{Session: &sharespotv1.Session{EndReason: evil}}}},
	} {
		inbox := make(chan *sharespotv1.Envelope, 1)
		inbox <- e
		_, err := Await(context.Background(), inbox, time.Second, func(*sharespotv1.Envelope) bool { return false })
		if err == nil {
			t.Fatal("Await returned no error")
		}
		checkSafe(t, evil, err.Error())
		if !strings.Contains(err.Error(), `\x1b]0;pwned`) {
			t.Errorf("error %q does not show the reason escaped", err)
		}
	}
}

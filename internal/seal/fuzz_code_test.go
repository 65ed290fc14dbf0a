package seal

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseCode feeds access codes as a person types them: ParseCode must
// never panic, and what it accepts must be exactly AccessCodeSize bytes
// whose canonical form is the input (ignoring space and case).
func FuzzParseCode(f *testing.F) {
	code, err := NewAccessCode()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{FormatCode(code), " " + strings.ToUpper(FormatCode(code)) + "\n", "", "0000", FormatCode(code)[1:] + "!"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		code, err := ParseCode(s)
		if err != nil {
			return
		}
		if len(code) != AccessCodeSize {
			t.Fatalf("ParseCode(%q) gave %d bytes", s, len(code))
		}
		if FormatCode(code) != strings.ToLower(strings.TrimSpace(s)) {
			t.Fatalf("ParseCode(%q) accepted a non-canonical form of %q", s, FormatCode(code))
		}
		again, err := ParseCode(FormatCode(code))
		if err != nil || !bytes.Equal(again, code) {
			t.Fatalf("the canonical form %q does not parse back: %v", FormatCode(code), err)
		}
	})
}

// FuzzCheckPublicKey feeds guest public keys of any suite name: it must
// never panic, and a key it accepts must be one a host can seal to.
func FuzzCheckPublicKey(f *testing.F) {
	for _, s := range Suites() {
		k, err := GenerateKey(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(s), k.PublicKey())
		f.Add(string(s), make([]byte, len(k.PublicKey())))
	}
	f.Add("rot13", []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, suite string, pub []byte) {
		if CheckPublicKey(Suite(suite), pub) != nil {
			return
		}
		code := bytes.Repeat([]byte{7}, AccessCodeSize)
		if _, err := Seal(Suite(suite), pub, Binding{SessionID: "s", HostID: "h", GuestID: "g"}, code); err != nil {
			t.Fatalf("accepted a %s key a host cannot seal to: %v", suite, err)
		}
	})
}

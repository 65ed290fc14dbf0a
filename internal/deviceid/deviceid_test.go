package deviceid

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

var _ slog.LogValuer = DeviceID{}

// syncthingText and syncthingHex are the golden ID from syncthing's
// lib/protocol/deviceid_test.go; the bytes were decoded independently.
const (
	syncthingText = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"
	syncthingHex  = "7f7c8723ecca5b4d22061c4981b34c34d865ec376be1eb74330873c9a6f9b205"
)

// rfc8032PubHex is the public key of RFC 8032 section 7.1 TEST 1;
// rfc8032Text is its ID, computed independently (sha256sum plus a separate
// base32/Luhn implementation).
const (
	rfc8032PubHex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	rfc8032Text   = "EH7DDX5-BKSRGCK-YTL7BKA-I36SE4E-NXX3KLN-K7ELKS5-YQ57PI7-4XEG4QG"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGolden(t *testing.T) {
	tests := []struct {
		name string
		id   func(t *testing.T) DeviceID
		text string
	}{
		{
			name: "syncthing vector",
			id: func(t *testing.T) DeviceID {
				return DeviceID(mustHex(t, syncthingHex))
			},
			text: syncthingText,
		},
		{
			name: "RFC 8032 test 1 public key",
			id: func(t *testing.T) DeviceID {
				return FromPublicKey(ed25519.PublicKey(mustHex(t, rfc8032PubHex)))
			},
			text: rfc8032Text,
		},
		{
			name: "zero",
			id:   func(*testing.T) DeviceID { return DeviceID{} },
			text: "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.id(t)
			if got := id.String(); got != tt.text {
				t.Errorf("String() = %q, want %q", got, tt.text)
			}
			if len(id.String()) != TextLen {
				t.Errorf("len(String()) = %d, want %d", len(id.String()), TextLen)
			}
			got, err := Parse(tt.text)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.text, err)
			}
			if got != id {
				t.Errorf("Parse(%q) = %x, want %x", tt.text, got[:], id[:])
			}
		})
	}
}

func TestFromPublicKeyDiffers(t *testing.T) {
	pub1, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pub2, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		a, b      ed25519.PublicKey
		wantEqual bool
	}{
		{"same key", pub1, bytes.Clone(pub1), true},
		{"different keys", pub1, pub2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FromPublicKey(tt.a) == FromPublicKey(tt.b); got != tt.wantEqual {
				t.Errorf("FromPublicKey(a) == FromPublicKey(b) is %v, want %v", got, tt.wantEqual)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	var ascending, ones DeviceID
	for i := range ascending {
		ascending[i] = byte(i)
		ones[i] = 0xff
	}
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   DeviceID
	}{
		{"zero", DeviceID{}},
		{"ascending", ascending},
		{"all ones", ones},
		{"random key", FromPublicKey(pub)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.id.String())
			if err != nil {
				t.Fatalf("Parse(String()): %v", err)
			}
			if got != tt.id {
				t.Errorf("Parse(String()) = %v, want %v", got, tt.id)
			}

			text, err := tt.id.MarshalText()
			if err != nil {
				t.Fatalf("MarshalText: %v", err)
			}
			var un DeviceID
			if err := un.UnmarshalText(text); err != nil {
				t.Fatalf("UnmarshalText: %v", err)
			}
			if un != tt.id {
				t.Errorf("UnmarshalText(MarshalText()) = %v, want %v", un, tt.id)
			}

			js, err := json.Marshal(map[string]DeviceID{"id": tt.id})
			if err != nil {
				t.Fatalf("json.Marshal: %v", err)
			}
			var back map[string]DeviceID
			if err := json.Unmarshal(js, &back); err != nil {
				t.Fatalf("json.Unmarshal(%s): %v", js, err)
			}
			if back["id"] != tt.id {
				t.Errorf("JSON round trip = %v, want %v", back["id"], tt.id)
			}
		})
	}
}

func TestParseAcceptsVariants(t *testing.T) {
	want := DeviceID(mustHex(t, syncthingHex))
	undashed := strings.ReplaceAll(syncthingText, "-", "")
	tests := []struct {
		name string
		in   string
	}{
		{"canonical", syncthingText},
		{"lower case", strings.ToLower(syncthingText)},
		{"mixed case", "p56ioi7-MZJNU2Y-iqgdrey-DM2MGTI-mgl3bxn-PQ6W5BM-tbbz4tj-XZWICQ2"},
		{"no dashes", undashed},
		{"no dashes lower", strings.ToLower(undashed)},
		{"spaces", strings.ReplaceAll(syncthingText, "-", " ")},
		{"groups of 14", undashed[:14] + "-" + undashed[14:28] + " " + undashed[28:42] + "-" + undashed[42:]},
		{"surrounding space", "  " + syncthingText + " "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != want {
				t.Errorf("Parse(%q) = %v, want %v", tt.in, got, want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	undashed := strings.ReplaceAll(syncthingText, "-", "")
	tests := []struct {
		name    string
		in      string
		wantErr error
	}{
		{"empty", "", ErrLength},
		{"only dashes", "-------", ErrLength},
		{"one short", undashed[:55], ErrLength},
		{"one long", undashed + "A", ErrLength},
		{"syncthing 52-char form without check characters", "P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ", ErrLength},
		{"digit 0", "0" + undashed[1:], ErrCharacter},
		{"digit 1", undashed[:10] + "1" + undashed[11:], ErrCharacter},
		{"digit 8", undashed[:20] + "8" + undashed[21:], ErrCharacter},
		{"padding", undashed[:55] + "=", ErrCharacter},
		{"underscore separator", strings.ReplaceAll(syncthingText, "-", "_"), ErrCharacter},
		{"tab", "\t" + syncthingText, ErrCharacter},
		{"non-ASCII", "É" + undashed[1:], ErrCharacter},
		{"check character group 1", undashed[:13] + "A" + undashed[14:], ErrCheck},
		{"check character group 4", undashed[:55] + "A", ErrCheck},
		{"data character", "Q" + undashed[1:], ErrCheck},
		// Last group "XZWICQ" + check: 'R' differs from 'Q' only in a
		// padding bit; the check character is recomputed so only the
		// canonical-encoding test can catch it.
		{"non-zero padding bits", nonCanonical(t, undashed), ErrNonCanonical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse(%q) = %v, %v; want error %v", tt.in, got, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "deviceid: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			var id DeviceID
			if err := id.UnmarshalText([]byte(tt.in)); !errors.Is(err, tt.wantErr) {
				t.Errorf("UnmarshalText(%q) = %v, want %v", tt.in, err, tt.wantErr)
			}
			if !id.IsZero() {
				t.Errorf("UnmarshalText changed the receiver on error")
			}
		})
	}
}

// nonCanonical returns undashed with its last data character's padding bits
// set and the last check character fixed up.
func nonCanonical(t *testing.T, undashed string) string {
	t.Helper()
	b := []byte(undashed)
	if b[54] != 'Q' {
		t.Fatalf("vector changed: last data character %q, want 'Q'", b[54])
	}
	b[54] = 'R'
	b[55] = luhn32(string(b[42:55]))
	return string(b)
}

// TestCheckDetectsEverySubstitution replaces each of the 56 characters of
// sample IDs by each of the 31 other alphabet characters and expects
// every variant to be refused.
func TestCheckDetectsEverySubstitution(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   DeviceID
	}{
		{"syncthing vector", DeviceID(mustHex(t, syncthingHex))},
		{"random key", FromPublicKey(pub)},
		{"zero", DeviceID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := []byte(strings.ReplaceAll(tt.id.String(), "-", ""))
			tried := 0
			for pos := range orig {
				for _, c := range []byte(alphabet) {
					if c == orig[pos] {
						continue
					}
					mutated := bytes.Clone(orig)
					mutated[pos] = c
					tried++
					got, err := Parse(string(mutated))
					if err == nil {
						t.Errorf("substituting %q at %d: Parse succeeded with %v", c, pos, got)
						continue
					}
					if !errors.Is(err, ErrCheck) && !errors.Is(err, ErrNonCanonical) {
						t.Errorf("substituting %q at %d: error %v, want %v", c, pos, err, ErrCheck)
					}
				}
			}
			if want := checkedLen * 31; tried != want {
				t.Errorf("tried %d substitutions, want %d", tried, want)
			}
		})
	}
}

func TestLuhn32(t *testing.T) {
	tests := []struct {
		in   string
		want byte
	}{
		// Check characters of the syncthing golden ID's four groups.
		{"P56IOI7MZJNU2", 'Y'},
		{"IQGDREYDM2MGT", 'I'},
		{"MGL3BXNPQ6W5B", 'M'},
		{"TBBZ4TJXZWICQ", '2'},
		{"", 'A'},
		{"B", '7'}, // 1*1 = 1, check 31
		{"AB", '6'},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := luhn32(tt.in); got != tt.want {
				t.Errorf("luhn32(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestShortAndLogValue(t *testing.T) {
	tests := []struct {
		name string
		id   DeviceID
		want string
	}{
		{"syncthing vector", DeviceID(mustHex(t, syncthingHex)), "P56IOI7"},
		{"zero", DeviceID{}, "AAAAAAA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.Short(); got != tt.want {
				t.Errorf("Short() = %q, want %q", got, tt.want)
			}
			if got := tt.id.LogValue(); got.Kind() != slog.KindString || got.String() != tt.want {
				t.Errorf("LogValue() = %v, want string %q", got, tt.want)
			}
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "device", tt.id)
			if !strings.Contains(buf.String(), "device="+tt.want+"\n") {
				t.Errorf("log line %q does not show device=%s", buf.String(), tt.want)
			}
		})
	}
}

func TestIsZero(t *testing.T) {
	tests := []struct {
		name string
		id   DeviceID
		want bool
	}{
		{"zero", DeviceID{}, true},
		{"last byte set", DeviceID{31: 1}, false},
		{"from key", DeviceID(mustHex(t, syncthingHex)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.IsZero(); got != tt.want {
				t.Errorf("IsZero() = %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(syncthingText)
	f.Add(strings.ToLower(syncthingText))
	f.Add(rfc8032Text)
	f.Add("")
	f.Add("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ")
	f.Add(strings.Repeat("A", 56))
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "deviceid: parse: ") {
				t.Fatalf("error %q lacks prefix", err)
			}
			return
		}
		text := id.String()
		back, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q) ok but Parse(String()=%q): %v", s, text, err)
		}
		if back != id {
			t.Fatalf("Parse(String()) = %v, want %v", back, id)
		}
		if norm := strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(s)); norm != strings.ReplaceAll(text, "-", "") {
			t.Fatalf("Parse(%q) accepted a text that is not a spelling of %q", s, text)
		}
	})
}

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      error
	}{
		{"P56IOI7", "P56IOI7", nil},
		{"p56ioi7", "P56IOI7", nil},
		{"P56I", "P56I", nil},
		{"P56IOI7MZ", "P56IOI7-MZ", nil},
		{" p56ioi7-mzjnu2y-i ", "P56IOI7-MZJNU2Y-I", nil},
		{strings.ReplaceAll(syncthingText, "-", ""), syncthingText, nil},
		{strings.ToLower(syncthingText), syncthingText, nil},
		{"P56", "", ErrLength},
		{"", "", ErrLength},
		{"P56IOI1", "", ErrCharacter},
		{"P56I%", "", ErrCharacter},
		{syncthingText + "A", "", ErrLength},
		{syncthingText[:len(syncthingText)-1] + "3", "", ErrCheck},
	} {
		got, err := ParsePrefix(tc.in)
		if got != tc.want || !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
			t.Errorf("ParsePrefix(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

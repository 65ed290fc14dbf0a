// Package deviceid identifies a device by the SHA-256 hash of its Ed25519
// public key and gives that identity a human-friendly, typo-detecting text
// form in the style of syncthing's device IDs.
//
// The text form is the RFC 4648 base32 encoding (upper case, no padding) of
// the 32 hash bytes, 52 characters split into 4 groups of 13. Each group is
// followed by a Luhn mod 32 check character, and the resulting 56 characters
// are printed as 8 chunks of 7 separated by '-':
//
//	P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2
//
// The check character is computed exactly as syncthing does, so IDs printed
// by either program validate in the other.
package deviceid

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"
)

// Size is the length of a DeviceID in bytes.
const Size = sha256.Size

// alphabet is the RFC 4648 base32 alphabet, also used for the check
// characters.
const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

const (
	groups     = 4
	groupLen   = 13                // base32 characters per group
	encodedLen = groups * groupLen // 52
	checkedLen = groups * (groupLen + 1)
	chunkLen   = 7
	// TextLen is the length of the canonical text form, dashes included.
	TextLen = checkedLen + checkedLen/chunkLen - 1
	// ShortLen is the length of the form returned by [DeviceID.Short].
	ShortLen = chunkLen
)

// Errors returned (wrapped) by [Parse] and [DeviceID.UnmarshalText]; test
// for them with errors.Is.
var (
	// ErrLength means the text does not have 56 base32 characters once
	// dashes and spaces are removed.
	ErrLength = errors.New("wrong length")
	// ErrCharacter means the text holds a character outside the base32
	// alphabet, dashes and spaces.
	ErrCharacter = errors.New("bad character")
	// ErrCheck means a group's Luhn check character is wrong, i.e. the ID
	// was mistyped.
	ErrCheck = errors.New("wrong check character")
	// ErrNonCanonical means the last group encodes non-zero padding bits,
	// so the text is not the encoding of any device ID.
	ErrNonCanonical = errors.New("non-canonical encoding")
)

// DeviceID is the SHA-256 hash of a device's Ed25519 public key. The zero
// value is not the ID of any real device; see [DeviceID.IsZero].
type DeviceID [Size]byte

// FromPublicKey returns the ID of the device holding the private half of
// pub.
func FromPublicKey(pub ed25519.PublicKey) DeviceID {
	return DeviceID(sha256.Sum256(pub))
}

// encoding returns the base32 encoding used for the text form.
func encoding() *base32.Encoding {
	return base32.StdEncoding.WithPadding(base32.NoPadding)
}

// String returns the canonical text form: 8 dash-separated chunks of 7
// upper-case characters.
func (id DeviceID) String() string {
	enc := encoding().EncodeToString(id[:])
	var checked [checkedLen]byte
	for g := range groups {
		group := enc[g*groupLen : (g+1)*groupLen]
		copy(checked[g*(groupLen+1):], group)
		checked[g*(groupLen+1)+groupLen] = luhn32(group)
	}
	var b strings.Builder
	b.Grow(TextLen)
	for i := 0; i < checkedLen; i += chunkLen {
		if i > 0 {
			b.WriteByte('-')
		}
		b.Write(checked[i : i+chunkLen])
	}
	return b.String()
}

// Short returns the first 7 characters of the text form, for logs and
// compact displays. It does not identify a device uniquely.
func (id DeviceID) Short() string {
	return id.String()[:ShortLen]
}

// LogValue implements [slog.LogValuer] and logs the short form.
func (id DeviceID) LogValue() slog.Value {
	return slog.StringValue(id.Short())
}

// IsZero reports whether id is the zero value.
func (id DeviceID) IsZero() bool {
	return id == DeviceID{}
}

// MarshalText implements [encoding.TextMarshaler] using the canonical text
// form.
func (id DeviceID) MarshalText() ([]byte, error) {
	return []byte(id.String()), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler]; it accepts what
// [Parse] accepts. On error id is left unchanged.
func (id *DeviceID) UnmarshalText(text []byte) error {
	parsed, err := Parse(string(text))
	if err != nil {
		return err
	}
	*id = parsed
	return nil
}

// Parse parses the text form of a device ID. It accepts upper or lower case
// and ignores dashes and spaces wherever they are. It rejects text that
// does not have exactly 56 base32 characters ([ErrLength]), contains any
// other character ([ErrCharacter]), has a wrong check character
// ([ErrCheck]) or has non-zero padding bits ([ErrNonCanonical]).
func Parse(s string) (DeviceID, error) {
	checked, err := characters(s)
	if err != nil {
		return DeviceID{}, fmt.Errorf("deviceid: parse: %w", err)
	}
	if len(checked) != checkedLen {
		return DeviceID{}, fmt.Errorf("deviceid: parse: %w: %d base32 characters, want %d", ErrLength, len(checked), checkedLen)
	}

	encoded := make([]byte, 0, encodedLen)
	for g := range groups {
		group := checked[g*(groupLen+1) : (g+1)*(groupLen+1)]
		data, check := group[:groupLen], group[groupLen]
		if want := luhn32(string(data)); check != want {
			return DeviceID{}, fmt.Errorf("deviceid: parse: %w in group %d of %d", ErrCheck, g+1, groups)
		}
		encoded = append(encoded, data...)
	}

	var id DeviceID
	n, err := encoding().Decode(id[:], encoded)
	if err != nil || n != Size {
		// Unreachable: the characters and length were checked above.
		return DeviceID{}, fmt.Errorf("deviceid: parse: %w: base32: %v", ErrCharacter, err)
	}
	if encoding().EncodeToString(id[:]) != string(encoded) {
		return DeviceID{}, fmt.Errorf("deviceid: parse: %w: last group has non-zero padding bits", ErrNonCanonical)
	}
	return id, nil
}

// MinPrefixLen is the fewest characters [ParsePrefix] takes: fewer would
// too often match a device that was not meant.
const MinPrefixLen = 4

// ParsePrefix reads the start of a device ID's text form as a person types
// it: the short form ([DeviceID.Short], as tables show it), more of the
// ID, or all of it, in upper or lower case, with or without dashes. It
// returns that start in the canonical text form (upper case, a dash after
// every 7 characters), ready to match against the text form of known IDs.
// A whole ID is checked as [Parse] checks it.
func ParsePrefix(s string) (string, error) {
	checked, err := characters(s)
	switch {
	case err != nil:
		return "", fmt.Errorf("deviceid: %w", err)
	case len(checked) == checkedLen:
		id, err := Parse(s)
		if err != nil {
			return "", err
		}
		return id.String(), nil
	case len(checked) < MinPrefixLen:
		return "", fmt.Errorf("deviceid: %w: %d characters; give at least %d (the short form has %d)", ErrLength, len(checked), MinPrefixLen, ShortLen)
	}
	var b strings.Builder
	for i, c := range checked {
		if i > 0 && i%chunkLen == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// characters returns the base32 characters of a text form, upper case,
// without its dashes and spaces: at most the 56 of a whole ID.
func characters(s string) ([]byte, error) {
	checked := make([]byte, 0, checkedLen)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case 'A' <= c && c <= 'Z', '2' <= c && c <= '7':
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return nil, fmt.Errorf("%w %q at byte offset %d", ErrCharacter, r, i)
		}
		if len(checked) == checkedLen {
			return nil, fmt.Errorf("%w: more than %d base32 characters", ErrLength, checkedLen)
		}
		checked = append(checked, c)
	}
	return checked, nil
}

// luhn32 returns the Luhn mod 32 check character for s, which must consist
// of characters from alphabet. It follows syncthing: the weight alternates
// 1, 2, 1, ... starting at the leftmost character, each weighted code point
// is folded to base 32 by adding its two base-32 digits, and the check
// character makes the total a multiple of 32.
//
// Because doubling-and-folding permutes 0..31, any single-character
// substitution changes the check character.
func luhn32(s string) byte {
	const n = len(alphabet)
	factor, sum := 1, 0
	for i := 0; i < len(s); i++ {
		addend := factor * strings.IndexByte(alphabet, s[i])
		factor = 3 - factor
		sum += addend/n + addend%n
	}
	return alphabet[(n-sum%n)%n]
}

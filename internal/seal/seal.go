// Package seal lets a host hand an access code to one guest confidentially
// (claim 2): the host encrypts the code to the guest's KEM public key with
// HPKE (RFC 9180, base mode, single shot), and only the holder of the
// matching private key can open it.
//
// The HPKE info parameter binds the sealed code to a session, a host and a
// guest (see [Binding]), so a code sealed for one of them cannot be opened
// for another. HPKE also binds the suite (KEM, KDF and AEAD identifiers)
// into the key schedule.
//
// Two suites are offered; [Preset] is the interoperable X25519 suite and
// [SuiteMLKEM768X25519] is the post-quantum hybrid, preferred when both
// sides support it (see [Suites]).
package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Suite names an HPKE ciphersuite.
type Suite string

const (
	// SuiteX25519ChaCha is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
	// ChaCha20-Poly1305.
	SuiteX25519ChaCha Suite = "x25519-hkdf-sha256-chacha20poly1305"
	// SuiteMLKEM768X25519 is the hybrid ML-KEM-768 + X25519 KEM
	// (crypto/hpke's MLKEM768X25519), HKDF-SHA256, ChaCha20-Poly1305.
	SuiteMLKEM768X25519 Suite = "mlkem768x25519-hkdf-sha256-chacha20poly1305"
	// Preset is the suite every implementation must support.
	Preset = SuiteX25519ChaCha
)

// Limits on the sealed access code.
const (
	// MinCodeLen is the shortest code Seal accepts.
	MinCodeLen = 1
	// MaxCodeLen is the longest code Seal accepts.
	MaxCodeLen = 1024
	// AccessCodeSize is the length of the codes made by NewAccessCode.
	AccessCodeSize = 32
	// MaxBindingFieldLen is the longest Binding field, in bytes.
	MaxBindingFieldLen = 256
)

// tagSize is the ChaCha20-Poly1305 authentication tag size.
const tagSize = 16

// bindingLabel starts every HPKE info string.
const bindingLabel = "sharespot/seal/v1"

// Errors returned (wrapped) by this package; test for them with errors.Is.
var (
	// ErrUnknownSuite means a suite name is not one of the constants.
	ErrUnknownSuite = errors.New("unknown suite")
	// ErrSuiteMismatch means a Sealed value's suite differs from the
	// private key's.
	ErrSuiteMismatch = errors.New("suite mismatch")
	// ErrMalformed means an input has the wrong size or shape.
	ErrMalformed = errors.New("malformed input")
	// ErrDecrypt means decapsulation or authentication failed: the code was
	// sealed to another key or for another binding, or was altered.
	ErrDecrypt = errors.New("decryption failed")
)

// ParseSuite returns the Suite named s, or an error wrapping
// [ErrUnknownSuite].
func ParseSuite(s string) (Suite, error) {
	switch Suite(s) {
	case SuiteX25519ChaCha, SuiteMLKEM768X25519:
		return Suite(s), nil
	}
	return "", fmt.Errorf("seal: parse suite %q: %w", s, ErrUnknownSuite)
}

// Suites returns the supported suites, most preferred first. The caller may
// modify the returned slice.
func Suites() []Suite {
	return []Suite{SuiteMLKEM768X25519, SuiteX25519ChaCha}
}

// String returns the suite name.
func (s Suite) String() string { return string(s) }

// kem returns the suite's KEM. All suites use HKDF-SHA256 and
// ChaCha20-Poly1305.
func (s Suite) kem() (hpke.KEM, error) {
	switch s {
	case SuiteX25519ChaCha:
		return hpke.DHKEM(ecdh.X25519()), nil
	case SuiteMLKEM768X25519:
		return hpke.MLKEM768X25519(), nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownSuite, string(s))
}

// encSize returns the length of the suite's encapsulated key.
func (s Suite) encSize() int {
	switch s {
	case SuiteX25519ChaCha:
		return 32
	case SuiteMLKEM768X25519:
		return 1088 + 32 // ML-KEM-768 ciphertext + X25519 share
	}
	return -1
}

// PrivateKey is a guest's KEM private key for one suite.
type PrivateKey struct {
	suite Suite
	key   hpke.PrivateKey
	raw   []byte
}

// GenerateKey returns a new random private key for suite s.
func GenerateKey(s Suite) (*PrivateKey, error) {
	kem, err := s.kem()
	if err != nil {
		return nil, fmt.Errorf("seal: generate key: %w", err)
	}
	k, err := kem.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("seal: generate key: %w", err)
	}
	return newPrivateKey(s, k)
}

// ParsePrivateKey decodes a private key for suite s serialised by
// [PrivateKey.Bytes].
func ParsePrivateKey(s Suite, b []byte) (*PrivateKey, error) {
	kem, err := s.kem()
	if err != nil {
		return nil, fmt.Errorf("seal: parse private key: %w", err)
	}
	k, err := kem.NewPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("seal: parse private key: %w: %w", ErrMalformed, err)
	}
	return newPrivateKey(s, k)
}

func newPrivateKey(s Suite, k hpke.PrivateKey) (*PrivateKey, error) {
	raw, err := k.Bytes()
	if err != nil {
		return nil, fmt.Errorf("seal: serialise private key: %w", err)
	}
	return &PrivateKey{suite: s, key: k, raw: raw}, nil
}

// Suite returns the suite the key belongs to.
func (k *PrivateKey) Suite() Suite { return k.suite }

// PublicKey returns the KEM public key, to be sent to the host.
func (k *PrivateKey) PublicKey() []byte { return k.key.PublicKey().Bytes() }

// Bytes returns the serialised private key (RFC 9180 SerializePrivateKey:
// the clamped X25519 scalar, or the 32-byte hybrid seed) for persistent
// storage. It is secret.
func (k *PrivateKey) Bytes() []byte { return bytes.Clone(k.raw) }

// Binding names the context a code is sealed for. All fields are required,
// 1 to MaxBindingFieldLen bytes each.
type Binding struct {
	// SessionID identifies the sharing session.
	SessionID string
	// HostID is the host's device ID text form.
	HostID string
	// GuestID is the guest's device ID text form.
	GuestID string
}

// info returns the unambiguous HPKE info encoding of b: the label, then
// each field as a 2-byte big-endian length and its bytes.
func (b Binding) info() ([]byte, error) {
	fields := []struct{ name, value string }{
		{"session ID", b.SessionID},
		{"host ID", b.HostID},
		{"guest ID", b.GuestID},
	}
	out := make([]byte, 0, 2+len(bindingLabel)+3*2+len(b.SessionID)+len(b.HostID)+len(b.GuestID))
	out = binary.BigEndian.AppendUint16(out, uint16(len(bindingLabel)))
	out = append(out, bindingLabel...)
	for _, f := range fields {
		if len(f.value) == 0 || len(f.value) > MaxBindingFieldLen {
			return nil, fmt.Errorf("%w: binding %s is %d bytes, want 1..%d", ErrMalformed, f.name, len(f.value), MaxBindingFieldLen)
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(f.value)))
		out = append(out, f.value...)
	}
	return out, nil
}

// Sealed is an access code sealed to one guest. Enc and Ciphertext are
// public.
type Sealed struct {
	// Suite is the HPKE suite used.
	Suite Suite
	// Enc is the HPKE encapsulated key.
	Enc []byte
	// Ciphertext is the AEAD ciphertext of the code, tag included.
	Ciphertext []byte
}

// Seal encrypts code (1 to MaxCodeLen bytes) for the holder of the private
// key matching guestPublicKey, bound to b. It is the host side.
func Seal(s Suite, guestPublicKey []byte, b Binding, code []byte) (Sealed, error) {
	kem, err := s.kem()
	if err != nil {
		return Sealed{}, fmt.Errorf("seal: seal access code: %w", err)
	}
	if len(code) < MinCodeLen || len(code) > MaxCodeLen {
		return Sealed{}, fmt.Errorf("seal: seal access code: %w: code is %d bytes, want %d..%d", ErrMalformed, len(code), MinCodeLen, MaxCodeLen)
	}
	info, err := b.info()
	if err != nil {
		return Sealed{}, fmt.Errorf("seal: seal access code: %w", err)
	}
	pub, err := kem.NewPublicKey(guestPublicKey)
	if err != nil {
		return Sealed{}, fmt.Errorf("seal: seal access code: %w: guest public key: %w", ErrMalformed, err)
	}
	enc, sender, err := hpke.NewSender(pub, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), info)
	if err != nil {
		return Sealed{}, fmt.Errorf("seal: seal access code: encapsulate: %w", err)
	}
	ct, err := sender.Seal(nil, code)
	if err != nil {
		return Sealed{}, fmt.Errorf("seal: seal access code: encrypt: %w", err)
	}
	return Sealed{Suite: s, Enc: enc, Ciphertext: ct}, nil
}

// Open decrypts a code sealed to priv for binding b. It is the guest side.
// It fails with [ErrSuiteMismatch] if sealed uses another suite,
// [ErrMalformed] if enc, the ciphertext or b has the wrong size, and
// [ErrDecrypt] if the code was sealed to another key or binding or was
// altered.
func Open(priv *PrivateKey, b Binding, sealed Sealed) ([]byte, error) {
	if priv == nil || priv.key == nil {
		return nil, errors.New("seal: open access code: no private key")
	}
	if sealed.Suite != priv.suite {
		return nil, fmt.Errorf("seal: open access code: %w: sealed with %q, key is for %q", ErrSuiteMismatch, string(sealed.Suite), string(priv.suite))
	}
	if n, want := len(sealed.Enc), priv.suite.encSize(); n != want {
		return nil, fmt.Errorf("seal: open access code: %w: enc is %d bytes, want %d", ErrMalformed, n, want)
	}
	if n := len(sealed.Ciphertext); n < MinCodeLen+tagSize || n > MaxCodeLen+tagSize {
		return nil, fmt.Errorf("seal: open access code: %w: ciphertext is %d bytes, want %d..%d", ErrMalformed, n, MinCodeLen+tagSize, MaxCodeLen+tagSize)
	}
	info, err := b.info()
	if err != nil {
		return nil, fmt.Errorf("seal: open access code: %w", err)
	}
	code, err := open(priv, info, nil, sealed.Enc, sealed.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("seal: open access code: %w", err)
	}
	return code, nil
}

// open is single-shot HPKE base-mode decryption with priv's suite.
func open(priv *PrivateKey, info, aad, enc, ct []byte) ([]byte, error) {
	r, err := hpke.NewRecipient(enc, priv.key, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), info)
	if err != nil {
		return nil, fmt.Errorf("%w: decapsulate enc: %w", ErrDecrypt, err)
	}
	pt, err := r.Open(aad, ct)
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed (wrong key or binding, or altered enc or ciphertext)", ErrDecrypt)
	}
	return pt, nil
}

// NewAccessCode returns AccessCodeSize random bytes.
func NewAccessCode() ([]byte, error) {
	code := make([]byte, AccessCodeSize)
	if _, err := rand.Read(code); err != nil {
		return nil, fmt.Errorf("seal: new access code: %w", err)
	}
	return code, nil
}

// codeEncoding is lower-case RFC 4648 base32 without padding.
func codeEncoding() *base32.Encoding {
	return base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
}

// FormatCode returns code as lower-case base32 without padding.
func FormatCode(code []byte) string {
	return codeEncoding().EncodeToString(code)
}

// ParseCode decodes an access code printed by [FormatCode]. It ignores
// surrounding space and letter case, and requires exactly AccessCodeSize
// bytes in canonical encoding. Errors never include the code.
func ParseCode(s string) ([]byte, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if want := codeEncoding().EncodedLen(AccessCodeSize); len(s) != want {
		return nil, fmt.Errorf("seal: parse access code: %w: %d characters, want %d", ErrMalformed, len(s), want)
	}
	code, err := codeEncoding().DecodeString(s)
	if err != nil {
		var ce base32.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("seal: parse access code: %w: bad character at offset %d", ErrMalformed, int64(ce))
		}
		return nil, fmt.Errorf("seal: parse access code: %w", ErrMalformed)
	}
	if len(code) != AccessCodeSize || FormatCode(code) != s {
		return nil, fmt.Errorf("seal: parse access code: %w: non-canonical encoding", ErrMalformed)
	}
	return code, nil
}

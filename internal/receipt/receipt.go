// Package receipt signs and verifies the payment platform's payment-success
// response: a [Payload] saying who paid whom how much for which quote and
// session, signed with the platform's Ed25519 key.
//
// The payload has a hand-written canonical encoding ([Payload.Marshal]) and
// the signature covers "sharespot/receipt/v1\x00" followed by those bytes,
// so a receipt signature cannot be confused with any other signature made
// with the same key. [Verifier.Verify] checks the signature before it
// parses anything, then parses strictly.
//
// This package does not protect against replay: a valid receipt stays valid
// forever and can be presented any number of times. The server and the host
// must remember the receipt IDs they have accepted and refuse repeats, and
// must check the payload against what they expect with [Payload.Matches].
package receipt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Version is the payload encoding version written by Marshal.
const Version = 1

// MaxFieldLen is the longest string field a payload may hold, in bytes.
const MaxFieldLen = 256

// maxPayloadLen is the longest valid encoding: version, 7 strings with
// 2-byte length prefixes, 3 fixed 8-byte integers.
const maxPayloadLen = 1 + 7*(2+MaxFieldLen) + 3*8

// signingPrefix domain-separates receipt signatures.
const signingPrefix = "sharespot/receipt/v1\x00"

// KeyIDLen is the length of a key ID in hex characters.
const KeyIDLen = 16

// Sentinel errors; test for them with errors.Is.
var (
	// ErrUnknownKey means the receipt names a key the verifier does not
	// trust.
	ErrUnknownKey = errors.New("unknown key")
	// ErrBadSignature means the signature does not verify.
	ErrBadSignature = errors.New("bad signature")
	// ErrMalformed means a payload is not a valid canonical encoding.
	ErrMalformed = errors.New("malformed payload")
	// ErrMismatch means a payload differs from the expected one.
	ErrMismatch = errors.New("receipt mismatch")
)

// Payload is the content of a receipt.
type Payload struct {
	// ReceiptID uniquely identifies the receipt; use it to refuse replays.
	ReceiptID string
	// SessionID is the sharing session paid for.
	SessionID string
	// QuoteID is the quote that was accepted.
	QuoteID string
	// Currency is the currency code, e.g. "EUR".
	Currency string
	// Payer is the paying device's ID text form.
	Payer string
	// Payee is the paid device's ID text form.
	Payee string
	// Platform names the payment platform, e.g. "wallet".
	Platform string
	// Amount is the amount paid in minor units (cents); never negative.
	Amount int64
	// Bytes is the data allowance paid for; never negative.
	Bytes int64
	// IssuedAt is when the platform issued the receipt, kept to the
	// millisecond.
	IssuedAt time.Time
}

// stringFields returns the string fields in encoding order.
func (p *Payload) stringFields() []struct {
	name string
	ptr  *string
} {
	return []struct {
		name string
		ptr  *string
	}{
		{"receipt ID", &p.ReceiptID},
		{"session ID", &p.SessionID},
		{"quote ID", &p.QuoteID},
		{"currency", &p.Currency},
		{"payer", &p.Payer},
		{"payee", &p.Payee},
		{"platform", &p.Platform},
	}
}

// Validate reports whether p can be encoded so that UnmarshalPayload
// accepts it: string fields of at most MaxFieldLen bytes, non-negative
// Amount and Bytes. The error wraps [ErrMalformed].
func (p Payload) Validate() error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("receipt: validate payload: %w", err)
	}
	return nil
}

func (p Payload) validate() error {
	for _, f := range p.stringFields() {
		if len(*f.ptr) > MaxFieldLen {
			return fmt.Errorf("%w: %s is %d bytes, max %d", ErrMalformed, f.name, len(*f.ptr), MaxFieldLen)
		}
	}
	if p.Amount < 0 {
		return fmt.Errorf("%w: negative amount %d", ErrMalformed, p.Amount)
	}
	if p.Bytes < 0 {
		return fmt.Errorf("%w: negative bytes %d", ErrMalformed, p.Bytes)
	}
	return nil
}

// Marshal returns the canonical encoding of p: the version byte, each string
// field as a uvarint length and its bytes, then Amount, Bytes and IssuedAt
// (as Unix milliseconds) as 8-byte big-endian integers. Marshal does not
// validate; an invalid payload (see [Payload.Validate]) yields bytes that
// UnmarshalPayload refuses.
func (p Payload) Marshal() []byte {
	b := make([]byte, 0, 64)
	b = append(b, Version)
	for _, f := range p.stringFields() {
		b = binary.AppendUvarint(b, uint64(len(*f.ptr)))
		b = append(b, *f.ptr...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(p.Amount))
	b = binary.BigEndian.AppendUint64(b, uint64(p.Bytes))
	b = binary.BigEndian.AppendUint64(b, uint64(p.IssuedAt.UnixMilli()))
	return b
}

// UnmarshalPayload parses the canonical encoding made by Marshal. It is
// strict: it refuses an unknown version, non-minimal or over-long lengths,
// fields longer than MaxFieldLen, negative Amount or Bytes, truncation and
// trailing bytes, so that every accepted input is exactly the Marshal of
// the result. IssuedAt is returned in UTC. Errors wrap [ErrMalformed].
func UnmarshalPayload(b []byte) (Payload, error) {
	p, err := unmarshal(b)
	if err != nil {
		return Payload{}, fmt.Errorf("receipt: unmarshal payload: %w", err)
	}
	return p, nil
}

func unmarshal(b []byte) (Payload, error) {
	var p Payload
	if len(b) == 0 {
		return Payload{}, fmt.Errorf("%w: empty", ErrMalformed)
	}
	if b[0] != Version {
		return Payload{}, fmt.Errorf("%w: unknown version %d", ErrMalformed, b[0])
	}
	rest := b[1:]
	for _, f := range p.stringFields() {
		n, k := binary.Uvarint(rest)
		if k <= 0 {
			return Payload{}, fmt.Errorf("%w: %s: bad length", ErrMalformed, f.name)
		}
		if k != len(binary.AppendUvarint(nil, n)) {
			return Payload{}, fmt.Errorf("%w: %s: non-minimal length", ErrMalformed, f.name)
		}
		if n > MaxFieldLen {
			return Payload{}, fmt.Errorf("%w: %s is %d bytes, max %d", ErrMalformed, f.name, n, MaxFieldLen)
		}
		rest = rest[k:]
		if uint64(len(rest)) < n {
			return Payload{}, fmt.Errorf("%w: %s truncated", ErrMalformed, f.name)
		}
		*f.ptr = string(rest[:n])
		rest = rest[n:]
	}
	if len(rest) < 3*8 {
		return Payload{}, fmt.Errorf("%w: truncated integers", ErrMalformed)
	}
	if len(rest) > 3*8 {
		return Payload{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(rest)-3*8)
	}
	p.Amount = int64(binary.BigEndian.Uint64(rest[0:8]))
	p.Bytes = int64(binary.BigEndian.Uint64(rest[8:16]))
	p.IssuedAt = time.UnixMilli(int64(binary.BigEndian.Uint64(rest[16:24]))).UTC()
	if err := p.validate(); err != nil {
		return Payload{}, err
	}
	return p, nil
}

// Matches compares the fields that bind a receipt to a purchase—SessionID,
// QuoteID, Amount, Currency, Payer, Payee and Bytes, in that order—and
// returns an error wrapping [ErrMismatch] that names the first one differing
// from want. ReceiptID, Platform and IssuedAt are not compared.
func (p Payload) Matches(want Payload) error {
	strs := []struct {
		name      string
		got, want string
	}{
		{"session ID", p.SessionID, want.SessionID},
		{"quote ID", p.QuoteID, want.QuoteID},
	}
	for _, s := range strs {
		if s.got != s.want {
			return fmt.Errorf("receipt: %w: %s is %q, want %q", ErrMismatch, s.name, s.got, s.want)
		}
	}
	if p.Amount != want.Amount {
		return fmt.Errorf("receipt: %w: amount is %d, want %d", ErrMismatch, p.Amount, want.Amount)
	}
	if p.Currency != want.Currency {
		return fmt.Errorf("receipt: %w: currency is %q, want %q", ErrMismatch, p.Currency, want.Currency)
	}
	if p.Payer != want.Payer {
		return fmt.Errorf("receipt: %w: payer is %q, want %q", ErrMismatch, p.Payer, want.Payer)
	}
	if p.Payee != want.Payee {
		return fmt.Errorf("receipt: %w: payee is %q, want %q", ErrMismatch, p.Payee, want.Payee)
	}
	if p.Bytes != want.Bytes {
		return fmt.Errorf("receipt: %w: bytes is %d, want %d", ErrMismatch, p.Bytes, want.Bytes)
	}
	return nil
}

// Receipt is a signed payload as sent over the wire.
type Receipt struct {
	// KeyID names the signing key; see [KeyIDOf].
	KeyID string
	// Payload is the canonical payload encoding.
	Payload []byte
	// Signature is the Ed25519 signature of the domain-separated payload.
	Signature []byte
}

// KeyIDOf returns the key ID of pub: the first 16 hex characters of the
// SHA-256 of the public key.
func KeyIDOf(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])[:KeyIDLen]
}

// signedMessage returns the bytes actually signed for payload.
func signedMessage(payload []byte) []byte {
	m := make([]byte, 0, len(signingPrefix)+len(payload))
	m = append(m, signingPrefix...)
	return append(m, payload...)
}

// Signer signs receipts with the payment platform's key. It is safe for
// concurrent use.
type Signer struct {
	priv  ed25519.PrivateKey
	keyID string
}

// NewSigner returns a Signer for priv, which it copies. It panics if priv
// is not ed25519.PrivateKeySize bytes long, like crypto/ed25519 does.
func NewSigner(priv ed25519.PrivateKey) *Signer {
	if len(priv) != ed25519.PrivateKeySize {
		panic(fmt.Sprintf("receipt: NewSigner: private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize))
	}
	priv = bytes.Clone(priv)
	return &Signer{priv: priv, keyID: KeyIDOf(priv.Public().(ed25519.PublicKey))}
}

// Sign validates p (see [Payload.Validate]) and returns it signed. It
// refuses payloads a Verifier would reject as malformed.
func (s *Signer) Sign(p Payload) (Receipt, error) {
	if err := p.validate(); err != nil {
		return Receipt{}, fmt.Errorf("receipt: sign: %w", err)
	}
	payload := p.Marshal()
	return Receipt{
		KeyID:     s.keyID,
		Payload:   payload,
		Signature: ed25519.Sign(s.priv, signedMessage(payload)),
	}, nil
}

// PublicKey returns the signer's public key, to be given to verifiers.
func (s *Signer) PublicKey() ed25519.PublicKey {
	return bytes.Clone(s.priv.Public().(ed25519.PublicKey))
}

// KeyID returns the signer's key ID.
func (s *Signer) KeyID() string { return s.keyID }

// Verifier checks receipts against a fixed set of trusted keys. It is safe
// for concurrent use.
type Verifier struct {
	keys    map[string]ed25519.PublicKey
	vouched *vouched // receipts its own process signed (Vouch)
}

// NewVerifier returns a Verifier trusting keys, which it copies. It panics
// if a key is not ed25519.PublicKeySize bytes long, like crypto/ed25519
// does.
func NewVerifier(keys ...ed25519.PublicKey) *Verifier {
	v := &Verifier{keys: make(map[string]ed25519.PublicKey, len(keys)), vouched: newVouched(VouchedReceipts)}
	for i, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			panic(fmt.Sprintf("receipt: NewVerifier: key %d is %d bytes, want %d", i, len(k), ed25519.PublicKeySize))
		}
		v.keys[KeyIDOf(k)] = bytes.Clone(k)
	}
	return v
}

// Verify checks r's signature with the trusted key it names and returns the
// parsed payload. Errors wrap [ErrUnknownKey], [ErrBadSignature] or
// [ErrMalformed]. Verify does not check freshness, replay or what was paid
// for; see the package documentation and [Payload.Matches]. A receipt its
// own process signed and vouched for ([Verifier.Vouch]) is taken as signed
// once without the arithmetic.
func (v *Verifier) Verify(r Receipt) (Payload, error) {
	var pub ed25519.PublicKey
	if v != nil {
		pub = v.keys[r.KeyID]
	}
	if pub == nil {
		return Payload{}, fmt.Errorf("receipt: verify: %w %.40q", ErrUnknownKey, r.KeyID)
	}
	if len(r.Payload) > maxPayloadLen {
		return Payload{}, fmt.Errorf("receipt: verify: %w: %d bytes, max %d", ErrMalformed, len(r.Payload), maxPayloadLen)
	}
	if len(r.Signature) != ed25519.SignatureSize {
		return Payload{}, fmt.Errorf("receipt: verify: %w: %d bytes, want %d", ErrBadSignature, len(r.Signature), ed25519.SignatureSize)
	}
	if !v.vouched.take(r) && !ed25519.Verify(pub, signedMessage(r.Payload), r.Signature) {
		return Payload{}, fmt.Errorf("receipt: verify: %w for key %s", ErrBadSignature, r.KeyID)
	}
	p, err := unmarshal(r.Payload)
	if err != nil {
		return Payload{}, fmt.Errorf("receipt: verify: %w", err)
	}
	return p, nil
}

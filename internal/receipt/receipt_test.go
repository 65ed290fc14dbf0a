package receipt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// rfc8032Seed is the secret key of RFC 8032 section 7.1 TEST 1; its public
// key d75a9801... has SHA-256 21fe31dfa154a261...
const (
	rfc8032Seed  = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	rfc8032KeyID = "21fe31dfa154a261"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testSigner(t testing.TB) *Signer {
	t.Helper()
	return NewSigner(ed25519.NewKeyFromSeed(mustHex(t, rfc8032Seed)))
}

func randomSigner(t testing.TB) *Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return NewSigner(priv)
}

func samplePayload() Payload {
	return Payload{
		ReceiptID: "rcpt-0001",
		SessionID: "0b6f1f7e-5c4a-4f7e-9d7e-3f2a1c9b8a70",
		QuoteID:   "quote-42",
		Currency:  "EUR",
		Payer:     "EH7DDX5-BKSRGCK-YTL7BKA-I36SE4E-NXX3KLN-K7ELKS5-YQ57PI7-4XEG4QG",
		Payee:     "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2",
		Platform:  "wallet",
		Amount:    250,
		Bytes:     1 << 30,
		IssuedAt:  time.UnixMilli(1700000000123).UTC(),
	}
}

// diff returns the name of the first field where a and b differ, or "".
func diff(a, b Payload) string {
	switch {
	case a.ReceiptID != b.ReceiptID:
		return "ReceiptID"
	case a.SessionID != b.SessionID:
		return "SessionID"
	case a.QuoteID != b.QuoteID:
		return "QuoteID"
	case a.Currency != b.Currency:
		return "Currency"
	case a.Payer != b.Payer:
		return "Payer"
	case a.Payee != b.Payee:
		return "Payee"
	case a.Platform != b.Platform:
		return "Platform"
	case a.Amount != b.Amount:
		return "Amount"
	case a.Bytes != b.Bytes:
		return "Bytes"
	case !a.IssuedAt.Equal(b.IssuedAt):
		return "IssuedAt"
	}
	return ""
}

func TestMarshalGolden(t *testing.T) {
	tests := []struct {
		name string
		p    Payload
		want string
	}{
		{
			name: "short fields",
			p: Payload{
				ReceiptID: "r", SessionID: "s", QuoteID: "q", Currency: "EUR",
				Payer: "A", Payee: "B", Platform: "wallet",
				Amount: 250, Bytes: 1 << 30, IssuedAt: time.UnixMilli(1700000000123),
			},
			want: "01" + "0172" + "0173" + "0171" + "03455552" + "0141" + "0142" + "0677616c6c6574" +
				"00000000000000fa" + "0000000040000000" + "0000018bcfe5687b",
		},
		{
			name: "unix epoch, empty strings",
			p:    Payload{IssuedAt: time.Unix(0, 0)},
			want: "01" + "00000000000000" + strings.Repeat("0", 48),
		},
		{
			name: "200-byte field takes a 2-byte length",
			p:    Payload{Platform: strings.Repeat("x", 200), IssuedAt: time.Unix(0, 0)},
			want: "01" + "000000000000" + "c801" + strings.Repeat("78", 200) + strings.Repeat("0", 48),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := hex.EncodeToString(tt.p.Marshal())
			if got != tt.want {
				t.Errorf("Marshal() = %s\nwant        %s", got, tt.want)
			}
		})
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	long := strings.Repeat("é", MaxFieldLen/2) // 256 bytes
	tests := []struct {
		name string
		p    Payload
		want Payload // zero means p
	}{
		{name: "sample", p: samplePayload()},
		{name: "zero", p: Payload{}, want: Payload{IssuedAt: time.UnixMilli(time.Time{}.UnixMilli()).UTC()}},
		{name: "max fields", p: Payload{
			ReceiptID: long, SessionID: long, QuoteID: long, Currency: long,
			Payer: long, Payee: long, Platform: long,
			Amount: math.MaxInt64, Bytes: math.MaxInt64, IssuedAt: time.UnixMilli(math.MaxInt64).UTC(),
		}},
		{name: "before 1970", p: Payload{Amount: 1, IssuedAt: time.UnixMilli(-1).UTC()}},
		{name: "sub-millisecond truncated", p: Payload{
			Currency: "JPY", IssuedAt: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.FixedZone("X", 3600)),
		}, want: Payload{Currency: "JPY", IssuedAt: time.Date(2026, 1, 2, 2, 4, 5, 123000000, time.UTC)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if diff(want, Payload{}) == "" {
				want = tt.p
			}
			b := tt.p.Marshal()
			got, err := UnmarshalPayload(b)
			if err != nil {
				t.Fatalf("UnmarshalPayload(Marshal()): %v", err)
			}
			if f := diff(got, want); f != "" {
				t.Errorf("round trip changed %s: got %+v, want %+v", f, got, want)
			}
			if got.IssuedAt.Location() != time.UTC {
				t.Errorf("IssuedAt location = %v, want UTC", got.IssuedAt.Location())
			}
			if !bytes.Equal(got.Marshal(), b) {
				t.Errorf("Marshal(UnmarshalPayload(b)) != b")
			}
		})
	}
}

func TestUnmarshalRejects(t *testing.T) {
	valid := samplePayload().Marshal()
	withByte := func(i int, v byte) []byte {
		b := bytes.Clone(valid)
		b[i] = v
		return b
	}
	// A payload whose first field is 257 bytes, length as uvarint 0x81 0x02.
	tooLong := append([]byte{1, 0x81, 0x02}, bytes.Repeat([]byte{'x'}, 257)...)
	tooLong = append(tooLong, make([]byte, 6+24)...)
	// The receipt ID "a" with a non-minimal 2-byte length.
	nonMinimal := append([]byte{1, 0x81, 0x00, 'a'}, make([]byte, 6+24)...)
	overflow := append([]byte{1}, bytes.Repeat([]byte{0xff}, 11)...)
	negAmount := bytes.Clone(valid)
	negAmount[len(negAmount)-24] = 0x80
	negBytes := bytes.Clone(valid)
	negBytes[len(negBytes)-16] = 0xff

	tests := []struct {
		name    string
		in      []byte
		wantMsg string
	}{
		{"nil", nil, "empty"},
		{"version 0", withByte(0, 0), "unknown version 0"},
		{"version 2", withByte(0, 2), "unknown version 2"},
		{"trailing byte", append(bytes.Clone(valid), 0), "1 trailing bytes"},
		{"field over 256 bytes", tooLong, "receipt ID is 257 bytes"},
		{"non-minimal length", nonMinimal, "non-minimal length"},
		{"uvarint overflow", overflow, "bad length"},
		{"length beyond input", []byte{1, 5, 'a'}, "receipt ID truncated"},
		{"integers truncated", valid[:len(valid)-1], "truncated integers"},
		{"negative amount", negAmount, "negative amount"},
		{"negative bytes", negBytes, "negative bytes"},
		{"only version", []byte{1}, "bad length"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := UnmarshalPayload(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("UnmarshalPayload = %+v, %v; want %v", got, err, ErrMalformed)
			}
			if !strings.HasPrefix(err.Error(), "receipt: unmarshal payload: ") || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q, want prefix and %q", err, tt.wantMsg)
			}
		})
	}
	t.Run("every truncation", func(t *testing.T) {
		for n := range len(valid) {
			if _, err := UnmarshalPayload(valid[:n]); !errors.Is(err, ErrMalformed) {
				t.Errorf("UnmarshalPayload(first %d of %d bytes) error %v, want %v", n, len(valid), err, ErrMalformed)
			}
		}
	})
}

func TestKeyID(t *testing.T) {
	s := testSigner(t)
	pub := s.PublicKey()
	sum := sha256.Sum256(pub)
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"golden", s.KeyID(), rfc8032KeyID},
		{"KeyIDOf", KeyIDOf(pub), hex.EncodeToString(sum[:8])},
		{"public key", hex.EncodeToString(pub), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %s, want %s", tt.got, tt.want)
			}
		})
	}
}

func TestSignVerify(t *testing.T) {
	s := testSigner(t)
	other := randomSigner(t)
	tests := []struct {
		name     string
		verifier *Verifier
		p        Payload
	}{
		{"sample", NewVerifier(s.PublicKey()), samplePayload()},
		{"two trusted keys", NewVerifier(other.PublicKey(), s.PublicKey()), samplePayload()},
		{"zero payload", NewVerifier(s.PublicKey()), Payload{IssuedAt: time.Unix(0, 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := s.Sign(tt.p)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if r.KeyID != s.KeyID() {
				t.Errorf("KeyID = %q, want %q", r.KeyID, s.KeyID())
			}
			if !bytes.Equal(r.Payload, tt.p.Marshal()) {
				t.Errorf("Payload is not Marshal()")
			}
			// The signature covers the domain-separated message, and only it.
			if !ed25519.Verify(s.PublicKey(), append([]byte("sharespot/receipt/v1\x00"), r.Payload...), r.Signature) {
				t.Errorf("signature does not cover the domain-separated payload")
			}
			if ed25519.Verify(s.PublicKey(), r.Payload, r.Signature) {
				t.Errorf("signature verifies over the bare payload")
			}
			got, err := tt.verifier.Verify(r)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if f := diff(got, tt.p); f != "" {
				t.Errorf("Verify changed %s", f)
			}
		})
	}
}

func TestSignRejectsInvalid(t *testing.T) {
	s := testSigner(t)
	tests := []struct {
		name   string
		modify func(*Payload)
	}{
		{"negative amount", func(p *Payload) { p.Amount = -1 }},
		{"negative bytes", func(p *Payload) { p.Bytes = math.MinInt64 }},
		{"long payer", func(p *Payload) { p.Payer = strings.Repeat("P", MaxFieldLen+1) }},
		{"long platform", func(p *Payload) { p.Platform = strings.Repeat("P", MaxFieldLen+1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := samplePayload()
			tt.modify(&p)
			if err := p.Validate(); !errors.Is(err, ErrMalformed) {
				t.Errorf("Validate error %v, want %v", err, ErrMalformed)
			}
			r, err := s.Sign(p)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Sign = %+v, %v; want %v", r, err, ErrMalformed)
			}
			if !strings.HasPrefix(err.Error(), "receipt: sign: ") {
				t.Errorf("error %q lacks prefix", err)
			}
			if _, err := UnmarshalPayload(p.Marshal()); !errors.Is(err, ErrMalformed) {
				t.Errorf("UnmarshalPayload(Marshal(invalid)) error %v, want %v", err, ErrMalformed)
			}
		})
	}
	if err := samplePayload().Validate(); err != nil {
		t.Errorf("Validate(sample): %v", err)
	}
}

func TestVerifyRejectsEveryAlteredByte(t *testing.T) {
	s := testSigner(t)
	v := NewVerifier(s.PublicKey())
	r, err := s.Sign(samplePayload())
	if err != nil {
		t.Fatal(err)
	}
	for _, mask := range []byte{0x01, 0x80, 0xff} {
		for i := range r.Payload {
			alt := Receipt{KeyID: r.KeyID, Payload: bytes.Clone(r.Payload), Signature: r.Signature}
			alt.Payload[i] ^= mask
			if _, err := v.Verify(alt); !errors.Is(err, ErrBadSignature) {
				t.Errorf("payload byte %d ^ %#x: error %v, want %v", i, mask, err, ErrBadSignature)
			}
		}
		for i := range r.Signature {
			alt := Receipt{KeyID: r.KeyID, Payload: r.Payload, Signature: bytes.Clone(r.Signature)}
			alt.Signature[i] ^= mask
			if _, err := v.Verify(alt); !errors.Is(err, ErrBadSignature) {
				t.Errorf("signature byte %d ^ %#x: error %v, want %v", i, mask, err, ErrBadSignature)
			}
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	s := testSigner(t)
	other := randomSigner(t)
	r, err := s.Sign(samplePayload())
	if err != nil {
		t.Fatal(err)
	}
	malformed := append(samplePayload().Marshal(), 0)
	signedMalformed := Receipt{
		KeyID:     s.KeyID(),
		Payload:   malformed,
		Signature: ed25519.Sign(ed25519.NewKeyFromSeed(mustHex(t, rfc8032Seed)), append([]byte(signingPrefix), malformed...)),
	}
	huge := Receipt{KeyID: s.KeyID(), Payload: make([]byte, maxPayloadLen+1), Signature: r.Signature}
	otherR, err := other.Sign(samplePayload())
	if err != nil {
		t.Fatal(err)
	}
	with := func(f func(*Receipt)) Receipt {
		c := Receipt{KeyID: r.KeyID, Payload: bytes.Clone(r.Payload), Signature: bytes.Clone(r.Signature)}
		f(&c)
		return c
	}
	tests := []struct {
		name    string
		v       *Verifier
		r       Receipt
		wantErr error
	}{
		{"untrusted signer", NewVerifier(other.PublicKey()), r, ErrUnknownKey},
		{"no trusted keys", NewVerifier(), r, ErrUnknownKey},
		{"nil verifier", nil, r, ErrUnknownKey},
		{"key ID altered", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.KeyID = "0000000000000000" }), ErrUnknownKey},
		{"key ID upper case", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.KeyID = strings.ToUpper(c.KeyID) }), ErrUnknownKey},
		{"key ID empty", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.KeyID = "" }), ErrUnknownKey},
		{"key ID of other trusted key", NewVerifier(s.PublicKey(), other.PublicKey()), with(func(c *Receipt) { c.KeyID = other.KeyID() }), ErrBadSignature},
		{"signature from other key", NewVerifier(s.PublicKey(), other.PublicKey()), with(func(c *Receipt) { c.Signature = otherR.Signature }), ErrBadSignature},
		{"signature truncated", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.Signature = c.Signature[:63] }), ErrBadSignature},
		{"signature extended", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.Signature = append(c.Signature, 0) }), ErrBadSignature},
		{"signature empty", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.Signature = nil }), ErrBadSignature},
		{"payload truncated", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.Payload = c.Payload[:len(c.Payload)-1] }), ErrBadSignature},
		{"payload empty", NewVerifier(s.PublicKey()), with(func(c *Receipt) { c.Payload = nil }), ErrBadSignature},
		{"signed but malformed", NewVerifier(s.PublicKey()), signedMalformed, ErrMalformed},
		{"oversized payload", NewVerifier(s.PublicKey()), huge, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.v.Verify(tt.r)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %+v, %v; want %v", got, err, tt.wantErr)
			}
			for _, e := range []error{ErrUnknownKey, ErrBadSignature, ErrMalformed} {
				if e != tt.wantErr && errors.Is(err, e) {
					t.Errorf("error %q also matches %v", err, e)
				}
			}
			if !strings.HasPrefix(err.Error(), "receipt: verify: ") {
				t.Errorf("error %q lacks prefix", err)
			}
			if diff(got, Payload{}) != "" {
				t.Errorf("Verify returned a payload with an error")
			}
		})
	}
}

func TestMatches(t *testing.T) {
	want := samplePayload()
	tests := []struct {
		name      string
		modify    func(*Payload)
		wantField string // "" means a match
	}{
		{"identical", func(*Payload) {}, ""},
		{"receipt ID ignored", func(p *Payload) { p.ReceiptID = "other" }, ""},
		{"payee", func(p *Payload) { p.Payee = "other" }, "payee"},
		{"platform ignored", func(p *Payload) { p.Platform = "card" }, ""},
		{"issued at ignored", func(p *Payload) { p.IssuedAt = p.IssuedAt.Add(time.Hour) }, ""},
		{"session", func(p *Payload) { p.SessionID = "other" }, "session ID"},
		{"quote", func(p *Payload) { p.QuoteID = "other" }, "quote ID"},
		{"amount", func(p *Payload) { p.Amount++ }, "amount"},
		{"currency", func(p *Payload) { p.Currency = "USD" }, "currency"},
		{"payer", func(p *Payload) { p.Payer = "other" }, "payer"},
		{"bytes", func(p *Payload) { p.Bytes-- }, "bytes"},
		{"first difference wins", func(p *Payload) { p.Bytes--; p.QuoteID = "other" }, "quote ID"},
		{"currency case matters", func(p *Payload) { p.Currency = "eur" }, "currency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := samplePayload()
			tt.modify(&got)
			err := got.Matches(want)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Matches: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("Matches error %v, want %v", err, ErrMismatch)
			}
			if !strings.HasPrefix(err.Error(), "receipt: receipt mismatch: "+tt.wantField+" is ") {
				t.Errorf("error %q does not name %q first", err, tt.wantField)
			}
		})
	}
}

func TestConstructorsCopyAndCheckKeys(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(mustHex(t, rfc8032Seed))
	s := NewSigner(priv)
	pub := s.PublicKey()
	v := NewVerifier(pub)
	priv[0] ^= 0xff
	pub[0] ^= 0xff
	s.PublicKey()[0] ^= 0xff
	r, err := s.Sign(samplePayload())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(r); err != nil {
		t.Errorf("constructors kept references to caller-owned keys: %v", err)
	}

	tests := []struct {
		name string
		f    func()
	}{
		{"NewSigner short key", func() { NewSigner(priv[:32]) }},
		{"NewSigner nil", func() { NewSigner(nil) }},
		{"NewVerifier short key", func() { NewVerifier(pub, pub[:31]) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("no panic")
				}
			}()
			tt.f()
		})
	}
}

func FuzzUnmarshalPayload(f *testing.F) {
	f.Add(samplePayload().Marshal())
	f.Add(Payload{}.Marshal())
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{1, 0x81, 0x02})
	f.Add(append(samplePayload().Marshal(), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := UnmarshalPayload(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted payload fails Validate: %v", err)
		}
		if !bytes.Equal(p.Marshal(), b) {
			t.Fatalf("accepted a non-canonical encoding %x (canonical %x)", b, p.Marshal())
		}
	})
}

// mutate returns orig when x is empty; otherwise len(x) bytes: orig XOR x
// where orig has bytes, and x beyond.
func mutate(orig, x []byte) []byte {
	if len(x) == 0 {
		return orig
	}
	out := bytes.Clone(x)
	for i := range min(len(orig), len(x)) {
		out[i] ^= orig[i]
	}
	return out
}

func FuzzVerify(f *testing.F) {
	s := testSigner(f)
	v := NewVerifier(s.PublicKey())
	valid, err := s.Sign(samplePayload())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid.KeyID, []byte(nil), []byte(nil))
	f.Add(valid.KeyID, []byte{0, 1}, []byte(nil))
	f.Add(valid.KeyID, []byte(nil), make([]byte, 64))
	f.Add("", []byte{1}, []byte{1})
	f.Fuzz(func(t *testing.T, keyID string, payloadX, sigX []byte) {
		r := Receipt{KeyID: keyID, Payload: mutate(valid.Payload, payloadX), Signature: mutate(valid.Signature, sigX)}
		p, err := v.Verify(r)
		unchanged := keyID == valid.KeyID && bytes.Equal(r.Payload, valid.Payload) && bytes.Equal(r.Signature, valid.Signature)
		switch {
		case unchanged && err != nil:
			t.Fatalf("valid receipt refused: %v", err)
		case unchanged && diff(p, samplePayload()) != "":
			t.Fatalf("valid receipt gave another payload")
		case !unchanged && err == nil:
			t.Fatalf("altered receipt accepted: %+v", r)
		case err != nil && !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrMalformed):
			t.Fatalf("error %v wraps no sentinel", err)
		}
	})
}

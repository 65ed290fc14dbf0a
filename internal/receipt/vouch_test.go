package receipt

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// TestVouchSkipsOnlyTheArithmetic: a receipt vouched for is taken as
// signed once, byte for byte, and is then checked in full again. The
// receipt here carries a broken signature on purpose: only skipping the
// check lets it through, which is why only the signer's own process may
// vouch.
func TestVouchSkipsOnlyTheArithmetic(t *testing.T) {
	s := testSigner(t)
	v := NewVerifier(s.PublicKey())
	r, err := s.Sign(samplePayload())
	if err != nil {
		t.Fatal(err)
	}
	broken := Receipt{KeyID: r.KeyID, Payload: r.Payload, Signature: bytes.Clone(r.Signature)}
	broken.Signature[0] ^= 1
	if _, err := v.Verify(broken); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("not vouched for: %v, want %v", err, ErrBadSignature)
	}
	v.Vouch(broken)
	p, err := v.Verify(broken)
	if err != nil {
		t.Fatalf("vouched for: %v, want it taken without the arithmetic", err)
	}
	if f := diff(p, samplePayload()); f != "" {
		t.Errorf("the payload was not parsed as ever: %s", f)
	}
	if _, err := v.Verify(broken); !errors.Is(err, ErrBadSignature) {
		t.Errorf("presented again: %v, want %v (a vouch is taken once)", err, ErrBadSignature)
	}

	// A vouched receipt with any byte changed is checked in full, and
	// leaves the vouch for the real one in place.
	v.Vouch(r)
	for i := range r.Payload {
		alt := Receipt{KeyID: r.KeyID, Payload: bytes.Clone(r.Payload), Signature: r.Signature}
		alt.Payload[i] ^= 0x80
		if _, err := v.Verify(alt); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("payload byte %d changed: %v, want %v", i, err, ErrBadSignature)
		}
	}
	if len(v.vouched.m) != 1 {
		t.Fatalf("vouches left: %d, want 1", len(v.vouched.m))
	}
	if _, err := v.Verify(r); err != nil || len(v.vouched.m) != 0 {
		t.Fatalf("the real receipt: %v, %d vouches left; want it verified and the vouch taken", err, len(v.vouched.m))
	}

	// A receipt under a key the verifier does not trust is not remembered,
	// and is refused as ever.
	other := randomSigner(t)
	ro, err := other.Sign(samplePayload())
	if err != nil {
		t.Fatal(err)
	}
	v.Vouch(ro)
	if _, err := v.Verify(ro); !errors.Is(err, ErrUnknownKey) || len(v.vouched.m) != 0 {
		t.Errorf("untrusted key: %v, %d vouches; want %v and none", err, len(v.vouched.m), ErrUnknownKey)
	}
}

// TestVouchBounded: a verifier remembers the last VouchedReceipts vouches;
// an older one is forgotten and its receipt checked in full.
func TestVouchBounded(t *testing.T) {
	s := testSigner(t)
	v := NewVerifier(s.PublicKey())
	var first Receipt
	for i := range VouchedReceipts + 10 {
		p := samplePayload()
		p.ReceiptID = fmt.Sprintf("rcpt-%05d", i)
		r, err := s.Sign(p)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = Receipt{KeyID: r.KeyID, Payload: r.Payload, Signature: bytes.Clone(r.Signature)}
			first.Signature[0] ^= 1 // so that only a vouch lets it through
			r = first
		}
		v.Vouch(r)
	}
	if len(v.vouched.m) != VouchedReceipts {
		t.Errorf("vouches kept: %d, want %d", len(v.vouched.m), VouchedReceipts)
	}
	if _, err := v.Verify(first); !errors.Is(err, ErrBadSignature) {
		t.Errorf("the oldest vouch: %v, want it forgotten and the receipt checked in full (%v)", err, ErrBadSignature)
	}
}

func BenchmarkVerify(b *testing.B) {
	s := testSigner(b)
	v := NewVerifier(s.PublicKey())
	r, err := s.Sign(samplePayload())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("checked", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.Verify(r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("vouched", func(b *testing.B) {
		for b.Loop() {
			v.Vouch(r)
			if _, err := v.Verify(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

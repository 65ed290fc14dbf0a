package seal

import (
	"crypto/hpke"
	"fmt"
)

// CheckPublicKey reports whether b is a valid KEM public key for suite s,
// so a server can refuse a bad guest key before any host tries to seal to it.
func CheckPublicKey(s Suite, b []byte) error {
	kem, err := s.kem()
	if err != nil {
		return fmt.Errorf("seal: check public key: %w", err)
	}
	pk, err := kem.NewPublicKey(b)
	if err != nil {
		return fmt.Errorf("seal: public key for %s: %w: %w", s, ErrMalformed, err)
	}
	// A well-formed X25519 key can still be a low-order point, to which
	// nobody can seal (the shared secret would be all zeros): try the
	// encapsulation a host will do, so such a key is refused now rather
	// than after the guest has paid.
	if _, _, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), nil); err != nil {
		return fmt.Errorf("seal: public key for %s cannot be sealed to: %w: %w", s, ErrMalformed, err)
	}
	return nil
}

package seal

import "fmt"

// CheckPublicKey reports whether b is a valid KEM public key for suite s,
// so a server can refuse a bad guest key before any host tries to seal to it.
func CheckPublicKey(s Suite, b []byte) error {
	kem, err := s.kem()
	if err != nil {
		return fmt.Errorf("seal: check public key: %w", err)
	}
	if _, err := kem.NewPublicKey(b); err != nil {
		return fmt.Errorf("seal: public key for %s: %w: %w", s, ErrMalformed, err)
	}
	return nil
}

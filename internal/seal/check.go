package seal

import (
	"bytes"
	"crypto/ecdh"
	"fmt"
)

// lowOrderProbe is a fixed X25519 private key used only to test remote
// keys. X25519 clamps every scalar to a multiple of the cofactor 8, so a
// DH with any key — this one or a host's fresh ephemeral one — gives the
// all-zero secret exactly when the remote point has low order.
var lowOrderProbe = func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{0x5a}, 32))
	if err != nil {
		panic(err)
	}
	return k
}()

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
	// A well-formed X25519 key can still be a low-order point, to which
	// nobody can seal (the shared secret would be all zeros): refuse it
	// now rather than after the guest has paid. Every suite's key ends in
	// an X25519 share (the hybrid's is ML-KEM-768's key, which
	// NewPublicKey has checked, then X25519's: crypto/hpke), and the
	// share is the only part an encapsulation can fail on. One DH with a
	// fixed key tells (lowOrderProbe), in about half the time of trying
	// the encapsulation a host will do for X25519, two fifths for the
	// hybrid (BenchmarkCheckPublicKey; TestCheckPublicKeyLowOrder holds
	// the two to the same verdicts).
	x, err := ecdh.X25519().NewPublicKey(b[len(b)-32:])
	if err == nil {
		_, err = lowOrderProbe.ECDH(x)
	}
	if err != nil {
		return fmt.Errorf("seal: public key for %s cannot be sealed to: %w: %w", s, ErrMalformed, err)
	}
	return nil
}

package seal

import (
	"encoding/hex"
	"fmt"
)

// lowOrder holds the X25519 u-coordinates of low order, little-endian with
// the top bit clear (X25519 ignores it): 0, 1, the two points of order 8,
// p-1, and p and p+1 (0 and 1 not reduced), with p = 2^255-19. X25519 clamps
// every scalar to a multiple of the cofactor, so a DH with any of these
// gives the all-zero secret, to which nobody can seal; every other u
// gives a secret a host can use (TestCheckPublicKeyLowOrder holds this
// table to a host's encapsulation, on these and on their neighbours).
var lowOrder = func() [][32]byte {
	hexes := []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	}
	out := make([][32]byte, len(hexes))
	for i, h := range hexes {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			panic(fmt.Sprintf("seal: lowOrder[%d]", i))
		}
		out[i] = [32]byte(b)
	}
	return out
}()

// isLowOrder reports whether the X25519 share u is a point of low order.
func isLowOrder(u []byte) bool {
	var x [32]byte
	copy(x[:], u)
	x[31] &= 0x7f
	for _, l := range lowOrder {
		if x == l {
			return true
		}
	}
	return false
}

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
	// share is the only part an encapsulation can fail on. The low-order
	// shares are seven (lowOrder): comparing with them takes nanoseconds,
	// where a DH took tens of microseconds (BenchmarkCheckPublicKey).
	if isLowOrder(b[len(b)-32:]) {
		return fmt.Errorf("seal: public key for %s cannot be sealed to: %w: a low-order X25519 point", s, ErrMalformed)
	}
	return nil
}

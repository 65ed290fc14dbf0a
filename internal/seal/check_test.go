package seal

import (
	"errors"
	"testing"
)

func TestCheckPublicKey(t *testing.T) {
	for _, s := range Suites() {
		k, err := GenerateKey(s)
		if err != nil {
			t.Fatal(err)
		}
		size := len(k.PublicKey())
		for _, tc := range []struct {
			name string
			pub  []byte
			ok   bool
		}{
			{"generated", k.PublicKey(), true},
			// All zeros: for X25519 the low-order point 0, to which no
			// host can seal (found by FuzzCheckPublicKey).
			{"all zeros", make([]byte, size), false},
			{"short", k.PublicKey()[:size-1], false},
			{"long", append(append([]byte{}, k.PublicKey()...), 0), false},
		} {
			t.Run(string(s)+"/"+tc.name, func(t *testing.T) {
				err := CheckPublicKey(s, tc.pub)
				if tc.ok != (err == nil) {
					t.Fatalf("CheckPublicKey = %v, want ok=%v", err, tc.ok)
				}
				if err != nil && !errors.Is(err, ErrMalformed) {
					t.Fatalf("error %v is not ErrMalformed", err)
				}
			})
		}
	}
}

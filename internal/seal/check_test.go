package seal

import (
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"math/big"
	"slices"
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

// TestCheckPublicKeyLowOrder: CheckPublicKey's one DH with a fixed key
// must refuse exactly the keys a host's encapsulation refuses, for each
// suite: every encoding of a low-order X25519 point (u = 0, 1, p−1, the
// two points of order 8, and the non-canonical p and p+1, each with and
// without the ignored top bit) as the key or the hybrid key's X25519
// share, and no random one.
func TestCheckPublicKeyLowOrder(t *testing.T) {
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	order8a, _ := new(big.Int).SetString("325606250916557431795983626356110631294008115727848805560023387167927233504", 10)
	order8b, _ := new(big.Int).SetString("39382357235489614581723060781553021112529911719440698176882885853963445705823", 10)
	encode := func(u *big.Int, top bool) []byte {
		b := make([]byte, 32)
		u.FillBytes(b)
		slices.Reverse(b) // little-endian
		if top {
			b[31] |= 0x80
		}
		return b
	}
	var low [][]byte
	for _, u := range []*big.Int{big.NewInt(0), big.NewInt(1), new(big.Int).Sub(p, big.NewInt(1)), order8a, order8b, p, new(big.Int).Add(p, big.NewInt(1))} {
		low = append(low, encode(u, false), encode(u, true))
	}
	for _, s := range Suites() {
		kem, err := s.kem()
		if err != nil {
			t.Fatal(err)
		}
		hostRefuses := func(b []byte) bool {
			pk, err := kem.NewPublicKey(b)
			if err != nil {
				return true
			}
			_, _, err = hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), nil)
			return err != nil
		}
		k, err := GenerateKey(s)
		if err != nil {
			t.Fatal(err)
		}
		head := k.PublicKey()[:len(k.PublicKey())-32] // the hybrid's ML-KEM key; none for X25519
		for _, share := range low {
			b := append(slices.Clip(head), share...)
			if !hostRefuses(b) {
				t.Fatalf("%s: test data: a host can seal to a key ending in %x, which is not a low-order point", s, share)
			}
			if err := CheckPublicKey(s, b); !errors.Is(err, ErrMalformed) {
				t.Errorf("%s: CheckPublicKey(… %x) = %v, want ErrMalformed (low order)", s, share, err)
			}
		}
		// Their neighbours (each one bit off) are points a host can seal
		// to, but for the top bit, which X25519 ignores.
		for _, share := range low {
			for bit := range 255 {
				near := slices.Clone(share)
				near[bit/8] ^= 1 << (bit % 8)
				b := append(slices.Clip(head), near...)
				if got, want := CheckPublicKey(s, b) != nil, hostRefuses(b); got != want {
					t.Fatalf("%s: CheckPublicKey(… %x) refused=%v, a host's encapsulation refused=%v", s, near, got, want)
				}
			}
		}
		for range 200 {
			share := make([]byte, 32)
			rand.Read(share)
			b := append(slices.Clip(head), share...)
			if got, want := CheckPublicKey(s, b) != nil, hostRefuses(b); got != want {
				t.Fatalf("%s: CheckPublicKey(… %x) refused=%v, a host's encapsulation refused=%v", s, share, got, want)
			}
		}
	}
}

// BenchmarkCheckPublicKey: the server checks each guest key of an access
// request (docs/benchmarks.md).
func BenchmarkCheckPublicKey(b *testing.B) {
	for _, s := range Suites() {
		k, err := GenerateKey(s)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(s), func(b *testing.B) {
			for b.Loop() {
				if err := CheckPublicKey(s, k.PublicKey()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

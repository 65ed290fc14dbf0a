package evidence

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
)

func TestMessage(t *testing.T) {
	got := Message("ses_a", 258)
	want := append([]byte("sharespot/usage-ack/v1\x00ses_a\x00"), 0, 0, 0, 0, 0, 0, 1, 2)
	if !bytes.Equal(got, want) {
		t.Fatalf("Message = %q, want %q", got, want)
	}
}

func TestVerify(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	sig := Sign(key, "ses_a", 1000)
	for _, tc := range []struct {
		name     string
		pub      []byte
		session  string
		received int64
		sig      []byte
		ok       bool
	}{
		{"good", pub, "ses_a", 1000, sig, true},
		{"another key", other, "ses_a", 1000, sig, false},
		{"another session", pub, "ses_b", 1000, sig, false},
		{"another count", pub, "ses_a", 1001, sig, false},
		{"negative", pub, "ses_a", -1, Sign(key, "ses_a", -1), false},
		{"short signature", pub, "ses_a", 1000, sig[:10], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Verify(tc.pub, tc.session, tc.received, tc.sig); (err == nil) != tc.ok {
				t.Fatalf("Verify = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	for _, tc := range []struct{ tranche, window, hi int64 }{
		{5_000_000, 1_000_000, 1_000_000},
		{100_000_000, 2_000_000, 5_000_000},
	} {
		if w := Window(tc.tranche); w != tc.window {
			t.Errorf("Window(%d) = %d, want %d", tc.tranche, w, tc.window)
		}
		if lo, hi := WindowBounds(tc.tranche); lo != 65536 || hi != tc.hi {
			t.Errorf("WindowBounds(%d) = %d, %d", tc.tranche, lo, hi)
		}
	}
}

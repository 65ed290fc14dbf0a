package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
)

func TestAckMessage(t *testing.T) {
	got := AckMessage("ses_a", 258)
	want := append([]byte("sharespot/usage-ack/v1\x00ses_a\x00"), 0, 0, 0, 0, 0, 0, 1, 2)
	if !bytes.Equal(got, want) {
		t.Fatalf("AckMessage = %q, want %q", got, want)
	}
}

func TestVerifyAck(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	sig := SignAck(key, "ses_a", 1000)
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
		{"negative", pub, "ses_a", -1, SignAck(key, "ses_a", -1), false},
		{"short signature", pub, "ses_a", 1000, sig[:10], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifyAck(tc.pub, tc.session, tc.received, tc.sig); (err == nil) != tc.ok {
				t.Fatalf("VerifyAck = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	// max(1 MB, 2 % of everything granted)
	for _, tc := range []struct{ granted, window int64 }{
		{0, 1_000_000},
		{5_000_000, 1_000_000},
		{50_000_000, 1_000_000},
		{100_000_000, 2_000_000},
		{1_001_000_000, 20_020_000},
	} {
		if w := Window(tc.granted); w != tc.window {
			t.Errorf("Window(%d) = %d, want %d", tc.granted, w, tc.window)
		}
	}
}

func TestSignedMessagesDiffer(t *testing.T) {
	// Each label keeps a signature from meaning anything else the key
	// signs: no two messages built from the same bytes are equal.
	nonce := []byte("0123456789abcdef")
	msgs := map[string][]byte{
		"sign-in":    SignInMessage(nonce),
		"add-device": AddDeviceMessage("acc_x", nonce),
		"ack":        AckMessage("acc_x", 1),
	}
	for a, ma := range msgs {
		for b, mb := range msgs {
			if a != b && bytes.Equal(ma, mb) {
				t.Errorf("%s and %s sign the same bytes", a, b)
			}
		}
	}
	if want := append([]byte("sharespot/signin/v1\x00"), nonce...); !bytes.Equal(msgs["sign-in"], want) {
		t.Errorf("SignInMessage = %q, want %q", msgs["sign-in"], want)
	}
	if want := append([]byte("sharespot/add-device/v1\x00acc_x\x00"), nonce...); !bytes.Equal(msgs["add-device"], want) {
		t.Errorf("AddDeviceMessage = %q, want %q", msgs["add-device"], want)
	}
}

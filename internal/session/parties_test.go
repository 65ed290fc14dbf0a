package session

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
)

// TestVerifyKnownAck: an acknowledgment of a session whose parties the
// engine remembers is checked without a read, with the same verdicts as
// VerifyAck's; a session it does not remember is left to VerifyAck.
func TestVerifyKnownAck(t *testing.T) {
	guestPub, guestKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, mallory, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{}
	verified := sharespotv1.UsageMode_USAGE_MODE_VERIFIED
	e.parties.put(&row{ID: "ses_v", Host: "host", Guest: "guest", GuestKey: guestPub, Mode: verified})
	e.parties.put(&row{ID: "ses_u", Host: "host", Guest: "guest", GuestKey: guestPub, Mode: sharespotv1.UsageMode_USAGE_MODE_UNVERIFIED})
	ack := func(key ed25519.PrivateKey, session string, n int64) *sharespotv1.UsageAck {
		return &sharespotv1.UsageAck{SessionId: session, ReceivedBytes: n, Signature: protocol.SignAck(key, session, n)}
	}
	for _, tc := range []struct {
		name  string
		by    string
		ack   *sharespotv1.UsageAck
		known bool
		kind  problem.Kind // 0: accepted
	}{
		{"by the guest", "guest", ack(guestKey, "ses_v", 5), true, 0},
		{"attached by the host", "host", ack(guestKey, "ses_v", 5), true, 0},
		{"forged", "guest", ack(mallory, "ses_v", 5), true, problem.Denied},
		{"another count", "guest", &sharespotv1.UsageAck{SessionId: "ses_v", ReceivedBytes: 6, Signature: protocol.SignAck(guestKey, "ses_v", 5)}, true, problem.Denied},
		{"signed for another session", "guest", &sharespotv1.UsageAck{SessionId: "ses_v", ReceivedBytes: 5, Signature: protocol.SignAck(guestKey, "ses_u", 5)}, true, problem.Denied},
		{"by a third party", "eve", ack(guestKey, "ses_v", 5), true, problem.NotFound},
		{"unverified", "guest", ack(guestKey, "ses_u", 5), true, problem.WrongState},
		{"missing", "guest", nil, true, problem.Invalid},
		{"not remembered", "guest", ack(guestKey, "ses_x", 5), false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			va, known, err := e.VerifyKnownAck(Party{DeviceID: tc.by}, tc.ack)
			if known != tc.known {
				t.Fatalf("known = %v, want %v", known, tc.known)
			}
			if !known {
				return
			}
			if tc.kind == 0 {
				if err != nil || va.Received() != tc.ack.ReceivedBytes {
					t.Fatalf("refused: %v (received %d)", err, va.Received())
				}
				return
			}
			if got := problem.KindOf(err); got != tc.kind {
				t.Fatalf("error %v is of kind %v, want %v", err, got, tc.kind)
			}
		})
	}
	// The memory is bounded: at its cap it starts over.
	for i := range partiesCap {
		e.parties.put(&row{ID: fmt.Sprintf("ses_%d", i), Mode: verified})
	}
	if _, ok := e.parties.get("ses_v"); ok {
		t.Fatalf("the memory kept ses_v past its cap of %d", partiesCap)
	}
	if _, ok := e.parties.get(fmt.Sprintf("ses_%d", partiesCap-1)); !ok {
		t.Fatal("the memory forgot the session put last")
	}
}

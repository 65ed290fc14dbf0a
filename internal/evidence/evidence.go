// Package evidence is the guest's evidence of usage: a signed, cumulative
// count of the bytes it received in a session (a usage acknowledgment). The
// guest's client signs one as bytes arrive; the server verifies and keeps
// the highest, and settlement bills at most it plus the host's credit
// window. It depends on nothing but the standard library, so both the
// client and the server use it.
package evidence

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
)

const label = "sharespot/usage-ack/v1\x00"

// Message is what a guest's device key signs: "sharespot/usage-ack/v1\x00"
// || sessionID || "\x00" || received (8 bytes, big-endian). The label keeps
// the signature from meaning anything else the key signs (sign-in, adding
// a device); the session ID binds it to one session.
func Message(sessionID string, received int64) []byte {
	m := make([]byte, 0, len(label)+len(sessionID)+9)
	m = append(m, label...)
	m = append(m, sessionID...)
	m = append(m, 0)
	return binary.BigEndian.AppendUint64(m, uint64(received))
}

// Sign signs an acknowledgment of received bytes in a session.
func Sign(key ed25519.PrivateKey, sessionID string, received int64) []byte {
	return ed25519.Sign(key, Message(sessionID, received))
}

// Verify checks an acknowledgment's signature by the guest's public key.
func Verify(pub []byte, sessionID string, received int64, sig []byte) error {
	switch {
	case len(pub) != ed25519.PublicKeySize:
		return fmt.Errorf("evidence: public key has %d bytes", len(pub))
	case received < 0:
		return fmt.Errorf("evidence: received_bytes %d is negative", received)
	case len(sig) != ed25519.SignatureSize:
		return fmt.Errorf("evidence: signature has %d bytes, want %d", len(sig), ed25519.SignatureSize)
	case !ed25519.Verify(pub, Message(sessionID, received), sig):
		return errors.New("evidence: the signature is not the guest's over this session and count")
	}
	return nil
}

// Window is the default credit window for a tranche of bytes: max(1 MB,
// 2 % of the tranche).
func Window(tranche int64) int64 { return max(1_000_000, tranche/50) }

// WindowBounds are the credit windows a host may set for a tranche: from
// 64 KiB to max(1 MB, 5 % of the tranche).
func WindowBounds(tranche int64) (lo, hi int64) { return 64 << 10, max(1_000_000, tranche/20) }

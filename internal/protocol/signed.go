package protocol

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
)

// Labels put in front of everything a device key signs, so that a
// signature means one thing only.
const (
	signInLabel    = "sharespot/signin/v1\x00"
	addDeviceLabel = "sharespot/add-device/v1\x00"
	ackLabel       = "sharespot/usage-ack/v1\x00"
)

// SignInMessage is what a device signs to sign in: the label and the
// server's nonce.
func SignInMessage(nonce []byte) []byte { return append([]byte(signInLabel), nonce...) }

// AddDeviceMessage is what a new device key signs to prove, when it is
// enrolled into an existing account, that its holder agrees to join that
// account: "sharespot/add-device/v1\x00" || accountID || "\x00" || nonce,
// with a nonce from Challenge for the new key.
func AddDeviceMessage(accountID string, nonce []byte) []byte {
	m := make([]byte, 0, len(addDeviceLabel)+len(accountID)+1+len(nonce))
	m = append(m, addDeviceLabel...)
	m = append(m, accountID...)
	m = append(m, 0)
	return append(m, nonce...)
}

// AckMessage is what a guest's device key signs to acknowledge the bytes
// it received in a session (its evidence of usage):
// "sharespot/usage-ack/v1\x00" || sessionID || "\x00" || received (8
// bytes, big-endian). The session ID binds it to one session; the count is
// cumulative, so the highest one says everything.
func AckMessage(sessionID string, received int64) []byte {
	m := make([]byte, 0, len(ackLabel)+len(sessionID)+9)
	m = append(m, ackLabel...)
	m = append(m, sessionID...)
	m = append(m, 0)
	return binary.BigEndian.AppendUint64(m, uint64(received))
}

// SignAck signs an acknowledgment of received bytes in a session.
func SignAck(key ed25519.PrivateKey, sessionID string, received int64) []byte {
	return ed25519.Sign(key, AckMessage(sessionID, received))
}

// VerifyAck checks an acknowledgment's signature by the guest's public key.
func VerifyAck(pub []byte, sessionID string, received int64, sig []byte) error {
	switch {
	case len(pub) != ed25519.PublicKeySize:
		return fmt.Errorf("protocol: acknowledgment key has %d bytes", len(pub))
	case received < 0:
		return fmt.Errorf("protocol: acknowledged bytes %d is negative", received)
	case len(sig) != ed25519.SignatureSize:
		return fmt.Errorf("protocol: acknowledgment signature has %d bytes, want %d", len(sig), ed25519.SignatureSize)
	case !ed25519.Verify(pub, AckMessage(sessionID, received), sig):
		return errors.New("protocol: the signature is not the guest's over this session and count")
	}
	return nil
}

// Window is the credit window of a session whose grants add up to granted
// bytes: max(1 MB, 2 % of granted). One rule for the gateways, which let a
// verified session's guest run at most this far ahead of its last
// acknowledgment, and for settlement, which bills at most the last
// acknowledgment plus this: the most a host can bill beyond what its guest
// acknowledged.
func Window(granted int64) int64 { return max(1_000_000, granted/50) }

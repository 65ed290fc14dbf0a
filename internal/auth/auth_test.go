package auth_test

import (
	"bytes"
	"testing"

	"github.com/sharespot/sharespot/internal/protocol"
)

// TestAddDeviceMessage pins the bytes a new device key signs to join an
// account (proto AddDeviceRequest.signature, docs/protocol.md), and that
// they differ from a sign-in over the same nonce.
func TestAddDeviceMessage(t *testing.T) {
	nonce := bytes.Repeat([]byte{0xAB}, 32)
	got := protocol.AddDeviceMessage("acct_x1", nonce)
	want := append([]byte("sharespot/add-device/v1\x00acct_x1\x00"), nonce...)
	if !bytes.Equal(got, want) {
		t.Fatalf("AddDeviceMessage = %q\nwant              %q", got, want)
	}
	if bytes.Equal(got, protocol.SignInMessage(nonce)) || bytes.HasPrefix(got, []byte("sharespot/signin/v1\x00")) {
		t.Fatal("the add-device message is not separated from the sign-in message")
	}
	if bytes.Equal(got, protocol.AddDeviceMessage("acct_x2", nonce)) {
		t.Fatal("the add-device message does not bind the account")
	}
}

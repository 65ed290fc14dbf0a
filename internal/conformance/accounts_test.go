package conformance

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
)

// addDevice enrols key into c's account with the new key's proof of
// possession, made as the new key's holder makes it: with a challenge asked
// for without a token.
func addDevice(t *testing.T, url string, c *client.Client, key ed25519.PrivateKey, name string) (*connect.Response[sharespotv1.AddDeviceResponse], error) {
	t.Helper()
	nonce, sig, err := client.AddDeviceProof(t.Context(), sharespotv1AuthWithoutToken(url), key, c.AccountID())
	if err != nil {
		t.Fatal(err)
	}
	return c.Auth.AddDevice(t.Context(), connect.NewRequest(&sharespotv1.AddDeviceRequest{
		PublicKey: key.Public().(ed25519.PublicKey), DeviceName: name, Nonce: nonce, Signature: sig}))
}

// TestAccountOwnsDevices: a signed-in device enrols a second key into its
// account, with the new key's proof of possession; both devices then share
// the account's one wallet.
func TestAccountOwnsDevices(t *testing.T) {
	ctx := context.Background()
	env := harness.Start(t, nil)
	phone := env.Device(t, "phone")
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	res, err := addDevice(t, env.URL, phone, key, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	laptop := client.New(env.URL, key, client.Options{})
	if err := laptop.SignIn(ctx); err != nil {
		t.Fatal(err)
	}
	if laptop.AccountID() != phone.AccountID() || laptop.DeviceID() != res.Msg.DeviceId || laptop.DeviceID() == phone.DeviceID() {
		t.Fatalf("laptop is %s in %s; phone is %s in %s", laptop.DeviceID(), laptop.AccountID(), phone.DeviceID(), phone.AccountID())
	}
	env.Fund(t, phone, currency, 700)
	if got := harness.Balance(t, laptop, currency); got != 700 {
		t.Fatalf("the laptop sees %d in the account's wallet, want 700", got)
	}
	t.Run("refusals", func(t *testing.T) {
		// With fresh, valid proofs from the key's holder: the key is taken.
		_, err := addDevice(t, env.URL, phone, key, "")
		if harness.Code(err) != connect.CodeAlreadyExists {
			t.Errorf("enrolling a device twice: %v", err)
		}
		other := env.Device(t, "other")
		_, err = addDevice(t, env.URL, other, key, "")
		if harness.Code(err) != connect.CodeAlreadyExists {
			t.Errorf("moving a device to another account: %v", err)
		}
		_, err = phone.Auth.AddDevice(ctx, connect.NewRequest(&sharespotv1.AddDeviceRequest{PublicKey: []byte{1, 2, 3}}))
		if harness.Code(err) != connect.CodeInvalidArgument {
			t.Errorf("a 3-byte key: %v", err)
		}
		anon := sharespotv1AuthWithoutToken(env.URL)
		_, err = anon.AddDevice(ctx, connect.NewRequest(&sharespotv1.AddDeviceRequest{PublicKey: make([]byte, 32)}))
		if harness.Code(err) != connect.CodeUnauthenticated {
			t.Errorf("without a token: %v", err)
		}
		env.MustAudit(t)
	})
}

// TestAckBeyondInbox: acknowledging a message that does not exist is
// refused with a clear error, and changes nothing.
func TestAckBeyondInbox(t *testing.T) {
	ctx := context.Background()
	env := harness.Start(t, nil)
	d := env.Device(t, "d")
	_, err := d.Inbox.Ack(ctx, connect.NewRequest(&sharespotv1.AckRequest{Seq: 5}))
	if harness.Code(err) != connect.CodeInvalidArgument {
		t.Fatalf("ack beyond the inbox: %v, want invalid_argument", err)
	}
	if _, err := d.Inbox.Ack(ctx, connect.NewRequest(&sharespotv1.AckRequest{Seq: 0})); err != nil {
		t.Fatalf("ack 0 (nothing) = %v", err)
	}
}

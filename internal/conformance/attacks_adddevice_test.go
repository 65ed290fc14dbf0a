package conformance

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/protocol"
)

// testAttackAddDevice (finding 5 of TestAttacks) proves that AddDevice enrols a key only with its
// holder's proof of possession, bound to the account it joins and used
// once: an attacker who knows a victim's public key cannot capture the
// victim's device into the attacker's account, and so cannot receive the
// money meant for the victim.
func testAttackAddDevice(t *testing.T) {
	t.Run("without_proof", testAddDeviceWithoutProof)
	t.Run("signed_by_another_key", testAddDeviceSignedByAnotherKey)
	t.Run("proof_for_another_account", testAddDeviceProofForAnotherAccount)
	t.Run("proof_used_twice", testAddDeviceProofUsedTwice)
	t.Run("sign_in_nonce_reused", testAddDeviceSignInNonceReused)
	t.Run("expired_challenge", testAddDeviceExpiredChallenge)
}

// newKey returns a fresh Ed25519 key pair.
func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, key
}

// challengeFor asks, without a token, for a challenge for pub, as anyone
// can.
func challengeFor(t *testing.T, env *harness.Env, pub ed25519.PublicKey) []byte {
	t.Helper()
	res, err := sharespotv1AuthWithoutToken(env.URL).Challenge(t.Context(), connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: pub}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.Nonce
}

// addWith returns a call of AddDevice by c with the given fields.
func addWith(t *testing.T, c *client.Client, pub ed25519.PublicKey, nonce, sig []byte) func() error {
	return func() error {
		_, err := c.Auth.AddDevice(t.Context(), connect.NewRequest(&sharespotv1.AddDeviceRequest{PublicKey: pub, Nonce: nonce, Signature: sig}))
		return err
	}
}

// signInAs signs key in as a device (enrolling it on first contact).
func signInAs(t *testing.T, env *harness.Env, key ed25519.PrivateKey, name string) *client.Client {
	t.Helper()
	c := client.New(env.URL, key, client.Options{DeviceName: name})
	if err := c.SignIn(t.Context()); err != nil {
		t.Fatalf("sign in %s: %v", name, err)
	}
	return c
}

// fundedAttacker is Mallory, signed in to her own account holding 250.
func fundedAttacker(t *testing.T, env *harness.Env) *client.Client {
	t.Helper()
	mallory := env.Device(t, "mallory")
	env.Fund(t, mallory, currency, 250)
	return mallory
}

// victimFundedNotAttacker funds the victim's account with 500, as the
// operator does, and checks that the money reaches the victim's wallet and
// none of it Mallory's.
func victimFundedNotAttacker(t *testing.T, env *harness.Env, victim, mallory *client.Client) {
	t.Helper()
	if victim.AccountID() == mallory.AccountID() {
		t.Fatalf("the victim's device %s signed in to the attacker's account %s", victim.DeviceID(), mallory.AccountID())
	}
	env.Fund(t, victim, currency, 500)
	if got := harness.Balance(t, victim, currency); got != 500 {
		t.Errorf("the victim's wallet holds %d after funding 500, want 500", got)
	}
	if got := harness.Balance(t, mallory, currency); got != 250 {
		t.Errorf("the attacker's wallet holds %d after the victim was funded, want the 250 it had", got)
	}
	env.MustAudit(t)
}

// testAddDeviceWithoutProof: Mallory knows the victim's public key before
// the victim's first sign-in and tries to enrol it into her account with
// no proof, or with a nonce but no signature. Both are refused, nothing
// changes, and the victim's first sign-in makes the victim's own account,
// which the victim's money then reaches.
func testAddDeviceWithoutProof(t *testing.T) {
	env := harness.Start(t, nil)
	mallory := fundedAttacker(t, env)
	pub, key := newKey(t)
	refusedQuietly(t, env, addWith(t, mallory, pub, nil, nil), connect.CodeInvalidArgument, "proof of possession", "nonce", "signature")
	nonce := challengeFor(t, env, pub)
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce, nil), connect.CodeInvalidArgument, "proof of possession")
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce[:16], make([]byte, ed25519.SignatureSize)), connect.CodeInvalidArgument, "nonce must be 32 bytes")
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce, make([]byte, ed25519.SignatureSize)), connect.CodePermissionDenied, "signature does not verify")

	victim := signInAs(t, env, key, "victim")
	if victim.AccountID() == mallory.AccountID() {
		t.Fatalf("the victim's first sign-in landed in the attacker's account %s", mallory.AccountID())
	}
	victimFundedNotAttacker(t, env, victim, mallory)
}

// testAddDeviceSignedByAnotherKey: a proof signed by any key but the one
// being enrolled is refused, and so is the enrolled key's own sign-in
// signature over the same nonce (the labels keep the two apart).
func testAddDeviceSignedByAnotherKey(t *testing.T) {
	env := harness.Start(t, nil)
	mallory := fundedAttacker(t, env)
	pub, key := newKey(t)
	_, other := newKey(t)
	nonce := challengeFor(t, env, pub)
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce, ed25519.Sign(other, protocol.AddDeviceMessage(mallory.AccountID(), nonce))),
		connect.CodePermissionDenied, "signature does not verify", mallory.AccountID())
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce, ed25519.Sign(key, protocol.SignInMessage(nonce))),
		connect.CodePermissionDenied, "signature does not verify")
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce, ed25519.Sign(key, nonce)),
		connect.CodePermissionDenied, "signature does not verify")
	// Nor does an add-device proof sign the key in.
	_, err := sharespotv1AuthWithoutToken(env.URL).SignIn(t.Context(), connect.NewRequest(&sharespotv1.SignInRequest{
		PublicKey: pub, Nonce: nonce, Signature: ed25519.Sign(key, protocol.AddDeviceMessage(mallory.AccountID(), nonce))}))
	refused(t, err, connect.CodeUnauthenticated, "signature does not verify")

	victim := signInAs(t, env, key, "victim")
	victimFundedNotAttacker(t, env, victim, mallory)
}

// testAddDeviceProofForAnotherAccount: the victim's laptop makes a proof to
// join the victim's account A; Mallory, signed in to account B, captures
// it and replays it. It is refused (it is bound to A), nothing changes, and
// the laptop then joins A, its sign-in lands in A, and money for the
// laptop's account reaches A's wallet, none of it B's.
func testAddDeviceProofForAnotherAccount(t *testing.T) {
	env := harness.Start(t, nil)
	mallory := fundedAttacker(t, env)
	phone := env.Device(t, "victim-phone")
	pub, key := newKey(t)
	nonce, sig, err := client.AddDeviceProof(t.Context(), sharespotv1AuthWithoutToken(env.URL), key, phone.AccountID())
	if err != nil {
		t.Fatal(err)
	}
	refusedQuietly(t, env, addWith(t, mallory, pub, nonce, sig), connect.CodePermissionDenied, "signature does not verify", mallory.AccountID())

	res, err := addDevice(t, env.URL, phone, key, "victim-laptop")
	if err != nil {
		t.Fatalf("the victim enrolling the laptop into its own account: %v", err)
	}
	if res.Msg.AccountId != phone.AccountID() {
		t.Fatalf("the laptop joined %s, want the victim's account %s", res.Msg.AccountId, phone.AccountID())
	}
	laptop := signInAs(t, env, key, "victim-laptop")
	if laptop.AccountID() != phone.AccountID() || laptop.DeviceID() != res.Msg.DeviceId {
		t.Fatalf("the laptop signed in as %s in %s; want %s in the victim's account %s (the attacker's is %s)",
			laptop.DeviceID(), laptop.AccountID(), res.Msg.DeviceId, phone.AccountID(), mallory.AccountID())
	}
	victimFundedNotAttacker(t, env, laptop, mallory)
	if got := harness.Balance(t, phone, currency); got != 500 {
		t.Errorf("the victim's phone sees %d in its account's wallet, want 500", got)
	}
}

// testAddDeviceProofUsedTwice: a proof enrols its key once; sent again,
// even by the account it was made for, its nonce is refused as used.
func testAddDeviceProofUsedTwice(t *testing.T) {
	env := harness.Start(t, nil)
	phone := env.Device(t, "phone")
	pub, key := newKey(t)
	nonce, sig, err := client.AddDeviceProof(t.Context(), sharespotv1AuthWithoutToken(env.URL), key, phone.AccountID())
	if err != nil {
		t.Fatal(err)
	}
	if err := addWith(t, phone, pub, nonce, sig)(); err != nil {
		t.Fatalf("first use of the proof: %v", err)
	}
	refusedQuietly(t, env, addWith(t, phone, pub, nonce, sig), connect.CodeUnauthenticated, "challenge unknown, used or expired")
	// Nor can the nonce the proof used then sign the key in.
	_, err = sharespotv1AuthWithoutToken(env.URL).SignIn(t.Context(), connect.NewRequest(&sharespotv1.SignInRequest{
		PublicKey: pub, Nonce: nonce, Signature: ed25519.Sign(key, protocol.SignInMessage(nonce))}))
	refused(t, err, connect.CodeUnauthenticated, "challenge unknown, used or expired")
	env.MustAudit(t)
}

// testAddDeviceSignInNonceReused: a nonce the key has used to sign in
// cannot then prove an enrolment, even correctly signed for the account.
func testAddDeviceSignInNonceReused(t *testing.T) {
	env := harness.Start(t, nil)
	phone := env.Device(t, "phone")
	pub, key := newKey(t)
	nonce := challengeFor(t, env, pub)
	_, err := sharespotv1AuthWithoutToken(env.URL).SignIn(t.Context(), connect.NewRequest(&sharespotv1.SignInRequest{
		PublicKey: pub, Nonce: nonce, Signature: ed25519.Sign(key, protocol.SignInMessage(nonce))}))
	if err != nil {
		t.Fatalf("sign-in: %v", err)
	}
	refusedQuietly(t, env, addWith(t, phone, pub, nonce, ed25519.Sign(key, protocol.AddDeviceMessage(phone.AccountID(), nonce))),
		connect.CodeUnauthenticated, "challenge unknown, used or expired")
	env.MustAudit(t)
}

// testAddDeviceExpiredChallenge: a proof over an expired nonce is refused.
func testAddDeviceExpiredChallenge(t *testing.T) {
	env := harness.Start(t, nil)
	phone := env.Device(t, "phone")
	pub, key := newKey(t)
	nonce, sig, err := client.AddDeviceProof(t.Context(), sharespotv1AuthWithoutToken(env.URL), key, phone.AccountID())
	if err != nil {
		t.Fatal(err)
	}
	env.Clock.Advance(time.Minute + time.Second)
	refusedQuietly(t, env, addWith(t, phone, pub, nonce, sig), connect.CodeUnauthenticated, "challenge unknown, used or expired")
	env.MustAudit(t)
}

// Package auth signs devices in. Each device holds an Ed25519 key and its
// device ID is derived from the public key. Sign-in is challenge–response:
// the server hands out a single-use nonce, the device signs it, and gets a
// short-lived bearer token. Tokens are stored only as SHA-256 hashes.
package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/deviceid"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// tokenPrefix marks Sharespot bearer tokens (and makes leaked ones findable).
const tokenPrefix = "sst_"

// Auth issues and checks tokens.
type Auth struct {
	st           *store.Store
	now          func() time.Time
	challengeTTL time.Duration
	tokenTTL     time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cached
}

type cached struct {
	party     session.Party
	expiresMS int64
}

// New returns an Auth issuing tokens that live tokenTTL.
func New(st *store.Store, now func() time.Time, tokenTTL time.Duration) *Auth {
	return &Auth{st: st, now: now, challengeTTL: time.Minute, tokenTTL: tokenTTL, cache: map[[32]byte]cached{}}
}

func checkKey(pub []byte) error {
	if len(pub) != ed25519.PublicKeySize {
		return problem.Invalidf("public_key must be a %d-byte Ed25519 key, got %d bytes", ed25519.PublicKeySize, len(pub))
	}
	return nil
}

// Challenge returns a single-use nonce for pub to sign.
func (a *Auth) Challenge(ctx context.Context, pub []byte) (nonce []byte, expires time.Time, err error) {
	if err := checkKey(pub); err != nil {
		return nil, time.Time{}, err
	}
	nonce = make([]byte, 32)
	rand.Read(nonce)
	expires = a.now().Add(a.challengeTTL)
	err = a.st.Write(ctx, func(tx *store.Tx) error {
		_, err := tx.Exec(`INSERT INTO challenges (nonce, public_key, expires_ms) VALUES (?, ?, ?)`, nonce, pub, expires.UnixMilli())
		return err
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("auth: store challenge: %w", err)
	}
	return nonce, expires, nil
}

// consumeChallenge deletes the unexpired challenge nonce issued for pub, so
// that each nonce proves one sign-in or one enrolment, once.
func consumeChallenge(tx *store.Tx, pub, nonce []byte, nowMS int64) error {
	n, err := tx.ExecN(`DELETE FROM challenges WHERE nonce = ? AND public_key = ? AND expires_ms > ?`, nonce, pub, nowMS)
	if err != nil {
		return err
	}
	if n != 1 {
		return problem.Unauthenticatedf("challenge unknown, used or expired: ask for a new one")
	}
	return nil
}

// SignedIn is the outcome of a sign-in.
type SignedIn struct {
	Token   string
	Expires time.Time
	Party   session.Party
}

// SignIn checks the signed nonce and issues a token. A key never seen
// before is enrolled as a new device of a new account with one wallet.
func (a *Auth) SignIn(ctx context.Context, pub, nonce, sig []byte, name string) (SignedIn, error) {
	if err := checkKey(pub); err != nil {
		return SignedIn{}, err
	}
	if len(name) > 64 {
		return SignedIn{}, problem.Invalidf("device_name is %d bytes; at most 64", len(name))
	}
	if len(nonce) != 32 || len(sig) != ed25519.SignatureSize {
		return SignedIn{}, problem.Invalidf("nonce must be 32 bytes and signature %d bytes", ed25519.SignatureSize)
	}
	if !ed25519.Verify(ed25519.PublicKey(pub), protocol.SignInMessage(nonce), sig) {
		return SignedIn{}, problem.Unauthenticatedf("signature does not verify for this key and nonce")
	}
	id := deviceid.FromPublicKey(ed25519.PublicKey(pub)).String()
	raw := make([]byte, 32)
	rand.Read(raw)
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	hash := sha256.Sum256([]byte(token))
	now := a.now()
	out := SignedIn{Token: token, Expires: now.Add(a.tokenTTL), Party: session.Party{DeviceID: id, PublicKey: pub}}
	err := a.st.Write(ctx, func(tx *store.Tx) error {
		if err := consumeChallenge(tx, pub, nonce, now.UnixMilli()); err != nil {
			return err
		}
		err := tx.QueryRow(`SELECT account_id FROM devices WHERE id = ?`, id).Scan(&out.Party.AccountID)
		if errors.Is(err, store.ErrNotFound) {
			out.Party.AccountID = protocol.NewID("acct")
			if err := account.Open(tx, out.Party.AccountID, now.UnixMilli()); err != nil {
				return err
			}
			err = account.Enrol(tx, account.Device{ID: id, AccountID: out.Party.AccountID, PublicKey: pub, Name: name}, now.UnixMilli())
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(`INSERT INTO tokens (hash, device_id, expires_ms) VALUES (?, ?, ?)`, hash[:], id, out.Expires.UnixMilli())
		return err
	})
	if err != nil {
		if problem.KindOf(err) != 0 {
			return SignedIn{}, err
		}
		return SignedIn{}, fmt.Errorf("auth: sign in %s: %w", id, err)
	}
	return out, nil
}

// AddDevice enrols pub as a device of p's account. The new key must prove
// possession and consent: sig is its signature over
// protocol.AddDeviceMessage(p.AccountID, nonce), with a nonce from Challenge for pub
// that is consumed here, so a proof made for one account cannot enrol the
// key into another and cannot be used twice. A key that already belongs to
// a device is refused.
func (a *Auth) AddDevice(ctx context.Context, p session.Party, pub, nonce, sig []byte, name string) (string, error) {
	if err := checkKey(pub); err != nil {
		return "", err
	}
	if len(name) > 64 {
		return "", problem.Invalidf("device_name is %d bytes; at most 64", len(name))
	}
	if len(nonce) != 32 || len(sig) != ed25519.SignatureSize {
		return "", problem.Invalidf("adding a device needs the new key's proof of possession: nonce must be 32 bytes (from Challenge for public_key) and signature %d bytes, got %d and %d",
			ed25519.SignatureSize, len(nonce), len(sig))
	}
	if p.AccountID == "" {
		return "", problem.Unauthenticatedf("adding a device needs a signed-in caller")
	}
	if !ed25519.Verify(ed25519.PublicKey(pub), protocol.AddDeviceMessage(p.AccountID, nonce), sig) {
		return "", problem.Deniedf("signature does not verify: the new key must sign the add-device message for account %s and this nonce", p.AccountID)
	}
	id := deviceid.FromPublicKey(ed25519.PublicKey(pub)).String()
	now := a.now()
	err := a.st.Write(ctx, func(tx *store.Tx) error {
		if err := consumeChallenge(tx, pub, nonce, now.UnixMilli()); err != nil {
			return err
		}
		err := account.Enrol(tx, account.Device{ID: id, AccountID: p.AccountID, PublicKey: pub, Name: name}, now.UnixMilli())
		if errors.Is(err, store.ErrConflict) {
			return problem.AlreadyExistsf("device %s is already enrolled", id)
		}
		return err
	})
	if err != nil && problem.KindOf(err) == 0 {
		return "", fmt.Errorf("auth: add device: %w", err)
	}
	if err != nil {
		return "", err
	}
	return id, nil
}

// Authenticate returns the party a bearer token belongs to.
func (a *Auth) Authenticate(ctx context.Context, token string) (session.Party, error) {
	if !strings.HasPrefix(token, tokenPrefix) || len(token) > 128 {
		return session.Party{}, problem.Unauthenticatedf("missing or malformed bearer token: sign in first")
	}
	hash := sha256.Sum256([]byte(token))
	nowMS := a.now().UnixMilli()
	a.mu.Lock()
	c, ok := a.cache[hash]
	a.mu.Unlock()
	if ok && c.expiresMS > nowMS {
		return c.party, nil
	}
	var p session.Party
	var exp int64
	err := a.st.Read(ctx, func(tx *store.Tx) error {
		return tx.QueryRow(`SELECT t.device_id, d.account_id, d.public_key, t.expires_ms FROM tokens t JOIN devices d ON d.id = t.device_id WHERE t.hash = ?`,
			hash[:]).Scan(&p.DeviceID, &p.AccountID, &p.PublicKey, &exp)
	})
	if errors.Is(err, store.ErrNotFound) || (err == nil && exp <= nowMS) {
		return session.Party{}, problem.Unauthenticatedf("token unknown or expired: sign in again")
	}
	if err != nil {
		return session.Party{}, fmt.Errorf("auth: check token: %w", err)
	}
	a.mu.Lock()
	a.cache[hash] = cached{party: p, expiresMS: exp}
	a.mu.Unlock()
	return p, nil
}

// Sweep deletes expired challenges and tokens.
func (a *Auth) Sweep(ctx context.Context) error {
	nowMS := a.now().UnixMilli()
	a.mu.Lock()
	for h, c := range a.cache {
		if c.expiresMS <= nowMS {
			delete(a.cache, h)
		}
	}
	a.mu.Unlock()
	return a.st.Write(ctx, func(tx *store.Tx) error {
		if _, err := tx.Exec(`DELETE FROM challenges WHERE expires_ms <= ?`, nowMS); err != nil {
			return err
		}
		_, err := tx.Exec(`DELETE FROM tokens WHERE expires_ms <= ?`, nowMS)
		return err
	})
}

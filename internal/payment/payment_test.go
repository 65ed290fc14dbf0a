package payment

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// TestOpenAgreesOnFirstKey: server replicas starting together on a new
// PostgreSQL database each open the wallet at once; they must all end up
// with the same single platform key, or a receipt one replica signs fails
// verification at a host that fetched another replica's keys.
func TestOpenAgreesOnFirstKey(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	const replicas = 8
	stores := make([]*store.Store, replicas)
	for i := range stores {
		st, err := store.Open(ctx, db, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		stores[i] = st
	}
	kek := bytes.Repeat([]byte{7}, 32)
	wallets := make([]*Wallet, replicas)
	errs := make([]error, replicas)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range wallets {
		done.Go(func() {
			start.Wait()
			wallets[i], errs[i] = Open(ctx, stores[i], time.Now, kek)
		})
	}
	start.Done()
	done.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	for i, w := range wallets {
		keys := w.PublicKeys()
		if len(keys) != 1 || !bytes.Equal(keys[0], wallets[0].PublicKeys()[0]) {
			t.Fatalf("replica %d has %d keys, the first differing from replica 0's: each replica made its own", i, len(keys))
		}
	}
}

// TestKeysSealedAtRest: the database holds the receipt-signing key only
// sealed with the key-encryption key; the wrong key-encryption key opens
// nothing and says what to do; a key an older version stored in the
// clear is sealed on first open, keeping its ID.
func TestKeysSealedAtRest(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir()+"/sharespot.db", store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kek := bytes.Repeat([]byte{1}, 32)
	w, err := Open(ctx, st, time.Now, kek)
	if err != nil {
		t.Fatal(err)
	}
	stored := func() (id string, b []byte) {
		t.Helper()
		if err := st.Read(ctx, func(tx *store.Tx) error {
			return tx.QueryRow(`SELECT id, private_key FROM platform_keys ORDER BY created_ms LIMIT 1`).Scan(&id, &b)
		}); err != nil {
			t.Fatal(err)
		}
		return id, b
	}
	id, b := stored()
	if len(b) == ed25519.SeedSize || b[0] != sealedKeyVersion {
		t.Fatalf("the key is stored as %d bytes starting %d: not sealed", len(b), b[0])
	}
	seed, err := OpenSeed(kek, id, b)
	if err != nil || !bytes.Equal(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey), w.PublicKeys()[0]) {
		t.Fatalf("OpenSeed: %v", err)
	}
	if _, err := Open(ctx, st, time.Now, bytes.Repeat([]byte{2}, 32)); err == nil || !strings.Contains(err.Error(), "--key-file") {
		t.Fatalf("opened with the wrong key-encryption key: %v", err)
	}
	// An older version's clear seed.
	if err := st.Write(ctx, func(tx *store.Tx) error {
		_, err := tx.Exec(`UPDATE platform_keys SET private_key = ? WHERE id = ?`, seed, id)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	w2, err := Open(ctx, st, time.Now, kek)
	if err != nil || !bytes.Equal(w2.PublicKeys()[0], w.PublicKeys()[0]) {
		t.Fatalf("reopen after a clear key: %v", err)
	}
	if _, b := stored(); len(b) == ed25519.SeedSize {
		t.Fatal("the clear key was not sealed on open")
	}
}

package payment

import (
	"bytes"
	"context"
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
	wallets := make([]*Wallet, replicas)
	errs := make([]error, replicas)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range wallets {
		done.Go(func() {
			start.Wait()
			wallets[i], errs[i] = Open(ctx, stores[i], time.Now)
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

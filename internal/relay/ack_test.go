package relay

import (
	"context"
	"sync"
	"testing"

	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// TestConcurrentAcksNeverMoveBack: on PostgreSQL, where writes run side by
// side, acks of every sequence number arriving at once (a client that
// reconnected to several replicas) leave the cursor at the highest and
// the inbox empty: an older ack that commits last must not move the
// cursor back and bring acknowledged messages "back" to the device.
func TestConcurrentAcksNeverMoveBack(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, pgtest.New(t), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const n = 40
	err = st.Write(ctx, func(tx *store.Tx) error {
		if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a', 0)`); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES ('d', 'a', ?, '', 0)`, []byte{1}); err != nil {
			return err
		}
		for i := range int64(n) {
			if err := Append(tx, nil, i, "d", "s", prompt(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var start, done sync.WaitGroup
	start.Add(1)
	for seq := uint64(1); seq <= n; seq++ {
		done.Go(func() {
			start.Wait()
			if err := st.Write(ctx, func(tx *store.Tx) error { _, err := Ack(tx, "d", seq); return err }); err != nil {
				t.Errorf("ack %d: %v", seq, err)
			}
		})
	}
	start.Done()
	done.Wait()
	var acked uint64
	var left int
	err = st.Read(ctx, func(tx *store.Tx) error {
		var err error
		if acked, err = AckedSeq(tx, "d"); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT COUNT(*) FROM inbox WHERE device_id = 'd'`).Scan(&left)
	})
	if err != nil {
		t.Fatal(err)
	}
	if acked != n || left != 0 {
		t.Fatalf("after acks of 1..%d at once: cursor %d, %d messages left", n, acked, left)
	}
}

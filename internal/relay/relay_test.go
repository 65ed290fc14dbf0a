package relay

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

func openStore(t *testing.T) *store.Store { return openEngine(t, store.SQLite) }

// openEngine opens a store on engine with account a and its device d.
func openEngine(t *testing.T, engine store.Engine) *store.Store {
	t.Helper()
	var st *store.Store
	var err error
	if engine == store.Postgres {
		st, err = store.OpenPostgres(context.Background(), pgtest.New(t), store.Options{})
	} else {
		st, err = store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "r.db"), store.Options{})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	err = st.Write(context.Background(), func(tx *store.Tx) error {
		if err := account.Open(tx, "a", 0); err != nil {
			return err
		}
		return account.Enrol(tx, account.Device{ID: "d", AccountID: "a", PublicKey: []byte{1}}, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// engines runs fn on a store of each engine (PostgreSQL where pgtest has
// one).
func engines(t *testing.T, fn func(t *testing.T, st *store.Store)) {
	for _, e := range []store.Engine{store.SQLite, store.Postgres} {
		t.Run(string(e), func(t *testing.T) { fn(t, openEngine(t, e)) })
	}
}

func prompt(used int64) *sharespotv1.Envelope {
	return &sharespotv1.Envelope{Body: &sharespotv1.Envelope_LowQuotaPrompt{LowQuotaPrompt: &sharespotv1.LowQuotaPrompt{UsedBytes: used}}}
}

func TestAppendFetchAck(t *testing.T) {
	engines(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		hub := NewHub()
		watch, cancel := hub.Watch("d")
		wake := watch.C
		defer cancel()

		// A message whose transaction rolls back is never stored nor woken.
		errBoom := st.Write(ctx, func(tx *store.Tx) error {
			if err := Append(tx, hub, 1, "d", "s", prompt(99)); err != nil {
				return err
			}
			return context.Canceled
		})
		if errBoom == nil {
			t.Fatal("write did not fail")
		}
		select {
		case <-wake:
			t.Fatal("woken by a rolled-back message")
		default:
		}
		for i := int64(1); i <= 3; i++ {
			if err := st.Write(ctx, func(tx *store.Tx) error { return Append(tx, hub, i, "d", "s", prompt(i)) }); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-wake:
		case <-time.After(5 * time.Second):
			t.Fatal("no wake-up after commit")
		}
		fetch := func(after uint64) []*sharespotv1.Envelope {
			envs, err := store.ReadT(ctx, st, func(tx *store.Tx) ([]*sharespotv1.Envelope, error) { return Fetch(tx, "d", after, 10) })
			if err != nil {
				t.Fatal(err)
			}
			return envs
		}
		envs := fetch(0)
		if len(envs) != 3 {
			t.Fatalf("fetched %d messages, want 3", len(envs))
		}
		ids := map[string]bool{}
		for i, e := range envs {
			if e.Seq != uint64(i+1) || e.SessionId != "s" || e.GetLowQuotaPrompt().GetUsedBytes() != int64(i+1) || ids[e.MessageId] {
				t.Fatalf("message %d = %v", i, e)
			}
			ids[e.MessageId] = true
		}
		if got := fetch(2); len(got) != 1 || got[0].Seq != 3 {
			t.Fatalf("fetch after 2 = %v", got)
		}
		// Ack deletes up to seq; acking the future is refused; acking the past
		// is a no-op.
		ack := func(seq uint64) (uint64, error) {
			return store.WriteT(ctx, st, func(tx *store.Tx) (uint64, error) { return Ack(tx, "d", seq) })
		}
		if _, err := ack(4); err == nil {
			t.Fatal("ack beyond the last message accepted")
		}
		if got, err := ack(2); err != nil || got != 2 {
			t.Fatalf("ack 2 = %d, %v", got, err)
		}
		if got, err := ack(1); err != nil || got != 2 {
			t.Fatalf("ack 1 after 2 = %d, %v", got, err)
		}
		if got := fetch(0); len(got) != 1 || got[0].Seq != 3 {
			t.Fatalf("after ack, fetch = %v", got)
		}
		if _, err := ack(3); err != nil {
			t.Fatal(err)
		}
		// The sequence goes on after everything was acknowledged.
		if err := st.Write(ctx, func(tx *store.Tx) error { return Append(tx, hub, 5, "d", "s", prompt(4)) }); err != nil {
			t.Fatal(err)
		}
		if got := fetch(3); len(got) != 1 || got[0].Seq != 4 {
			t.Fatalf("next message = %v", got)
		}

		// An unknown device: the write fails, and nothing of it stays.
		err := st.Write(ctx, func(tx *store.Tx) error {
			if err := account.Open(tx, "b", 0); err != nil {
				return err
			}
			return Append(tx, hub, 6, "nobody", "s", prompt(5))
		})
		if err == nil {
			t.Fatal("a message to an unknown device was stored")
		}
		if n, err := store.ReadT(ctx, st, func(tx *store.Tx) (int64, error) {
			var n int64
			err := tx.QueryRow(`SELECT COUNT(*) FROM accounts WHERE id = 'b'`).Scan(&n)
			return n, err
		}); err != nil || n != 0 {
			t.Fatalf("the failed write left %d accounts (%v)", n, err)
		}
	})
}

func TestHubWatchCancel(t *testing.T) {
	h := NewHub()
	w1w, c1 := h.Watch("x")
	w1 := w1w.C
	_, c2 := h.Watch("x")
	if h.Watching() != 2 {
		t.Fatalf("watching %d", h.Watching())
	}
	h.Wake("x")
	h.Wake("x") // a second wake-up before the first is read is not queued twice
	<-w1
	select {
	case <-w1:
		t.Fatal("two wake-ups queued")
	default:
	}
	c1()
	c2()
	if h.Watching() != 0 {
		t.Fatalf("watching %d after cancel", h.Watching())
	}
	h.Wake("x") // no watchers: nothing happens
}

// TestSequenceAfterRestart: a device's next sequence number outlives the
// process (SQLite's writer keeps it in memory and never writes the
// device's row: account.NextSeq), whether its messages are still in the
// inbox, all acknowledged by Ack or by AckDelivered, or the device's row
// holds a higher number from before.
func TestSequenceAfterRestart(t *testing.T) {
	for _, e := range []store.Engine{store.SQLite, store.Postgres} {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			target := filepath.Join(t.TempDir(), "r.db")
			if e == store.Postgres {
				target = pgtest.New(t)
			}
			open := func() *store.Store {
				st, err := store.Open(ctx, target, store.Options{VerifyMemo: true})
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
			st := open()
			if err := st.Write(ctx, func(tx *store.Tx) error {
				if err := account.Open(tx, "a", 0); err != nil {
					return err
				}
				return account.Enrol(tx, account.Device{ID: "d", AccountID: "a", PublicKey: []byte{1}}, 0)
			}); err != nil {
				t.Fatal(err)
			}
			last := uint64(0)
			appendOne := func(st *store.Store) {
				t.Helper()
				last++
				if err := st.Write(ctx, func(tx *store.Tx) error { return Append(tx, nil, 1, "d", "s", prompt(int64(last))) }); err != nil {
					t.Fatal(err)
				}
				envs, err := store.ReadT(ctx, st, func(tx *store.Tx) ([]*sharespotv1.Envelope, error) { return Fetch(tx, "d", last-1, 10) })
				if err != nil || len(envs) != 1 || envs[0].Seq != last || envs[0].GetLowQuotaPrompt().GetUsedBytes() != int64(last) {
					t.Fatalf("after %d messages the inbox after %d holds %v (%v); want message %d alone", last, last-1, envs, err, last)
				}
			}
			restart := func() {
				t.Helper()
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
				st = open()
			}
			// Two in the inbox, none acknowledged: the inbox holds the number.
			appendOne(st)
			appendOne(st)
			restart()
			appendOne(st) // 3
			// All acknowledged and deleted (Ack): acked_seq holds it.
			if _, err := store.WriteT(ctx, st, func(tx *store.Tx) (uint64, error) { return Ack(tx, "d", last) }); err != nil {
				t.Fatal(err)
			}
			restart()
			appendOne(st) // 4
			// Acknowledged as delivered (the stream's held acks).
			if err := st.Write(ctx, func(tx *store.Tx) error { return AckDelivered(tx, "d", last) }); err != nil {
				t.Fatal(err)
			}
			restart()
			appendOne(st) // 5
			// Acknowledging what was never sent is refused, after a restart too.
			if _, err := store.WriteT(ctx, st, func(tx *store.Tx) (uint64, error) { return Ack(tx, "d", last+1) }); err == nil {
				t.Fatalf("ack %d accepted with %d messages sent", last+1, last)
			}
			// A device row with a higher number (a database from before
			// SQLite stopped writing it) is not gone back on.
			if _, err := store.WriteT(ctx, st, func(tx *store.Tx) (uint64, error) { return Ack(tx, "d", last) }); err != nil {
				t.Fatal(err)
			}
			if err := st.Write(ctx, func(tx *store.Tx) error {
				_, err := tx.Exec(`UPDATE devices SET next_seq = 10 WHERE id = 'd'`)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			restart()
			last = 9
			appendOne(st) // 10
			st.Close()
		})
	}
}

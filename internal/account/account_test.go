package account_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// engines runs f on a fresh store of each engine (PostgreSQL skipped where
// no server is reachable, failed in CI).
func engines(t *testing.T, f func(t *testing.T, st *store.Store)) {
	for _, e := range []store.Engine{store.SQLite, store.Postgres} {
		t.Run(string(e), func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "account.db")
			if e == store.Postgres {
				target = pgtest.New(t)
			}
			st, err := store.Open(t.Context(), target, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			f(t, st)
		})
	}
}

func TestEnrolAndSequence(t *testing.T) {
	engines(t, func(t *testing.T, st *store.Store) {
		ctx := t.Context()
		d := account.Device{ID: "dev1", AccountID: "acct1", PublicKey: []byte{1, 2, 3}, Name: "phone"}
		if err := st.Write(ctx, func(tx *store.Tx) error {
			if err := account.Open(tx, d.AccountID, 1); err != nil {
				return err
			}
			return account.Enrol(tx, d, 1)
		}); err != nil {
			t.Fatal(err)
		}
		// A device is enrolled once, into whatever account.
		err := st.Write(ctx, func(tx *store.Tx) error {
			return account.Enrol(tx, account.Device{ID: d.ID, AccountID: d.AccountID, PublicKey: []byte{4}}, 2)
		})
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second enrolment: %v; want a conflict", err)
		}
		for want := int64(1); want <= 3; want++ {
			// A number taken is written as its message's inbox row, in the
			// same write (NextSeq's contract).
			seq, err := store.WriteT(ctx, st, func(tx *store.Tx) (int64, error) {
				seq, err := account.NextSeq(tx, d.ID)
				if err == nil {
					_, err = tx.Exec(`INSERT INTO inbox (device_id, seq, message_id, session_id, body, created_ms) VALUES (?, ?, ?, '', ?, 0)`, d.ID, seq, fmt.Sprint("m", seq), []byte{})
				}
				return seq, err
			})
			if err != nil || seq != want {
				t.Fatalf("NextSeq = %d, %v; want %d", seq, err, want)
			}
		}
		if _, err := store.WriteT(ctx, st, func(tx *store.Tx) (int64, error) { return account.NextSeq(tx, "nobody") }); err == nil {
			t.Fatal("NextSeq of an unknown device succeeded")
		}
		if err := st.Write(ctx, func(tx *store.Tx) error { return account.Acked(tx, d.ID, 2) }); err != nil {
			t.Fatal(err)
		}
		err = st.Read(ctx, func(tx *store.Tx) error {
			next, acked, err := account.Cursor(tx, d.ID, false)
			if err != nil {
				return err
			}
			if next != 4 || acked != 2 {
				t.Errorf("cursor: next %d, acked %d; want 4, 2", next, acked)
			}
			if acct, err := account.Of(tx, d.ID); err != nil || acct != d.AccountID {
				t.Errorf("Of = %q, %v; want %q", acct, err, d.AccountID)
			}
			if pub, err := account.PublicKey(tx, d.ID); err != nil || string(pub) != string(d.PublicKey) {
				t.Errorf("PublicKey = %x, %v; want %x", pub, err, d.PublicKey)
			}
			if _, err := account.Of(tx, "nobody"); problem.KindOf(err) != problem.NotFound {
				t.Errorf("Of an unknown device: %v; want not found", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestFind(t *testing.T) {
	engines(t, func(t *testing.T, st *store.Store) {
		ctx := t.Context()
		ids := []string{"ABCDEFG-HIJKLMN", "ABCDEFG-ZZZZZZZ", "QRSTUVW-XYZ2345"}
		if err := st.Write(ctx, func(tx *store.Tx) error {
			for i, id := range ids {
				acct := "acct" + id[:1]
				if i != 1 {
					if err := account.Open(tx, acct, 1); err != nil {
						return err
					}
				}
				if err := account.Enrol(tx, account.Device{ID: id, AccountID: acct, PublicKey: []byte{byte(i)}}, 1); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			prefix, id string
			kind       problem.Kind
		}{
			{"QRSTUVW", ids[2], 0},
			{"QRST", ids[2], 0},
			{ids[0], ids[0], 0},
			{"ABCDEFG-Z", ids[1], 0},
			{"ABCDEFG", "", problem.Invalid}, // two devices start so
			{"ABCDEFH", "", problem.NotFound},
		} {
			err := st.Read(ctx, func(tx *store.Tx) error {
				id, acct, err := account.Find(tx, tc.prefix)
				if id != tc.id || problem.KindOf(err) != tc.kind || (err == nil && acct != "acct"+id[:1]) {
					t.Errorf("Find(%q) = %q, %q, %v; want %q, kind %v", tc.prefix, id, acct, err, tc.id, tc.kind)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	})
}

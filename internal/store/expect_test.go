package store

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// spend is a write that takes amount from account a1's created_ms (a
// balance, for this test) and records it in an account named after the
// attempt, refusing with errTooLittle when a1 holds too little: the shape
// of a payment (a conditional debit whose count the write acts on).
var errTooLittle = errors.New("too little")

func spend(attempts *int, eagerN *[]int64, amount int64) func(*Tx) error {
	return func(tx *Tx) error {
		*attempts++
		n, err := tx.ExpectN(1, `UPDATE accounts SET created_ms = created_ms - ? WHERE id = 'a1' AND created_ms >= ?`, amount, amount)
		if err != nil {
			return err
		}
		*eagerN = append(*eagerN, n)
		if n != 1 {
			return errTooLittle
		}
		return tx.ExecLater("record", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, fmt.Sprintf("spent-%d-%d", amount, *attempts), amount)
	}
}

func balanceA1(t *testing.T, s *Store) int64 {
	t.Helper()
	b, err := ReadT(t.Context(), s, func(tx *Tx) (int64, error) {
		var b int64
		err := tx.QueryRow(`SELECT created_ms FROM accounts WHERE id = 'a1'`).Scan(&b)
		return b, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestExpect: a statement the write expects to succeed is sent with the
// next statement on PostgreSQL (a round trip saved) and returns what was
// expected; when it does not do that, nothing of the attempt is committed
// and the write runs again with the statement sent alone, so the write's
// other branch decides what happens. On SQLite the statement runs at once,
// once. Both engines end with the same rows and errors.
func TestExpect(t *testing.T) {
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		pg := d.engine == Postgres
		if err := s.Write(ctx, func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a1', 10)`)
			return err
		}); err != nil {
			t.Fatal(err)
		}

		// Met: one attempt; the expected statement, guarded, and the
		// queued insert go with the BEGIN and the COMMIT: one round trip.
		var attempts int
		var seen []int64
		before := s.Stats()
		if err := s.Write(ctx, spend(&attempts, &seen, 4)); err != nil {
			t.Fatal(err)
		}
		after := s.Stats()
		if attempts != 1 || after.Replays != before.Replays {
			t.Errorf("met: %d attempts, %d replays; want 1, 0", attempts, after.Replays-before.Replays)
		}
		if trips := after.PgRoundTrips - before.PgRoundTrips; pg && trips != 1 {
			t.Errorf("met: %d round trips, want 1 (BEGIN, the statements, COMMIT)", trips)
		}
		if b := balanceA1(t, s); b != 6 {
			t.Errorf("balance %d after spending 4 of 10, want 6", b)
		}

		// Missed: 7 of the 6 left. The guess goes on to queue its record;
		// the check at the commit finds no row changed, the attempt rolls
		// back, and the write runs again, the debit alone this time,
		// returning 0, and the write refuses.
		attempts, seen = 0, nil
		before = s.Stats()
		err := s.Write(ctx, spend(&attempts, &seen, 7))
		after = s.Stats()
		if !errors.Is(err, errTooLittle) {
			t.Fatalf("spending 7 of 6: %v, want errTooLittle", err)
		}
		wantAttempts, wantSeen := 1, []int64{0}
		if pg {
			wantAttempts, wantSeen = 2, []int64{1, 0}
		}
		if attempts != wantAttempts || fmt.Sprint(seen) != fmt.Sprint(wantSeen) || after.Replays-before.Replays != int64(wantAttempts-1) {
			t.Errorf("missed: %d attempts seeing %v, %d replays; want %d seeing %v", attempts, seen, after.Replays-before.Replays, wantAttempts, wantSeen)
		}
		ids := accountIDs(t, s)
		if len(ids) != 2 || !ids["a1"] || !ids["spent-4-1"] {
			t.Errorf("accounts %v: want a1 and the first spend's record only", ids)
		}
		if b := balanceA1(t, s); b != 6 {
			t.Errorf("balance %d after a refused spend, want 6", b)
		}

		// A write that fails because it acted on a guess (it reads the
		// balance and finds the debit taken, but wants it to be odd) is
		// checked before its error is believed: the guess was wrong, so
		// it runs again and its other branch decides.
		attempts = 0
		err = s.Write(ctx, func(tx *Tx) error {
			attempts++
			n, err := tx.ExpectN(1, `UPDATE accounts SET created_ms = created_ms - 9 WHERE id = 'a1' AND created_ms >= 9`)
			if err != nil {
				return err
			}
			if n == 1 {
				return errors.New("acted on a guess")
			}
			return tx.ExecLater("fallback", `INSERT INTO accounts (id, created_ms) VALUES ('fallback', 0)`)
		})
		if err != nil {
			t.Fatalf("a write whose guess was wrong: %v, want its other branch's outcome (committed)", err)
		}
		if ids := accountIDs(t, s); !ids["fallback"] {
			t.Errorf("accounts %v: the fallback was not committed", ids)
		}

		// Guarded: a statement the database fails unless it did what the
		// write expects; where the write does not guess, the caller's
		// plain statement runs.
		for _, c := range []struct {
			want, real int64
		}{{6, 6}, {5, 6}} {
			attempts = 0
			var got int64
			err := s.Write(ctx, func(tx *Tx) error {
				attempts++
				if tx.Guarded(`SELECT 1 / (CASE WHEN created_ms = ? THEN 1 ELSE 0 END) FROM accounts WHERE id = 'a1'`, c.want) {
					got = c.want
					return nil
				}
				return tx.QueryRow(`SELECT created_ms FROM accounts WHERE id = 'a1'`).Scan(&got)
			})
			wantAttempts := 1
			if pg && c.want != c.real {
				wantAttempts = 2
			}
			if err != nil || got != c.real || attempts != wantAttempts {
				t.Errorf("Guarded expecting %d of %d: got %d in %d attempts (%v); want %d in %d", c.want, c.real, got, attempts, err, c.real, wantAttempts)
			}
		}

		// A statement that fails in the database is a miss too: the write
		// runs again and fails with the statement's own error, where it
		// was issued.
		attempts = 0
		err = s.Write(ctx, func(tx *Tx) error {
			attempts++
			if _, err := tx.ExpectN(1, `INSERT INTO accounts (id, created_ms) VALUES ('a1', 0)`); err != nil {
				return fmt.Errorf("insert a1 again: %w", err)
			}
			return nil
		})
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("a duplicate sent ahead: %v, want ErrConflict", err)
		}
		// The connection is fit for the next write.
		if err := s.Write(ctx, insertAccount("a9")); err != nil {
			t.Fatal(err)
		}
	})
}

// TestFixed: a fact kept by Fixed is read once and then taken by every
// write and read; one read in a write that rolls back is not kept; with
// verification a kept fact that the database contradicts fails.
func TestFixed(t *testing.T) {
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		loads := 0
		created := func(tx *Tx, id string) (int64, error) {
			return Fixed(tx, "created/"+id, func() (int64, error) {
				loads++
				var ms int64
				err := tx.QueryRow(`SELECT created_ms FROM accounts WHERE id = ?`, id).Scan(&ms)
				return ms, err
			})
		}
		// Read in a write that rolls back: not kept.
		err := s.Write(ctx, func(tx *Tx) error {
			if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a1', 11)`); err != nil {
				return err
			}
			if ms, err := created(tx, "a1"); err != nil || ms != 11 {
				return fmt.Errorf("in the write: %d, %v", ms, err)
			}
			return errors.New("roll back")
		})
		if err == nil || err.Error() != "roll back" {
			t.Fatal(err)
		}
		if _, err := ReadT(ctx, s, func(tx *Tx) (int64, error) { return created(tx, "a1") }); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a fact read in a rolled-back write: %v, want ErrNotFound (not kept)", err)
		}
		// Read in a committed write: kept for later writes and reads.
		if err := s.Write(ctx, func(tx *Tx) error {
			if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a1', 12)`); err != nil {
				return err
			}
			_, err := created(tx, "a1")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		loads = 0
		before := s.Stats()
		if err := s.Write(ctx, func(tx *Tx) error {
			ms, err := created(tx, "a1")
			if err == nil && ms != 12 {
				err = fmt.Errorf("kept %d, want 12", ms)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if ms, err := ReadT(ctx, s, func(tx *Tx) (int64, error) { return created(tx, "a1") }); err != nil || ms != 12 {
			t.Fatalf("read: %d, %v", ms, err)
		}
		after := s.Stats()
		if loads != 0 {
			t.Errorf("a kept fact was loaded %d times", loads)
		}
		if trips := after.PgRoundTrips - before.PgRoundTrips + after.PgReadRoundTrips - before.PgReadRoundTrips; d.engine == Postgres && trips != 0 {
			t.Errorf("a kept fact took %d round trips", trips)
		}
	})
	// Verification: a kept fact the database contradicts (here, changed
	// under it) fails, naming the key.
	d := newDB(t, SQLite)
	s, err := d.openErr(t.Context(), Options{VerifyMemo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	get := func(tx *Tx) (int64, error) {
		return Fixed(tx, "created/a1", func() (int64, error) {
			var ms int64
			err := tx.QueryRow(`SELECT created_ms FROM accounts WHERE id = 'a1'`).Scan(&ms)
			return ms, err
		})
	}
	if err := s.Write(t.Context(), func(tx *Tx) error {
		if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a1', 1)`); err != nil {
			return err
		}
		_, err := get(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(t.Context(), func(tx *Tx) error {
		_, err := tx.Exec(`UPDATE accounts SET created_ms = 2 WHERE id = 'a1'`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadT(t.Context(), s, get); err == nil {
		t.Fatal("a kept fact the database contradicts was taken without error under verification")
	}
}

// TestTogether: reads sent together hand their rows over in order, after
// what the write queued before them; on PostgreSQL in one round trip. A
// read placed after a row lock runs once the lock is held, so it sees a
// row that the lock's holder committed while it waited (what the request's
// caps rest on). A Row's error fails Together and the write.
func TestTogether(t *testing.T) {
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		for _, id := range []string{"a1", "a2", "a3"} {
			if err := s.Write(ctx, insertAccount(id)); err != nil {
				t.Fatal(err)
			}
		}
		var ids []string
		var n int64
		before := s.Stats()
		err := s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a4", `INSERT INTO accounts (id, created_ms) VALUES ('a4', 1)`); err != nil {
				return err
			}
			return tx.Together(
				Reading{Query: `SELECT id FROM accounts ORDER BY id`, Row: func(sc Scanner) error {
					var id string
					err := sc.Scan(&id)
					ids = append(ids, id)
					return err
				}},
				Reading{}, // skipped
				Reading{Query: `SELECT COUNT(*) FROM accounts WHERE id > ?`, Args: []any{"a2"}, Row: func(sc Scanner) error { return sc.Scan(&n) }},
				Reading{Query: `SELECT id FROM accounts WHERE id = 'none'`, Row: func(Scanner) error { return errors.New("a row where none is") }})
		})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ids) != "[a1 a2 a3 a4]" || n != 2 {
			t.Fatalf("read %v and %d, want [a1 a2 a3 a4] (the queued insert first) and 2", ids, n)
		}
		if trips := s.Stats().PgRoundTrips - before.PgRoundTrips; d.engine == Postgres && trips != 2 {
			t.Fatalf("%d round trips, want 2: the BEGIN, the insert and the three reads; the COMMIT", trips)
		}
		// A Row's error fails the write; nothing of it is committed.
		err = s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a5", `INSERT INTO accounts (id, created_ms) VALUES ('a5', 1)`); err != nil {
				return err
			}
			return tx.Together(Reading{Query: `SELECT id FROM accounts`, Row: func(Scanner) error { return errTooLittle }})
		})
		if !errors.Is(err, errTooLittle) {
			t.Fatalf("a Row's error: %v", err)
		}
		if ids := accountIDs(t, s); ids["a5"] {
			t.Fatal("a write whose Row failed committed")
		}
		if d.engine != Postgres {
			return
		}
		// After a lock: the holder inserts a6 and commits while the
		// reader waits for the lock; the reader's count, sent with its
		// lock, sees a6.
		locked := make(chan struct{})
		release := make(chan struct{})
		holder := make(chan error, 1)
		go func() {
			holder <- s.Write(ctx, func(tx *Tx) error {
				var one int
				if err := tx.QueryRow(`SELECT 1 FROM accounts WHERE id = 'a1' FOR UPDATE`).Scan(&one); err != nil {
					return err
				}
				if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a6', 1)`); err != nil {
					return err
				}
				close(locked)
				<-release
				return nil
			})
		}()
		<-locked
		var count int64
		reader := make(chan error, 1)
		go func() {
			reader <- s.Write(ctx, func(tx *Tx) error {
				return tx.Together(
					Reading{Query: `SELECT 1 FROM accounts WHERE id = 'a1' FOR UPDATE`, Row: func(sc Scanner) error { var one int; return sc.Scan(&one) }},
					Reading{Query: `SELECT COUNT(*) FROM accounts`, Row: func(sc Scanner) error { return sc.Scan(&count) }})
			})
		}()
		time.Sleep(100 * time.Millisecond) // the reader waits for the lock
		close(release)
		if err := <-holder; err != nil {
			t.Fatal(err)
		}
		if err := <-reader; err != nil {
			t.Fatal(err)
		}
		if count != 5 {
			t.Fatalf("the read after the lock counted %d accounts, want 5 (a6, committed while it waited, included)", count)
		}
	})
}

// TestLast: a read's Last gets its rows in order, with the read's end in
// the same round trip on PostgreSQL; after it the read runs nothing; its
// snapshot is the read's; a failed Last leaves the connection fit.
func TestLast(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		for _, id := range []string{"a1", "a2", "a3"} {
			if err := s.Write(ctx, insertAccount(id)); err != nil {
				t.Fatal(err)
			}
		}
		count := func(n *int64) Reading {
			return Reading{Query: `SELECT COUNT(*) FROM accounts`, Row: func(sc Scanner) error { return sc.Scan(n) }}
		}
		// One Last: one round trip, BEGIN and ROLLBACK included.
		var ids []string
		var n int64
		before := s.Stats()
		err := s.Read(ctx, func(tx *Tx) error {
			return tx.Last(
				Reading{Query: `SELECT id FROM accounts WHERE id <> ? ORDER BY id`, Args: []any{"a2"}, Row: func(sc Scanner) error {
					var id string
					err := sc.Scan(&id)
					ids = append(ids, id)
					return err
				}},
				Reading{}, // skipped
				count(&n))
		})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ids) != "[a1 a3]" || n != 3 {
			t.Fatalf("read %v and %d, want [a1 a3] and 3", ids, n)
		}
		if trips := s.Stats().PgReadRoundTrips - before.PgReadRoundTrips; d.engine == Postgres && trips != 1 {
			t.Fatalf("a read of one Last took %d round trips, want 1", trips)
		}
		// After a statement: the Last sees the read's snapshot, not a
		// write committed between; the read ends in the Last's trip.
		var first, last int64
		before = s.Stats()
		err = s.Read(ctx, func(tx *Tx) error {
			if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&first); err != nil {
				return err
			}
			if err := s.Write(ctx, insertAccount("a4")); err != nil {
				return err
			}
			return tx.Last(count(&last))
		})
		if err != nil {
			t.Fatal(err)
		}
		if first != 3 || last != 3 {
			t.Fatalf("counted %d, then %d after a4 committed; want 3 both times: one snapshot", first, last)
		}
		if trips := s.Stats().PgReadRoundTrips - before.PgReadRoundTrips; d.engine == Postgres && trips != 2 {
			t.Fatalf("a statement and a Last took %d round trips, want 2", trips)
		}
		// Nothing after the Last.
		err = s.Read(ctx, func(tx *Tx) error {
			if err := tx.Last(count(&n)); err != nil {
				return err
			}
			return tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n)
		})
		if !errors.Is(err, errAfterLast) {
			t.Fatalf("a statement after Last: %v, want %v", err, errAfterLast)
		}
		for _, after := range []func(tx *Tx) error{
			func(tx *Tx) error { _, err := tx.Exec(`SELECT 1`); return err },
			func(tx *Tx) error { _, err := tx.Query(`SELECT 1`); return err },
			func(tx *Tx) error { return tx.Together(count(&n)) },
			func(tx *Tx) error { return tx.Last(count(&n)) },
		} {
			err := s.Read(ctx, func(tx *Tx) error {
				if err := tx.Last(count(&n)); err != nil {
					return err
				}
				return after(tx)
			})
			if !errors.Is(err, errAfterLast) {
				t.Fatalf("a statement after Last: %v, want %v", err, errAfterLast)
			}
		}
		// A Row's error, and a statement that fails in the database, fail
		// the read; the connections stay fit for the reads after.
		for range 3 {
			if err := s.Read(ctx, func(tx *Tx) error {
				return tx.Last(Reading{Query: `SELECT id FROM accounts`, Row: func(Scanner) error { return errTooLittle }})
			}); !errors.Is(err, errTooLittle) {
				t.Fatalf("a Row's error: %v", err)
			}
			if err := s.Read(ctx, func(tx *Tx) error {
				return tx.Last(Reading{Query: `SELECT 1 / (COUNT(*) - COUNT(*)) FROM accounts`, Row: func(sc Scanner) error { return sc.Scan(&n) }})
			}); err == nil {
				t.Fatal("a division by zero read without an error")
			}
			if err := s.Read(ctx, func(tx *Tx) error { return tx.Last(count(&n)) }); err != nil || n != 4 {
				t.Fatalf("a read after failed ones: %d accounts, %v; want 4", n, err)
			}
		}
	})
}

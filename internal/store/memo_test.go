package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// memoName reads an account's name through the writer's memory, counting
// the reads that reached the database.
func memoName(tx *Tx, id string, reads *int) (string, error) {
	return Memo(tx, "name/"+id, func() (string, error) {
		*reads++
		var n string
		err := tx.QueryRow(`SELECT id FROM accounts WHERE id = ?`, id).Scan(&n)
		return n, err
	}, func(a, b string) bool { return a == b })
}

func openMemo(t *testing.T, opts Options) *Store {
	t.Helper()
	// CI verifies the memory in every suite, which reads each value again:
	// these tests count reads, so they ask for verification themselves.
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	s, err := newDB(t, SQLite).openErr(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestMemoKeptAcrossWrites: what a write keeps, a later write takes
// without a read; a Read always reads.
func TestMemoKeptAcrossWrites(t *testing.T) {
	s := openMemo(t, Options{})
	ctx := t.Context()
	if err := s.Write(ctx, insertAccount("a")); err != nil {
		t.Fatal(err)
	}
	reads := 0
	for i := range 3 {
		if err := s.Write(ctx, func(tx *Tx) error {
			n, err := memoName(tx, "a", &reads)
			if err == nil && n != "a" {
				err = fmt.Errorf("name %q", n)
			}
			return err
		}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if reads != 1 {
		t.Errorf("three writes read the database %d times, want once", reads)
	}
	if st := s.Stats(); st.MemoHits != 2 || st.MemoMisses != 1 {
		t.Errorf("hits %d, misses %d; want 2, 1", st.MemoHits, st.MemoMisses)
	}
	for range 2 {
		if err := s.Read(ctx, func(tx *Tx) error { _, err := memoName(tx, "a", &reads); return err }); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 3 {
		t.Errorf("two reads read the database %d times in all, want 3: a Read must not take the writer's memory", reads)
	}
	// A key that was never kept, and one forgotten, are read.
	if err := s.Write(ctx, func(tx *Tx) error {
		tx.Forget("name/a")
		_, err := memoName(tx, "a", &reads)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if reads != 4 {
		t.Errorf("a forgotten key was not read again (%d reads)", reads)
	}
}

// TestMemoFailedWritesLeaveNothing: a write that fails, in a batch or
// alone, leaves the memory as it was; the writes that succeed beside it in
// its batch keep what they kept, and see each other's in order.
func TestMemoFailedWritesLeaveNothing(t *testing.T) {
	s := openMemo(t, Options{})
	ctx := t.Context()
	release := holdWriter(t, s)
	const n = 12
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Write(ctx, func(tx *Tx) error {
				tx.Remember(fmt.Sprintf("k%d", i), i)
				if i%3 == 0 {
					return errRefused
				}
				return nil
			})
		})
		waitQueued(t, s, i+1) // in order
	}
	release()
	wg.Wait()
	for i, err := range errs {
		if (i%3 == 0) != errors.Is(err, errRefused) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := s.Write(ctx, func(tx *Tx) error {
		for i := range n {
			v, ok := Recall[int](tx, fmt.Sprintf("k%d", i))
			if ok != (i%3 != 0) || (ok && v != i) {
				return fmt.Errorf("k%d: %v, %v after its write %s", i, v, ok, map[bool]string{true: "failed", false: "succeeded"}[i%3 == 0])
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Within a batch, a later write sees an earlier one's keys once it
	// succeeded, and never a failed one's.
	release = holdWriter(t, s)
	var seen [3]string
	for i, remember := range []string{"first", "failed", ""} {
		wg.Go(func() {
			_ = s.Write(ctx, func(tx *Tx) error {
				v, _ := Recall[string](tx, "b")
				seen[i] = v
				if remember != "" {
					tx.Remember("b", remember)
				}
				if remember == "failed" {
					return errRefused
				}
				return nil
			})
		})
		waitQueued(t, s, i+1)
	}
	release()
	wg.Wait()
	if seen != [3]string{"", "first", "first"} {
		t.Errorf("the batch's writes saw %q, want the first write's value after it and none of the failed one's", seen)
	}
}

// TestMemoForgetAll: a write that forgets everything leaves nothing kept,
// but what it keeps after.
func TestMemoForgetAll(t *testing.T) {
	s := openMemo(t, Options{})
	ctx := t.Context()
	write := func(fn func(tx *Tx) error) {
		t.Helper()
		if err := s.Write(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	write(func(tx *Tx) error { tx.Remember("a", 1); tx.Remember("b", 2); return nil })
	write(func(tx *Tx) error { tx.ForgetAll(); tx.Remember("c", 3); return nil })
	write(func(tx *Tx) error {
		_, a := Recall[int](tx, "a")
		_, b := Recall[int](tx, "b")
		c, _ := Recall[int](tx, "c")
		if a || b || c != 3 {
			return fmt.Errorf("after ForgetAll: a %v, b %v, c %d", a, b, c)
		}
		return nil
	})
}

// TestMemoBounded: the memory drops keys past its size.
func TestMemoBounded(t *testing.T) {
	s := openMemo(t, Options{MemoEntries: 8})
	for i := range 40 {
		if err := s.Write(t.Context(), func(tx *Tx) error { tx.Remember(fmt.Sprint(i), i); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.memo.m); n > 8 || n < 6 {
		t.Errorf("%d keys kept with room for 8", n)
	}
	off := openMemo(t, Options{MemoEntries: -1})
	reads := 0
	for range 2 {
		if err := off.Write(t.Context(), func(tx *Tx) error {
			tx.Remember("name/x", "y")
			_, err := memoName(tx, "x", &reads)
			if errors.Is(err, ErrNotFound) {
				err = nil
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 2 {
		t.Errorf("with the memory off, %d reads of 2", reads)
	}
}

// TestMemoVerifyCatchesAStaleValue: with verification on, a value kept by
// a write that did not say what it changed fails the write that takes it,
// naming the key; without, it is taken (what verification is for).
func TestMemoVerifyCatchesAStaleValue(t *testing.T) {
	for _, verify := range []bool{false, true} {
		t.Run(fmt.Sprint("verify=", verify), func(t *testing.T) {
			s := openMemo(t, Options{VerifyMemo: verify})
			ctx := t.Context()
			if err := s.Write(ctx, insertAccount("a")); err != nil {
				t.Fatal(err)
			}
			reads := 0
			if err := s.Write(ctx, func(tx *Tx) error { _, err := memoName(tx, "a", &reads); return err }); err != nil {
				t.Fatal(err)
			}
			// A change in SQL alone, with no Forget.
			if err := s.Write(ctx, func(tx *Tx) error {
				_, err := tx.Exec(`UPDATE accounts SET id = 'b' WHERE id = 'a'`)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			err := s.Write(ctx, func(tx *Tx) error {
				n, err := memoName(tx, "a", &reads)
				if err == nil && n != "a" {
					return fmt.Errorf("took %q", n)
				}
				return err
			})
			switch {
			case verify && (err == nil || !strings.Contains(err.Error(), "name/a differs from the database")):
				t.Errorf("verification let a stale value through: %v", err)
			case !verify && err != nil:
				t.Errorf("without verification: %v", err)
			}
		})
	}
}

// TestMemoOwnOnPostgres: replicas write concurrently, so a PostgreSQL
// write keeps only its own memory: its later statements take what it kept,
// the next write reads again, and a write does not count as remembering
// for the writes after it (Remembers).
func TestMemoOwnOnPostgres(t *testing.T) {
	t.Setenv("SHARESPOT_VERIFY_MEMO", "")
	s := newDB(t, Postgres).open(t)
	ctx := context.Background()
	if err := s.Write(ctx, insertAccount("a")); err != nil {
		t.Fatal(err)
	}
	reads := 0
	for range 2 {
		if err := s.Write(ctx, func(tx *Tx) error {
			if tx.Remembers() {
				return errors.New("a PostgreSQL write says it remembers for the writes after it")
			}
			if _, ok := Recall[string](tx, "name/a"); ok {
				return errors.New("a PostgreSQL write recalled what an earlier write kept")
			}
			for range 3 {
				if n, err := memoName(tx, "a", &reads); err != nil || n != "a" {
					return fmt.Errorf("memoName = %q, %v", n, err)
				}
			}
			tx.Remember("name/b", "b")
			if v, ok := Recall[string](tx, "name/b"); !ok || v != "b" {
				return errors.New("a PostgreSQL write did not recall what it kept itself")
			}
			tx.ForgetAll()
			if _, ok := Recall[string](tx, "name/b"); ok {
				return errors.New("a PostgreSQL write recalled what it forgot")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 2 {
		t.Errorf("%d reads on PostgreSQL, want 2: one in each write, each write's later ones from its own memory", reads)
	}
	// In a Read nothing is kept.
	if err := s.Read(ctx, func(tx *Tx) error {
		for range 2 {
			if _, err := memoName(tx, "a", &reads); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if reads != 4 {
		t.Errorf("%d reads after a Read of two, want 4", reads)
	}
}

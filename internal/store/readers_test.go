package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestSQLiteReaders: SQLite reads run on the store's reader goroutines.
// More reads than readers wait their turn and all complete; a read whose
// context ends while every reader is busy returns the context's error
// without running; what a read panics with reaches its caller; after
// Close a read is refused with ErrClosed.
func TestSQLiteReaders(t *testing.T) {
	s, _ := openTest(t)
	ctx := t.Context()
	if err := s.Write(ctx, insertAccount("a")); err != nil {
		t.Fatal(err)
	}

	// Every reader held: a read with a short deadline gives up unrun.
	release := make(chan struct{})
	var held, waiting sync.WaitGroup
	held.Add(sqliteReaders)
	for range sqliteReaders {
		waiting.Go(func() {
			if err := s.Read(ctx, func(*Tx) error { held.Done(); <-release; return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	held.Wait()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	ran := false
	err := s.Read(short, func(*Tx) error { ran = true; return nil })
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || ran {
		t.Fatalf("read while every reader is busy: %v, ran %v; want the deadline, unrun", err, ran)
	}

	// Many more reads than readers, all of them queued behind the held
	// ones: each runs once and sees the row.
	const many = 10 * sqliteReaders
	var mu sync.Mutex
	seen := 0
	for range many {
		waiting.Go(func() {
			n, err := ReadT(ctx, s, func(tx *Tx) (int, error) {
				var n int
				err := tx.QueryRow(`SELECT COUNT(*) FROM accounts WHERE id = 'a'`).Scan(&n)
				return n, err
			})
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			seen += n
			mu.Unlock()
		})
	}
	close(release)
	waiting.Wait()
	if seen != many {
		t.Fatalf("%d of %d reads saw the row", seen, many)
	}

	// A panic in a read reaches the caller, and the reader goes on.
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want the read's panic", p)
			}
		}()
		s.Read(ctx, func(*Tx) error { panic("boom") })
		t.Error("the read's panic did not reach its caller")
	}()
	if got := accountIDs(t, s); !got["a"] {
		t.Fatalf("read after a panic: %v", got)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Read(ctx, func(*Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after Close: %v, want ErrClosed", err)
	}
}

package store

import (
	"fmt"
	"sync"
)

// fixed is the store's memory of facts that never change once committed
// and whose rows are never deleted (a device's account): unlike the
// writer's memory (memo.go) it is shared by every write and read, on both
// engines and across PostgreSQL's concurrent writes, since nothing can make
// what it holds untrue. A fact read in a write is kept only once that
// write has committed (a write that rolls back may have read its own
// insert, which then never existed); one read in a Read is committed
// already.
type fixed struct {
	mu     sync.Mutex
	m      map[string]any
	max    int
	verify bool
}

func newFixed(opts Options) *fixed {
	m := newMemo(opts) // the same size and verification settings
	if m == nil {
		return nil
	}
	return &fixed{m: make(map[string]any), max: m.max, verify: m.verify}
}

func (f *fixed) get(key string) (any, bool) {
	f.mu.Lock()
	v, ok := f.m[key]
	f.mu.Unlock()
	return v, ok
}

func (f *fixed) put(key string, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) >= f.max {
		// Drop a quarter, whichever the map's order gives: a dropped key
		// is read again when next wanted.
		for k := range f.m {
			delete(f.m, k)
			if len(f.m) <= f.max*3/4 {
				break
			}
		}
	}
	f.m[key] = v
}

// Fixed returns the fact kept under key in the store's memory of facts
// that never change once committed, or load's, which it then keeps. Only
// for a value whose row is never changed or deleted once written: a
// device's account. With verification on (VerifyMemo), a kept value is
// loaded as well and must be equal.
func Fixed[T comparable](tx *Tx, key string, load func() (T, error)) (T, error) {
	f := tx.fixed
	if f == nil {
		return load()
	}
	if v, ok := f.get(key); ok {
		if t, ok := v.(T); ok {
			if f.verify {
				stored, err := load()
				if err != nil {
					return t, fmt.Errorf("store: the memory of the fixed fact %s differs from the database: kept %+v, reading it again: %w", key, t, err)
				}
				if stored != t {
					return t, fmt.Errorf("store: the memory of the fixed fact %s differs from the database: kept %+v, stored %+v", key, t, stored)
				}
			}
			return t, nil
		}
	}
	v, err := load()
	if err != nil {
		return v, err
	}
	if tx.writable {
		tx.AfterCommit(func() { f.put(key, v) })
	} else {
		f.put(key, v)
	}
	return v, nil
}

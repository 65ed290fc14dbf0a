package store

import (
	"fmt"
	"os"
	"sync/atomic"
)

// The writer's memory (SQLite). The single writer is the only one that
// changes the database, so what a write function wrote, or read, stays true
// until a later write function changes it: a write may keep it under a key
// (Remember) for the writes after it to take (Memo) instead of reading the
// row again. This is the hot state in memory behind one writer that the
// write path's reads cost otherwise (docs/architecture.md, "The writer's
// memory").
//
// What a write remembers is seen by that write at once, by the writes after
// it in the same batch once it has succeeded, and by later batches once the
// batch has committed: a write that fails, or a batch that is rolled back
// or whose commit fails, leaves the memory as it was. Values are shared:
// whoever remembers or takes one must not change it (copy, change the copy,
// remember the copy).
//
// On PostgreSQL there is no single writer (replicas write concurrently):
// what one write keeps is its own, seen by its later statements and gone
// when it ends (a write's own memory, memo.own). A value is true there for
// as long as the write holds what it stands for: the engine reads a
// session's row FOR UPDATE before its quotes and receipts, which change
// only under that lock, and a device's account never changes. A write
// reads such a thing once instead of at each step (docs/architecture.md,
// "The writer's memory"). In a Read the memory would be ahead of the
// snapshot: there every Memo reads, and Remember and Forget do nothing.
//
// The memory is a cache: it holds at most MemoEntries keys and drops some
// when full, and a key it lacks is read again. With VerifyMemo (or
// SHARESPOT_VERIFY_MEMO=1), every value taken from it is read again as well
// and compared: a difference fails the write, naming the key. The suites
// run so in CI; it doubles the write path's reads.
type memo struct {
	m map[string]any // what committed batches left
	// batch: what the batch's succeeded write functions changed, and
	// whether one of them forgot everything.
	batch        map[string]memoVal
	batchCleared bool
	max          int
	verify       bool
	hits, misses atomic.Int64
	// own: each write keeps only its own memory, dropped when it ends
	// (PostgreSQL): m and batch stay empty.
	own bool
}

type memoVal struct {
	v    any
	gone bool
}

// DefaultMemoEntries is the writer's memory's size when Options leaves it 0.
const DefaultMemoEntries = 65536

func newMemo(opts Options) *memo {
	n := opts.MemoEntries
	switch {
	case n < 0:
		return nil
	case n == 0:
		n = DefaultMemoEntries
	}
	return &memo{m: make(map[string]any), batch: make(map[string]memoVal), max: n,
		verify: opts.VerifyMemo || os.Getenv("SHARESPOT_VERIFY_MEMO") == "1"}
}

// newOwnMemo is PostgreSQL's: each write's own memory, nothing shared.
func newOwnMemo(opts Options) *memo {
	m := newMemo(opts)
	if m != nil {
		m.own = true
	}
	return m
}

// startBatch forgets what a batch run that did not commit changed.
func (m *memo) startBatch() {
	if m == nil {
		return
	}
	clear(m.batch)
	m.batchCleared = false
}

// keep takes a write function's changes into its batch's: it succeeded.
func (m *memo) keep(tx *Tx) {
	if m == nil {
		return
	}
	if tx.memoCleared {
		clear(m.batch)
		m.batchCleared = true
	}
	for k, v := range tx.memoOwn {
		m.batch[k] = v
	}
}

// commit takes the batch's changes into the memory: it committed.
func (m *memo) commit() {
	if m == nil {
		return
	}
	if m.batchCleared {
		clear(m.m)
	}
	for k, v := range m.batch {
		if v.gone {
			delete(m.m, k)
		} else {
			m.m[k] = v.v
		}
	}
	m.startBatch()
	if len(m.m) > m.max {
		// Drop a quarter, whichever the map's order gives: a dropped
		// key is read again when next wanted.
		for k := range m.m {
			delete(m.m, k)
			if len(m.m) <= m.max*3/4 {
				break
			}
		}
	}
}

// recall looks key up: this write's changes, then its batch's, then the
// memory.
func (tx *Tx) recall(key string) (any, bool) {
	if v, ok := tx.memoOwn[key]; ok {
		return v.v, !v.gone
	}
	if tx.memoCleared || tx.memo.own {
		return nil, false
	}
	m := tx.memo
	if v, ok := m.batch[key]; ok {
		return v.v, !v.gone
	}
	if m.batchCleared {
		return nil, false
	}
	v, ok := m.m[key]
	return v, ok
}

func (tx *Tx) set(key string, v memoVal) {
	if tx.memoOwn == nil {
		tx.memoOwn = make(map[string]memoVal)
	}
	tx.memoOwn[key] = v
}

// Remembers says whether this write has the writer's memory, shared with
// the writes after it (SQLite's writer): a write may then replace a
// statement that reads what it changes by one that does not. A write's
// own memory (PostgreSQL) is not that.
func (tx *Tx) Remembers() bool { return tx.memo != nil && !tx.memo.own }

// Remember keeps v under key for this write and, once it commits, for
// later ones (on SQLite's writer; on PostgreSQL for this write alone; in a
// Read it does nothing). v must be
// what the database holds for key once this write's statements so far
// have run, and no one may change it after.
func (tx *Tx) Remember(key string, v any) {
	if tx.memo != nil {
		tx.set(key, memoVal{v: v})
	}
}

// Forget drops key: the write changed what it stands for without saying
// how (a statement that computes the new value in SQL).
func (tx *Tx) Forget(key string) {
	if tx.memo != nil {
		tx.set(key, memoVal{gone: true})
	}
}

// ForgetAll drops every key: the write changed rows in bulk.
func (tx *Tx) ForgetAll() {
	if tx.memo != nil {
		clear(tx.memoOwn)
		tx.memoCleared = true
	}
}

// Recall returns the value kept under key, if any, without reading the
// database: for a write that changes a kept value (copy it, change the
// copy, Remember the copy). Memo is the way to read one.
func Recall[T any](tx *Tx, key string) (T, bool) {
	var zero T
	if tx.memo == nil {
		return zero, false
	}
	v, ok := tx.recall(key)
	if !ok {
		return zero, false
	}
	t, ok := v.(T)
	return t, ok
}

// Memo returns the value kept under key or, when none is, load's, which it
// then keeps (the database's, read in this write, is the truth for the
// writes after it). With verification on, a kept value is loaded as well
// and must be the same (same says whether two are).
func Memo[T any](tx *Tx, key string, load func() (T, error), same func(kept, stored T) bool) (T, error) {
	if tx.memo == nil {
		return load()
	}
	if v, ok := tx.recall(key); ok {
		if t, ok := v.(T); ok {
			tx.memo.hits.Add(1)
			if tx.memo.verify {
				stored, err := load()
				if err != nil {
					return t, fmt.Errorf("store: the writer's memory of %s differs from the database: kept %+v, reading it again: %w", key, t, err)
				}
				if !same(t, stored) {
					return t, fmt.Errorf("store: the writer's memory of %s differs from the database: kept %+v, stored %+v", key, t, stored)
				}
			}
			return t, nil
		}
	}
	tx.memo.misses.Add(1)
	v, err := load()
	if err != nil {
		return v, err
	}
	tx.set(key, memoVal{v: v})
	return v, nil
}

package store

import (
	"errors"
	"strings"
	"testing"
)

// TestExecLater: a statement queued with ExecLater is seen by the write's
// later statements; one that fails fails the write, under its own
// description, with nothing of the write committed; and the connection
// serves the next write. On both engines (SQLite runs it at once).
func TestExecLater(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		// Seen by a later query of the same write.
		err := s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a1", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a1", 1); err != nil {
				return err
			}
			if err := tx.ExecLater("insert a2", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a2", 2); err != nil {
				return err
			}
			var n int64
			if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n); err != nil {
				return err
			}
			if n != 2 {
				t.Errorf("a later query of the write saw %d accounts, want the 2 queued", n)
			}
			return tx.ExecLater("insert a3", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a3", 3)
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := accountIDs(t, s); len(got) != 3 {
			t.Fatalf("committed %v, want a1, a2 and a3 (the last queued goes with the commit)", got)
		}
		// A queued duplicate fails the write at its commit: nothing of it
		// stays, and the error names the statement.
		err = s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a4", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a4", 4); err != nil {
				return err
			}
			return tx.ExecLater("insert a1 again", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a1", 5)
		})
		if err == nil || !strings.Contains(err.Error(), "insert a1 again") || !errors.Is(err, ErrConflict) {
			t.Fatalf("a queued duplicate: got %v, want a conflict naming %q", err, "insert a1 again")
		}
		if got := accountIDs(t, s); len(got) != 3 || got["a4"] {
			t.Fatalf("after the failed write: %v, want a1, a2, a3 only", got)
		}
		// A queued failure is met by the next query too, which the write
		// then fails with.
		err = s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a2 again", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a2", 6); err != nil {
				return err
			}
			var n int64
			return tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n)
		})
		if err == nil || !strings.Contains(err.Error(), "insert a2 again") {
			t.Fatalf("a queued duplicate before a query: got %v, want an error naming %q", err, "insert a2 again")
		}
		// The connections are clean: every one of the pool serves a write.
		for i := range 20 {
			if err := s.Write(ctx, insertAccount("b"+string(rune('a'+i)))); err != nil {
				t.Fatalf("write %d after the failures: %v", i, err)
			}
		}
		if got := accountIDs(t, s); len(got) != 23 {
			t.Fatalf("%d accounts, want 23", len(got))
		}
	})
}

// TestQueryRowLater: a queued row's columns are in its destination once
// the write's next statement has run (or, for the last, once it has
// committed); no row fails the write with ErrNotFound under the
// statement's description.
func TestQueryRowLater(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		var first, last string
		err := s.Write(ctx, func(tx *Tx) error {
			if err := tx.QueryRowLater("insert a1", `INSERT INTO accounts (id, created_ms) VALUES (?, ?) RETURNING id`, []any{"a1", 1}, &first); err != nil {
				return err
			}
			var n int64
			if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n); err != nil {
				return err
			}
			if n != 1 || first != "a1" {
				t.Errorf("after the next query: %d accounts, first %q; want 1 and a1", n, first)
			}
			if err := tx.QueryRowLater("insert a2", `INSERT INTO accounts (id, created_ms) VALUES (?, ?) RETURNING id`, []any{"a2", 2}, &last); err != nil {
				return err
			}
			tx.AfterCommit(func() {
				if last != "a2" {
					t.Errorf("after the commit: last %q, want a2", last)
				}
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if last != "a2" {
			t.Fatalf("last %q after the write, want a2", last)
		}
		// No row: the write fails, named, and nothing of it stays.
		var none string
		err = s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a3", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a3", 3); err != nil {
				return err
			}
			return tx.QueryRowLater("insert a4 if a9", `INSERT INTO accounts (id, created_ms) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM accounts WHERE id = 'a9') RETURNING id`, []any{"a4", 4}, &none)
		})
		if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "insert a4 if a9") {
			t.Fatalf("a queued row that is not there: got %v, want ErrNotFound naming the statement", err)
		}
		if got := accountIDs(t, s); len(got) != 2 || got["a3"] {
			t.Fatalf("after the failed write: %v, want a1 and a2 only", got)
		}
		if err := s.Write(ctx, func(tx *Tx) error { return tx.QueryRowLater("nothing", `SELECT 1`, nil) }); err == nil {
			t.Fatal("QueryRowLater without a destination was taken")
		}
	})
}

// TestInsertRowLater: an INSERT of one row queued last goes with the
// COMMIT on PostgreSQL (one round trip for the whole write), its row in its
// destination by the end; one that fails there fails the write, named, and
// the COMMIT sent with it commits nothing of the write.
func TestInsertRowLater(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		before := s.Stats()
		var id string
		err := s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a1", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a1", 1); err != nil {
				return err
			}
			return tx.InsertRowLater("insert a2", `INSERT INTO accounts (id, created_ms) VALUES (?, ?) RETURNING id`, []any{"a2", 2}, &id)
		})
		if err != nil || id != "a2" {
			t.Fatalf("write: %v, row %q; want a2", err, id)
		}
		if trips := s.Stats().PgRoundTrips - before.PgRoundTrips; d.engine == Postgres && trips != 1 {
			t.Errorf("%d round trips, want 1: BEGIN, both inserts and the COMMIT together", trips)
		}
		// The last insert fails in the database (its NOT NULL column left
		// NULL, as an inbox append to an unknown device does).
		err = s.Write(ctx, func(tx *Tx) error {
			if err := tx.ExecLater("insert a3", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a3", 3); err != nil {
				return err
			}
			var none string
			return tx.InsertRowLater("insert a4 at a9's time", `INSERT INTO accounts (id, created_ms) VALUES (?, (SELECT created_ms FROM accounts WHERE id = 'a9')) RETURNING id`, []any{"a4"}, &none)
		})
		if err == nil || !strings.Contains(err.Error(), "insert a4 at a9's time") {
			t.Fatalf("an insert the database refuses: got %v, want the write failed naming the statement", err)
		}
		if got := accountIDs(t, s); len(got) != 2 || !got["a1"] || !got["a2"] {
			t.Fatalf("after the failed write: %v, want a1 and a2 only", got)
		}
		// The connection is fit for the next write.
		if err := s.Write(ctx, insertAccount("a5")); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPipelinedRoundTrips counts PostgreSQL round trips: a write of two
// queued statements and one query takes one trip for the BEGIN, the two
// and the query, and one for the COMMIT; a read's BEGIN goes with its
// first query.
func TestPipelinedRoundTrips(t *testing.T) {
	s := newDB(t, Postgres).open(t)
	ctx := t.Context()
	before := s.Stats()
	err := s.Write(ctx, func(tx *Tx) error {
		tx.ExecLater("insert a1", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a1", 1)
		tx.ExecLater("insert a2", `INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a2", 1)
		var n int64
		return tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if trips, stmts := after.PgRoundTrips-before.PgRoundTrips, after.PgStatements-before.PgStatements; trips != 2 || stmts != 5 {
		t.Fatalf("%d round trips for %d statements, want 2 for 5 (BEGIN, two inserts, a query; COMMIT)", trips, stmts)
	}
	// A write that does nothing sends nothing.
	if err := s.Write(ctx, func(*Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().PgRoundTrips - after.PgRoundTrips; n != 0 {
		t.Fatalf("an empty write took %d round trips", n)
	}
	if got := accountIDs(t, s); len(got) != 2 {
		t.Fatalf("committed %v", got)
	}
	// A read of two queries: the BEGIN with the first, the second, the
	// ROLLBACK.
	before = s.Stats()
	err = s.Read(ctx, func(tx *Tx) error {
		var n int64
		if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	after = s.Stats()
	if reads, trips := after.PgReads-before.PgReads, after.PgReadRoundTrips-before.PgReadRoundTrips; reads != 1 || trips != 3 {
		t.Fatalf("a read of two queries counted as %d reads of %d round trips, want 1 of 3", reads, trips)
	}
}

package store

import (
	"database/sql"
	"testing"
)

// TestPostgresScansAsDatabaseSQL: a pipelined PostgreSQL transaction
// hands columns to Scan as database/sql does, conversions included, which
// pgx's own scanning refuses (a BYTEA into a string, a number into a
// string or a bool, NUMERIC into an integer).
func TestPostgresScansAsDatabaseSQL(t *testing.T) {
	s := newDB(t, Postgres).open(t)
	err := s.Read(t.Context(), func(tx *Tx) error {
		var (
			sum    int64
			text   string
			raw    []byte
			count  int
			small  int32
			number string
			flag   bool
			null   []byte
			ns     sql.NullString
			ratio  float64
			anyv   any
		)
		err := tx.QueryRow(`SELECT COALESCE(SUM(x), 0), '\x6869'::bytea, 'abc'::bytea, COUNT(*), 5::bigint, 42::bigint, 1::bigint,
			NULL::bytea, NULL::text, 0.5::float8, 'v'::text FROM (SELECT 1::bigint AS x UNION ALL SELECT 2) t`).
			Scan(&sum, &text, &raw, &count, &small, &number, &flag, &null, &ns, &ratio, &anyv)
		if err != nil {
			return err
		}
		if sum != 3 || text != "hi" || string(raw) != "abc" || count != 2 || small != 5 || number != "42" || !flag ||
			null != nil || ns.Valid || ratio != 0.5 || anyv != "v" {
			t.Errorf("scanned %d %q %q %d %d %q %v %v %+v %v %v", sum, text, raw, count, small, number, flag, null, ns, ratio, anyv)
		}
		var s string
		if err := tx.QueryRow(`SELECT NULL::text`).Scan(&s); err == nil {
			t.Error("a NULL scanned into a string without an error")
		}
		var tiny int8
		if err := tx.QueryRow(`SELECT 300::bigint`).Scan(&tiny); err == nil {
			t.Errorf("300 scanned into an int8 as %d without an error", tiny)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRowsClosedTwice: rows closed a second time after the next statement
// began leave that statement's result alone (a deferred Close after an
// explicit one, say).
func TestRowsClosedTwice(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		err := s.Write(t.Context(), func(tx *Tx) error {
			rows, err := tx.Query(`SELECT 1`)
			if err != nil {
				return err
			}
			for rows.Next() {
			}
			if err := rows.Close(); err != nil {
				return err
			}
			row := tx.QueryRow(`SELECT 2`)
			if err := rows.Close(); err != nil {
				return err
			}
			var n int64
			if err := row.Scan(&n); err != nil || n != 2 {
				t.Errorf("the next statement's row after a second Close: %d, %v", n, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

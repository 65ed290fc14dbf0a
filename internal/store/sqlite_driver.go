//go:build !cgosqlite

package store

import (
	"errors"
	"net/url"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

const sqliteDriverName = "sqlite"

// sqliteDSN is the data source name that opens the file: URI name with
// pragmas (each "name(value)") applied, in order, to every connection, and
// transactions that begin IMMEDIATE.
func sqliteDSN(name string, pragmas []string) (string, error) {
	q := url.Values{}
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	return name + "?" + q.Encode(), nil
}

func sqliteBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

func sqliteConstraint(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
}

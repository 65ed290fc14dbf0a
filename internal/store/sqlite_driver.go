//go:build !nosqliteserver

package store

import (
	"errors"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// sqliteBuilt: this build has the SQLite engine (modernc.org/sqlite, which
// does not build for every GOARCH: not mips/mipsle). Routers build with
// -tags nosqliteserver; they are hosts and never open a server database.
const sqliteBuilt = true

func sqliteBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

func sqliteConstraint(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
}

//go:build nosqliteserver

package store

// sqliteBuilt: this build leaves the SQLite engine out (see
// sqlite_driver.go); OpenSQLite refuses with a message saying so.
const sqliteBuilt = false

const sqliteDriverName = ""

func sqliteDSN(string, []string) (string, error) { return "", nil }
func sqliteBusy(error) bool                      { return false }
func sqliteConstraint(error) bool                { return false }

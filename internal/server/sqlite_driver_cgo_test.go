//go:build cgosqlite

package server_test

import _ "github.com/mattn/go-sqlite3" // the tests' own connection to the server's SQLite file (experiment, see internal/store/sqlite_driver_cgo.go)

// sqliteDriver is the server's SQLite library: a second library in the
// process would not see the server's locks (POSIX locks are per process).
const sqliteDriver = "sqlite3"

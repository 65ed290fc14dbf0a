//go:build !cgosqlite

package server_test

import _ "modernc.org/sqlite" // the tests' own connection to the server's SQLite file

// sqliteDriver is the server's SQLite library: a second library in the
// process would not see the server's locks (POSIX locks are per process).
const sqliteDriver = "sqlite"

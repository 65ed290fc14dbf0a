//go:build cgosqlite

package store

import (
	"database/sql"

	"github.com/mattn/go-sqlite3"
)

// go-sqlite3 registers SQL functions per connection, from a driver's
// connect hook: the tests' driver adds storeTestHook to the store's.
func init() {
	sqliteDriverName = "sharespot-sqlite3-test"
	sql.Register(sqliteDriverName, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		if err := sqliteConnectHook(c); err != nil {
			return err
		}
		return c.RegisterFunc("store_test_hook", func(int64) int64 { return storeTestHook() }, false)
	}})
}

// registerTestHook: the tests' driver registered it already.
func registerTestHook() error { return nil }

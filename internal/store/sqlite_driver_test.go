//go:build !cgosqlite || nosqliteserver

package store

import (
	"database/sql/driver"

	"modernc.org/sqlite"
)

// registerTestHook registers storeTestHook on the SQLite connections
// opened after it.
func registerTestHook() error {
	return sqlite.RegisterScalarFunction("store_test_hook", 1, func(*sqlite.FunctionContext, []driver.Value) (driver.Value, error) {
		return storeTestHook(), nil
	})
}

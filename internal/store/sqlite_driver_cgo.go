//go:build cgosqlite

package store

// An experiment, not a build we ship: with -tags cgosqlite (and
// CGO_ENABLED=1) the store uses the cgo driver github.com/mattn/go-sqlite3
// instead of the pure-Go modernc.org/sqlite (sqlite_driver.go), so that the
// two can be measured against each other. The results are recorded in
// docs/benchmarks.md, "cgo SQLite, an experiment". Without the tag the
// build stays pure Go.

import (
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/mattn/go-sqlite3"
)

// sqliteDriverName is go-sqlite3 with sqliteConnectHook. A variable so
// that tests can register a driver that adds their SQL functions.
var sqliteDriverName = cgoDriverName

const cgoDriverName = "sharespot-sqlite3"

func init() {
	sql.Register(cgoDriverName, &sqlite3.SQLiteDriver{ConnectHook: sqliteConnectHook})
}

// sqliteDSNParams names go-sqlite3's DSN parameter for each pragma it
// takes one for. It applies them when it connects, busy_timeout first.
var sqliteDSNParams = map[string]string{
	"busy_timeout": "_busy_timeout",
	"journal_mode": "_journal_mode",
	"synchronous":  "_synchronous",
	"foreign_keys": "_foreign_keys",
	"query_only":   "_query_only",
	"cache_size":   "_cache_size",
}

func pragmaName(p string) string {
	name, _, _ := strings.Cut(p, "(")
	return name
}

// sqliteConnectHook applies, in order, the pragmas of sqlitePragmas that
// go-sqlite3 has no DSN parameter for (temp_store), after those it has.
func sqliteConnectHook(c *sqlite3.SQLiteConn) error {
	for _, p := range sqlitePragmas {
		if _, ok := sqliteDSNParams[pragmaName(p)]; ok {
			continue
		}
		if _, err := c.Exec("PRAGMA "+p, nil); err != nil {
			return fmt.Errorf("PRAGMA %s: %w", p, err)
		}
	}
	return nil
}

// sqliteDSN is the data source name that opens the file: URI name with
// pragmas (each "name(value)") applied to every connection, and
// transactions that begin IMMEDIATE, except on read connections
// (query_only): go-sqlite3 begins every transaction with _txlock, ignoring
// TxOptions.ReadOnly, and BEGIN IMMEDIATE fails where query_only is on.
func sqliteDSN(name string, pragmas []string) (string, error) {
	q := url.Values{}
	for _, p := range pragmas {
		pname, rest, ok := strings.Cut(p, "(")
		value, closed := strings.CutSuffix(rest, ")")
		if !ok || !closed {
			return "", fmt.Errorf("store: pragma %q is not name(value)", p)
		}
		if param, ok := sqliteDSNParams[pname]; ok {
			q.Set(param, value)
		} else if !slices.Contains(sqlitePragmas, p) {
			return "", fmt.Errorf("store: go-sqlite3 has no DSN parameter for pragma %s, and its connect hook applies only sqlitePragmas", p)
		}
	}
	if !slices.Contains(pragmas, "query_only(1)") {
		q.Set("_txlock", "immediate")
	}
	return name + "?" + q.Encode(), nil
}

func sqliteBusy(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrBusy
}

func sqliteConstraint(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrConstraint
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLitePragmas are applied to every SQLite connection, in order. FULL
// synchronous makes every commit durable across power loss, not only process
// crashes. busy_timeout comes first so that it covers the others: switching
// to WAL needs a lock that a concurrent opener may hold.
var sqlitePragmas = []string{
	"busy_timeout(10000)",
	"journal_mode(WAL)",
	"synchronous(FULL)",
	"foreign_keys(ON)",
	"temp_store(MEMORY)",
	"cache_size(-65536)",
}

// OpenSQLite opens (creating if needed) the SQLite database at path and
// brings its schema up to date.
func OpenSQLite(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: empty SQLite path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("store: create data directory: %w", err)
		}
	}
	q := url.Values{}
	for _, p := range sqlitePragmas {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	// In a file: URI, '%' escapes, '?' starts the query and '#' a fragment:
	// escape them so that the path names the file it says.
	name := "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	dsn := name + "?" + q.Encode()
	// Read connections refuse writes, so Read is read-only in fact.
	q.Add("_pragma", "query_only(1)")
	readDSN := name + "?" + q.Encode()

	s := &Store{engine: SQLite, log: opts.Logger, maxBatch: opts.MaxBatch, crash: opts.Crash}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxBatch <= 0 {
		s.maxBatch = 512
	}
	var err error
	if s.write, err = sql.Open("sqlite", dsn); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s.write.SetMaxOpenConns(1)
	s.write.SetMaxIdleConns(1)
	s.write.SetConnMaxLifetime(0)
	if err := pingSQLite(ctx, s.write); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := migrate(ctx, s.write, SQLite); err != nil {
		s.Close()
		return nil, err
	}
	if s.read, err = sql.Open("sqlite", readDSN); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s for reading: %w", path, err)
	}
	s.read.SetMaxOpenConns(8)
	s.read.SetMaxIdleConns(8)
	if s.wconn, err = s.write.Conn(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s.wstmts = newStmtCache(s.wconn)
	s.writes = make(chan *writeReq, 4*s.maxBatch)
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	go s.writer()
	return s, nil
}

// pingSQLite opens the first connection. On a new file, two openers that
// both switch it to WAL can deadlock on the lock upgrade, and SQLite then
// fails one at once with SQLITE_BUSY instead of calling the busy handler:
// retry that a few times.
func pingSQLite(ctx context.Context, db *sql.DB) error {
	var err error
	for range 50 {
		var se *sqlite.Error
		if err = db.PingContext(ctx); !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_BUSY {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return err
}

func isConflict(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
	}
	return false
}

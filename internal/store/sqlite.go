package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
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

// sqliteReadCache is each read connection's page cache (KiB). A page a
// connection reads stays in its own cache, outside Go's heap, up to this
// size: with the write connection's 64 MiB, eight read connections each
// came to hold a copy of every page they had read, the devices and their
// tokens for a server with many devices (8 × 11.5 MiB for 20,000 signed-in
// devices; 4.7 KiB of RSS per idle stream). A page not in it is read from
// the kernel's page cache, which holds it once. (Mapping the file instead,
// mmap_size, shares the pages, but each connection's mapping counts them
// in the process's RSS again.)
const sqliteReadCache = "cache_size(-2048)"

// sqliteReadPragmas are the read connections' pragmas: sqlitePragmas with
// the smaller cache, and query_only. (The driver may sort the list, so a
// pragma is replaced, never given twice.)
func sqliteReadPragmas() []string {
	out := make([]string, 0, len(sqlitePragmas)+1)
	for _, p := range sqlitePragmas {
		if strings.HasPrefix(p, "cache_size(") {
			p = sqliteReadCache
		}
		out = append(out, p)
	}
	return append(out, "query_only(1)")
}

// OpenSQLite opens (creating if needed) the SQLite database at path and
// brings its schema up to date.
func OpenSQLite(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: empty SQLite path")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := prepareSQLiteFiles(path, log); err != nil {
		return nil, err
	}
	name := sqliteFileURI(path)
	dsn, err := sqliteDSN(name, sqlitePragmas)
	if err != nil {
		return nil, err
	}
	// Read connections refuse writes, so Read is read-only in fact.
	readDSN, err := sqliteDSN(name, sqliteReadPragmas())
	if err != nil {
		return nil, err
	}

	s := &Store{engine: SQLite, log: log, maxBatch: opts.MaxBatch, commitDelay: opts.CommitDelay, crash: opts.Crash, onCommit: opts.OnCommit,
		memo: newMemo(opts), fixed: newFixed(opts)}
	if s.maxBatch <= 0 {
		s.maxBatch = 512
	}
	if s.write, err = sql.Open(sqliteDriverName, dsn); err != nil {
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
	if s.read, err = sql.Open(sqliteDriverName, readDSN); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s for reading: %w", path, err)
	}
	s.read.SetMaxOpenConns(sqliteReaders)
	s.read.SetMaxIdleConns(sqliteReaders)
	s.rstmts = newReadStmts(s.read)
	if s.wconn, err = s.write.Conn(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s.wstmts = newStmtCache(s.wconn)
	s.writes = make(chan *writeReq, 4*s.maxBatch)
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	s.reads = make(chan *readReq)
	for range sqliteReaders {
		s.readers.Add(1)
		go s.reader()
	}
	go s.writer()
	return s, nil
}

// prepareSQLiteFiles makes the database file the owner's alone (0600)
// before SQLite opens it, whatever the directory's mode or the umask: the
// database holds the platform's receipt-signing key. SQLite creates the
// WAL and shared-memory files with the database file's mode, so they are
// 0600 too; ones an earlier version left are tightened here. It warns
// about a data directory others can write: they could replace the
// database, or plant its WAL.
func prepareSQLiteFiles(path string, log *slog.Logger) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: create data directory: %w", err)
	}
	if runtime.GOOS == "windows" {
		return nil // no Unix modes; the directory's ACL decides
	}
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o022 != 0 {
		log.Warn("the data directory is writable by other users: they can replace the database and the signing key in it; chmod 700 it",
			"dir", dir, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	defer f.Close()
	for i, name := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(name)
		if errors.Is(err, fs.ErrNotExist) && i > 0 {
			continue
		}
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		m := fi.Mode().Perm()
		if m == 0o600 {
			continue
		}
		if err := os.Chmod(name, 0o600); err != nil {
			// Not ours (an operator command run as another user): leave it.
			log.Warn("cannot make the database private (mode 0600)", "file", name, "mode", fmt.Sprintf("%04o", m), "err", err)
			continue
		}
		if m&0o077 != 0 && fi.Size() > 0 {
			log.Warn("the database was readable by other users; its mode is now 0600", "file", name, "was", fmt.Sprintf("%04o", m))
		}
	}
	return nil
}

// pingSQLite opens the first connection. On a new file, two openers that
// both switch it to WAL can deadlock on the lock upgrade, and SQLite then
// fails one at once with SQLITE_BUSY instead of calling the busy handler:
// retry that a few times.
func pingSQLite(ctx context.Context, db *sql.DB) error {
	var err error
	for range 50 {
		if err = db.PingContext(ctx); !sqliteBusy(err) {
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

func isConflict(err error) bool { return sqliteConstraint(err) }

// OpenScratchSQLite opens (creating) a SQLite database at path outside
// the store, on one connection, with the store's driver and settings (WAL,
// synchronous=FULL): a yardstick for what this machine's disk and CPU
// do, measured beside a benchmark.
func OpenScratchSQLite(path string) (*sql.DB, error) {
	dsn, err := sqliteDSN(sqliteFileURI(path), sqlitePragmas)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(sqliteDriverName, dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// sqliteFileURI names path as a file: URI. In one, '%' escapes, '?'
// starts the query and '#' a fragment: they are escaped so that the URI
// names the file path says.
func sqliteFileURI(path string) string {
	return "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
}

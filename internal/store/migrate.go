package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Migrations are numbered files NNNN_name.sql, applied in order, each once,
// each in its own transaction. A released migration is never edited: change
// the schema with a new file. migrations/SHA256SUMS holds the SHA-256 of
// every released one (TestReleasedMigrationsUnchanged), and
// internal/e2e/upgrade opens a database frozen at each released schema.
//
//go:embed migrations/*.sql
var migrationFS embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("store: migration file %q is not NNNN_name.sql", name)
		}
		b, err := migrationFS.ReadFile("migrations/" + name)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("store: migration %s: want version %d", m.name, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the newest migration this binary knows.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// blobType matches the BLOB type name in a migration; PostgreSQL calls it
// BYTEA. (The other types in the migrations mean the same on both engines:
// INTEGER holds small enumerations and flags, BIGINT every count of money,
// bytes and milliseconds.)
var blobType = regexp.MustCompile(`\bBLOB\b`)

// forEngine adapts a migration's portable SQL to engine.
func forEngine(sql string, engine Engine) string {
	if engine == Postgres {
		return blobType.ReplaceAllString(sql, "BYTEA")
	}
	return sql
}

// migrationDB is a *sql.DB or a *sql.Conn.
type migrationDB interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

func migrate(ctx context.Context, db *sql.DB, engine Engine) (err error) {
	if engine != Postgres {
		// SQLite: each migration's transaction takes the write lock.
		return migrateOn(ctx, db, engine)
	}
	// PostgreSQL: an advisory lock on one connection keeps two processes
	// from migrating at once (CREATE TABLE IF NOT EXISTS itself races).
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(pgMigrationLock)); err != nil {
		return fmt.Errorf("store: take the migration lock: %w", err)
	}
	defer func() {
		if _, uerr := conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(pgMigrationLock)); uerr != nil {
			err = errors.Join(err, fmt.Errorf("store: release the migration lock: %w", uerr))
		}
	}()
	return migrateOn(ctx, conn, engine)
}

func migrateOn(ctx context.Context, db migrationDB, engine Engine) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("store: create schema_migrations: %w", err)
	}
	var have int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("store: read schema version: %w", err)
	}
	if have > len(ms) {
		return fmt.Errorf("store: database schema version %d is newer than this binary's %d: upgrade sharespot", have, len(ms))
	}
	for _, m := range ms[have:] {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("store: migration %s: %w", m.name, err)
		}
		// Another process may have applied it since we read the version:
		// look again inside the (write-locked) transaction.
		sel := `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`
		if engine == Postgres {
			sel = `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`
		}
		var done int
		if err := tx.QueryRowContext(ctx, sel, m.version).Scan(&done); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: migration %s: %w", m.name, err)
		}
		if done > 0 {
			tx.Rollback()
			continue
		}
		if _, err := tx.ExecContext(ctx, forEngine(m.sql, engine)); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: migration %s: %w", m.name, err)
		}
		ins := `INSERT INTO schema_migrations (version, name) VALUES (?, ?)`
		if engine == Postgres {
			ins = `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`
		}
		if _, err := tx.ExecContext(ctx, ins, m.version, m.name); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: record migration %s: %w", m.name, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("store: migration %s: %w", m.name, err)
		}
	}
	return nil
}

// Touch rewrites a row of schema_migrations as it is: a real write, which
// needs the write lock and a writable database, that changes nothing (the
// server's readiness check). The table is the store's own, so no other
// package writes it.
func (tx *Tx) Touch() error {
	if _, err := tx.Exec(`UPDATE schema_migrations SET name = name WHERE version = 1`); err != nil {
		return fmt.Errorf("store: touch: %w", err)
	}
	return nil
}

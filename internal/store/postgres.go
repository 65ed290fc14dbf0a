package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgreSQL.
//
// Isolation: every Write runs in a SERIALIZABLE transaction, retried when
// PostgreSQL reports a serialization failure (40001) or a deadlock (40P01).
// The code above the store was written against SQLite's single writer, where
// each write function runs alone, and it relies on that in more places than
// the ledger's conditional updates: read-then-write steps such as the
// idempotency look-up before a transfer, opening a ledger account on first
// use (two concurrent first payments into the fee account would collide on
// its key under READ COMMITTED), the open-session and hotspot limits, the
// inbox acknowledgement cursor. SERIALIZABLE gives every one of them the
// SQLite meaning (the outcome is that of some serial order) without each
// needing its own lock, and a conflict surfaces as 40001, never as a lost
// update or a spurious unique violation. The price is retries under
// contention; the session code's SELECT … FOR UPDATE (Tx.ForUpdate) makes a
// second transition of the same session wait for the first and fail at once
// instead of after doing its work. Reads run in REPEATABLE READ READ ONLY
// transactions: one consistent snapshot, no locks, never a serialization
// failure.

// Retry policy for serialization failures and deadlocks: up to pgMaxAttempts
// attempts, sleeping a random time up to a bound that doubles from
// pgBackoffMin to pgBackoffMax between them (full jitter).
const (
	pgMaxAttempts = 40
	pgBackoffMin  = 2 * time.Millisecond
	pgBackoffMax  = 100 * time.Millisecond
)

// pgMigrationLock is the advisory lock key that serializes migrations of
// one database across processes.
const pgMigrationLock = 0x5368617265 // "Share"

// IsPostgresURL reports whether target names a PostgreSQL database
// (postgres:// or postgresql://) rather than an SQLite file.
func IsPostgresURL(target string) bool {
	return strings.HasPrefix(target, "postgres://") || strings.HasPrefix(target, "postgresql://")
}

// Redact returns target (a database URL or path) with any password hidden,
// for messages and logs.
func Redact(target string) string {
	u, err := url.Parse(target)
	switch {
	case err == nil && u.User != nil:
		return u.Redacted()
	case err != nil && strings.Contains(target, "://"):
		return "(an unparsable database URL)"
	}
	return target
}

// Open opens target: a postgres:// URL or the path of an SQLite file.
func Open(ctx context.Context, target string, opts Options) (*Store, error) {
	if IsPostgresURL(target) {
		return OpenPostgres(ctx, target, opts)
	}
	return OpenSQLite(ctx, target, opts)
}

// OpenPostgres connects to the PostgreSQL database at url
// (postgres://user@host:port/db?…) and brings its schema up to date.
func OpenPostgres(ctx context.Context, url string, opts Options) (*Store, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("store: PostgreSQL URL: %w", err)
	}
	where := fmt.Sprintf("PostgreSQL database %s on %s:%d", cfg.Database, cfg.Host, cfg.Port)
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "sharespot"
	}
	s := &Store{engine: Postgres, log: opts.Logger, crash: opts.Crash}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	db := stdlib.OpenDB(*cfg)
	conns := opts.MaxConns
	if conns <= 0 {
		conns = 16
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s.read, s.write = db, db
	if err := db.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: connect to %s: %w", where, err)
	}
	if err := migrate(ctx, db, Postgres); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w (%s)", err, where)
	}
	return s, nil
}

// writePostgres runs fn in a SERIALIZABLE transaction of its own, retrying
// the whole function on a serialization failure or a deadlock. fn may
// therefore run more than once; only the attempt that commits counts, and
// only its AfterCommit hooks run.
func (s *Store) writePostgres(ctx context.Context, fn func(*Tx) error) error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	s.inflight.Add(1) // Close waits for it before closing the pool
	s.closeMu.RUnlock()
	defer s.inflight.Done()

	bound := pgBackoffMin
	for attempt := 1; ; attempt++ {
		// Before each attempt nothing of this write is committed, so
		// ending here tells the caller the truth.
		if err := ctx.Err(); err != nil {
			return err
		}
		after, err := s.attemptPostgres(ctx, fn)
		if err == nil {
			for _, f := range after {
				f()
			}
			return nil
		}
		if !isRetryable(err) {
			return err
		}
		if attempt == pgMaxAttempts {
			return fmt.Errorf("%w: gave up after %d attempts: %v", ErrBusy, attempt, err)
		}
		s.statsMu.Lock()
		s.stats.Retries++
		s.statsMu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rand.N(bound) + time.Millisecond/4):
		}
		bound = min(2*bound, pgBackoffMax)
	}
}

// attemptPostgres is one attempt of a write. Its error is retryable when
// any statement or the commit failed with a serialization failure or
// deadlock, even if fn turned that error into another.
func (s *Store) attemptPostgres(ctx context.Context, fn func(*Tx) error) ([]func(), error) {
	// As on SQLite, a function once started is not interrupted by its
	// caller's context: the caller must learn whether it committed, and a
	// cancel that races the COMMIT would leave that unknown.
	qctx := context.WithoutCancel(ctx)
	sqlTx, err := s.write.BeginTx(qctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	if err != nil {
		return nil, fmt.Errorf("store: begin write: %w", translate(err))
	}
	tx := &Tx{ctx: ctx, qctx: qctx, q: sqlTx, engine: Postgres, writable: true}
	if ferr := runFn(fn, tx); ferr != nil {
		_ = sqlTx.Rollback()
		if tx.retry != nil && !isRetryable(ferr) {
			return nil, fmt.Errorf("%w (the function returned: %v)", tx.retry, ferr)
		}
		return nil, ferr
	}
	if tx.retry != nil {
		// fn swallowed the error; the transaction is aborted anyway.
		_ = sqlTx.Rollback()
		return nil, tx.retry
	}
	s.statsMu.Lock()
	s.pgCommitNo++
	n := s.pgCommitNo
	s.statsMu.Unlock()
	if s.crash != nil {
		s.crash(n, false)
	}
	if err := sqlTx.Commit(); err != nil {
		return nil, fmt.Errorf("store: commit: %w", translate(err))
	}
	if s.crash != nil {
		s.crash(n, true)
	}
	s.statsMu.Lock()
	s.stats.Commits++
	s.stats.Writes++
	s.statsMu.Unlock()
	return tx.after, nil
}

// PostgreSQL error codes the store acts on.
const (
	pgSerializationFailure = "40001"
	pgDeadlockDetected     = "40P01"
)

// isRetryable reports whether err is a serialization failure or a deadlock:
// the transaction lost a race and may succeed if run again.
func isRetryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == pgSerializationFailure || pe.Code == pgDeadlockDetected
	}
	return false
}

// isPgConflict reports whether err is an integrity constraint violation
// (class 23: unique, check, foreign key, not null, exclusion), as SQLite's
// SQLITE_CONSTRAINT covers all of these.
func isPgConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "23")
}

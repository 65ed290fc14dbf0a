package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgreSQL.
//
// Isolation: every Write runs in a READ COMMITTED transaction. The code
// above the store was first written against SQLite's single writer, where
// each write function runs alone; on PostgreSQL each read-then-write step
// holds its own guarantee instead:
//
//   - a row the write reads and then changes is read with Tx.ForUpdate
//     (SELECT … FOR UPDATE): a session before each transition, a device's
//     row before counting its open sessions or hotspots, a hotspot before
//     its instruction is replaced, a device's inbox cursor before an ack;
//   - counters and balances change by conditional updates that PostgreSQL
//     re-evaluates on the newest row version (committed_bytes + n <=
//     shareable_bytes; balance >= amount; next_seq = next_seq + 1);
//   - what must happen once is a unique key (a transfer's idempotency key,
//     a receipt per quote, a device, an active BSSID, a ledger account):
//     of two concurrent inserts the second waits for the first and fails
//     with a unique violation, which aborts its whole transaction — so a
//     transfer applied twice by racing duplicates never commits twice.
//
// A unique violation is retried (up to pgMaxConflictAttempts attempts):
// a check-then-insert that lost its race then runs again, sees the row that
// won, and takes the path it would have taken had it run second (an
// idempotent replay, "already exists"); when the violation persists its
// function's own error is returned. Deadlocks (40P01) and serialization
// failures (40001) are retried up to pgMaxAttempts times.
//
// An earlier version ran every write SERIALIZABLE; on small, hot tables
// PostgreSQL's predicate locks are page- or relation-wide, and concurrent
// complete flows failed after 40 retries (docs/benchmarks.md). Reads run
// in REPEATABLE READ READ ONLY transactions: one consistent snapshot, no
// locks, never a serialization failure.

// Retry policy for serialization failures and deadlocks: up to pgMaxAttempts
// attempts, sleeping a random time up to a bound that doubles from
// pgBackoffMin to pgBackoffMax between them (full jitter).
const (
	pgMaxAttempts = 40
	// pgMaxConflictAttempts bounds the attempts of a write that keeps
	// meeting a unique violation: the second attempt already sees the row
	// that won the race, so more only help when several race at once.
	pgMaxConflictAttempts = 4
	pgBackoffMin          = 2 * time.Millisecond
	pgBackoffMax          = 100 * time.Millisecond
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
	s := &Store{engine: Postgres, log: opts.Logger, crash: opts.Crash, onCommit: opts.OnCommit, memo: newOwnMemo(opts), fixed: newFixed(opts)}
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

// writePostgres runs fn in a READ COMMITTED transaction of its own,
// retrying the whole function on a deadlock, a serialization failure or
// (a few times) a unique violation. fn may
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
	conflicts := 0
	eager := false
	for attempt := 1; ; attempt++ {
		// Before each attempt nothing of this write is committed, so
		// ending here tells the caller the truth.
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		after, err := s.attemptPostgres(ctx, fn, eager)
		if errors.Is(err, errMissed) && !eager {
			// A statement sent ahead did not do what the write expected:
			// run it again at once, each such statement alone.
			eager = true
			s.statsMu.Lock()
			s.stats.Replays++
			s.statsMu.Unlock()
			continue
		}
		if err == nil {
			if s.onCommit != nil {
				s.onCommit(1, time.Since(start))
			}
			for _, f := range after {
				f()
			}
			return nil
		}
		var ce *conflictError
		if errors.As(err, &ce) {
			conflicts++
			if conflicts == pgMaxConflictAttempts {
				return ce.fnErr
			}
			s.statsMu.Lock()
			s.stats.Retries++
			s.statsMu.Unlock()
			continue // the row that won is committed: no need to wait
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
func (s *Store) attemptPostgres(ctx context.Context, fn func(*Tx) error, eager bool) ([]func(), error) {
	// As on SQLite, a function once started is not interrupted by its
	// caller's context: the caller must learn whether it committed, and a
	// cancel that races the COMMIT would leave that unknown.
	qctx := context.WithoutCancel(ctx)
	var after []func()
	p := &pgPipe{s: s, ctx: qctx, queued: []pipeStmt{{what: "store: begin write", query: pgBegin}}}
	err := withPipe(s.write, p, func() (err error) {
		after, err = s.runPostgres(fn, &Tx{ctx: ctx, qctx: qctx, pg: p, engine: Postgres, writable: true, memo: s.memo, fixed: s.fixed, eager: eager})
		return err
	})
	return after, err
}

// readPostgres runs fn in a read-only transaction of one snapshot (as
// SQLite's WAL gives), its BEGIN sent with its first query (pgpipe.go).
func (s *Store) readPostgres(ctx context.Context, fn func(*Tx) error) error {
	s.pgReads.Add(1)
	p := &pgPipe{s: s, read: true, ctx: ctx, queued: []pipeStmt{{what: "store: begin read", query: pgBeginRead}}}
	return withPipe(s.read, p, func() error {
		return runFn(fn, &Tx{ctx: ctx, qctx: ctx, pg: p, engine: Postgres, fixed: s.fixed})
	})
}

// withPipe runs run with p on a connection of db: the whole transaction
// runs on the connection's pgx.Conn, its statements pipelined
// (pgpipe.go). Whatever is left of the transaction afterwards is rolled
// back; a connection left in an unknown state is discarded
// (driver.ErrBadConn), not put back in the pool.
func withPipe(db *sql.DB, p *pgPipe, run func() error) error {
	conn, err := db.Conn(p.ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", p.queued[0].what, translate(err))
	}
	defer conn.Close()
	var runErr error
	rawErr := conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			runErr = fmt.Errorf("store: unexpected PostgreSQL driver connection %T", dc)
			return nil
		}
		p.c = c.Conn()
		runErr = run()
		if !p.finish() {
			return driver.ErrBadConn
		}
		return nil
	})
	if runErr == nil && rawErr != nil && !errors.Is(rawErr, driver.ErrBadConn) {
		runErr = rawErr
	}
	return runErr
}

// runPostgres runs fn in tx and commits it.
func (s *Store) runPostgres(fn func(*Tx) error, tx *Tx) ([]func(), error) {
	ferr := runFn(fn, tx)
	if ferr == nil && tx.retry == nil && tx.conflict == nil && !tx.missed {
		// Nothing sent yet: a write that neither read nor changed
		// anything has nothing to commit.
		if len(tx.pg.queued) == 1 && tx.pg.queued[0].query == pgBegin && tx.pg.open == nil {
			tx.pg.queued = nil
			return tx.after, nil
		}
		s.statsMu.Lock()
		s.pgCommitNo++
		n := s.pgCommitNo
		s.statsMu.Unlock()
		if s.crash != nil {
			s.crash(n, false, callsOf(tx.ctx))
		}
		if err := tx.pg.commit(tx); err != nil {
			ferr = fmt.Errorf("store: commit: %w", translate(err))
		} else {
			if s.crash != nil {
				s.crash(n, true, callsOf(tx.ctx))
			}
			s.statsMu.Lock()
			s.stats.Commits++
			s.stats.Writes++
			s.statsMu.Unlock()
			return tx.after, nil
		}
	}
	if ferr != nil && !tx.missed && tx.retry == nil && tx.conflict == nil && tx.pg.c.PgConn().TxStatus() != 'E' &&
		slices.ContainsFunc(tx.pg.queued, func(q pipeStmt) bool { return q.guarded }) {
		// fn failed with statements sent ahead not yet checked: it may
		// have failed for going on as if they did what it expected. Check
		// them (the attempt rolls back either way): if one did not, the
		// write runs again, statement by statement, and fails or not as
		// it really does.
		_ = tx.pg.flush(tx)
	}
	// On PostgreSQL a failed statement aborts the transaction, so one
	// that fn swallowed still ends the attempt; so does one queued with
	// ExecLater and sent with the commit. A statement sent ahead that did
	// not do what the write expected ends it too, whatever fn made of
	// that: the write runs again, statement by statement.
	switch {
	case tx.missed:
		return nil, errMissed
	case tx.retry != nil && !isRetryable(ferr):
		return nil, fmt.Errorf("%w (the function returned: %v)", tx.retry, ferr)
	case tx.retry != nil:
		return nil, ferr
	case tx.conflict != nil:
		if ferr == nil {
			ferr = fmt.Errorf("store: write aborted: %w", translate(tx.conflict))
		}
		return nil, &conflictError{fnErr: ferr}
	}
	return nil, ferr
}

// PostgreSQL error codes the store acts on.
const (
	pgSerializationFailure = "40001"
	pgDeadlockDetected     = "40P01"
	pgUniqueViolation      = "23505"
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

// unavailable marks err as ErrUnavailable when it says the database could
// not be reached or the connection to it broke: a connection refused or
// not accepted (pgconn.ConnectError: the server is down, restarting, or
// the database does not allow connections now), a connection-exception
// (class 08) or operator-intervention (class 57P: shut down, crashed,
// cannot connect now) error, or a connection that failed mid-use. The
// message keeps the cause.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !isUnavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func isUnavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's own deadline (which is a net.Error too)
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// pgx reports a connection it closed after a failure as "conn closed"
	// (an unexported error), and one that died under a statement as
	// SafeToRetry when nothing was sent.
	return pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed")
}

// conflictError ends an attempt that met a unique violation; fnErr is
// what the write function returned.
type conflictError struct{ fnErr error }

func (e *conflictError) Error() string { return e.fnErr.Error() }
func (e *conflictError) Unwrap() error { return e.fnErr }

// isPgUniqueViolation reports whether err is a unique violation (23505).
func isPgUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == pgUniqueViolation
}

// isPgConflict reports whether err is an integrity constraint violation
// (class 23: unique, check, foreign key, not null, exclusion), as SQLite's
// SQLITE_CONSTRAINT covers all of these.
func isPgConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "23")
}

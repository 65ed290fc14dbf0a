// Package store is Sharespot's database: one schema on embedded SQLite (the
// default) or PostgreSQL, hand-written SQL, embedded numbered migrations.
//
// Writes go through Write, which runs a function inside a transaction. On
// SQLite a single writer goroutine owns the only write connection and commits
// the functions that arrive together as one transaction (group commit): each
// function runs inside its own SAVEPOINT, so one that fails is rolled back
// alone while its neighbours commit, and every caller returns only after the
// commit that holds its change is durable (synchronous=FULL). This is what
// lets a single node carry thousands of complete flows a second on one fsync
// per batch.
//
// On PostgreSQL (OpenPostgres) there is no single writer: each Write is a
// READ COMMITTED transaction whose read-then-write steps lock what they
// read (Tx.ForUpdate) or rely on conditional updates and unique keys,
// retried on deadlock and, a few times, on a unique violation; see
// postgres.go.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Sentinel errors. Each engine translates its own errors into these.
var (
	// ErrNotFound: no row matched.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict: a uniqueness or check constraint refused the change.
	ErrConflict = errors.New("store: conflict")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("store: closed")
	// ErrBusy: a write lost to concurrent writes on every attempt
	// (PostgreSQL); nothing of it committed, and it may be tried again.
	ErrBusy = errors.New("store: too much contention, try again")
	// ErrUnavailable: the database cannot be reached now (it refuses
	// connections, is restarting, or a connection broke). A write that
	// fails so may, if the connection broke at its COMMIT, have been
	// applied: as with an answer lost in transit, the caller tries again
	// and the write's idempotency decides.
	ErrUnavailable = errors.New("store: the database is unavailable")
)

// Engine names a database engine.
type Engine string

// Engines.
const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)

// Options configure Open.
type Options struct {
	// MaxBatch caps how many write functions share one commit (SQLite).
	MaxBatch int
	// MaxConns caps the connection pool (PostgreSQL); default 16.
	MaxConns int
	// CommitDelay (SQLite) is how long the writer waits, once it has a
	// write, for others to share its commit, as PostgreSQL's commit_delay:
	// fewer commits (each a WAL append and an fsync) for the same writes,
	// so more writes per core, for up to CommitDelay more latency each.
	// Zero, the default, commits what is queued at once.
	CommitDelay time.Duration
	// Logger receives slow-commit and error reports; nil discards.
	Logger *slog.Logger
	// Crash, when set, is called around every commit with the commit's
	// number (from 1), whether it already happened, and the calls whose
	// writes it holds (as WithCall named them); the crash-safety tests use
	// it to SIGKILL the process at a transaction boundary.
	Crash func(n int64, committed bool, calls []string)
	// OnCommit, when set, hears of every commit: how many write functions
	// it made durable and how long it took (metrics; it must be quick).
	OnCommit func(writes int, took time.Duration)
	// MemoEntries caps the writer's memory (SQLite, memo.go): 0 is
	// DefaultMemoEntries, below 0 turns it off (on PostgreSQL, a write's
	// own memory too).
	MemoEntries int
	// VerifyMemo reads again every value taken from the writer's memory
	// and fails the write if the database holds another (tests; also
	// SHARESPOT_VERIFY_MEMO=1).
	VerifyMemo bool
}

// Store is an open database.
type Store struct {
	engine Engine
	read   *sql.DB
	write  *sql.DB
	log    *slog.Logger

	maxBatch    int
	commitDelay time.Duration
	wconn       *sql.Conn // the writer's connection (SQLite)
	wstmts      *stmtCache
	memo        *memo      // the writer's memory (SQLite), each write's own (PostgreSQL); memo.go
	fixed       *fixed     // facts that never change, for every write and read; fixed.go
	rstmts      *readStmts // prepared on the read pool (SQLite)
	crash       func(n int64, committed bool, calls []string)
	onCommit    func(writes int, took time.Duration)
	lastAway    atomic.Int64 // unix nanoseconds of the last call that found the database unavailable
	commitNo    int64
	writes      chan *writeReq
	reads       chan *readReq  // to the reader goroutines (SQLite)
	readers     sync.WaitGroup // the reader goroutines
	stop        chan struct{}
	done        chan struct{}

	// closeMu guards closed. Write holds it shared while queueing, so that
	// once Close has set closed no request can reach a stopped writer.
	closeMu   sync.RWMutex
	closed    bool
	closeOnce sync.Once
	// inflight counts PostgreSQL writes under way; Close waits for them.
	inflight sync.WaitGroup

	pgCommitNo int64 // guarded by statsMu (PostgreSQL)
	// PostgreSQL writes' statements and round trips, and reads and
	// theirs (Stats).
	pgStmts, pgTrips, pgReads, pgReadTrips atomic.Int64

	statsMu sync.Mutex
	stats   Stats
}

// Stats counts commits for benchmarks and metrics.
type Stats struct {
	Commits int64 // transactions committed
	Writes  int64 // write functions run
	// Statements run by write functions (SQLite).
	Statements int64
	// Retries of write functions after a serialization failure or a
	// deadlock (PostgreSQL).
	Retries int64
	// Busy is the time the single writer spent on batches, from begin to
	// durable commit (SQLite): against the wall clock, how loaded it is.
	Busy time.Duration
	// Statements run by write functions and round trips they took to the
	// database, BEGIN and COMMIT included (PostgreSQL; see pgpipe.go).
	PgStatements, PgRoundTrips int64
	// Replays: PostgreSQL writes run again, each ExpectN and Guarded
	// statement alone, since one sent ahead did not do what the write
	// expected.
	Replays int64
	// Read functions run, and the round trips they took, BEGIN and
	// ROLLBACK included (PostgreSQL).
	PgReads, PgReadRoundTrips int64
	// Values write functions took from the writer's memory (on
	// PostgreSQL, their own), and those they had to read (memo.go).
	MemoHits, MemoMisses int64
}

// Tx is a transaction handed to Write and Read functions. Queries use '?'
// placeholders on every engine.
type Tx struct {
	ctx  context.Context // the caller's, returned by Context
	qctx context.Context // the one statements run under
	q    querier
	// pg runs a PostgreSQL write's statements, pipelined (pgpipe.go);
	// q is then unused.
	pg    *pgPipe
	stmts *stmtCache // the writer's statements; nil: prepare each anew
	// A Read's transaction and the read pool's statements (SQLite): a
	// statement prepared once on a connection serves every read on it.
	rtx    *sql.Tx
	rstmts *readStmts
	engine Engine
	after  []func()
	// writable: a Write's transaction, not a Read's.
	writable bool
	// ended: a read's Last ran; nothing may follow it.
	ended bool
	// retry is the first serialization failure or deadlock a statement
	// met (PostgreSQL): the attempt is then retried whatever fn returns.
	retry error
	// conflict is the first unique violation a statement met
	// (PostgreSQL): the attempt is retried a few times, so that a
	// check-then-insert that lost a race to a concurrent insert runs
	// again and sees the row that won (see postgres.go).
	conflict error
	// The writer's memory (SQLite's writer; on PostgreSQL each write's
	// own; none in a Read; memo.go), what this write changed in it, and
	// whether it forgot everything.
	memo        *memo
	memoOwn     map[string]memoVal
	memoCleared bool
	fixed       *fixed // the store's memory of facts that never change (fixed.go)
	// eager: an earlier attempt of this write found a statement sent
	// ahead (ExpectN, Guarded) not doing what it expected, so this one
	// sends each such statement alone (PostgreSQL). missed: this attempt
	// found one.
	eager, missed bool
}

// note records a retryable error (PostgreSQL; err as the driver returned
// it, before translate) and returns err.
func (tx *Tx) note(err error) error {
	if err == nil || tx.engine != Postgres {
		return err
	}
	if tx.retry == nil && isRetryable(err) {
		tx.retry = err
	}
	if tx.conflict == nil && isPgUniqueViolation(err) {
		tx.conflict = err
	}
	return err
}

// stmtCache keeps one prepared statement per query text on the writer's
// connection, so SQLite parses each write-path statement once, not once per
// call. The statements run on the same SQLite connection as the open
// transaction, so they are part of it (an SQLite transaction belongs to its
// connection).
type stmtCache struct {
	conn *sql.Conn
	mu   sync.Mutex
	m    map[string]*sql.Stmt
	runs int64 // statements run, for Stats
	// per counts runs by query text, for StatementCounts.
	per map[string]int64
}

func newStmtCache(conn *sql.Conn) *stmtCache {
	return &stmtCache{conn: conn, m: map[string]*sql.Stmt{}, per: map[string]int64{}}
}

func (c *stmtCache) get(ctx context.Context, query string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs++
	c.per[query]++
	if st := c.m[query]; st != nil {
		return st, nil
	}
	st, err := c.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.m[query] = st
	return st, nil
}

func (c *stmtCache) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		st.Close()
	}
	c.m = nil
}

// readStmts keeps a statement per query text prepared on the read pool
// (SQLite). database/sql prepares it on each connection the first time a
// read there uses it and keeps it, so SQLite parses a read's statement
// once per connection rather than once per read (parsing cost as much as
// running the short reads of the flow). A bounded number of texts is
// kept; past that, statements are prepared anew.
//
// A statement not yet kept is prepared in the background, not by the read
// that first meets it: preparing on the pool needs a free connection, and
// a read holds one, so reads that all waited for their preparations would
// hold every connection and wait for ever. The read itself prepares its
// statement on its own connection meanwhile.
type readStmts struct {
	db      *sql.DB
	mu      sync.Mutex
	m       map[string]*sql.Stmt
	pending map[string]bool
	closed  bool
	wg      sync.WaitGroup
}

const maxReadStmts = 512

func newReadStmts(db *sql.DB) *readStmts {
	return &readStmts{db: db, m: map[string]*sql.Stmt{}, pending: map[string]bool{}}
}

// get returns the kept statement for query, or nil (prepare it anew) when
// there is none yet.
func (c *readStmts) get(query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.m[query]; st != nil || c.closed {
		return st
	}
	if c.pending[query] || len(c.m)+len(c.pending) >= maxReadStmts {
		return nil
	}
	c.pending[query] = true
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		st, err := c.db.PrepareContext(context.Background(), query)
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.pending, query)
		switch {
		case err != nil:
			// A statement that does not prepare fails where it runs,
			// with the error the read reports.
		case c.closed:
			st.Close()
		default:
			c.m[query] = st
		}
	}()
	return nil
}

func (c *readStmts) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		st.Close()
	}
	c.m = nil
}

// stmt returns the cached statement for query, or nil when statements are
// not cached.
func (tx *Tx) stmt(query string) (*sql.Stmt, error) {
	if tx.stmts != nil {
		return tx.stmts.get(tx.qctx, query)
	}
	if tx.rstmts != nil {
		if st := tx.rstmts.get(query); st != nil {
			return tx.rtx.StmtContext(tx.qctx, st), nil
		}
	}
	return nil, nil
}

type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Context is the context of the call that opened the transaction. In a
// Write, statements are not interrupted when it ends (see Write); a function
// that wants to stop early checks Context().Err() and returns it.
func (tx *Tx) Context() context.Context { return tx.ctx }

// Exec runs a statement.
func (tx *Tx) Exec(query string, args ...any) (sql.Result, error) {
	if tx.ended {
		return nil, errAfterLast
	}
	query = tx.rebind(query)
	if tx.pg != nil {
		return tx.pgExec(query, args)
	}
	st, err := tx.stmt(query)
	if err != nil {
		return nil, translate(err)
	}
	if st != nil {
		r, err := st.ExecContext(tx.qctx, args...)
		return r, translate(err)
	}
	r, err := tx.q.ExecContext(tx.qctx, query, args...)
	return r, translate(tx.note(err))
}

// ExecLater runs a statement whose outcome the write does not read: it
// neither looks at the rows changed nor turns the statement's error into
// anything but a failed write. On PostgreSQL the statement is sent with the
// write's next statement or its COMMIT, saving a round trip (pgpipe.go);
// its error, wrapped by what ("session: save s1"), then fails that
// statement or the commit, and the write. On SQLite it runs at once.
func (tx *Tx) ExecLater(what, query string, args ...any) error {
	if tx.pg != nil {
		tx.pg.queued = append(tx.pg.queued, pipeStmt{what: what, query: tx.rebind(query), args: args})
		return nil
	}
	if _, err := tx.Exec(query, args...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// QueryRowLater runs a statement that returns one row (an INSERT …
// RETURNING) whose columns the write does not read until its next
// statement: on PostgreSQL it is queued as ExecLater's statements are, and
// dest is filled when it has run (by the time the write's next statement
// returns, or its commit: an AfterCommit function may read it); on SQLite
// it runs at once. No row is an error (ErrNotFound), and any error fails
// the write, wrapped by what. It saves a round trip when a statement
// follows it; one left for the commit is sent just before it (pgpipe.go):
// a statement that returns no row has not failed in the database, so a
// COMMIT sent with it would commit a write about to be reported failed.
func (tx *Tx) QueryRowLater(what, query string, args []any, dest ...any) error {
	return tx.queryRowLater(what, query, args, false, dest)
}

// InsertRowLater is QueryRowLater for an INSERT of one row (… VALUES …
// RETURNING …): the database inserts its row and returns it, or fails, so
// on PostgreSQL it goes with the COMMIT when it is the write's last
// statement, saving that round trip too. A statement that can return no
// row without failing must use QueryRowLater.
func (tx *Tx) InsertRowLater(what, query string, args []any, dest ...any) error {
	return tx.queryRowLater(what, query, args, true, dest)
}

func (tx *Tx) queryRowLater(what, query string, args []any, oneRow bool, dest []any) error {
	if len(dest) == 0 {
		return fmt.Errorf("%s: QueryRowLater without a destination", what)
	}
	if tx.pg != nil {
		tx.pg.queued = append(tx.pg.queued, pipeStmt{what: what, query: tx.rebind(query), args: args, dest: dest, oneRow: oneRow})
		return nil
	}
	if err := tx.QueryRow(query, args...).Scan(dest...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// ExecN runs a statement and returns the number of rows it changed.
func (tx *Tx) ExecN(query string, args ...any) (int64, error) {
	r, err := tx.Exec(query, args...)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// ExpectN runs a statement that the write expects to change want rows (an
// UPDATE with a condition, an INSERT that may conflict; an INSERT, UPDATE
// or DELETE without RETURNING) and returns the rows it changed, as ExecN.
// On PostgreSQL the write does not wait for it: it is sent with the
// write's next statement, as ExecLater's are (pgpipe.go), and ExpectN
// returns want at once, so the write goes on as if it changed want rows.
// It is sent guarded (Guarded): should it change another number or fail,
// the database fails it, the attempt is rolled back, and the whole write
// runs again from its start, this time sending such statements alone and
// returning what they really did, so the write's code for the other
// outcome (a clear error, which may read more to say why) runs as it
// would have. The write must be one that may run twice, as every
// PostgreSQL write is (postgres.go). On SQLite it runs at once.
func (tx *Tx) ExpectN(want int64, query string, args ...any) (int64, error) {
	if !tx.guessing() {
		return tx.ExecN(query, args...)
	}
	tx.Guarded(fmt.Sprintf(`WITH expected AS (%s RETURNING 1) SELECT 1 / (CASE WHEN COUNT(*) = %d THEN 1 ELSE 0 END) FROM expected`, query, want), args...)
	return want, nil
}

// Guarded sends guarded, a statement that the database fails (a division
// by zero, say) unless it did what the write expects, and reports true: the
// write goes on as if it did, and the statement goes with the write's next
// statement or its COMMIT; if it fails, the write runs again, as ExpectN
// says. Where the write does not guess (SQLite, a Read, or the PostgreSQL
// write running again after a guess failed) Guarded sends nothing and
// reports false: the caller then runs its plain statements and reads what
// they did.
func (tx *Tx) Guarded(guarded string, args ...any) bool {
	if !tx.guessing() {
		return false
	}
	tx.pg.queued = append(tx.pg.queued, pipeStmt{what: "store: a statement sent ahead", query: tx.rebind(guarded), args: args, guarded: true})
	return true
}

// guessing: the write sends statements it expects to succeed without
// waiting for them (a PostgreSQL write's first attempt).
func (tx *Tx) guessing() bool { return tx.pg != nil && tx.writable && !tx.eager }

// Reading is one query of Together. Its rows are handed to Row one at a
// time (Row scans the one it is given); a query of no rows calls it never.
type Reading struct {
	Query string
	Args  []any
	Row   func(Scanner) error
}

// Scanner is a row of a Reading: Scan copies its columns into dest.
type Scanner interface {
	Scan(dest ...any) error
}

// Together runs reads, queries whose rows the write takes at once, in the
// order given: on PostgreSQL in one round trip, with whatever is queued
// ahead of them, so a read placed after a row lock (SELECT … FOR UPDATE)
// runs once the lock is held and sees what committed before it, as it
// would in a round trip of its own. On SQLite they run one after another.
// A Reading without a query is skipped (one that applies to one engine
// only).
func (tx *Tx) Together(reads ...Reading) error {
	if tx.ended {
		return errAfterLast
	}
	return tx.together(reads)
}

// prepare is reads without those with no query, each query in the
// engine's placeholders.
func (tx *Tx) prepare(reads []Reading) []Reading {
	reads = slices.DeleteFunc(slices.Clone(reads), func(r Reading) bool { return r.Query == "" })
	for i := range reads {
		reads[i].Query = tx.rebind(reads[i].Query)
	}
	return reads
}

// errAfterLast is a read's statement after its Last.
var errAfterLast = errors.New("store: a statement after the read's last (Tx.Last): the read has ended")

func (tx *Tx) together(reads []Reading) error {
	reads = tx.prepare(reads)
	if tx.pg != nil {
		return tx.pgTogether(reads)
	}
	for _, r := range reads {
		rows, err := tx.Query(r.Query, r.Args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := r.Row(rows); err != nil {
				rows.Close()
				return err
			}
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
	}
	return nil
}

// Last is Together for a read's last statements: on PostgreSQL the read's
// end (its ROLLBACK) goes in the same round trip, so a read made of one
// Last is one round trip, not two. A read runs nothing after its Last (the
// statement fails). In a write, Last is Together: a write's end, its
// COMMIT, waits for what the write decides.
func (tx *Tx) Last(reads ...Reading) error {
	if tx.writable {
		return tx.Together(reads...)
	}
	if tx.ended {
		return errAfterLast
	}
	if tx.pg == nil {
		err := tx.together(reads)
		tx.ended = true
		return err
	}
	tx.ended = true
	return tx.pgLast(tx.prepare(reads))
}

// Query runs a query returning rows. Close them before the next
// statement.
func (tx *Tx) Query(query string, args ...any) (*Rows, error) {
	if tx.ended {
		return nil, errAfterLast
	}
	query = tx.rebind(query)
	if tx.pg != nil {
		return tx.pgQuery(query, args)
	}
	st, err := tx.stmt(query)
	if err != nil {
		return nil, translate(err)
	}
	var rows *sql.Rows
	if st != nil {
		rows, err = st.QueryContext(tx.qctx, args...)
	} else {
		rows, err = tx.q.QueryContext(tx.qctx, query, args...)
	}
	if err != nil {
		return nil, translate(tx.note(err))
	}
	return &Rows{sql: rows, tx: tx}, nil
}

// QueryRow runs a query for one row; Scan returns ErrNotFound for none.
func (tx *Tx) QueryRow(query string, args ...any) Row {
	if tx.ended {
		return Row{err: errAfterLast}
	}
	query = tx.rebind(query)
	if tx.pg != nil {
		return tx.pgQueryRow(query, args)
	}
	st, err := tx.stmt(query)
	if err != nil {
		return Row{err: err}
	}
	if st != nil {
		return Row{r: st.QueryRowContext(tx.qctx, args...)}
	}
	return Row{r: tx.q.QueryRowContext(tx.qctx, query, args...), tx: tx}
}

// Row wraps *sql.Row, or a pipelined PostgreSQL write's row, to translate
// errors.
type Row struct {
	r   *sql.Row
	pg  pgx.Row
	br  pgx.BatchResults // pg's batch
	err error
	tx  *Tx // to note a retryable error; nil on SQLite
}

// Scan copies the row's columns into dest.
func (r Row) Scan(dest ...any) error {
	if r.err != nil {
		return translate(r.err)
	}
	if r.pg != nil {
		err := r.tx.note(r.pg.Scan(sqlDests(dest)...))
		if cerr := r.tx.pg.closeOwn(r.tx, r.br); err == nil {
			err = cerr
		}
		return translate(err)
	}
	err := r.r.Scan(dest...)
	if r.tx != nil {
		r.tx.note(err)
	}
	return translate(err)
}

// AfterCommit registers fn to run once the transaction has committed. It is
// not run if the transaction (or this write's savepoint) rolls back. It runs
// on the goroutine that called Write, before Write returns, so it may itself
// call Write.
func (tx *Tx) AfterCommit(fn func()) { tx.after = append(tx.after, fn) }

// Engine is the engine behind the transaction.
func (tx *Tx) Engine() Engine { return tx.engine }

// ForUpdate is the clause that locks the rows a SELECT reads until the
// transaction ends: " FOR UPDATE" in a PostgreSQL write, and "" in a read
// (PostgreSQL refuses row locks in a read-only transaction) and on SQLite
// (whose single writer already excludes every other write). Append it to a
// SELECT of a row the write will change.
func (tx *Tx) ForUpdate() string {
	if tx.engine == Postgres && tx.writable {
		return " FOR UPDATE"
	}
	return ""
}

// LockKey takes an exclusive lock on key until the write ends, so that
// writes which must not interleave, where no row exists yet that they could
// lock, run one after the other — creating the first of something, say.
// PostgreSQL: pg_advisory_xact_lock in a write; a no-op on SQLite, whose
// single writer already runs each write alone, and in a read.
func (tx *Tx) LockKey(key int64) error {
	if tx.engine != Postgres || !tx.writable {
		return nil
	}
	if _, err := tx.Exec(`SELECT pg_advisory_xact_lock(?)`, key); err != nil {
		return fmt.Errorf("store: lock key %d: %w", key, err)
	}
	return nil
}

func (tx *Tx) rebind(q string) string {
	if tx.engine != Postgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// callKey holds the name of the call a write serves (WithCall).
type callKey struct{}

// WithCall names the call whose writes ctx will carry, for the crash hook
// (Options.Crash): the crash-safety tests crash at the commit holding a
// given call's write.
func WithCall(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, callKey{}, name)
}

// callsOf is the call ctx serves, as a list for the crash hook.
func callsOf(ctx context.Context) []string {
	if c, ok := ctx.Value(callKey{}).(string); ok {
		return []string{c}
	}
	return nil
}

type writeReq struct {
	ctx   context.Context
	fn    func(*Tx) error
	err   error
	after []func() // set by the writer when fn's change committed
	done  chan struct{}
}

// Write runs fn in a write transaction and returns once its change is
// durable, or with fn's error (its changes then rolled back). fn may be
// batched with other writers into one commit, so it must not depend on
// being alone; it must not keep tx after it returns.
//
// ctx ending before fn starts cancels the write. Once fn runs, its
// statements are not interrupted: SQLite rolls back the whole transaction
// when a write statement is interrupted, which would undo the other writes
// of the batch.
//
// On PostgreSQL each Write is a READ COMMITTED transaction of its own (see
// postgres.go), and fn is run again when it loses a race with another
// write (a deadlock, or a unique key another write took first), so fn must have no effect outside tx other than through
// AfterCommit, whose hooks run only for the attempt that committed.
func (s *Store) Write(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.engine == Postgres {
		return s.away(s.writePostgres(ctx, fn))
	}
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan struct{})}
	if err := s.enqueue(ctx, req); err != nil {
		return err
	}
	// Once queued, wait for the outcome even if ctx ends: the write may
	// already be committed, and the caller must learn which.
	<-req.done
	if req.err != nil {
		return req.err
	}
	for _, f := range req.after {
		f()
	}
	return nil
}

func (s *Store) enqueue(ctx context.Context, req *writeReq) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.writes <- req:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Read runs fn in a read-only transaction that sees one consistent snapshot.
func (s *Store) Read(ctx context.Context, fn func(*Tx) error) error {
	s.closeMu.RLock()
	closed := s.closed
	s.closeMu.RUnlock()
	if closed {
		return ErrClosed
	}
	if s.engine == Postgres {
		return s.away(s.readPostgres(ctx, fn))
	}
	return s.away(s.readSQLite(ctx, fn))
}

// sqliteReaders is how many goroutines run SQLite reads: one per read
// connection.
const sqliteReaders = 8

// readReq is a read handed to a reader goroutine.
type readReq struct {
	ctx      context.Context
	fn       func(*Tx) error
	err      error
	panicked any
	done     chan struct{}
}

var readReqs = sync.Pool{New: func() any { return &readReq{done: make(chan struct{}, 1)} }}

// readSQLite runs fn on one of the reader goroutines and waits for it.
//
// SQLite's library is C translated to Go, and a call into it needs a deep
// stack: a goroutine that ran one keeps a stack of 16–32 KiB until
// collections shrink it, one halving at a time. Reads run on a few
// goroutines of their own, as writes run on the writer's, so the
// goroutines that call them keep small stacks: an idle inbox stream,
// which reads its inbox every poll interval, holds 4–8 KiB of stack, not
// 16–32 KiB. (What fn panics with is panicked again here, on the caller's
// goroutine, as if fn ran on it.)
func (s *Store) readSQLite(ctx context.Context, fn func(*Tx) error) error {
	req := readReqs.Get().(*readReq)
	req.ctx, req.fn = ctx, fn
	select {
	case s.reads <- req:
	case <-ctx.Done():
		req.ctx, req.fn = nil, nil
		readReqs.Put(req)
		return ctx.Err()
	case <-s.stop:
		req.ctx, req.fn = nil, nil
		readReqs.Put(req)
		return ErrClosed
	}
	<-req.done
	err, p := req.err, req.panicked
	*req = readReq{done: req.done}
	readReqs.Put(req)
	if p != nil {
		panic(p)
	}
	return err
}

// reader runs SQLite reads until the store closes.
func (s *Store) reader() {
	defer s.readers.Done()
	for {
		select {
		case req := <-s.reads:
			req.err, req.panicked = s.runRead(req.ctx, req.fn)
			req.done <- struct{}{}
		case <-s.stop:
			return
		}
	}
}

func (s *Store) runRead(ctx context.Context, fn func(*Tx) error) (err error, panicked any) {
	defer func() {
		if p := recover(); p != nil {
			panicked = p
		}
	}()
	if err := ctx.Err(); err != nil {
		return err, nil
	}
	// ReadOnly matters on SQLite too: without it the driver begins with
	// the DSN's _txlock=immediate, taking the write lock for every read.
	opts := &sql.TxOptions{ReadOnly: true}
	sqlTx, err := s.read.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("store: begin read: %w", translate(err)), nil
	}
	defer sqlTx.Rollback() //nolint:errcheck // read-only
	return fn(&Tx{ctx: ctx, qctx: ctx, q: sqlTx, engine: s.engine, rtx: sqlTx, rstmts: s.rstmts, fixed: s.fixed}), nil
}

// away classifies err (unavailable) and notes when the database was
// found away.
func (s *Store) away(err error) error {
	err = unavailable(err)
	if errors.Is(err, ErrUnavailable) {
		s.lastAway.Store(time.Now().UnixNano())
	}
	return err
}

// LastUnavailable is when a call last found the database unavailable
// (the zero time: never since Open). The sweep expires no session until a
// grace has passed since then: a party whose call was refused must have
// the time to make it again.
func (s *Store) LastUnavailable() time.Time {
	n := s.lastAway.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// WriteT is Write for a function that returns a value.
func WriteT[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	var out T
	err := s.Write(ctx, func(tx *Tx) error {
		// A write may run more than once (PostgreSQL): what an attempt
		// that did not commit returned is not the answer.
		var zero T
		out = zero
		v, err := fn(tx)
		if err != nil {
			return err
		}
		out = v
		return nil
	})
	return out, err
}

// ReadT is Read for a function that returns a value.
func ReadT[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	var out T
	err := s.Read(ctx, func(tx *Tx) error {
		v, err := fn(tx)
		out = v
		return err
	})
	return out, err
}

// QueueLen is how many writes wait for the single writer (SQLite; 0 on
// PostgreSQL, where each write has its own transaction).
func (s *Store) QueueLen() int { return len(s.writes) }

// Engine reports the engine in use.
func (s *Store) Engine() Engine { return s.engine }

// Stats returns commit counters.
func (s *Store) Stats() Stats {
	s.statsMu.Lock()
	st := s.stats
	s.statsMu.Unlock()
	st.PgStatements, st.PgRoundTrips = s.pgStmts.Load(), s.pgTrips.Load()
	st.PgReads, st.PgReadRoundTrips = s.pgReads.Load(), s.pgReadTrips.Load()
	if s.memo != nil {
		st.MemoHits, st.MemoMisses = s.memo.hits.Load(), s.memo.misses.Load()
	}
	if s.wstmts != nil {
		s.wstmts.mu.Lock()
		st.Statements = s.wstmts.runs
		s.wstmts.mu.Unlock()
	}
	return st
}

// StatementCounts returns how many times the single writer has run each
// statement, by query text (SQLite; nil on PostgreSQL). Benchmarks use it to
// show which steps cost the writer what.
func (s *Store) StatementCounts() map[string]int64 {
	if s.wstmts == nil {
		return nil
	}
	s.wstmts.mu.Lock()
	defer s.wstmts.mu.Unlock()
	out := make(map[string]int64, len(s.wstmts.per))
	for q, n := range s.wstmts.per {
		out[q] = n
	}
	return out
}

// Close stops the writer after the writes already queued and closes the
// database. It is safe to call more than once and after a failed Open.
func (s *Store) Close() error {
	if s == nil {
		return nil
	}
	var err error
	s.closeOnce.Do(func() {
		s.closeMu.Lock()
		s.closed = true
		s.closeMu.Unlock()
		if s.stop != nil {
			close(s.stop)
			<-s.done
			s.readers.Wait()
		}
		s.inflight.Wait()
		s.wstmts.close()
		s.rstmts.close()
		if s.wconn != nil {
			err = errors.Join(err, s.wconn.Close())
		}
		if s.write != nil && s.write != s.read {
			err = errors.Join(err, s.write.Close())
		}
		if s.read != nil {
			err = errors.Join(err, s.read.Close())
		}
	})
	return err
}

// writer is the single goroutine that owns SQLite's write connection.
func (s *Store) writer() {
	defer close(s.done)
	for {
		var first *writeReq
		select {
		case first = <-s.writes:
		case <-s.stop:
			// Close has set closed, so nothing more arrives: commit
			// what is queued, in batches, then stop.
			select {
			case first = <-s.writes:
			default:
				return
			}
		}
		batch := []*writeReq{first}
	fill:
		for len(batch) < s.maxBatch {
			select {
			case r := <-s.writes:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if s.commitDelay > 0 && len(batch) < s.maxBatch {
			batch = s.gather(batch)
		}
		s.commitBatch(batch)
	}
}

// gather adds to batch what arrives within the commit delay, up to the
// batch's cap. A Close meanwhile ends the wait: what is queued is then
// committed.
func (s *Store) gather(batch []*writeReq) []*writeReq {
	t := time.NewTimer(s.commitDelay)
	defer t.Stop()
	for len(batch) < s.maxBatch {
		select {
		case r := <-s.writes:
			batch = append(batch, r)
		case <-t.C:
			return batch
		case <-s.stop:
			return batch
		}
	}
	return batch
}

// commitBatch runs a batch of write functions in one transaction and
// commits it. It first runs them one after the other with nothing between:
// the common case, every function succeeding, costs no savepoints (a
// SAVEPOINT and a RELEASE per function, and SQLite copying each page a
// function changes again into the statement journal). When one fails, that
// transaction is rolled back and the batch runs again with a savepoint per
// function, so that the one that fails is undone alone. Write functions
// may run more than once (as on PostgreSQL, which retries them); only the
// run that commits has effects, AfterCommit hooks included.
func (s *Store) commitBatch(batch []*writeReq) {
	start := time.Now()
	ctx := context.Background()
	afters := make([][]func(), len(batch))
	finish := func(err error) {
		for i, r := range batch {
			if err != nil && r.err == nil {
				r.err = err
			}
			if r.err == nil {
				r.after = afters[i] // run by Write, off the writer
			}
			close(r.done)
		}
	}
	ran, sqlTx, err := s.runBatch(ctx, batch, afters, false)
	if errors.Is(err, errFnFailed) {
		if len(batch) == 1 {
			finish(nil) // it failed alone: nothing to commit
			return
		}
		ran, sqlTx, err = s.runBatch(ctx, batch, afters, true)
	}
	if err != nil {
		finish(err)
		return
	}
	s.commitNo++
	var calls []string
	if s.crash != nil {
		for _, r := range batch {
			calls = append(calls, callsOf(r.ctx)...)
		}
		s.crash(s.commitNo, false, calls)
	}
	if err := sqlTx.Commit(); err != nil {
		finish(fmt.Errorf("store: commit: %w", translate(err)))
		return
	}
	s.memo.commit()
	if s.crash != nil {
		s.crash(s.commitNo, true, calls)
	}
	d := time.Since(start)
	s.statsMu.Lock()
	s.stats.Commits++
	s.stats.Writes += int64(ran)
	s.stats.Busy += d
	s.statsMu.Unlock()
	if d > time.Second {
		s.log.Warn("slow commit", "writes", len(batch), "took", d)
	}
	if s.onCommit != nil {
		s.onCommit(ran, d)
	}
	finish(nil)
}

// errFnFailed: a write function failed in a batch run without savepoints;
// the transaction is rolled back and the batch must run again with them.
var errFnFailed = errors.New("store: a write function failed; run the batch with savepoints")

// runBatch begins a transaction and runs the batch's functions in it,
// each in a savepoint of its own when savepoints is set, and returns the
// open transaction and how many functions succeeded. Without savepoints
// the first function to fail rolls the transaction back and runBatch
// returns errFnFailed. Any other error has rolled back, and is the batch's.
func (s *Store) runBatch(ctx context.Context, batch []*writeReq, afters [][]func(), savepoints bool) (int, *sql.Tx, error) {
	s.memo.startBatch()
	sqlTx, err := s.wconn.BeginTx(ctx, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("store: begin write: %w", translate(err))
	}
	ran := 0
	for i, r := range batch {
		r.err, afters[i] = nil, nil
		if err := r.ctx.Err(); err != nil {
			r.err = err
			continue
		}
		if savepoints {
			if _, err := s.execCached(ctx, sqlTx, "SAVEPOINT w"); err != nil {
				r.err = fmt.Errorf("store: savepoint: %w", err)
				continue
			}
		}
		tx := &Tx{ctx: r.ctx, qctx: context.WithoutCancel(r.ctx), q: sqlTx, stmts: s.wstmts, engine: s.engine, writable: true, memo: s.memo, fixed: s.fixed}
		ferr := runFn(r.fn, tx)
		switch {
		case ferr != nil && !savepoints:
			r.err = ferr // the outcome when it ran alone
			_ = sqlTx.Rollback()
			return 0, nil, errFnFailed
		case ferr != nil:
			r.err = ferr
			if _, err := s.execCached(ctx, sqlTx, "ROLLBACK TO w"); err != nil {
				// The transaction is unusable: fail the whole batch.
				_ = sqlTx.Rollback()
				return 0, nil, fmt.Errorf("store: roll back savepoint: %w", err)
			}
		default:
			afters[i] = tx.after
			s.memo.keep(tx)
			ran++
		}
		if savepoints {
			if _, err := s.execCached(ctx, sqlTx, "RELEASE w"); err != nil {
				_ = sqlTx.Rollback()
				return 0, nil, fmt.Errorf("store: release savepoint: %w", err)
			}
		}
	}
	return ran, sqlTx, nil
}

// execCached runs a statement of the writer's own through the statement
// cache when there is one.
func (s *Store) execCached(ctx context.Context, sqlTx *sql.Tx, query string) (sql.Result, error) {
	if s.wstmts == nil {
		return sqlTx.ExecContext(ctx, query)
	}
	st, err := s.wstmts.get(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx)
}

func runFn(fn func(*Tx) error, tx *Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store: write function panicked: %v", p)
		}
	}()
	return fn(tx)
}

func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if isConflict(err) || isPgConflict(err) {
		return fmt.Errorf("%w: %v", ErrConflict, err)
	}
	return err
}

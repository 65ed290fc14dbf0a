package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// Every test that is not about one engine's mechanics (SQLite's pragmas,
// group commit and file paths; PostgreSQL's isolation and retries) runs on
// both engines through engines(t, …).

// testDB is a fresh database for a test: an SQLite file or a PostgreSQL
// database of its own.
type testDB struct {
	engine Engine
	target string // the SQLite path or the postgres:// URL
}

// newDB makes a fresh database of engine for t. On PostgreSQL it skips t
// where no server is reachable (fails in CI).
func newDB(t *testing.T, engine Engine) testDB {
	t.Helper()
	if engine == Postgres {
		return testDB{engine: Postgres, target: pgtest.New(t)}
	}
	return testDB{engine: SQLite, target: filepath.Join(t.TempDir(), "sharespot.db")}
}

// requirePostgres skips t when no PostgreSQL server is reachable, except
// in CI (CI=true), where it fails t.
func requirePostgres(t *testing.T) {
	t.Helper()
	pgtest.Require(t)
}

// openErr opens the database (creating or migrating it).
func (d testDB) openErr(ctx context.Context, opts Options) (*Store, error) {
	if d.engine == Postgres {
		return OpenPostgres(ctx, d.target, opts)
	}
	return OpenSQLite(ctx, d.target, opts)
}

// open opens the database and closes it at the end of the test.
func (d testDB) open(t *testing.T) *Store {
	t.Helper()
	s, err := d.openErr(t.Context(), Options{})
	if err != nil {
		t.Fatalf("open %s store: %v", d.engine, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// engines runs f as a subtest on a fresh database of each engine.
func engines(t *testing.T, f func(t *testing.T, d testDB)) {
	t.Helper()
	for _, e := range []Engine{SQLite, Postgres} {
		t.Run(string(e), func(t *testing.T) { f(t, newDB(t, e)) })
	}
}

// openTest opens a store on a fresh SQLite file in t.TempDir and closes it
// at the end of the test.
func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	d := newDB(t, SQLite)
	return d.open(t), d.target
}

func insertAccount(id string) func(*Tx) error {
	return func(tx *Tx) error {
		_, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, id, 1)
		return err
	}
}

func accountIDs(t *testing.T, s *Store) map[string]bool {
	t.Helper()
	ids, err := ReadT(t.Context(), s, func(tx *Tx) (map[string]bool, error) {
		rows, err := tx.Query(`SELECT id FROM accounts`)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := map[string]bool{}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return nil, err
			}
			out[id] = true
		}
		return out, rows.Err()
	})
	if err != nil {
		t.Fatalf("read accounts: %v", err)
	}
	return ids
}

// holdWriter makes the writer busy inside a write until the returned release
// is called, so that the writes queued meanwhile are committed together. It
// returns once the writer is blocked. release waits for the holding write.
func holdWriter(t *testing.T, s *Store) (release func()) {
	t.Helper()
	entered := make(chan struct{})
	unblock := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Write(t.Context(), func(*Tx) error {
			close(entered)
			<-unblock
			return nil
		})
	}()
	<-entered
	return func() {
		close(unblock)
		if err := <-done; err != nil {
			t.Errorf("holding write: %v", err)
		}
	}
}

// waitQueued waits until n writes are queued behind a held writer.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	for len(s.writes) < n {
		if t.Context().Err() != nil {
			t.Fatalf("only %d of %d writes queued", len(s.writes), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func migrationRows(t *testing.T, s *Store) []string {
	t.Helper()
	got, err := ReadT(t.Context(), s, func(tx *Tx) ([]string, error) {
		rows, err := tx.Query(`SELECT version, name FROM schema_migrations ORDER BY version`)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var v int
			var name string
			if err := rows.Scan(&v, &name); err != nil {
				return nil, err
			}
			out = append(out, fmt.Sprintf("%d %s", v, name))
		}
		return out, rows.Err()
	})
	if err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	return got
}

func TestMigrations(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || SchemaVersion() != len(ms) {
		t.Fatalf("SchemaVersion() = %d with %d migrations", SchemaVersion(), len(ms))
	}
	var want []string
	for _, m := range ms {
		want = append(want, fmt.Sprintf("%d %s", m.version, m.name))
	}
	engines(t, func(t *testing.T, d testDB) { testMigrations(t, d, want) })
}

func testMigrations(t *testing.T, d testDB, want []string) {
	s := d.open(t)
	if diff := cmp.Diff(want, migrationRows(t, s)); diff != "" {
		t.Fatalf("schema_migrations after first open (-want +got):\n%s", diff)
	}
	// The schema is really there.
	if err := s.Write(t.Context(), insertAccount("a1")); err != nil {
		t.Fatalf("insert into migrated schema: %v", err)
	}
	// Touch writes and changes nothing.
	if err := s.Write(t.Context(), func(tx *Tx) error { return tx.Touch() }); err != nil {
		t.Fatalf("touch: %v", err)
	}
	if diff := cmp.Diff(want, migrationRows(t, s)); diff != "" {
		t.Fatalf("schema_migrations after touch (-want +got):\n%s", diff)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening applies nothing twice and keeps the data.
	for range 2 {
		s2, err := d.openErr(t.Context(), Options{})
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		if diff := cmp.Diff(want, migrationRows(t, s2)); diff != "" {
			t.Errorf("schema_migrations after reopen (-want +got):\n%s", diff)
		}
		if !accountIDs(t, s2)["a1"] {
			t.Error("row lost on reopen")
		}
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMigrationsConcurrentOpen(t *testing.T) {
	// Two processes (say, the server and a CLI command) opening a fresh
	// database at once must not both apply the same migration.
	for _, e := range []Engine{SQLite, Postgres} {
		t.Run(string(e), func(t *testing.T) {
			for range 5 {
				d := newDB(t, e)
				var wg sync.WaitGroup
				errs := make([]error, 2)
				for j := range errs {
					wg.Go(func() {
						s, err := d.openErr(t.Context(), Options{})
						errs[j] = err
						s.Close()
					})
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						t.Fatalf("concurrent open of a fresh database: %v", err)
					}
				}
				s := d.open(t)
				if got := migrationRows(t, s); len(got) != SchemaVersion() {
					t.Fatalf("schema_migrations after concurrent opens: %v", got)
				}
				s.Close()
			}
		})
	}
}

func TestMigrationsRefuseNewerSchema(t *testing.T) {
	engines(t, testMigrationsRefuseNewerSchema)
}

func testMigrationsRefuseNewerSchema(t *testing.T, d testDB) {
	s := d.open(t)
	future := SchemaVersion() + 1
	err := s.Write(t.Context(), func(tx *Tx) error {
		_, err := tx.Exec(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`, future, "9999_future.sql")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, err := d.openErr(t.Context(), Options{})
	if err == nil {
		s2.Close()
		t.Fatal("opened a database whose schema is newer than the binary's")
	}
	if s2 != nil {
		t.Error("open returned a store with its error")
	}
	msg := err.Error()
	for _, want := range []string{"newer", fmt.Sprint(future), fmt.Sprint(SchemaVersion()), "upgrade"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

func TestPragmas(t *testing.T) {
	s, _ := openTest(t)
	// Every pragma of sqlitePragmas, whichever driver applies them, and
	// query_only and the smaller cache on the read connections only.
	want := map[string]string{
		"journal_mode": "wal",
		"synchronous":  "2", // FULL
		"foreign_keys": "1",
		"busy_timeout": "10000",
		"temp_store":   "2", // MEMORY
		"cache_size":   "-65536",
		"query_only":   "0",
	}
	wantRead := maps.Clone(want)
	wantRead["query_only"] = "1"
	wantRead["cache_size"] = "-2048"
	check := func(tx *Tx) (map[string]string, error) {
		got := map[string]string{}
		for name := range want {
			var v string
			if err := tx.QueryRow("PRAGMA " + name).Scan(&v); err != nil {
				return nil, fmt.Errorf("PRAGMA %s: %w", name, err)
			}
			got[name] = v
		}
		return got, nil
	}

	t.Run("write", func(t *testing.T) {
		got, err := WriteT(t.Context(), s, check)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("write connection pragmas (-want +got):\n%s", diff)
		}
	})

	t.Run("read", func(t *testing.T) {
		// Hold n reads open at once, so that each runs on its own
		// connection of the read pool.
		const n = 4
		var arrived sync.WaitGroup
		arrived.Add(n)
		results := make([]map[string]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				reached := false
				results[i], errs[i] = ReadT(t.Context(), s, func(tx *Tx) (map[string]string, error) {
					reached = true
					got, err := check(tx)
					arrived.Done()
					arrived.Wait()
					return got, err
				})
				if !reached {
					arrived.Done()
				}
			})
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Errorf("read %d: %v", i, errs[i])
				continue
			}
			if diff := cmp.Diff(wantRead, results[i]); diff != "" {
				t.Errorf("read connection %d pragmas (-want +got):\n%s", i, diff)
			}
		}
	})

	t.Run("foreign keys enforced", func(t *testing.T) {
		err := s.Write(t.Context(), func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES ('d', 'no-such-account', x'01', 'n', 1)`)
			return err
		})
		if !errors.Is(err, ErrConflict) {
			t.Errorf("device with unknown account: got %v, want ErrConflict", err)
		}
	})
}

func TestGroupCommit(t *testing.T) {
	s, _ := openTest(t)
	const n = 200

	// Hold the writer so that all n writes queue, then let them go: they
	// must share one commit.
	release := holdWriter(t, s)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = s.Write(t.Context(), insertAccount(fmt.Sprintf("acct-%03d", i))) })
	}
	waitQueued(t, s, n)
	release()
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Errorf("write %d: %v", i, err)
		}
	}
	ids := accountIDs(t, s)
	if len(ids) != n {
		t.Errorf("%d rows, want %d", len(ids), n)
	}
	st := s.Stats()
	if st.Commits >= n {
		t.Errorf("Stats().Commits = %d for %d writes: no batching", st.Commits, n)
	}
	// The held write and the n queued behind it: two commits.
	if st.Commits != 2 || st.Writes != n+1 {
		t.Errorf("Stats = %+v, want 2 commits of %d writes", st, n+1)
	}
}

// TestCommitDelay: with a commit delay the writer waits for a second write
// that comes while it holds the first, and commits both at once; a Close
// during the wait commits what it holds.
func TestCommitDelay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sharespot.db")
	s, err := OpenSQLite(t.Context(), path, Options{CommitDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errs[0] = s.Write(t.Context(), insertAccount("first")) })
	time.Sleep(100 * time.Millisecond) // the first is in the writer, waiting
	wg.Go(func() { errs[1] = s.Write(t.Context(), insertAccount("second")) })
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("writes: %v", errs)
	}
	if st := s.Stats(); st.Commits != 1 || st.Writes != 2 {
		t.Fatalf("Stats = %+v, want the two writes in one commit", st)
	}
	// Closed while the writer waits: the write still commits.
	wg.Go(func() { errs[0] = s.Write(t.Context(), insertAccount("third")) })
	time.Sleep(100 * time.Millisecond)
	closeErr := s.Close()
	wg.Wait()
	if errs[0] != nil || closeErr != nil {
		t.Fatalf("write during Close: %v; Close: %v", errs[0], closeErr)
	}
	s = testDB{engine: SQLite, target: path}.open(t)
	if got := accountIDs(t, s); len(got) != 3 || !got["third"] {
		t.Fatalf("after reopening: %v, want first, second and third", got)
	}
}

func TestGroupCommitUnheld(t *testing.T) {
	// The same without holding the writer: every write lands, however the
	// writer happens to batch them (SQLite) or the transactions interleave
	// (PostgreSQL).
	engines(t, testGroupCommitUnheld)
}

func testGroupCommitUnheld(t *testing.T, d testDB) {
	s := d.open(t)
	const n = 200
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range n {
		wg.Go(func() {
			if err := s.Write(t.Context(), insertAccount(fmt.Sprintf("acct-%03d", i))); err != nil {
				t.Errorf("write %d: %v", i, err)
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if got := len(accountIDs(t, s)); got != n {
		t.Errorf("%d rows, want %d", got, n)
	}
	if st := s.Stats(); st.Writes != n || st.Commits < 1 || st.Commits > n {
		t.Errorf("Stats = %+v for %d writes", st, n)
	}
}

var errRefused = errors.New("refused by test")

// holdIfSQLite is holdWriter on SQLite; on PostgreSQL, which has no single
// writer to hold, its release does nothing.
func holdIfSQLite(t *testing.T, s *Store) (release func()) {
	if s.Engine() != SQLite {
		return func() {}
	}
	return holdWriter(t, s)
}

// waitQueuedIfSQLite is waitQueued on SQLite; on PostgreSQL it does nothing.
func waitQueuedIfSQLite(t *testing.T, s *Store, n int) {
	if s.Engine() == SQLite {
		waitQueued(t, s, n)
	}
}

func TestBatchIsolation(t *testing.T) {
	// On SQLite the writes share one commit, each in its own savepoint; on
	// PostgreSQL each is a transaction of its own. Either way a failing
	// write is rolled back alone and hooks run exactly for the others.
	engines(t, testBatchIsolation)
}

func testBatchIsolation(t *testing.T, d testDB) {
	s := d.open(t)
	const n = 90
	hooks := make([]atomic.Int32, n)
	hookSeenBeforeReturn := make([]int32, n)
	errs := make([]error, n)

	release := holdIfSQLite(t, s)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Write(t.Context(), func(tx *Tx) error {
				if err := insertAccount(fmt.Sprintf("acct-%03d", i))(tx); err != nil {
					return err
				}
				tx.AfterCommit(func() { hooks[i].Add(1) })
				if i%3 == 0 {
					return fmt.Errorf("write %d: %w", i, errRefused)
				}
				return nil
			})
			hookSeenBeforeReturn[i] = hooks[i].Load()
		})
	}
	waitQueuedIfSQLite(t, s, n)
	release()
	wg.Wait()

	if st := s.Stats(); s.Engine() == SQLite && st.Commits != 2 {
		t.Fatalf("Stats().Commits = %d: the writes were not in one batch", st.Commits)
	}
	ids := accountIDs(t, s)
	for i := range n {
		fail := i%3 == 0
		id := fmt.Sprintf("acct-%03d", i)
		switch {
		case fail && !errors.Is(errs[i], errRefused):
			t.Errorf("write %d: got %v, want its own error", i, errs[i])
		case !fail && errs[i] != nil:
			t.Errorf("write %d: %v", i, errs[i])
		}
		if ids[id] == fail {
			t.Errorf("row %s present=%v, want %v", id, ids[id], !fail)
		}
		wantHooks := int32(1)
		if fail {
			wantHooks = 0
		}
		if got := hooks[i].Load(); got != wantHooks {
			t.Errorf("write %d: AfterCommit ran %d times, want %d", i, got, wantHooks)
		}
		if hookSeenBeforeReturn[i] != wantHooks {
			t.Errorf("write %d: AfterCommit had run %d times when Write returned, want %d", i, hookSeenBeforeReturn[i], wantHooks)
		}
	}
	if len(ids) != n-n/3 {
		t.Errorf("%d rows, want %d", len(ids), n-n/3)
	}
}

func TestPanicIsolated(t *testing.T) {
	engines(t, testPanicIsolated)
}

func testPanicIsolated(t *testing.T, d testDB) {
	s := d.open(t)
	release := holdIfSQLite(t, s)
	names := []string{"before", "panics", "after"}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			errs[i] = s.Write(t.Context(), func(tx *Tx) error {
				if err := insertAccount(name)(tx); err != nil {
					return err
				}
				if name == "panics" {
					panic("boom")
				}
				return nil
			})
		})
		waitQueuedIfSQLite(t, s, i+1) // keep the order within the batch
	}
	release()
	wg.Wait()

	if errs[0] != nil || errs[2] != nil {
		t.Errorf("neighbours of a panicking write failed: %v, %v", errs[0], errs[2])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "panicked") || !strings.Contains(errs[1].Error(), "boom") {
		t.Errorf("panicking write returned %v, want an error reporting the panic", errs[1])
	}
	// The writer still works.
	if err := s.Write(t.Context(), insertAccount("later")); err != nil {
		t.Fatalf("write after a panic: %v", err)
	}
	want := map[string]bool{"before": true, "after": true, "later": true}
	if diff := cmp.Diff(want, accountIDs(t, s)); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}

// A caller's context that ends while its function's statement runs must not
// interrupt the statement: SQLite rolls back the whole transaction when a
// write statement is interrupted, which would take the batch's other writes
// with it.
var (
	registerHookOnce sync.Once
	sqlHook          atomic.Pointer[func()]
)

// storeTestHook is SQL function store_test_hook(x), registered on every
// SQLite connection by registerTestHook: it calls sqlHook and returns 1.
func storeTestHook() int64 {
	if f := sqlHook.Load(); f != nil {
		(*f)()
	}
	runtime.Gosched() // give the context watcher a chance to interrupt
	return 1
}

func TestCancelDuringBatchSparesNeighbours(t *testing.T) {
	registerHookOnce.Do(func() {
		if err := registerTestHook(); err != nil {
			t.Fatalf("register SQL function: %v", err)
		}
	})
	s, _ := openTest(t) // after registration: the connections have the function

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	hook := func() { cancel() }
	sqlHook.Store(&hook)
	defer sqlHook.Store(nil)

	release := holdWriter(t, s)
	const bigRows = 5000
	fns := []func(*Tx) error{
		insertAccount("before"),
		func(tx *Tx) error {
			_, err := tx.Exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?)
				INSERT INTO accounts (id, created_ms) SELECT 'big-' || x, store_test_hook(x) FROM c`, bigRows)
			return err
		},
		insertAccount("after"),
	}
	ctxs := []context.Context{t.Context(), ctx, t.Context()}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i := range fns {
		wg.Go(func() { errs[i] = s.Write(ctxs[i], fns[i]) })
		waitQueued(t, s, i+1)
	}
	release()
	wg.Wait()

	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("neighbours of a write whose context was canceled failed: %v, %v", errs[0], errs[2])
	}
	ids := accountIDs(t, s)
	if !ids["before"] || !ids["after"] {
		t.Errorf("neighbours' rows missing: %v %v", ids["before"], ids["after"])
	}
	big := len(ids) - 2
	if (errs[1] == nil && big != bigRows) || (errs[1] != nil && big != 0) {
		t.Errorf("canceled write returned %v and left %d of its %d rows", errs[1], big, bigRows)
	}
}

func TestErrorTranslation(t *testing.T) {
	engines(t, testErrorTranslation)
}

func testErrorTranslation(t *testing.T, d testDB) {
	s := d.open(t)
	if err := s.Write(t.Context(), insertAccount("dup")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		fn   func(*Tx) error
		want error
	}{
		{"duplicate primary key", insertAccount("dup"), ErrConflict},
		{"check constraint", func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO ledger_accounts (id, kind, owner, currency, balance) VALUES ('w', 'wallet', 'o', 'USD', -1)`)
			return err
		}, ErrConflict},
		{"foreign key", func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES (?, ?, ?, ?, ?)`,
				"d", "no-such-account", []byte{1}, "n", 1)
			return err
		}, ErrConflict},
		{"unique index", func(tx *Tx) error {
			for _, id := range []string{"d1", "d2"} {
				if _, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES (?, ?, ?, ?, ?)`,
					id, "dup", []byte{7, 0, 7}, "n", 1); err != nil {
					return err
				}
			}
			return nil
		}, ErrConflict},
		{"not null", func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "nn", nil)
			return err
		}, ErrConflict},
		{"missing row", func(tx *Tx) error {
			var id string
			return tx.QueryRow(`SELECT id FROM accounts WHERE id = ?`, "nobody").Scan(&id)
		}, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Write(t.Context(), tt.fn)
			if !errors.Is(err, tt.want) {
				t.Errorf("Write: got %v, want %v", err, tt.want)
			}
			if tt.want == ErrNotFound {
				if err := s.Read(t.Context(), tt.fn); !errors.Is(err, ErrNotFound) {
					t.Errorf("Read: got %v, want ErrNotFound", err)
				}
			}
		})
	}
	if err := s.Write(t.Context(), insertAccount("fresh")); err != nil {
		t.Errorf("insert of a new key: %v", err)
	}
}

func TestWriteTReadT(t *testing.T) {
	engines(t, testWriteTReadT)
}

func testWriteTReadT(t *testing.T, d testDB) {
	s := d.open(t)
	n, err := WriteT(t.Context(), s, func(tx *Tx) (int64, error) {
		return tx.ExecN(`INSERT INTO accounts (id, created_ms) VALUES ('a', 1), ('b', 2)`)
	})
	if err != nil || n != 2 {
		t.Fatalf("WriteT = %d, %v; want 2, nil", n, err)
	}
	sum, err := ReadT(t.Context(), s, func(tx *Tx) (int64, error) {
		var v int64
		err := tx.QueryRow(`SELECT SUM(created_ms) FROM accounts`).Scan(&v)
		return v, err
	})
	if err != nil || sum != 3 {
		t.Fatalf("ReadT = %d, %v; want 3, nil", sum, err)
	}
	v, err := WriteT(t.Context(), s, func(tx *Tx) (int, error) { return 7, errRefused })
	if !errors.Is(err, errRefused) || v != 0 {
		t.Errorf("failing WriteT = %d, %v; want 0, errRefused", v, err)
	}
}

func TestCanceledContext(t *testing.T) {
	engines(t, testCanceledContext)
}

func testCanceledContext(t *testing.T, d testDB) {
	s := d.open(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for i := range 20 { // Write must not pick between queueing and ctx at random
		called := false
		err := s.Write(ctx, func(tx *Tx) error {
			called = true
			return insertAccount(fmt.Sprint(i))(tx)
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Write with a canceled context: got %v, want context.Canceled", err)
		}
		if called {
			t.Fatal("function of a canceled write ran")
		}
	}
	if ids := accountIDs(t, s); len(ids) != 0 {
		t.Errorf("canceled writes left rows: %v", ids)
	}
	if err := s.Read(ctx, func(*Tx) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Read with a canceled context: got %v, want context.Canceled", err)
	}
}

func TestClose(t *testing.T) {
	t.Run("nil store", func(t *testing.T) {
		var s *Store
		if err := s.Close(); err != nil {
			t.Errorf("nil Close: %v", err)
		}
	})
	engines(t, testClose)
}

func testClose(t *testing.T, d testDB) {
	t.Run("idempotent, then ErrClosed", func(t *testing.T) {
		s, err := d.openErr(t.Context(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		}
		for range 50 { // not one chance in two of queueing into a dead writer
			if err := s.Write(t.Context(), insertAccount("x")); !errors.Is(err, ErrClosed) {
				t.Fatalf("Write after Close: got %v, want ErrClosed", err)
			}
		}
		if err := s.Read(t.Context(), func(*Tx) error { return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("Read after Close: got %v, want ErrClosed", err)
		}
	})
	t.Run("concurrent with writes", func(t *testing.T) {
		// Every Write returns (none hangs on a stopped writer), and each
		// that reports success is durable.
		s, err := d.openErr(t.Context(), Options{MaxBatch: 8})
		if err != nil {
			t.Fatal(err)
		}
		// Start from no rows (the subtest above shares the database).
		if err := s.Write(t.Context(), func(tx *Tx) error {
			_, err := tx.Exec(`DELETE FROM accounts`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		const n = 300
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { errs[i] = s.Write(t.Context(), insertAccount(fmt.Sprint(i))) })
			if i == n/2 {
				wg.Go(func() {
					if err := s.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				})
			}
		}
		wg.Wait()
		s.Close()

		s2, err := d.openErr(t.Context(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		ids := accountIDs(t, s2)
		for i, err := range errs {
			switch {
			case err == nil && !ids[fmt.Sprint(i)]:
				t.Errorf("write %d succeeded but its row is gone", i)
			case err != nil && !errors.Is(err, ErrClosed):
				t.Errorf("write %d: %v", i, err)
			case err != nil && ids[fmt.Sprint(i)]:
				t.Errorf("write %d returned %v but its row exists", i, err)
			}
		}
	})
}

func TestOpenFailures(t *testing.T) {
	if _, err := OpenSQLite(t.Context(), "", Options{}); err == nil {
		t.Error("opened an empty path")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := OpenSQLite(t.Context(), filepath.Join(file, "db"), Options{})
	if err == nil {
		s.Close()
		t.Error("opened a database under a regular file")
	}
	if err := os.WriteFile(file, []byte("this is not a database, it is long enough to have a header......................................................................."), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenSQLite(t.Context(), file, Options{}); err == nil {
		s.Close()
		t.Error("opened a file that is not a database")
	}
}

func TestDurability(t *testing.T) {
	// Path characters that mean something in a file: URI must not change
	// which file is opened.
	for _, dir := range []string{"plain", "odd #1 ?x=y %41"} {
		t.Run(dir, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), dir, "sharespot.db")
			s, err := OpenSQLite(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(t.Context(), insertAccount("kept")); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("database not at its path: %v", err)
			}
			s, err = OpenSQLite(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if diff := cmp.Diff(map[string]bool{"kept": true}, accountIDs(t, s)); diff != "" {
				t.Errorf("rows after reopen (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadSnapshot(t *testing.T) {
	engines(t, testReadSnapshot)
}

func testReadSnapshot(t *testing.T, d testDB) {
	s := d.open(t)
	if err := s.Write(t.Context(), insertAccount("a")); err != nil {
		t.Fatal(err)
	}
	count := func(tx *Tx) (n int) {
		if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	err := s.Read(t.Context(), func(tx *Tx) error {
		before := count(tx)
		// A write commits while the read is open: the read must not block
		// it, and must not see it.
		if err := s.Write(t.Context(), insertAccount("b")); err != nil {
			return fmt.Errorf("write during a read: %w", err)
		}
		if after := count(tx); after != before {
			t.Errorf("read saw %d rows, then %d within one transaction", before, after)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]bool{"a": true, "b": true}, accountIDs(t, s)); diff != "" {
		t.Errorf("rows after the read (-want +got):\n%s", diff)
	}
}

func TestReadOnly(t *testing.T) {
	engines(t, testReadOnly)
}

func testReadOnly(t *testing.T, d testDB) {
	s := d.open(t)
	err := s.Read(t.Context(), insertAccount("x"))
	if err == nil {
		t.Error("Read allowed an INSERT")
	}
	if ids := accountIDs(t, s); len(ids) != 0 {
		t.Errorf("rows after a refused read-side insert: %v", ids)
	}
}

func TestAfterCommitMayWrite(t *testing.T) {
	// A hook that writes (a wake-up that records something, say) must not
	// deadlock the single writer.
	engines(t, testAfterCommitMayWrite)
}

func testAfterCommitMayWrite(t *testing.T, d testDB) {
	s := d.open(t)
	done := make(chan error, 1)
	go func() {
		done <- s.Write(t.Context(), func(tx *Tx) error {
			tx.AfterCommit(func() {
				if err := s.Write(t.Context(), insertAccount("from-hook")); err != nil {
					t.Errorf("write from AfterCommit: %v", err)
				}
			})
			return insertAccount("first")(tx)
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute): // a deadlock guard, not a timing claim
		t.Fatal("Write from an AfterCommit hook deadlocked")
	}
	if diff := cmp.Diff(map[string]bool{"first": true, "from-hook": true}, accountIDs(t, s)); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}

func TestRebind(t *testing.T) {
	tests := []struct {
		engine Engine
		in     string
		want   string
	}{
		{SQLite, "SELECT ? , ?", "SELECT ? , ?"},
		{Postgres, "SELECT 1", "SELECT 1"},
		{Postgres, "UPDATE t SET a = ? WHERE b = ? AND c = ?", "UPDATE t SET a = $1 WHERE b = $2 AND c = $3"},
	}
	for _, tt := range tests {
		t.Run(string(tt.engine)+" "+tt.in, func(t *testing.T) {
			tx := &Tx{engine: tt.engine}
			if got := tx.rebind(tt.in); got != tt.want {
				t.Errorf("rebind(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// A batch whose writes all succeed runs no savepoints; one with a failing
// write runs again with a savepoint per write (TestBatchIsolation checks
// the outcome of that run).
func TestSavepointsOnlyAfterAFailure(t *testing.T) {
	s := newDB(t, SQLite).open(t)
	batch := func(fail int) {
		release := holdWriter(t, s)
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Go(func() {
				_ = s.Write(t.Context(), func(tx *Tx) error {
					if err := insertAccount(fmt.Sprintf("acct-%d-%d", fail, i))(tx); err != nil {
						return err
					}
					if i == fail {
						return errRefused
					}
					return nil
				})
			})
		}
		waitQueued(t, s, 10)
		release()
		wg.Wait()
	}
	batch(-1)
	if n := s.StatementCounts()["SAVEPOINT w"]; n != 0 {
		t.Fatalf("a batch with no failure ran %d savepoints", n)
	}
	batch(4)
	if n := s.StatementCounts()["SAVEPOINT w"]; n != 10 {
		t.Fatalf("a batch of 10 with a failure ran %d savepoints, want 10 (its second run)", n)
	}
}

// Reads on SQLite use statements prepared once on the read pool; past the
// cap on distinct texts they are prepared anew, with the same results.
func TestReadStatementsPrepared(t *testing.T) {
	s := newDB(t, SQLite).open(t)
	if err := s.Write(t.Context(), insertAccount("acct-1")); err != nil {
		t.Fatal(err)
	}
	read := func(query string) {
		t.Helper()
		id, err := ReadT(t.Context(), s, func(tx *Tx) (string, error) {
			var id string
			err := tx.QueryRow(query, "acct-1").Scan(&id)
			return id, err
		})
		if err != nil || id != "acct-1" {
			t.Fatalf("read %q: %q, %v", query, id, err)
		}
	}
	kept := func() int {
		s.rstmts.mu.Lock()
		defer s.rstmts.mu.Unlock()
		return len(s.rstmts.m)
	}
	const q = `SELECT id FROM accounts WHERE id = ?`
	for deadline := time.Now().Add(10 * time.Second); kept() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("a statement read again and again was never kept prepared")
		}
		read(q)
		time.Sleep(time.Millisecond)
	}
	for range 20 {
		read(q)
	}
	if n := kept(); n != 1 {
		t.Fatalf("reads of one statement left %d prepared statements, want 1", n)
	}
	for i := range maxReadStmts + 5 {
		read(fmt.Sprintf(`SELECT id FROM accounts WHERE id = ? AND %d = %d`, i, i))
	}
	s.rstmts.wg.Wait()
	if n := kept(); n != maxReadStmts {
		t.Fatalf("%d prepared read statements, want the cap %d", n, maxReadStmts)
	}
}

// Many reads at once, each meeting statements not yet prepared while it
// holds a read connection, all finish: preparing for the pool must not
// wait for a connection that a waiting read holds.
func TestReadStatementsUnderLoad(t *testing.T) {
	s := newDB(t, SQLite).open(t)
	if err := s.Write(t.Context(), insertAccount("acct-1")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Go(func() {
			err := s.Read(ctx, func(tx *Tx) error {
				for i := range 4 {
					var id string
					q := fmt.Sprintf(`SELECT id FROM accounts WHERE id = ? AND %d = %d`, g*4+i, g*4+i)
					if err := tx.QueryRow(q, "acct-1").Scan(&id); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a read under load: %v", err)
	}
}

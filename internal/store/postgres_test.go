package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgconn"
)

// openPostgres opens a store on a fresh PostgreSQL database.
func openPostgres(t *testing.T) *Store {
	t.Helper()
	return newDB(t, Postgres).open(t)
}

func TestOpenDispatch(t *testing.T) {
	for target, want := range map[string]bool{
		"postgres://u@h/db":   true,
		"postgresql://u@h/db": true,
		"/var/lib/x.db":       false,
		"postgres.db":         false,
		"":                    false,
	} {
		if got := IsPostgresURL(target); got != want {
			t.Errorf("IsPostgresURL(%q) = %v, want %v", target, got, want)
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		d := newDB(t, SQLite)
		s, err := Open(t.Context(), d.target, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.Engine() != SQLite {
			t.Errorf("Open(%q) engine %s", d.target, s.Engine())
		}
	})
	t.Run("postgres", func(t *testing.T) {
		d := newDB(t, Postgres)
		s, err := Open(t.Context(), d.target, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.Engine() != Postgres {
			t.Errorf("Open(postgres URL) engine %s", s.Engine())
		}
	})
}

func TestOpenPostgresFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for name, url := range map[string]string{
		"malformed URL":  "postgres://%zz",
		"nobody listens": "postgres://postgres@127.0.0.1:1/db?sslmode=disable&connect_timeout=5",
	} {
		t.Run(name, func(t *testing.T) {
			s, err := OpenPostgres(ctx, url, Options{})
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if s != nil {
				t.Error("OpenPostgres returned a store with its error")
			}
		})
	}
	t.Run("no such database", func(t *testing.T) {
		requirePostgres(t)
		d := newDB(t, Postgres)
		s, err := OpenPostgres(ctx, d.target+"_missing", Options{})
		if err == nil {
			s.Close()
			t.Fatal("opened a database that does not exist")
		}
	})
}

// TestSchemaSemantics checks, on both engines, the parts of the schema and
// of the SQL the packages use whose meaning could differ between them.
func TestSchemaSemantics(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := t.Context()
		blob := []byte{0, 1, 2, 0xff, 0, 'x'}
		err := s.Write(ctx, func(tx *Tx) error {
			if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, "a", math.MaxInt64); err != nil {
				return err
			}
			if _, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES (?, ?, ?, ?, ?)`,
				"d", "a", blob, "n", 1); err != nil {
				return err
			}
			// RETURNING, as the relay assigns sequence numbers.
			var seq int64
			if err := tx.QueryRow(`UPDATE devices SET next_seq = next_seq + 1 WHERE id = ? RETURNING next_seq - 1`, "d").Scan(&seq); err != nil {
				return fmt.Errorf("RETURNING: %w", err)
			}
			if seq != 1 {
				return fmt.Errorf("RETURNING gave %d, want 1", seq)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		hotspot := func(id, bssid string, active int) func(*Tx) error {
			return func(tx *Tx) error {
				_, err := tx.Exec(`INSERT INTO hotspots (id, host_device_id, bssid, ssid, security, currency, price_minor, unit_bytes,
					min_purchase_bytes, topup_price_minor, shareable_bytes, warn_at_bytes, committed_bytes, active, created_ms, updated_ms)
					VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)`,
					id, "d", bssid, []byte("ssid"), int32(2), "USD", int64(1), int64(1), int64(1), int64(1), int64(100), int64(10), active, int64(1), int64(1))
				return err
			}
		}
		// The partial unique index: one active hotspot per BSSID, any
		// number of inactive ones.
		for _, step := range []struct {
			id     string
			active int
			want   error
		}{{"h1", 0, nil}, {"h2", 0, nil}, {"h3", 1, nil}, {"h4", 1, ErrConflict}} {
			if err := s.Write(ctx, hotspot(step.id, "aa:bb", step.active)); !errors.Is(err, step.want) && err != step.want {
				t.Errorf("hotspot %s active=%d: got %v, want %v", step.id, step.active, err, step.want)
			}
		}

		type result struct {
			Blob         []byte
			Max          int64
			Sum          int64
			SumCast      int64
			Concat       string
			Like         int
			ActiveCount  int
			CountOfWhere int
			CaseState    int32
		}
		got, err := ReadT(ctx, s, func(tx *Tx) (result, error) {
			var r result
			if err := tx.QueryRow(`SELECT public_key FROM devices WHERE id = ?`, "d").Scan(&r.Blob); err != nil {
				return r, fmt.Errorf("BYTEA: %w", err)
			}
			if err := tx.QueryRow(`SELECT created_ms FROM accounts WHERE id = ?`, "a").Scan(&r.Max); err != nil {
				return r, fmt.Errorf("BIGINT: %w", err)
			}
			// SUM of BIGINT is NUMERIC on PostgreSQL: it must still scan
			// into an int64, with COALESCE and arithmetic around it.
			if err := tx.QueryRow(`SELECT COALESCE(SUM(shareable_bytes), 0) - COALESCE(SUM(warn_at_bytes), 0) FROM hotspots`).Scan(&r.Sum); err != nil {
				return r, fmt.Errorf("SUM: %w", err)
			}
			if err := tx.QueryRow(`SELECT CAST(COALESCE(SUM(price_minor), 0) AS BIGINT) FROM hotspots WHERE id <> ?`, "none").Scan(&r.SumCast); err != nil {
				return r, fmt.Errorf("CAST SUM: %w", err)
			}
			if err := tx.QueryRow(`SELECT 'hs:' || id FROM hotspots WHERE active = 1`).Scan(&r.Concat); err != nil {
				return r, fmt.Errorf("||: %w", err)
			}
			if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE id LIKE 'h%'`).Scan(&r.Like); err != nil {
				return r, fmt.Errorf("LIKE: %w", err)
			}
			if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE active = ?`, 1).Scan(&r.ActiveCount); err != nil {
				return r, err
			}
			if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE security < ? AND bssid IN (?, ?)`, int32(3), "aa:bb", "x").Scan(&r.CountOfWhere); err != nil {
				return r, err
			}
			if err := tx.QueryRow(`SELECT CASE WHEN security = ? THEN ? WHEN security IN (?, ?) THEN ? ELSE security END FROM hotspots WHERE id = ?`,
				int32(2), int32(9), int32(4), int32(5), int32(7), "h1").Scan(&r.CaseState); err != nil {
				return r, fmt.Errorf("CASE: %w", err)
			}
			return r, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := result{Blob: blob, Max: math.MaxInt64, Sum: 3 * 90, SumCast: 3, Concat: "hs:h3", Like: 3, ActiveCount: 1, CountOfWhere: 3, CaseState: 9}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}

		// A CHECK holds committed_bytes non-negative.
		err = s.Write(ctx, func(tx *Tx) error {
			_, err := tx.Exec(`UPDATE hotspots SET committed_bytes = committed_bytes - ? WHERE id = ?`, 1, "h3")
			return err
		})
		if !errors.Is(err, ErrConflict) {
			t.Errorf("negative committed_bytes: got %v, want ErrConflict", err)
		}
	})
}

func TestCrashHook(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		var mu sync.Mutex
		var calls []string
		s, err := d.openErr(t.Context(), Options{Crash: func(n int64, committed bool, names []string) {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, fmt.Sprint(n, committed, names))
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for i := range 3 {
			ctx := t.Context()
			if i == 1 {
				ctx = WithCall(ctx, "Pay")
			}
			if err := s.Write(ctx, insertAccount(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		// The hook hears which calls a commit's writes serve.
		want := []string{"1 false []", "1 true []", "2 false [Pay]", "2 true [Pay]", "3 false []", "3 true []"}
		if diff := cmp.Diff(want, calls); diff != "" {
			t.Errorf("crash hook calls (-want +got):\n%s", diff)
		}
	})
}

func TestForUpdate(t *testing.T) {
	engines(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		want := ""
		if d.engine == Postgres {
			want = " FOR UPDATE"
		}
		got, err := WriteT(t.Context(), s, func(tx *Tx) (string, error) { return tx.ForUpdate(), nil })
		if err != nil || got != want {
			t.Errorf("in a write: %q, %v; want %q", got, err, want)
		}
		got, err = ReadT(t.Context(), s, func(tx *Tx) (string, error) { return tx.ForUpdate(), nil })
		if err != nil || got != "" {
			t.Errorf("in a read: %q, %v; want \"\"", got, err)
		}
		// The clause works where ForUpdate gives it, and a read that
		// appends it still runs.
		if err := s.Write(t.Context(), insertAccount("a")); err != nil {
			t.Fatal(err)
		}
		sel := func(tx *Tx) error {
			var id string
			return tx.QueryRow(`SELECT id FROM accounts WHERE id = ?`+tx.ForUpdate(), "a").Scan(&id)
		}
		if err := s.Write(t.Context(), sel); err != nil {
			t.Errorf("write: %v", err)
		}
		if err := s.Read(t.Context(), sel); err != nil {
			t.Errorf("read: %v", err)
		}
	})
}

func TestPostgresIsolation(t *testing.T) {
	s := openPostgres(t)
	show := func(tx *Tx) (string, error) {
		var iso, ro string
		if err := tx.QueryRow(`SHOW transaction_isolation`).Scan(&iso); err != nil {
			return "", err
		}
		if err := tx.QueryRow(`SHOW transaction_read_only`).Scan(&ro); err != nil {
			return "", err
		}
		return iso + " read_only=" + ro, nil
	}
	if got, err := WriteT(t.Context(), s, show); err != nil || got != "read committed read_only=off" {
		t.Errorf("write transaction: %q, %v", got, err)
	}
	if got, err := ReadT(t.Context(), s, show); err != nil || got != "repeatable read read_only=on" {
		t.Errorf("read transaction: %q, %v", got, err)
	}
}

// counter is a one-row table for the retry tests.
func counterTable(t *testing.T, s *Store) {
	t.Helper()
	err := s.Write(t.Context(), func(tx *Tx) error {
		if _, err := tx.Exec(`CREATE TABLE counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)`); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO counter (id, n) VALUES (1, 0), (2, 0)`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func counterValue(t *testing.T, s *Store, id int) int64 {
	t.Helper()
	n, err := ReadT(t.Context(), s, func(tx *Tx) (n int64, err error) {
		err = tx.QueryRow(`SELECT n FROM counter WHERE id = ?`, id).Scan(&n)
		return n, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPostgresNoLostUpdates: many goroutines increment one counter by
// reading it with Tx.ForUpdate and writing back value+1; the row lock makes
// each wait for the one before, so none of the increments is lost.
func TestPostgresNoLostUpdates(t *testing.T) {
	s := openPostgres(t)
	counterTable(t, s)
	const n = 50
	var hooks atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			err := s.Write(t.Context(), func(tx *Tx) error {
				var v int64
				if err := tx.QueryRow(`SELECT n FROM counter WHERE id = 1` + tx.ForUpdate()).Scan(&v); err != nil {
					return err
				}
				tx.AfterCommit(func() { hooks.Add(1) })
				_, err := tx.Exec(`UPDATE counter SET n = ? WHERE id = 1`, v+1)
				return err
			})
			if err != nil {
				t.Errorf("increment %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if got := counterValue(t, s, 1); got != n {
		t.Errorf("counter = %d after %d increments: updates lost", got, n)
	}
	if got := hooks.Load(); got != n {
		t.Errorf("AfterCommit ran %d times for %d writes", got, n)
	}
	st := s.Stats()
	if st.Commits != n+1 || st.Writes != n+1 {
		t.Errorf("Stats = %+v, want %d commits", st, n+1)
	}
}

// racingInserts runs two writes that both look up account "k", meet while
// it is still missing, and then both insert it: the second insert waits for
// the first write's commit and fails with a unique violation, and that
// write must be retried. onInsert is what an attempt does with its insert's
// error (nil when the look-up found the row). It returns the number of
// attempts and committed hooks of each write, and their errors.
func racingInserts(t *testing.T, s *Store, onInsert func(found bool, err error) error) (attempts, hooks [2]int, errs [2]error) {
	t.Helper()
	var meet sync.WaitGroup
	meet.Add(2)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			errs[i] = s.Write(t.Context(), func(tx *Tx) error {
				mu.Lock()
				attempts[i]++
				first := attempts[i] == 1
				mu.Unlock()
				var n int
				if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts WHERE id = 'k'`).Scan(&n); err != nil {
					return err
				}
				if first {
					meet.Done()
					meet.Wait() // both have seen "k" missing
				}
				tx.AfterCommit(func() {
					mu.Lock()
					hooks[i]++
					mu.Unlock()
				})
				if n > 0 {
					return onInsert(true, nil)
				}
				_, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('k', 1)`)
				return onInsert(false, err)
			})
		})
	}
	wg.Wait()
	return attempts, hooks, errs
}

// TestPostgresRetriesCheckThenInsert: the write that loses an insert race
// runs again and takes the path it takes when it runs second, whether its
// function returns the unique violation, replaces it with an error of its
// own, or ignores it (the transaction is aborted either way).
func TestPostgresRetriesCheckThenInsert(t *testing.T) {
	errMine := errors.New("something of my own")
	for _, mode := range []string{"returned", "replaced", "ignored"} {
		t.Run(mode, func(t *testing.T) {
			s := openPostgres(t)
			attempts, hooks, errs := racingInserts(t, s, func(found bool, err error) error {
				switch {
				case found:
					return nil // the idempotent path
				case err != nil && mode == "replaced":
					return errMine
				case mode == "ignored":
					return nil
				}
				return err
			})
			if errs != [2]error{} {
				t.Fatalf("errors %v", errs)
			}
			if attempts[0]+attempts[1] != 3 {
				t.Errorf("attempts %v: want the losing write retried once", attempts)
			}
			if hooks != [2]int{1, 1} {
				t.Errorf("AfterCommit ran %v times, want once per write", hooks)
			}
			if ids := accountIDs(t, s); !cmp.Equal(ids, map[string]bool{"k": true}) {
				t.Errorf("accounts %v", ids)
			}
			if st := s.Stats(); st.Retries != 1 {
				t.Errorf("Stats().Retries = %d, want 1", st.Retries)
			}
		})
	}
}

// TestPostgresPersistentConflict: a write whose insert keeps meeting a row
// that is already there is tried pgMaxConflictAttempts times and then gets
// its function's own error, not a retry loop or ErrBusy.
func TestPostgresPersistentConflict(t *testing.T) {
	s := openPostgres(t)
	if err := s.Write(t.Context(), insertAccount("dup")); err != nil {
		t.Fatal(err)
	}
	errTaken := errors.New("the name is taken")
	calls, hooks := 0, 0
	err := s.Write(t.Context(), func(tx *Tx) error {
		calls++
		tx.AfterCommit(func() { hooks++ })
		err := insertAccount("dup")(tx)
		if errors.Is(err, ErrConflict) {
			return errTaken
		}
		return err
	})
	if !errors.Is(err, errTaken) {
		t.Errorf("got %v, want the function's error", err)
	}
	if calls != pgMaxConflictAttempts || hooks != 0 {
		t.Errorf("%d calls and %d hooks, want %d and 0", calls, hooks, pgMaxConflictAttempts)
	}
}

func TestPostgresDeadlockRetried(t *testing.T) {
	// Two writes lock the two rows in opposite orders.
	s := openPostgres(t)
	counterTable(t, s)
	var meet sync.WaitGroup
	meet.Add(2)
	var calls atomic.Int64
	var wg sync.WaitGroup
	for i, order := range [][2]int{{1, 2}, {2, 1}} {
		wg.Go(func() {
			first := true
			err := s.Write(t.Context(), func(tx *Tx) error {
				calls.Add(1)
				if _, err := tx.Exec(`UPDATE counter SET n = n + 1 WHERE id = ?`, order[0]); err != nil {
					return err
				}
				if first {
					first = false
					meet.Done()
					meet.Wait()
				}
				_, err := tx.Exec(`UPDATE counter SET n = n + 1 WHERE id = ?`, order[1])
				return err
			})
			if err != nil {
				t.Errorf("write %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if a, b := counterValue(t, s, 1), counterValue(t, s, 2); a != 2 || b != 2 {
		t.Errorf("counters %d, %d; want 2, 2", a, b)
	}
	if calls.Load() < 3 || s.Stats().Retries < 1 {
		t.Errorf("%d calls, %d retries: the deadlock did not happen", calls.Load(), s.Stats().Retries)
	}
}

func TestPostgresGivesUp(t *testing.T) {
	s := openPostgres(t)
	var calls, hooks int
	err := s.Write(t.Context(), func(tx *Tx) error {
		calls++
		tx.AfterCommit(func() { hooks++ })
		if err := insertAccount(fmt.Sprint(calls))(tx); err != nil {
			return err
		}
		return fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: pgSerializationFailure, Message: "test"})
	})
	if !errors.Is(err, ErrBusy) {
		t.Errorf("got %v, want ErrBusy", err)
	}
	if calls != pgMaxAttempts || hooks != 0 {
		t.Errorf("%d calls and %d hooks, want %d and 0", calls, hooks, pgMaxAttempts)
	}
	if ids := accountIDs(t, s); len(ids) != 0 {
		t.Errorf("rows of failed attempts: %v", ids)
	}

	t.Run("context ends while retrying", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		calls := 0
		err := s.Write(ctx, func(tx *Tx) error {
			calls++
			if calls == 2 {
				cancel()
			}
			return &pgconn.PgError{Code: pgDeadlockDetected}
		})
		if !errors.Is(err, context.Canceled) || calls != 2 {
			t.Errorf("got %v after %d calls, want context.Canceled after 2", err, calls)
		}
	})
}

func TestPostgresCloseWaitsForWrites(t *testing.T) {
	s := openPostgres(t)
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Write(t.Context(), func(tx *Tx) error {
			close(entered)
			<-release
			return insertAccount("in-flight")(tx)
		})
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a write was under way")
	case <-time.After(50 * time.Millisecond): // a write still runs: Close must wait
	}
	if err := s.Write(t.Context(), insertAccount("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("write after Close began: %v, want ErrClosed", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("in-flight write: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=disable": "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"postgres://u@h/db":                             "postgres://u@h/db",
		"/var/lib/sharespot/sharespot.db":               "/var/lib/sharespot/sharespot.db",
		"postgres://u:secret@h:%zz/db":                  "(an unparsable database URL)",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

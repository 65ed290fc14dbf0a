package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgPipe runs a PostgreSQL write's statements on one pgx connection,
// pipelined: statements whose outcome the write does not read (ExecLater:
// an inbox append, a session's save) are queued and sent together with the
// next statement whose outcome it does read, and those left at the end go
// with the COMMIT. The BEGIN goes with the first statement. A write of q
// queries and any number of queued statements is q+1 round trips to the
// database, not one per statement plus two.
//
// Order is kept: a queued statement runs before every statement the write
// issues after it, in the same transaction, so a later read sees it. A
// queued statement that fails fails the statement it was sent with (or the
// commit), with its own description, and the transaction, as any failed
// statement does on PostgreSQL.
type pgPipe struct {
	s      *Store // counts statements and round trips (Stats)
	read   bool   // a read: its round trips counted apart, its end a ROLLBACK
	c      *pgx.Conn
	ctx    context.Context
	queued []pipeStmt
	// open is the batch whose last result (a Query's rows, a QueryRow's
	// row) the write is still reading; the next statement closes it.
	open pgx.BatchResults
}

type pipeStmt struct {
	what  string // wraps its error: "session: save s1"
	query string
	args  []any
	dest  []any // QueryRowLater: the row's columns go here; nil for ExecLater
	// oneRow: the statement returns its row or fails in the database
	// (InsertRowLater), so it may go with the COMMIT.
	oneRow bool
	// guarded: the statement fails in the database unless it did what the
	// write expects (ExpectN, Guarded), so it may go with the COMMIT; its
	// failure ends the attempt (Tx.missed).
	guarded bool
}

// errMissed ends an attempt whose statement sent ahead did not do what the
// write expected: the write runs again, each such statement alone.
var errMissed = errors.New("store: a statement sent ahead did not do what the write expected; running the write again, statement by statement")

const (
	pgBegin     = "BEGIN ISOLATION LEVEL READ COMMITTED"
	pgBeginRead = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
)

// send sends what is queued and then query (none when query is ""), and
// reads the queued statements' results. It returns the batch positioned
// at query's result, which the caller reads and closes.
func (p *pgPipe) send(tx *Tx, query string, args []any) (pgx.BatchResults, error) {
	if query == "" {
		return p.sendAll(tx, nil)
	}
	return p.sendAll(tx, []Reading{{Query: query, Args: args}})
}

// sendAll is send for several queries, sent in order after what is
// queued: the batch is positioned at the first one's result.
func (p *pgPipe) sendAll(tx *Tx, tail []Reading) (pgx.BatchResults, error) {
	if err := p.closeOpen(tx); err != nil {
		return nil, err
	}
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(p.queued)+len(tail))}
	for _, q := range p.queued {
		b.Queue(q.query, q.args...)
	}
	for _, r := range tail {
		b.Queue(r.Query, r.Args...)
	}
	queued := p.queued
	p.queued = nil
	switch {
	case p.s == nil:
	case p.read:
		p.s.pgReadTrips.Add(1)
	default:
		p.s.pgTrips.Add(1)
		p.s.pgStmts.Add(int64(len(b.QueuedQueries)))
	}
	br := p.c.SendBatch(p.ctx, b)
	for _, q := range queued {
		if q.guarded {
			if _, err := br.Exec(); err != nil {
				br.Close()
				tx.missed = true
				return nil, errMissed
			}
			continue
		}
		var err error
		if q.dest != nil {
			err = br.QueryRow().Scan(sqlDests(q.dest)...)
		} else {
			_, err = br.Exec()
		}
		if err != nil {
			br.Close()
			tx.note(err)
			return nil, fmt.Errorf("%s: %w", q.what, translate(err))
		}
	}
	return br, nil
}

// closeOpen closes the batch of a Query or QueryRow whose result was not
// read to its end.
func (p *pgPipe) closeOpen(tx *Tx) error {
	if p.open == nil {
		return nil
	}
	err := p.open.Close()
	p.open = nil
	return translate(tx.note(err))
}

// closeOwn closes br if it is still the open batch: the rows or row of a
// statement closed twice, or after the next statement, close nothing else.
func (p *pgPipe) closeOwn(tx *Tx, br pgx.BatchResults) error {
	if p.open != br {
		return nil
	}
	return p.closeOpen(tx)
}

// flush sends what is queued, alone.
func (p *pgPipe) flush(tx *Tx) error {
	if err := p.closeOpen(tx); err != nil || len(p.queued) == 0 {
		return err
	}
	br, err := p.send(tx, "", nil)
	if err != nil {
		return err
	}
	return translate(tx.note(br.Close()))
}

// commit sends what is queued with the COMMIT. A queued QueryRowLater
// statement is sent ahead on its own: its row is checked here, not by the
// database (a statement that returns no row has not failed there), and a
// COMMIT sent with it would commit a write about to be reported failed. A
// guarded statement (ExpectN, Guarded) fails in the database when it did
// not do what the write expected, which then runs nothing after it in the
// batch, the COMMIT included: it goes with the COMMIT.
// An InsertRowLater statement returns its row or fails in the database,
// which then runs nothing after it in the batch, the COMMIT included: it
// goes with the COMMIT.
func (p *pgPipe) commit(tx *Tx) error {
	if slices.ContainsFunc(p.queued, func(q pipeStmt) bool { return q.dest != nil && !q.oneRow }) {
		if err := p.flush(tx); err != nil {
			return err
		}
	}
	br, err := p.send(tx, "COMMIT", nil)
	if err != nil {
		return err
	}
	_, err = br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tx.note(err)
}

// finish rolls back whatever is left of the transaction after a failed
// attempt. It reports false when the connection is no longer fit for
// another write (its state is unknown): the caller then discards it.
func (p *pgPipe) finish() bool {
	p.queued = nil
	if p.open != nil {
		p.open.Close()
		p.open = nil
	}
	if p.c.IsClosed() {
		return false
	}
	if p.c.PgConn().TxStatus() == 'I' {
		return true
	}
	if p.s != nil && p.read {
		p.s.pgReadTrips.Add(1)
	}
	_, err := p.c.Exec(p.ctx, "ROLLBACK")
	return err == nil && p.c.PgConn().TxStatus() == 'I'
}

func (tx *Tx) pgExec(query string, args []any) (sql.Result, error) {
	if len(args) == 0 {
		// Without arguments, as database/sql's driver did: the simple
		// protocol, which takes several statements in one text (a
		// pipeline's statements are each prepared, which refuses that).
		if err := tx.pg.flush(tx); err != nil {
			return nil, err
		}
		if tx.pg.s != nil {
			tx.pg.s.pgTrips.Add(1)
			tx.pg.s.pgStmts.Add(1)
		}
		tag, err := tx.pg.c.Exec(tx.pg.ctx, query)
		if err != nil {
			return nil, translate(tx.note(err))
		}
		return pgResult(tag), nil
	}
	br, err := tx.pg.send(tx, query, args)
	if err != nil {
		return nil, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, translate(tx.note(err))
	}
	return pgResult(tag), nil
}

// pgTogether sends reads in one round trip after what is queued and
// hands each one's rows to its Row.
func (tx *Tx) pgTogether(reads []Reading) error {
	br, err := tx.pg.sendAll(tx, reads)
	if err != nil {
		return err
	}
	if err := tx.pgRows(br, reads); err != nil {
		return err
	}
	return translate(tx.note(br.Close()))
}

// pgLast is pgTogether with the read's ROLLBACK sent after the reads.
// (Should a read fail in the database, PostgreSQL skips the ROLLBACK with
// the rest of the batch; finish then rolls the transaction back.)
func (tx *Tx) pgLast(reads []Reading) error {
	br, err := tx.pg.sendAll(tx, append(reads, Reading{Query: "ROLLBACK"}))
	if err != nil {
		return err
	}
	if err := tx.pgRows(br, reads); err != nil {
		return err
	}
	_, err = br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return translate(tx.note(err))
}

// pgRows hands each read's rows, in order, to its Row. On an error it
// closes br.
func (tx *Tx) pgRows(br pgx.BatchResults, reads []Reading) error {
	for _, r := range reads {
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return translate(tx.note(err))
		}
		sc := &Rows{pg: rows, br: br, tx: tx}
		for rows.Next() {
			if err := r.Row(sc); err != nil {
				rows.Close()
				br.Close()
				return err
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			br.Close()
			return translate(tx.note(err))
		}
	}
	return nil
}

func (tx *Tx) pgQuery(query string, args []any) (*Rows, error) {
	br, err := tx.pg.send(tx, query, args)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, translate(tx.note(err))
	}
	tx.pg.open = br
	return &Rows{pg: rows, br: br, tx: tx}, nil
}

func (tx *Tx) pgQueryRow(query string, args []any) Row {
	br, err := tx.pg.send(tx, query, args)
	if err != nil {
		return Row{err: err}
	}
	tx.pg.open = br
	return Row{pg: br.QueryRow(), br: br, tx: tx}
}

// pgResult is a statement's command tag as a sql.Result.
type pgResult pgconn.CommandTag

func (r pgResult) RowsAffected() (int64, error) { return pgconn.CommandTag(r).RowsAffected(), nil }
func (r pgResult) LastInsertId() (int64, error) {
	return 0, errors.New("store: PostgreSQL has no last insert ID; use RETURNING")
}

// Rows is what Query returns: database/sql's rows, or a pipelined
// PostgreSQL write's.
type Rows struct {
	sql *sql.Rows
	pg  pgx.Rows
	br  pgx.BatchResults // pg's batch
	tx  *Tx
}

// Next prepares the next row for Scan.
func (r *Rows) Next() bool {
	if r.pg != nil {
		return r.pg.Next()
	}
	return r.sql.Next()
}

// Scan copies the current row's columns into dest.
func (r *Rows) Scan(dest ...any) error {
	if r.pg != nil {
		return translate(r.tx.note(r.pg.Scan(sqlDests(dest)...)))
	}
	return r.sql.Scan(dest...)
}

// Err is the error that ended Next, if any.
func (r *Rows) Err() error {
	if r.pg != nil {
		return translate(r.tx.note(r.pg.Err()))
	}
	return r.sql.Err()
}

// Close ends the rows; the next statement may then run.
func (r *Rows) Close() error {
	if r.pg != nil {
		r.pg.Close()
		err := r.pg.Err()
		if cerr := r.tx.pg.closeOwn(r.tx, r.br); err == nil {
			err = cerr
		}
		return translate(r.tx.note(err))
	}
	return r.sql.Close()
}

// Columns are the names of the result's columns.
func (r *Rows) Columns() ([]string, error) {
	if r.pg != nil {
		fds := r.pg.FieldDescriptions()
		cols := make([]string, len(fds))
		for i, fd := range fds {
			cols[i] = fd.Name
		}
		return cols, nil
	}
	return r.sql.Columns()
}

// sqlDests has pgx hand each column to dest as database/sql would: pgx
// decodes it to the value database/sql's driver gives (int64, float64,
// bool, []byte, string, time.Time or nil) and asSQL assigns it with
// database/sql's conversions (a BYTEA column into a string, a number into
// a string or a bool, NUMERIC's text into an integer), which pgx's own
// scanning refuses. A dest that is a sql.Scanner gets the value itself.
func sqlDests(dest []any) []any {
	out := make([]any, len(dest))
	ws := make([]sqlDest, len(dest))
	for i, d := range dest {
		if _, ok := d.(sql.Scanner); ok {
			out[i] = d
			continue
		}
		ws[i].d = d
		out[i] = &ws[i]
	}
	return out
}

type sqlDest struct{ d any }

func (w *sqlDest) Scan(src any) error { return asSQL(w.d, src) }

// asSQL assigns src, a database/sql driver value, to dest as database/sql's
// Scan does, for the destinations the code base reads into.
func asSQL(dest, src any) error {
	if b, ok := src.([]byte); ok {
		src = bytes.Clone(b) // pgx's buffer is reused after Scan
	}
	if n, ok := src.(int64); ok { // the common case, without reflection
		switch d := dest.(type) {
		case *int64:
			*d = n
			return nil
		case *int:
			*d = int(n)
			return nil
		case *int32:
			if n == int64(int32(n)) {
				*d = int32(n)
				return nil
			}
		}
	}
	switch d := dest.(type) {
	case *any:
		*d = src
		return nil
	case *[]byte:
		switch s := src.(type) {
		case nil:
			*d = nil
		case []byte:
			*d = s
		case string:
			*d = []byte(s)
		default:
			*d = []byte(sqlText(s))
		}
		return nil
	case *string:
		switch s := src.(type) {
		case nil:
			return errors.New("converting NULL to string is unsupported")
		case []byte:
			*d = string(s)
		default:
			*d = sqlText(s)
		}
		return nil
	case *bool:
		switch s := src.(type) {
		case bool:
			*d = s
		case int64:
			if s != 0 && s != 1 {
				return fmt.Errorf("converting %d to bool: want 0 or 1", s)
			}
			*d = s == 1
		case nil:
			return errors.New("converting NULL to bool is unsupported")
		default:
			v, err := strconv.ParseBool(sqlText(s))
			if err != nil {
				return fmt.Errorf("converting %q to bool: %w", sqlText(s), err)
			}
			*d = v
		}
		return nil
	case *time.Time:
		t, ok := src.(time.Time)
		if !ok {
			return fmt.Errorf("converting %T to time.Time is unsupported", src)
		}
		*d = t
		return nil
	}
	rv := reflect.ValueOf(dest)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("destination not a pointer: %T", dest)
	}
	ev := rv.Elem()
	if src == nil {
		return fmt.Errorf("converting NULL to %s is unsupported", ev.Kind())
	}
	text := sqlText(src)
	switch ev.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(text, 10, ev.Type().Bits())
		if err != nil {
			return fmt.Errorf("converting %q to %s: %w", text, ev.Kind(), err)
		}
		ev.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(text, 10, ev.Type().Bits())
		if err != nil {
			return fmt.Errorf("converting %q to %s: %w", text, ev.Kind(), err)
		}
		ev.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(text, ev.Type().Bits())
		if err != nil {
			return fmt.Errorf("converting %q to %s: %w", text, ev.Kind(), err)
		}
		ev.SetFloat(f)
	case reflect.String:
		ev.SetString(text)
	default:
		return fmt.Errorf("unsupported scan: %T into %T", src, dest)
	}
	return nil
}

// sqlText is a driver value as text, as database/sql formats it.
func sqlText(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	case int64:
		return strconv.FormatInt(s, 10)
	case float64:
		return strconv.FormatFloat(s, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(s)
	case time.Time:
		return s.Format(time.RFC3339Nano)
	}
	return fmt.Sprint(v)
}

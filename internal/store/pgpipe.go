package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

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
	s      *Store // counts a write's statements and round trips; nil in a read
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
}

const (
	pgBegin     = "BEGIN ISOLATION LEVEL READ COMMITTED"
	pgBeginRead = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
)

// send sends what is queued and then query (none when query is ""), and
// reads the queued statements' results. It returns the batch positioned
// at query's result, which the caller reads and closes.
func (p *pgPipe) send(tx *Tx, query string, args []any) (pgx.BatchResults, error) {
	if err := p.closeOpen(tx); err != nil {
		return nil, err
	}
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(p.queued)+1)}
	for _, q := range p.queued {
		b.Queue(q.query, q.args...)
	}
	if query != "" {
		b.Queue(query, args...)
	}
	queued := p.queued
	p.queued = nil
	if p.s != nil {
		p.s.pgTrips.Add(1)
		p.s.pgStmts.Add(int64(len(b.QueuedQueries)))
	}
	br := p.c.SendBatch(p.ctx, b)
	for _, q := range queued {
		if _, err := br.Exec(); err != nil {
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

// commit sends what is queued with the COMMIT.
func (p *pgPipe) commit(tx *Tx) error {
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
	return &Rows{pg: rows, tx: tx}, nil
}

func (tx *Tx) pgQueryRow(query string, args []any) Row {
	br, err := tx.pg.send(tx, query, args)
	if err != nil {
		return Row{err: err}
	}
	tx.pg.open = br
	return Row{pg: br.QueryRow(), tx: tx}
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
		return translate(r.tx.note(r.pg.Scan(dest...)))
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
		if cerr := r.tx.pg.closeOpen(r.tx); err == nil {
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

package pgtest

import (
	"context"
	"net/url"
	"testing"
)

// TestWALBytes: a committed insert of 64 KiB of incompressible bytes moves
// the log by at least that much; a database that is not there is an error.
func TestWALBytes(t *testing.T) {
	ctx := context.Background()
	u := New(t)
	db, err := open(u)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE blobs (b BYTEA NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `ALTER TABLE blobs ALTER COLUMN b SET STORAGE EXTERNAL`); err != nil {
		t.Fatal(err)
	}
	before, err := WALBytes(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 10
	if _, err := db.ExecContext(ctx, `INSERT INTO blobs SELECT decode(string_agg(lpad(to_hex((random() * 255)::int), 2, '0'), ''), 'hex') FROM generate_series(1, $1)`, size); err != nil {
		t.Fatal(err)
	}
	after, err := WALBytes(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < size {
		t.Errorf("a committed insert of %d bytes moved the log by %d bytes", size, d)
	}
	gone, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	gone.Path += "_gone"
	if _, err := WALBytes(ctx, gone.String()); err == nil {
		t.Error("the log's position read through a database that does not exist")
	}
}

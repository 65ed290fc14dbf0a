// Package account keeps the accounts and the device rows that tie a device
// to the account that owns it (and its wallet). It is the one writer of
// both tables: auth opens accounts and enrols devices through Open and
// Enrol, the relay takes and acknowledges a device's inbox sequence numbers
// (kept on its row) through NextSeq and Acked. The flow's packages ask
// which account a device belongs to, and lock a device's row to serialise
// that device's concurrent writes.
package account

import (
	"errors"
	"fmt"

	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/store"
)

// Of returns the account that owns deviceID: a device never changes
// account and its row is never deleted, so the store keeps it for every
// write and read once read (store.Fixed).
func Of(tx *store.Tx, deviceID string) (string, error) {
	id, err := store.Fixed(tx, "device-account/"+deviceID, func() (string, error) {
		var id string
		err := tx.QueryRow(`SELECT account_id FROM devices WHERE id = ?`, deviceID).Scan(&id)
		return id, err
	})
	if errors.Is(err, store.ErrNotFound) {
		return "", problem.NotFoundf("device %s not found", deviceID)
	}
	if err != nil {
		return "", fmt.Errorf("account: account of device %s: %w", deviceID, err)
	}
	return id, nil
}

// Find returns the one device whose ID starts with prefix (the start of a
// device ID's canonical text form, as deviceid.ParsePrefix returns it: the
// short form people see in tables, or the whole ID) and its account. No
// such device is problem.NotFound; several are problem.Invalid, naming
// how many.
func Find(tx *store.Tx, prefix string) (deviceID, accountID string, err error) {
	rows, err := tx.Query(`SELECT id, account_id FROM devices WHERE id LIKE ? ORDER BY id LIMIT 2`, prefix+"%")
	if err != nil {
		return "", "", fmt.Errorf("account: find device %s: %w", prefix, err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if err := rows.Scan(&deviceID, &accountID); err != nil {
			return "", "", fmt.Errorf("account: find device %s: %w", prefix, err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return "", "", fmt.Errorf("account: find device %s: %w", prefix, err)
	}
	switch n {
	case 0:
		return "", "", problem.NotFoundf("no device %s is known to this server", prefix)
	case 1:
		return deviceID, accountID, nil
	}
	return "", "", problem.Invalidf("device ID %s is ambiguous: several devices' IDs start with it; give more of it", prefix)
}

// LockDevice locks a device's row until the write ends, so that two
// concurrent writes for the same device see each other's effects
// (PostgreSQL; on SQLite the single writer already runs each write alone).
func LockDevice(tx *store.Tx, deviceID string) error {
	l := LockingDevice(tx, deviceID)
	if err := tx.Together(l.Reading); err != nil {
		return err
	}
	return l.Err()
}

// Locking is LockDevice as a store.Reading, to send with the reads that
// follow it (store.Tx.Together): they run once the lock is held. Err, once
// the reading has run, says whether it locked the row.
type Locking struct {
	store.Reading
	deviceID string
	locked   bool
}

// LockingDevice returns LockDevice's reading for deviceID: none on
// SQLite, whose single writer needs no lock.
func LockingDevice(tx *store.Tx, deviceID string) *Locking {
	l := &Locking{deviceID: deviceID}
	if tx.ForUpdate() == "" {
		l.locked = true
		return l
	}
	l.Reading = store.Reading{Query: `SELECT 1 FROM devices WHERE id = ?` + tx.ForUpdate(), Args: []any{deviceID}, Row: func(sc store.Scanner) error {
		var one int
		l.locked = true
		return sc.Scan(&one)
	}}
	return l
}

// Err is nil once the row is locked, and says why not otherwise.
func (l *Locking) Err() error {
	if !l.locked {
		return fmt.Errorf("account: lock device %s: %w", l.deviceID, store.ErrNotFound)
	}
	return nil
}

// PublicKey returns a device's Ed25519 public key.
func PublicKey(tx *store.Tx, deviceID string) ([]byte, error) {
	var pub []byte
	err := tx.QueryRow(`SELECT public_key FROM devices WHERE id = ?`, deviceID).Scan(&pub)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("device %s not found", deviceID)
	}
	if err != nil {
		return nil, fmt.Errorf("account: public key of device %s: %w", deviceID, err)
	}
	return pub, nil
}

// Open records a new account.
func Open(tx *store.Tx, accountID string, nowMS int64) error {
	if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES (?, ?)`, accountID, nowMS); err != nil {
		return fmt.Errorf("account: open %s: %w", accountID, err)
	}
	return nil
}

// Device is a device as enrolment records it.
type Device struct {
	ID, AccountID string
	PublicKey     []byte // Ed25519
	Name          string
}

// Enrol records d as a device of its account. A device already enrolled
// is refused with store.ErrConflict.
func Enrol(tx *store.Tx, d Device, nowMS int64) error {
	if _, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES (?, ?, ?, ?, ?)`,
		d.ID, d.AccountID, d.PublicKey, d.Name, nowMS); err != nil {
		return fmt.Errorf("account: enrol device %s: %w", d.ID, err)
	}
	return nil
}

// NextSeq takes the next sequence number of deviceID's inbox; the caller
// writes that message's inbox row at once, in the same write.
//
// On PostgreSQL, replicas write concurrently: one conditional update of
// devices.next_seq, so that each write gets its own number (WithNextSeq
// takes it inside the inbox's INSERT).
//
// On SQLite one writer takes every number, and keeps each device's next
// one in its memory (store.Memo); the row is not written at all. Every
// number taken is either still in the inbox (its row) or acknowledged
// (acked_seq, moved up in the write that deletes the rows), so the next
// number is the greatest of next_seq, acked_seq + 1 and the inbox's last
// + 1 (NextSeqSQL), which a miss of the memory reads. This saves one
// UPDATE of the device's row for each message relayed, and the device's
// page in the WAL at each commit.
func NextSeq(tx *store.Tx, deviceID string) (int64, error) {
	var seq int64
	if !tx.Remembers() {
		if err := tx.QueryRow(`UPDATE devices SET next_seq = `+NextSeqSQL(tx.Engine())+` + 1 WHERE id = ? RETURNING next_seq - 1`, deviceID).Scan(&seq); err != nil {
			return 0, fmt.Errorf("account: next sequence for %s: %w", deviceID, err)
		}
		return seq, nil
	}
	key := "device-next-seq/" + deviceID
	seq, err := store.Memo(tx, key, func() (int64, error) {
		next, _, err := Cursor(tx, deviceID, false)
		return next, err
	}, func(a, b int64) bool { return a == b })
	if err != nil {
		return 0, err
	}
	tx.Remember(key, seq+1) // true once the caller's row is written
	return seq, nil
}

// NextSeqSQL is an expression, over a row of devices, of the device's next
// inbox sequence number: next_seq on PostgreSQL, which keeps it exact; on
// SQLite the greatest of next_seq (a floor: the number before this
// scheme), acked_seq + 1 and the inbox's last + 1 (NextSeq says why).
func NextSeqSQL(e store.Engine) string {
	if e == store.Postgres {
		return "next_seq"
	}
	return "MAX(next_seq, acked_seq + 1, COALESCE((SELECT MAX(seq) + 1 FROM inbox WHERE inbox.device_id = devices.id), 1))"
}

// Cursor is deviceID's inbox cursor: the next sequence number (the last
// message's + 1) and the highest acknowledged. forUpdate locks the
// device's row on PostgreSQL.
func Cursor(tx *store.Tx, deviceID string, forUpdate bool) (next, acked int64, err error) {
	lock := ""
	if forUpdate {
		lock = tx.ForUpdate()
	}
	if err := tx.QueryRow(`SELECT `+NextSeqSQL(tx.Engine())+`, acked_seq FROM devices WHERE id = ?`+lock, deviceID).Scan(&next, &acked); err != nil {
		return 0, 0, fmt.Errorf("account: inbox cursor of %s: %w", deviceID, err)
	}
	return next, acked, nil
}

// WithNextSeq queues (store.Tx.InsertRowLater) stmt, an INSERT of one row
// into deviceID's inbox (… VALUES … RETURNING …) whose row goes into dest,
// with the device's next sequence number taken in the same statement: stmt
// reads it as (SELECT seq FROM s), and its placeholders follow deviceID's.
// An unknown device leaves that NULL, which the column must refuse, so the
// statement inserts its row or fails. PostgreSQL only (SQLite has no
// UPDATE inside WITH): use NextSeq there.
func WithNextSeq(tx *store.Tx, what, deviceID, stmt string, args []any, dest ...any) error {
	if tx.Engine() != store.Postgres {
		return fmt.Errorf("%s: account: a sequence number inside a statement is PostgreSQL's; use NextSeq", what)
	}
	return tx.InsertRowLater(what, `WITH s AS (UPDATE devices SET next_seq = next_seq + 1 WHERE id = ? RETURNING next_seq - 1 AS seq) `+stmt,
		append([]any{deviceID}, args...), dest...)
}

// AckedUpTo moves deviceID's acknowledged sequence up to seq, never down,
// without reading it (acknowledgments written together, out of order).
func AckedUpTo(tx *store.Tx, deviceID string, seq int64) error {
	if _, err := tx.Exec(`UPDATE devices SET acked_seq = ? WHERE id = ? AND acked_seq < ?`, seq, deviceID, seq); err != nil {
		return fmt.Errorf("account: record ack of %s: %w", deviceID, err)
	}
	return nil
}

// Acked records seq as the highest sequence number deviceID acknowledged.
func Acked(tx *store.Tx, deviceID string, seq int64) error {
	if _, err := tx.Exec(`UPDATE devices SET acked_seq = ? WHERE id = ?`, seq, deviceID); err != nil {
		return fmt.Errorf("account: record ack of %s: %w", deviceID, err)
	}
	return nil
}

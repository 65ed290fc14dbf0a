// Package relay is the store-and-forward inbox that carries every message
// between a guest and a host through the server.
//
// A message is appended to the receiver's inbox inside the same database
// transaction as the session change that caused it (a transactional
// outbox), so a message exists if and only if its cause committed. Each
// device's inbox has its own sequence; a stream delivers from the last
// acknowledged sequence on, so delivery is at-least-once and a client that
// remembers the highest sequence it processed handles each message exactly
// once. After the commit, a wake-up goes to whatever stream waits for the
// device: in-process here, over NATS when scaled out.
package relay

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/store"
)

// Waker wakes the streams of a device after a commit.
type Waker interface {
	Wake(deviceID string)
}

// Hander is a Waker that also takes the committed message itself, to hand
// it to this process's streams so they send it without reading the inbox
// (Hub, and the bus, which wakes other replicas' streams to read it).
type Hander interface {
	Waker
	Hand(deviceID string, seq uint64, body []byte)
}

// Append writes env to deviceID's inbox within tx, assigning its sequence
// number and message ID, and wakes the device's stream after commit.
//
// The stored body carries no sequence number: the inbox row's seq column
// is the message's, and whoever reads the row sets it (Fetch, Watch.Take).
// So on PostgreSQL the number is taken and the row written by one statement
// that waits for the write's next statement or its COMMIT (store.Tx.InsertRowLater), not a
// round trip of its own. (Bodies stored with their number read the same.)
func Append(tx *store.Tx, w Waker, nowMS int64, deviceID, sessionID string, env *sharespotv1.Envelope) error {
	env.Seq = 0
	env.MessageId = NewMessageID()
	env.SessionId = sessionID
	env.CreatedUnixMs = nowMS
	body, err := proto.Marshal(env)
	if err != nil {
		return fmt.Errorf("relay: encode message: %w", err)
	}
	what := "relay: append to inbox of " + deviceID
	var seq int64 // known by the next statement, or the commit
	if tx.Engine() == store.Postgres {
		// An unknown device leaves the seq NULL, which the database
		// refuses: the write fails there, as NextSeq's would.
		err = account.WithNextSeq(tx, what, deviceID,
			`INSERT INTO inbox (device_id, seq, message_id, session_id, body, created_ms) VALUES (?, (SELECT seq FROM s), ?, ?, ?, ?) RETURNING seq`,
			[]any{deviceID, env.MessageId, sessionID, body, nowMS}, &seq)
	} else {
		if seq, err = account.NextSeq(tx, deviceID); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		err = tx.ExecLater(what, `INSERT INTO inbox (device_id, seq, message_id, session_id, body, created_ms) VALUES (?, ?, ?, ?, ?, ?)`,
			deviceID, seq, env.MessageId, sessionID, body, nowMS)
	}
	if err != nil {
		return err
	}
	if h, ok := w.(Hander); ok {
		tx.AfterCommit(func() { h.Hand(deviceID, uint64(seq), body) }) // seq is known by then
	} else if w != nil {
		tx.AfterCommit(func() { w.Wake(deviceID) })
	}
	return nil
}

// Fetch returns up to limit messages of deviceID's inbox after afterSeq.
func Fetch(tx *store.Tx, deviceID string, afterSeq uint64, limit int) ([]*sharespotv1.Envelope, error) {
	rows, err := tx.Query(`SELECT seq, body FROM inbox WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?`, deviceID, int64(afterSeq), limit)
	if err != nil {
		return nil, fmt.Errorf("relay: read inbox of %s: %w", deviceID, err)
	}
	defer rows.Close()
	var out []*sharespotv1.Envelope
	for rows.Next() {
		var seq int64
		var body []byte
		if err := rows.Scan(&seq, &body); err != nil {
			return nil, err
		}
		env := new(sharespotv1.Envelope)
		if err := proto.Unmarshal(body, env); err != nil {
			return nil, fmt.Errorf("relay: decode inbox message of %s: %w", deviceID, err)
		}
		env.Seq = uint64(seq)
		out = append(out, env)
	}
	return out, rows.Err()
}

// Ack deletes deviceID's messages up to and including seq. It returns the
// acknowledged sequence after the call; acknowledging the future is refused.
func Ack(tx *store.Tx, deviceID string, seq uint64) (uint64, error) {
	next, acked, err := account.Cursor(tx, deviceID, true)
	if err != nil {
		return 0, fmt.Errorf("relay: %w", err)
	}
	if int64(seq) >= next {
		return uint64(acked), problem.Invalidf("ack %d is beyond the last message %d", seq, next-1)
	}
	if int64(seq) <= acked {
		return uint64(acked), nil
	}
	if _, err := tx.Exec(`DELETE FROM inbox WHERE device_id = ? AND seq <= ?`, deviceID, int64(seq)); err != nil {
		return 0, fmt.Errorf("relay: delete acknowledged messages of %s: %w", deviceID, err)
	}
	if err := account.Acked(tx, deviceID, int64(seq)); err != nil {
		return 0, fmt.Errorf("relay: %w", err)
	}
	return seq, nil
}

// AckedSeq returns the highest acknowledged sequence of deviceID.
func AckedSeq(tx *store.Tx, deviceID string) (uint64, error) {
	var acked int64
	if err := tx.QueryRow(`SELECT acked_seq FROM devices WHERE id = ?`, deviceID).Scan(&acked); err != nil {
		return 0, fmt.Errorf("relay: read cursor of %s: %w", deviceID, err)
	}
	return uint64(acked), nil
}

// NewMessageID returns a random message ID.
func NewMessageID() string { return protocol.NewID("msg") }

// Hub wakes in-process streams, and hands them what was committed for
// them. The zero value is not usable; use NewHub.
type Hub struct {
	mu sync.Mutex
	// waiters are each device's watches: nearly always one (a device's
	// stream), for a moment two (its stream cut and opened again).
	waiters map[string][]*Watch
}

// NewHub returns an empty hub.
func NewHub() *Hub { return &Hub{waiters: map[string][]*Watch{}} }

var _ Hander = (*Hub)(nil)

// handBuf is how many handed messages a watch holds before it gives up
// holding them and has its stream read the inbox instead.
const handBuf = 64

// Watch is one stream's registration with the hub: C is signalled when
// something was committed for the device; Take says what.
type Watch struct {
	C  <-chan struct{}
	ch chan struct{}

	mu     sync.Mutex
	handed []handed // committed messages handed, not yet taken
	read   bool     // woken without a message (another replica's, too many): read the inbox
}

type handed struct {
	seq  uint64
	body []byte
}

// Take returns what was handed since the last Take that comes after
// cursor, in order, decoded; read reports that the inbox must be read
// instead: a wake-up came without its message (from another replica, or
// more than the watch holds), or what was handed does not follow cursor
// without a gap (a commit whose hand-off is still on its way). Neither
// means nothing new: every handed message is at or below cursor (it was
// already read).
func (w *Watch) Take(cursor uint64) (envs []*sharespotv1.Envelope, read bool) {
	w.mu.Lock()
	hs, read := w.handed, w.read
	w.handed, w.read = nil, false
	w.mu.Unlock()
	if read {
		return nil, true
	}
	slices.SortFunc(hs, func(a, b handed) int { return cmp.Compare(a.seq, b.seq) })
	next := cursor + 1
	for _, h := range hs {
		switch {
		case h.seq < next:
			continue // already sent (read, or handed twice to this watch)
		case h.seq > next:
			return nil, true // a gap
		}
		env := new(sharespotv1.Envelope)
		if err := proto.Unmarshal(h.body, env); err != nil {
			return nil, true // not ours to judge: the read reports it
		}
		env.Seq = h.seq
		envs = append(envs, env)
		next++
	}
	return envs, false
}

func (w *Watch) signal() {
	select {
	case w.ch <- struct{}{}:
	default: // already signalled
	}
}

// Wake signals every stream waiting for deviceID to read its inbox.
func (h *Hub) Wake(deviceID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.waiters[deviceID] {
		w.mu.Lock()
		w.read, w.handed = true, nil
		w.mu.Unlock()
		w.signal()
	}
}

// Hand gives the message committed as deviceID's seq (its encoding) to
// every stream waiting for the device, and wakes them.
func (h *Hub) Hand(deviceID string, seq uint64, body []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.waiters[deviceID] {
		w.mu.Lock()
		switch {
		case w.read:
		case len(w.handed) >= handBuf:
			w.read, w.handed = true, nil
		default:
			w.handed = append(w.handed, handed{seq: seq, body: body})
		}
		w.mu.Unlock()
		w.signal()
	}
}

// Watch registers a stream's watch of deviceID; call cancel when done.
// Register before reading the inbox, so nothing committed between the
// read and the wait is missed.
func (h *Hub) Watch(deviceID string) (w *Watch, cancel func()) {
	ch := make(chan struct{}, 1)
	w = &Watch{C: ch, ch: ch}
	h.mu.Lock()
	h.waiters[deviceID] = append(h.waiters[deviceID], w)
	h.mu.Unlock()
	return w, func() {
		h.mu.Lock()
		ws := slices.DeleteFunc(h.waiters[deviceID], func(x *Watch) bool { return x == w })
		if len(ws) == 0 {
			delete(h.waiters, deviceID)
		} else {
			h.waiters[deviceID] = ws
		}
		h.mu.Unlock()
	}
}

// Watching reports how many streams wait on the hub (for metrics).
func (h *Hub) Watching() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ws := range h.waiters {
		n += len(ws)
	}
	return n
}

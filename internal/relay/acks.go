package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/store"
)

// Acks takes a device's acknowledgment of messages that a stream of this
// replica sent it without a write transaction of its own: the
// acknowledged sequence is held in memory and written, with every other
// device's held then, in one write a moment later (Delay). An
// acknowledgment only lets the server delete what the device has
// processed, so holding it loses nothing: a crash before the write leaves
// the messages stored, and a device that subscribes again from an older
// cursor gets them again, as it does after any cut between its handling
// and its acknowledgment (delivery is at-least-once; a client's cursor
// makes it exactly-once). A stream's resubscription carries the device's
// own cursor, so a device that stays up is never sent them again.
//
// Only what a stream of this replica sent the device can be held (an
// acknowledgment of the future is refused, and only the write path can
// tell); anything else takes the write path (Ack), as before.
type Acks struct {
	st    *store.Store
	delay time.Duration
	log   *slog.Logger

	mu       sync.Mutex
	sent     map[string]*sentTo // by device: what its streams here sent
	pending  map[string]uint64  // by device: acknowledged, not yet written
	writing  int                // devices whose acknowledgments a write carries now
	failed   int                // the flusher's writes failed in a row (the first is logged, then the recovery)
	flushing bool               // a flusher goroutine runs
}

type sentTo struct {
	max     uint64
	streams int
}

// DefaultAckDelay is how long an acknowledgment is held before its write:
// long enough that a busy server writes many devices' in one, short enough
// that the inbox holds little that was processed.
const DefaultAckDelay = 100 * time.Millisecond

// NewAcks returns acknowledgments held for delay (0: DefaultAckDelay)
// before they are written to st.
func NewAcks(st *store.Store, delay time.Duration, log *slog.Logger) *Acks {
	if delay <= 0 {
		delay = DefaultAckDelay
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Acks{st: st, delay: delay, log: log, sent: map[string]*sentTo{}, pending: map[string]uint64{}}
}

// Streaming registers a stream to deviceID: sent records the highest
// sequence it sends (before the send: the device may acknowledge it
// before the send returns), done ends it.
func (a *Acks) Streaming(deviceID string) (sent func(seq uint64), done func()) {
	a.mu.Lock()
	s := a.sent[deviceID]
	if s == nil {
		s = &sentTo{}
		a.sent[deviceID] = s
	}
	s.streams++
	a.mu.Unlock()
	sent = func(seq uint64) {
		a.mu.Lock()
		s.max = max(s.max, seq)
		a.mu.Unlock()
	}
	done = func() {
		a.mu.Lock()
		if s.streams--; s.streams == 0 {
			delete(a.sent, deviceID)
		}
		a.mu.Unlock()
	}
	return sent, done
}

// Take holds deviceID's acknowledgment of seq when a stream of this
// replica sent it that far, and reports whether it did; the write follows
// within the delay. When it reports false, acknowledge with Ack.
func (a *Acks) Take(deviceID string, seq uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sent[deviceID]
	if s == nil || seq > s.max {
		return false
	}
	if seq > a.pending[deviceID] {
		a.pending[deviceID] = seq
	}
	if !a.flushing {
		a.flushing = true
		go a.flusher()
	}
	return true
}

// Held is how many devices' acknowledgments wait for their write or are
// being written (a device may count twice: once held again while its last
// one is written). 0 means every acknowledgment taken is in the database
// or was lost to a failed write (ErrClosed).
func (a *Acks) Held() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending) + a.writing
}

// flusher writes what is held after the delay, until nothing is; a write
// that fails (the database away) is tried again, backing off to a second.
func (a *Acks) flusher() {
	wait := a.delay
	for {
		time.Sleep(wait)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := a.Flush(ctx)
		cancel()
		switch {
		case errors.Is(err, store.ErrClosed):
			a.mu.Lock()
			clear(a.pending) // nothing more is written: the messages stay, and are delivered again
			a.flushing = false
			a.mu.Unlock()
			return
		case err != nil:
			a.mu.Lock()
			a.failed++
			first := a.failed == 1
			a.mu.Unlock()
			if first {
				a.log.Warn("relay: cannot write held acknowledgments; trying again every second until it can (the messages stay stored: nothing is lost)", "err", err)
			}
			wait = min(2*wait, time.Second)
		default:
			a.mu.Lock()
			failed := a.failed
			a.failed = 0
			a.mu.Unlock()
			if failed > 0 {
				a.log.Info("relay: held acknowledgments written again", "failed_writes", failed)
			}
			wait = a.delay
		}
		a.mu.Lock()
		if len(a.pending) == 0 {
			a.flushing = false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
	}
}

// Flush writes every held acknowledgment now, in one write: each device's
// acknowledged messages deleted and its cursor moved up (never down). On
// failure they are held again.
func (a *Acks) Flush(ctx context.Context) error {
	a.mu.Lock()
	held := a.pending
	if len(held) == 0 {
		a.mu.Unlock()
		return nil
	}
	a.pending = map[string]uint64{}
	a.writing += len(held)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.writing -= len(held)
		a.mu.Unlock()
	}()
	err := a.st.Write(ctx, func(tx *store.Tx) error {
		for device, seq := range held {
			if err := AckDelivered(tx, device, seq); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrClosed) {
		a.mu.Lock()
		for device, seq := range held {
			a.pending[device] = max(a.pending[device], seq)
		}
		a.mu.Unlock()
	}
	return err
}

// AckDelivered deletes deviceID's messages up to seq and moves its cursor
// up to seq, never down, without reading it: seq was delivered, so it is
// not beyond the last message (Ack checks that for an acknowledgment it
// cannot vouch for).
func AckDelivered(tx *store.Tx, deviceID string, seq uint64) error {
	if _, err := tx.Exec(`DELETE FROM inbox WHERE device_id = ? AND seq <= ?`, deviceID, int64(seq)); err != nil {
		return fmt.Errorf("relay: delete acknowledged messages of %s: %w", deviceID, err)
	}
	if err := account.AckedUpTo(tx, deviceID, int64(seq)); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

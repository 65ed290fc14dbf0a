package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"sync"

	"github.com/sharespot/sharespot/internal/seal"
)

// EventQueue delivers a gateway's events in order without ever blocking
// the one that emits them (a copy step, a poll): Emit queues, Run hands
// the queue to the channel C as the reader takes it.
type EventQueue struct {
	mu     sync.Mutex
	q      []Event
	signal chan struct{}
	out    chan Event
}

// NewEventQueue returns a queue whose channel buffers buf events.
func NewEventQueue(buf int) *EventQueue {
	return &EventQueue{signal: make(chan struct{}, 1), out: make(chan Event, buf)}
}

// C is the channel events are delivered on (Gateway.Events).
func (q *EventQueue) C() <-chan Event { return q.out }

// Emit queues events for delivery.
func (q *EventQueue) Emit(evs ...Event) {
	if len(evs) == 0 {
		return
	}
	q.mu.Lock()
	q.q = append(q.q, evs...)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// Run delivers queued events until ctx ends.
func (q *EventQueue) Run(ctx context.Context) {
	for {
		q.mu.Lock()
		evs := q.q
		q.q = nil
		q.mu.Unlock()
		for _, e := range evs {
			select {
			case q.out <- e:
			case <-ctx.Done():
				return
			}
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-q.signal:
		case <-ctx.Done():
			return
		}
	}
}

// Close closes C, once Run has returned; events still queued are dropped.
func (q *EventQueue) Close() { close(q.out) }

// CodeMatches reports whether code, as seal.FormatCode prints an access
// code, is the code whose SHA-256 is want, comparing hashes in constant
// time. A gateway compares against a random hash when the session is
// unknown, so that the time taken says nothing about which sessions exist.
func CodeMatches(want [32]byte, code string) bool {
	raw, err := seal.ParseCode(code)
	var got [32]byte
	if err == nil {
		got = sha256.Sum256(raw)
	}
	return hashEqual(got, want) && err == nil
}

func hashEqual(a, b [32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

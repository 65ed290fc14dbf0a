package client

import (
	"context"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// AckWindow is the Options.AckWithin of the sharespot commands and of the
// bench's devices: the messages of one step of a flow (a fee, a grant, a
// prompt and what follows them) share an Ack call, and an idle device
// acknowledges within half a second.
const AckWindow = 500 * time.Millisecond

// ackFlushTimeout bounds the last acknowledgment Receive sends on its way
// out, when its own context may already have ended.
const ackFlushTimeout = 2 * time.Second

// inboxAcks sends a device's inbox acknowledgments for Receive. An Ack is
// cumulative (every message up to its sequence), so with a window the
// messages handled within it share one call: the first handled message
// arms a timer, and when it fires one Ack covers all handled by then.
// Without a window each delivery is acknowledged at once, by the receiving
// loop itself. A message handled but not yet acknowledged stays in the
// server's inbox; Receive resumes after the last handled sequence, so a
// reconnect does not deliver it again, and a process that stops before
// the Ack gets it again from its persisted cursor on, as after a crash.
type inboxAcks struct {
	c      *Client
	window time.Duration
	ctx    context.Context // Receive's, without its cancellation

	call sync.Mutex // one Ack call at a time, in order
	sent uint64     // under call

	mu      sync.Mutex
	handled uint64
	timer   *time.Timer // armed while an acknowledgment waits
}

func newInboxAcks(ctx context.Context, c *Client, window time.Duration) *inboxAcks {
	return &inboxAcks{c: c, window: window, ctx: context.WithoutCancel(ctx)}
}

// delivered records the handled messages of one stream delivery, up to
// seq. Without a window it acknowledges them now and returns the call's
// error, which ends the stream as before; with one it arms the timer.
func (a *inboxAcks) delivered(ctx context.Context, seq uint64) error {
	if a.window <= 0 {
		return a.send(ctx, seq)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.handled = max(a.handled, seq)
	if a.timer == nil {
		a.timer = time.AfterFunc(a.window, a.fire)
	}
	return nil
}

// fire sends the acknowledgment the timer waited for. A failure (the
// server or the network down) is retried a window later; the stream's own
// reconnection reports the outage.
func (a *inboxAcks) fire() {
	a.mu.Lock()
	seq := a.handled
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(a.ctx, max(a.window, ackFlushTimeout))
	err := a.send(ctx, seq)
	cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timer == nil {
		return // stopped meanwhile
	}
	if err != nil || a.handled > seq {
		a.timer = time.AfterFunc(a.window, a.fire)
		return
	}
	a.timer = nil
}

// stop sends what is handled and not yet acknowledged, within
// ackFlushTimeout even when Receive's context has ended: a device that
// stops (a host or guest shut down) leaves nothing delivered behind.
func (a *inboxAcks) stop() {
	a.mu.Lock()
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	seq := a.handled
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(a.ctx, ackFlushTimeout)
	defer cancel()
	_ = a.send(ctx, seq) // best effort: unacknowledged messages come again from the cursor
}

// send acknowledges every message up to seq, unless a call already did.
func (a *inboxAcks) send(ctx context.Context, seq uint64) error {
	a.call.Lock()
	defer a.call.Unlock()
	if seq <= a.sent {
		return nil
	}
	if _, err := a.c.Inbox.Ack(ctx, connect.NewRequest(&sharespotv1.AckRequest{Seq: seq})); err != nil {
		return err
	}
	a.sent = seq
	return nil
}

package client

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// Handled is one inbox message as the application handled it: what the
// exactly-once check compares with the server's inbox.
type Handled struct {
	Seq     uint64
	ID      string
	Session string
	Body    string
	QuoteID string // of an AccessGranted
}

// HandledOf records env as handled.
func HandledOf(env *sharespotv1.Envelope) Handled {
	m := Handled{Seq: env.Seq, ID: env.MessageId, Session: env.SessionId, Body: fmt.Sprintf("%T", env.Body)}
	if g := env.GetAccessGranted(); g != nil {
		m.QuoteID = g.QuoteId
	}
	return m
}

// InboxOptions tune an Inbox.
type InboxOptions struct {
	// Handle, if set, handles each message before it is recorded and
	// routed (a host agent; a guest saving its access response). An error
	// leaves the message unacknowledged: it comes again.
	Handle Handler
	// After is the highest sequence handled before (a persisted cursor);
	// Processed, if set, is told each sequence handled, to persist it.
	After     uint64
	Processed func(seq uint64)
	// All routes every message to C instead of to its session's channel
	// (tests and the demo, which read one stream). C holds 1024 messages;
	// what does not fit is dropped, so a test that reads nothing never
	// stops the device.
	All bool
	// Early bounds the messages kept for sessions nobody claimed yet
	// (default 64; the oldest go first).
	Early int
}

// Inbox receives one device's inbox for the application, in order and each
// message once, through Receive: it reconnects (and fails over) by itself,
// keeps its cursor across server restarts and delivers again a message
// whose handler failed. It records what was handled (for the exactly-once
// check) and routes each message to the channel of its session (Session),
// keeping those that arrive before their session is claimed (a fee can
// come before the request's answer). Every suite, the guest and the bench
// receive through it.
type Inbox struct {
	c    *Client
	opts InboxOptions
	all  chan *sharespotv1.Envelope
	done chan struct{}

	mu       sync.Mutex
	handled  []Handled
	cursor   uint64
	failures []string
	sessions map[string]chan *sharespotv1.Envelope
	early    []*sharespotv1.Envelope
}

// Listen starts receiving c's inbox until ctx ends (see Wait).
func Listen(ctx context.Context, c *Client, opts InboxOptions) *Inbox {
	if opts.Early <= 0 {
		opts.Early = 64
	}
	in := &Inbox{c: c, opts: opts, cursor: opts.After, done: make(chan struct{}), sessions: map[string]chan *sharespotv1.Envelope{}}
	if opts.All {
		in.all = make(chan *sharespotv1.Envelope, 1024)
	}
	go in.run(ctx)
	return in
}

func (in *Inbox) run(ctx context.Context) {
	defer close(in.done)
	for ctx.Err() == nil {
		in.mu.Lock()
		after := in.cursor
		in.mu.Unlock()
		err := in.c.Receive(ctx, after, in.handle, func(seq uint64) {
			in.mu.Lock()
			in.cursor = seq
			in.mu.Unlock()
			if in.opts.Processed != nil {
				in.opts.Processed(seq)
			}
		})
		if ctx.Err() != nil {
			return
		}
		// The handler failed: the message stays unacknowledged and comes
		// again.
		in.mu.Lock()
		in.failures = append(in.failures, err.Error())
		in.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (in *Inbox) handle(ctx context.Context, env *sharespotv1.Envelope) error {
	if in.opts.Handle != nil {
		if err := in.opts.Handle(ctx, env); err != nil {
			return err
		}
	}
	in.mu.Lock()
	in.handled = append(in.handled, HandledOf(env))
	if in.all != nil {
		in.mu.Unlock()
		select {
		case in.all <- env:
		default:
		}
		return nil
	}
	ch := in.sessions[env.SessionId]
	if ch == nil {
		if len(in.early) >= in.opts.Early {
			in.early = slices.Delete(in.early, 0, 1)
		}
		in.early = append(in.early, env)
		in.mu.Unlock()
		return nil
	}
	in.mu.Unlock()
	select {
	case ch <- env:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Session claims session sid's messages: those that came before, then each
// as it comes. The claimant must read them (the stream waits for it) or
// Drop the session.
func (in *Inbox) Session(sid string) <-chan *sharespotv1.Envelope {
	in.mu.Lock()
	defer in.mu.Unlock()
	if ch := in.sessions[sid]; ch != nil {
		return ch
	}
	ch := make(chan *sharespotv1.Envelope, 64)
	keep := in.early[:0]
	for _, env := range in.early {
		if env.SessionId == sid && len(ch) < cap(ch) {
			ch <- env
		} else {
			keep = append(keep, env)
		}
	}
	in.early = keep
	in.sessions[sid] = ch
	return ch
}

// Drop gives up session sid: its later messages are kept as unclaimed (and
// soon forgotten).
func (in *Inbox) Drop(sid string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.sessions, sid)
}

// C is every message, with InboxOptions.All.
func (in *Inbox) C() <-chan *sharespotv1.Envelope { return in.all }

// Handled returns what the application handled so far.
func (in *Inbox) Handled() []Handled {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.handled)
}

// Failures returns the handler failures so far (each message delivered
// again).
func (in *Inbox) Failures() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.failures)
}

// Done is closed when the receiver has stopped.
func (in *Inbox) Done() <-chan struct{} { return in.done }

// Wait waits, up to d, for the receiver to stop after its ctx ended.
func (in *Inbox) Wait(d time.Duration) error {
	select {
	case <-in.done:
		return nil
	case <-time.After(d):
		return fmt.Errorf("client: an inbox receiver did not stop within %v", d)
	}
}

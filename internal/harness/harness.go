// Package harness runs a real Sharespot server on a loopback port, on a
// SQLite file, with real clients, for the conformance suite, the crash tests
// and the benchmarks. Nothing in it is a mock: calls cross HTTP/2 and the
// database is the same as production's.
package harness

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

// Clock is a settable clock; it starts at the real time and moves only when
// advanced.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at the current time.
func NewClock() *Clock { return &Clock{now: time.Now()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Env is a running server.
type Env struct {
	URL   string
	Dir   string
	Srv   *server.Server
	Clock *Clock

	cancel context.CancelFunc
	done   chan error
}

// Start runs a server in t's temporary directory until t ends. mod may
// change the configuration.
func Start(t testing.TB, mod func(*server.Config)) *Env {
	t.Helper()
	return StartIn(t, t.TempDir(), mod)
}

// StartIn runs a server on the data directory dir.
func StartIn(t testing.TB, dir string, mod func(*server.Config)) *Env {
	t.Helper()
	e := &Env{Dir: dir, Clock: NewClock()}
	cfg := server.Config{DataDir: dir, Now: e.Clock.Now, SweepInterval: 20 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	ctx := context.Background()
	srv, err := server.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("harness: open server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatalf("harness: listen: %v", err)
	}
	e.Srv, e.URL = srv, "http://"+ln.Addr().String()
	sctx, cancel := context.WithCancel(ctx)
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- srv.Serve(sctx, ln) }()
	t.Cleanup(e.Stop)
	return e
}

// Stop shuts the server down (idempotent).
func (e *Env) Stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.Srv.Close()
	e.cancel = nil
}

// Device returns a new signed-in device with a fresh key.
func (e *Env) Device(t testing.TB, name string) *client.Client {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(e.URL, key, client.Options{DeviceName: name})
	if err := c.SignIn(context.Background()); err != nil {
		t.Fatalf("harness: sign in %s: %v", name, err)
	}
	return c
}

// Fund adds money to a device's wallet, as the operator does.
func (e *Env) Fund(t testing.TB, c *client.Client, currency string, amount int64) {
	t.Helper()
	err := e.Srv.Store().Write(context.Background(), func(tx *store.Tx) error {
		_, err := payment.Fund(tx, time.Now().UnixMilli(), c.AccountID(), currency, amount, "", "test funding")
		return err
	})
	if err != nil {
		t.Fatalf("harness: fund: %v", err)
	}
}

// Balance returns a device's wallet balance.
func Balance(t testing.TB, c *client.Client, currency string) int64 {
	t.Helper()
	res, err := c.Payments.Balance(context.Background(), connect.NewRequest(&sharespotv1.BalanceRequest{}))
	if err != nil {
		t.Fatalf("harness: balance: %v", err)
	}
	for _, m := range res.Msg.Balances {
		if m.Currency == currency {
			return m.AmountMinor
		}
	}
	return 0
}

// Audit checks the server's money invariants: the ledger balances, no
// forbidden negative balance, no money left in the escrow of an ended
// session, and every paid quote either granted (and settled) or refunded.
func Audit(ctx context.Context, st *store.Store) error {
	return st.Read(ctx, func(tx *store.Tx) error {
		a, err := ledger.Check(tx)
		if err != nil {
			return err
		}
		if !a.OK() {
			return fmt.Errorf("ledger inconsistent: %s", a)
		}
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM ledger_accounts a JOIN sessions s ON a.id = 'escrow:' || s.id
			WHERE s.state = ? AND a.balance <> 0`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED)).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d ended sessions still hold escrow", n)
		}
		// A receipt exists for every charged quote; an ended session's paid
		// quotes are granted or refunded.
		if err := tx.QueryRow(`SELECT COUNT(*) FROM quotes q JOIN sessions s ON s.id = q.session_id
			WHERE s.state = ? AND q.state IN (?, ?)`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED),
			int32(sharespotv1.QuoteState_QUOTE_STATE_PAID), int32(sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED)).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d paid quotes of ended sessions neither granted nor refunded", n)
		}
		if err := tx.QueryRow(`SELECT COUNT(*) FROM ledger_transfers t WHERE t.id LIKE 'pay:%'
			AND NOT EXISTS (SELECT 1 FROM receipts r WHERE 'pay:' || r.quote_id = t.id)`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d payments without a receipt", n)
		}
		// Volume: no hotspot sold more than it shares (the CHECK holds it
		// non-negative; this holds the upper bound).
		if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE committed_bytes > shareable_bytes`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d hotspots oversold", n)
		}
		return nil
	})
}

// MustAudit fails t if Audit does.
func (e *Env) MustAudit(t testing.TB) {
	t.Helper()
	if err := Audit(context.Background(), e.Srv.Store()); err != nil {
		t.Fatalf("audit: %v", err)
	}
}

// Inbox collects a device's messages, received through the real stream.
type Inbox struct {
	ch   chan *sharespotv1.Envelope
	stop context.CancelFunc
	done chan error
}

// Listen starts receiving c's inbox; each message lands in the returned
// inbox. h, if not nil, also handles every message first (a host agent).
func Listen(t testing.TB, c *client.Client, h client.Handler) *Inbox {
	ctx, cancel := context.WithCancel(context.Background())
	in := &Inbox{ch: make(chan *sharespotv1.Envelope, 1024), stop: cancel, done: make(chan error, 1)}
	go func() {
		in.done <- c.Receive(ctx, 0, func(ctx context.Context, env *sharespotv1.Envelope) error {
			if h != nil {
				if err := h(ctx, env); err != nil {
					return err
				}
			}
			select {
			case in.ch <- env:
			default:
			}
			return nil
		}, nil)
	}()
	t.Cleanup(in.Stop)
	return in
}

// Stop stops receiving.
func (in *Inbox) Stop() {
	if in.stop != nil {
		in.stop()
		<-in.done
		in.stop = nil
	}
}

// Next waits up to 10 s for the next message whose body is of type B,
// skipping others.
func Next[B any](t testing.TB, in *Inbox) (*sharespotv1.Envelope, B) {
	t.Helper()
	var zero B
	timeout := time.After(10 * time.Second)
	for {
		select {
		case env := <-in.ch:
			if b, ok := env.Body.(B); ok {
				return env, b
			}
		case <-timeout:
			t.Fatalf("harness: no %T message within 10s", zero)
			return nil, zero
		}
	}
}

// Code returns the Connect code of err (or Unknown when err is not one).
func Code(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeUnknown
}

// C returns the channel messages arrive on.
func (in *Inbox) C() <-chan *sharespotv1.Envelope { return in.ch }

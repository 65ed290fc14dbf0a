package guest

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
)

// Acker is a verified session's acknowledgments: it signs what the guest
// received (Count) and sends it in-band to the host's gateway over the
// session's control stream (protocol/control.go), so that the credit window
// moves with the data and needs no server; and to the server now and then,
// when it can, so that neither party can hide one. It keeps going while the
// server is away; only the gateway's answer moves the window.
type Acker struct {
	// Session is the verified session acknowledged.
	Session *Session
	// Gateway is where the control stream goes: the address the access
	// response named (the userspace gateway's listener, the kernel
	// gateway's admission endpoint).
	Gateway string
	// Code is the access code (raw bytes), the stream's credentials.
	Code []byte
	// Count is what the guest received (and sent) since Base: the
	// forwarder's count, or the interface's.
	Count func() int64
	// Base is what was acknowledged before Count started (a restarted
	// guest goes on from the server's and the gateway's figure).
	Base int64
	// Step: a new acknowledgment once the count grew by this much (default
	// a quarter of the window, at least 256 KiB), or grew at all and Every
	// passed (default 250 ms).
	Step  int64
	Every time.Duration
	// ServerEvery: how often the latest acknowledgment also goes to the
	// server (default 5 s).
	ServerEvery time.Duration
	// OnState, if set, hears the gateway's figures as the control stream
	// tells them.
	OnState func(protocol.GatewayState)
	// Dial, if set, opens the control stream's connection (default: a
	// net.Dialer with a 10 s timeout).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	Log  *slog.Logger

	window    atomic.Int64 // the credit window, as the gateway's state shows it
	poke      chan struct{}
	pokeOnce  sync.Once
	sent      atomic.Int64 // the highest count sent to the gateway
	gwAcked   atomic.Int64 // the highest the gateway said it holds
	srvAcked  atomic.Int64 // the highest the server said it holds
	mu        sync.Mutex
	conn      net.Conn
	connected atomic.Bool
}

// SessionFor is a session of g known only by its ID: enough to sign and
// send its acknowledgments (an Acker's), for a guest that has no other
// state of it (a test, a tool).
func SessionFor(g *Guest, id string) *Session {
	return &Session{g: g, ID: id, Mode: sharespotv1.UsageMode_USAGE_MODE_VERIFIED}
}

// Received is what the guest has received in all, by its own count: Base
// plus Count. What the gateway or the server say they hold never enters
// it: a guest signs only what it counted.
func (a *Acker) Received() int64 { return a.Base + a.Count() }

// SetGateway points the next control streams at addr.
func (a *Acker) SetGateway(addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.Gateway = addr
}

// Poke tells the acknowledger the count grew (without blocking): it looks
// at once rather than at its next tick. A counter calls it as it grows
// (forward.Forwarder.SetOnGrow), so that a fast transfer is acknowledged
// as it crosses each step, not a tick later.
func (a *Acker) Poke() {
	select {
	case a.pokes() <- struct{}{}:
	default:
	}
}

func (a *Acker) pokes() chan struct{} {
	a.pokeOnce.Do(func() { a.poke = make(chan struct{}, 1) })
	return a.poke
}

// GatewayAcked is the highest acknowledgment the gateway confirmed.
func (a *Acker) GatewayAcked() int64 { return a.gwAcked.Load() }

// Connected reports whether the control stream is up.
func (a *Acker) Connected() bool { return a.connected.Load() }

// Run acknowledges until ctx ends, then sends the last count to the
// gateway (briefly) so the final bytes are acknowledged too. A failed
// control stream is opened again with backoff.
func (a *Acker) Run(ctx context.Context) {
	if a.Log == nil {
		a.Log = slog.New(slog.DiscardHandler)
	}
	if a.Every <= 0 {
		a.Every = 250 * time.Millisecond
	}
	if a.ServerEvery <= 0 {
		a.ServerEvery = 5 * time.Second
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.toServer(ctx) })
	for backoff := 100 * time.Millisecond; ctx.Err() == nil; backoff = min(2*backoff, 5*time.Second) {
		err := a.stream(ctx)
		if ctx.Err() != nil {
			break
		}
		a.Log.Debug("guest: control stream", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
	}
	wg.Wait()
	a.final()
}

// final sends the last count on a fresh control stream, waiting a moment
// for the gateway's answer.
func (a *Acker) final() {
	n := a.Received()
	if n <= a.gwAcked.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, r, err := a.dial(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := a.send(conn, n); err != nil {
		return
	}
	for a.gwAcked.Load() < n {
		f, err := protocol.ReadFrame(r)
		if err != nil {
			return
		}
		a.took(f)
	}
}

// stream runs one control stream: it reads the gateway's frames and sends
// an acknowledgment whenever the count grew by Step, or at all and Every
// passed.
func (a *Acker) stream(ctx context.Context) error {
	conn, r, err := a.dial(ctx)
	if err != nil {
		return err
	}
	a.connected.Store(true)
	defer a.connected.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	read := make(chan error, 1)
	go func() {
		for {
			f, err := protocol.ReadFrame(r)
			if err != nil {
				read <- err
				return
			}
			a.took(f)
		}
	}()
	// A new stream starts with the whole count: the gateway may have
	// restarted without the last one.
	if n := a.Received(); n > 0 {
		if err := a.send(conn, n); err != nil {
			return err
		}
	}
	// Looked at when poked (the counter grew a step's worth), and at
	// least every ackPoll (a counter that does not poke: an interface's).
	tick := time.NewTicker(min(a.Every/4, ackPoll))
	defer tick.Stop()
	last := time.Now()
	poke := a.pokes()
	for {
		select {
		case err := <-read:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-poke:
		}
		n, sent := a.Received(), a.sent.Load()
		if n > sent && (n-sent >= a.step() || time.Since(last) >= a.Every) {
			if err := a.send(conn, n); err != nil {
				return err
			}
			last = time.Now()
		}
	}
}

// ackPoll is how often the acknowledger looks at a count that does not
// poke it.
const ackPoll = 5 * time.Millisecond

// step is Step, or a quarter of the session's window as the gateway's
// state shows it (at least 256 KiB): a wide window needs few
// acknowledgments.
func (a *Acker) step() int64 {
	if a.Step > 0 {
		return a.Step
	}
	return max(256<<10, a.window.Load()/4)
}

// took handles a frame from the gateway.
func (a *Acker) took(f protocol.Frame) {
	switch f.Type {
	case protocol.FrameState:
		for {
			old := a.gwAcked.Load()
			if f.State.Acked <= old || a.gwAcked.CompareAndSwap(old, f.State.Acked) {
				break
			}
		}
		if st := f.State; st.Limit < st.Quota && st.Limit > st.Acked {
			a.window.Store(st.Limit - st.Acked) // held at the window: it is that wide
		}
		if a.OnState != nil {
			a.OnState(f.State)
		}
	case protocol.FrameRefuse:
		a.Log.Warn("guest: the gateway refused an acknowledgment", "session", a.Session.ID, "why", f.Text)
	}
}

// send writes a signed acknowledgment of n.
func (a *Acker) send(conn net.Conn, n int64) error {
	ack := a.Session.g.C.SignAck(a.Session.ID, n)
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(protocol.AppendAck(nil, n, ack.Signature)); err != nil {
		return err
	}
	for {
		old := a.sent.Load()
		if n <= old || a.sent.CompareAndSwap(old, n) {
			return nil
		}
	}
}

// dial opens the control stream: an HTTP CONNECT to the control authority
// with the session's credentials, on the gateway's own listener.
func (a *Acker) dial(ctx context.Context) (net.Conn, *bufio.Reader, error) {
	a.mu.Lock()
	gw := a.Gateway
	a.mu.Unlock()
	dial := a.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	}
	conn, err := dial(ctx, "tcp", gw)
	if err != nil {
		return nil, nil, err
	}
	cred := base64.StdEncoding.EncodeToString([]byte(a.Session.ID + ":" + seal.FormatCode(a.Code)))
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", protocol.ControlAuthority, protocol.ControlAuthority, cred)
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, nil, err
	}
	r := bufio.NewReader(conn)
	res, err := http.ReadResponse(r, &http.Request{Method: http.MethodConnect})
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if res.StatusCode != http.StatusOK {
		conn.Close()
		return nil, nil, fmt.Errorf("guest: the gateway refused the control stream: %s", res.Status)
	}
	conn.SetDeadline(time.Time{})
	return conn, r, nil
}

// toServer sends the latest count to the server every ServerEvery while it
// grew, until ctx ends. The server may be away: it is tried again later.
func (a *Acker) toServer(ctx context.Context) {
	t := time.NewTicker(a.ServerEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := a.Received()
		if n <= a.srvAcked.Load() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, a.ServerEvery)
		held, err := a.Session.g.C.Acknowledge(cctx, a.Session.ID, n)
		cancel()
		if err != nil {
			a.Log.Debug("guest: acknowledgment to the server", "err", err)
			continue
		}
		for {
			old := a.srvAcked.Load()
			if held <= old || a.srvAcked.CompareAndSwap(old, held) {
				break
			}
		}
	}
}

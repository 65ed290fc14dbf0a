package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/protocol"
)

// The channel (ChannelService.Carry, protocol 7) carries a device's unary
// calls as messages on one bidirectional stream per server, which costs
// the server about a third of what a call of its own does (an HTTP/2
// stream, headers both ways, a handler goroutine, a flush). channelTransport
// is an http.RoundTripper under the generated clients: a unary Connect
// call it can carry goes on the server's channel, and comes back as the
// HTTP response the call would have had, so nothing above it changes.
// Anything else, and any call while a server's channel cannot be opened
// (a server before protocol 7, HTTP/1.1, a proxy that does not stream
// both ways), goes by the transport under it.
type channelTransport struct {
	base    http.RoundTripper
	carried map[string]bool
	// idle closes a channel no call has used for that long.
	idle time.Duration

	mu    sync.Mutex
	chans map[string]*channel  // open or opening, by server
	off   map[string]time.Time // servers whose channel could not be opened, until when not to try again
}

// channelOpenTimeout bounds the wait for a channel's opening; a call then
// goes by itself.
const channelOpenTimeout = 5 * time.Second

// channelRetryAfter is how long calls to a server go by themselves after
// its channel could not be opened.
const channelRetryAfter = time.Minute

// channelIdle is how long an unused channel stays open (a variable for
// the tests).
var channelIdle = 30 * time.Second

// errChannelBroken is a carried call whose channel broke before its
// reply: its answer was lost, as a unary call's whose connection broke.
var errChannelBroken = errors.New("client: the channel to the server broke before the call's answer")

func newChannelTransport(base http.RoundTripper) *channelTransport {
	if base == nil {
		base = http.DefaultTransport
	}
	return &channelTransport{base: base, carried: protocol.CarriedProcedures(), idle: channelIdle,
		chans: map[string]*channel{}, off: map[string]time.Time{}}
}

// CloseIdleConnections closes every channel and the idle connections of
// the transport under it.
func (t *channelTransport) CloseIdleConnections() {
	t.mu.Lock()
	chans := t.chans
	t.chans = map[string]*channel{}
	t.mu.Unlock()
	for _, ch := range chans {
		ch.close(errChannelBroken)
	}
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (t *channelTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	server, ok := t.carries(req)
	if !ok {
		return t.base.RoundTrip(req)
	}
	body, err := readBody(req)
	if err != nil {
		return nil, err
	}
	if len(body) > channelMaxBody {
		return t.base.RoundTrip(withBody(req, body))
	}
	ch := t.channel(req, server)
	if ch == nil || ch.wait(req.Context()) != nil {
		return t.base.RoundTrip(withBody(req, body)) // nothing was sent on the channel
	}
	return ch.call(req, body)
}

// channelMaxBody is the largest body carried: a unary call's limit on the
// server, with room beside it for the call's headers in the channel's
// message.
const channelMaxBody = 64 << 10

// carries reports whether req is a unary Connect call of the Sharespot
// services with a token, and the server it is for (scheme, host and the
// path before the procedure).
func (t *channelTransport) carries(req *http.Request) (string, bool) {
	if req.Method != http.MethodPost || req.Header.Get("Authorization") == "" {
		return "", false
	}
	i := strings.Index(req.URL.Path, "/sharespot.v1.")
	if i < 0 || !t.carried[req.URL.Path[i:]] {
		return "", false
	}
	if _, ok := protocol.CarriedContentType(req.Header.Get("Content-Type")); !ok {
		return "", false
	}
	return req.URL.Scheme + "://" + req.URL.Host + req.URL.Path[:i], true
}

func readBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	defer req.Body.Close()
	return io.ReadAll(req.Body)
}

func withBody(req *http.Request, body []byte) *http.Request {
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	return r
}

// channel returns server's channel, opening it with req's token, or nil
// if calls to it go by themselves for now.
func (t *channelTransport) channel(req *http.Request, server string) *channel {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ch := t.chans[server]; ch != nil {
		return ch
	}
	if time.Now().Before(t.off[server]) {
		return nil
	}
	ch := &channel{t: t, server: server, ready: make(chan struct{}), pending: map[uint64]chan *sharespotv1.CarryResponse{}}
	t.chans[server] = ch
	go ch.open(req.Header.Get("Authorization"), req.Header.Get("User-Agent"))
	return ch
}

// drop forgets ch; if it never opened, calls to its server go by
// themselves for a while.
func (t *channelTransport) drop(ch *channel, opened bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.chans[ch.server] == ch {
		delete(t.chans, ch.server)
	}
	if !opened {
		t.off[ch.server] = time.Now().Add(channelRetryAfter)
	}
}

// channel is one open ChannelService.Carry stream.
type channel struct {
	t      *channelTransport
	server string

	ready   chan struct{} // closed once the opening came, or it failed
	openErr error
	stream  *connect.BidiStreamForClient[sharespotv1.CarryRequest, sharespotv1.CarryResponse]
	cancel  context.CancelFunc
	slots   chan struct{}

	sendMu sync.Mutex

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *sharespotv1.CarryResponse
	err     error // why the channel closed
	idle    *time.Timer
}

func (ch *channel) open(token, agent string) {
	ctx, cancel := context.WithCancel(context.Background())
	ch.cancel = cancel
	cl := sharespotv1connect.NewChannelServiceClient(&http.Client{Transport: ch.t.base}, ch.server)
	st := cl.Carry(ctx)
	st.RequestHeader().Set("Authorization", token)
	if agent != "" {
		st.RequestHeader().Set("User-Agent", agent)
	}
	opened := make(chan error, 1)
	go func() {
		if err := st.Send(nil); err != nil {
			opened <- err
			return
		}
		first, err := st.Receive()
		if err == nil && (first.GetId() != 0 || first.GetMaxInFlight() == 0) {
			err = fmt.Errorf("client: the channel's opening is malformed (id %d, max in flight %d)", first.GetId(), first.GetMaxInFlight())
		}
		if err == nil {
			ch.slots = make(chan struct{}, first.GetMaxInFlight())
		}
		opened <- err
	}()
	var err error
	select {
	case err = <-opened:
	case <-time.After(channelOpenTimeout):
		err = errors.New("client: the channel did not open in time")
	}
	if err != nil {
		cancel()
		ch.openErr = err
		ch.t.drop(ch, false)
		close(ch.ready)
		return
	}
	ch.stream = st
	ch.mu.Lock()
	ch.idle = time.AfterFunc(ch.t.idle, ch.closeIfIdle)
	ch.mu.Unlock()
	close(ch.ready)
	go ch.read()
}

// wait waits for the channel's opening; an error means calls go by
// themselves.
func (ch *channel) wait(ctx context.Context) error {
	select {
	case <-ch.ready:
		return ch.openErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// read hands each reply to its call until the stream ends.
func (ch *channel) read() {
	defer ch.stream.CloseResponse()
	for {
		r, err := ch.stream.Receive()
		if err != nil {
			ch.close(errChannelBroken)
			return
		}
		ch.mu.Lock()
		w := ch.pending[r.GetId()]
		delete(ch.pending, r.GetId())
		ch.mu.Unlock()
		if w != nil {
			w <- r
		}
	}
}

// close ends the channel: each call in progress gets err.
func (ch *channel) close(err error) { ch.end(err, false) }

// closeIfIdle closes the channel if no call is in progress; otherwise it
// looks again later.
func (ch *channel) closeIfIdle() { ch.end(errChannelBroken, true) }

// end closes the channel, or with idle only if no call is in progress
// (checked under the lock that a call takes to be registered, so none is
// registered on a channel closed as idle).
func (ch *channel) end(err error, idle bool) {
	<-ch.ready
	if ch.openErr != nil {
		return
	}
	ch.mu.Lock()
	if ch.err != nil {
		ch.mu.Unlock()
		return
	}
	if idle && len(ch.pending) > 0 {
		ch.idle.Reset(ch.t.idle)
		ch.mu.Unlock()
		return
	}
	ch.err = err
	pending := ch.pending
	ch.pending = nil
	ch.idle.Stop()
	ch.mu.Unlock()
	ch.t.drop(ch, true)
	// The context's end alone does not end the stream while the HTTP/2
	// transport waits to read the next call from the request's body:
	// closing the request does (the server then answers what it holds
	// and ends the stream).
	ch.cancel()
	ch.sendMu.Lock()
	_ = ch.stream.CloseRequest()
	ch.sendMu.Unlock()
	for _, w := range pending {
		close(w)
	}
}

// call sends req on the channel and waits for its reply.
func (ch *channel) call(req *http.Request, body []byte) (*http.Response, error) {
	ctx := req.Context()
	select {
	case ch.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-ch.slots }()
	w := make(chan *sharespotv1.CarryResponse, 1)
	ch.mu.Lock()
	if ch.err != nil {
		ch.mu.Unlock()
		// Closed before anything was sent: the call goes by itself.
		return ch.t.base.RoundTrip(withBody(req, body))
	}
	ch.next++
	id := ch.next
	ch.pending[id] = w
	ch.idle.Reset(ch.t.idle)
	ch.mu.Unlock()
	c := &sharespotv1.CarryRequest{Id: id, Procedure: procedureOf(req.URL.Path), Body: body}
	for name, vs := range req.Header {
		for _, v := range vs {
			c.Headers = append(c.Headers, &sharespotv1.ChannelHeader{Name: name, Value: v})
		}
	}
	ch.sendMu.Lock()
	err := ch.stream.Send(c)
	ch.sendMu.Unlock()
	if err != nil {
		// The stream ended before the call was sent whole, and a call
		// the server did not read whole is not run: it goes by itself.
		ch.close(errChannelBroken)
		return ch.t.base.RoundTrip(withBody(req, body))
	}
	select {
	case r, ok := <-w:
		if !ok {
			return nil, errChannelBroken
		}
		return replyResponse(req, r), nil
	case <-ctx.Done():
		ch.mu.Lock()
		if ch.pending != nil {
			delete(ch.pending, id)
		}
		ch.mu.Unlock()
		ch.sendMu.Lock()
		_ = ch.stream.Send(&sharespotv1.CarryRequest{Id: id, Cancel: true})
		ch.sendMu.Unlock()
		return nil, ctx.Err()
	}
}

// procedureOf is the procedure at the end of path.
func procedureOf(path string) string {
	return path[strings.Index(path, "/sharespot.v1."):]
}

// replyResponse is the HTTP response a reply stands for.
func replyResponse(req *http.Request, r *sharespotv1.CarryResponse) *http.Response {
	h := http.Header{}
	for _, kv := range r.GetHeaders() {
		h.Add(kv.GetName(), kv.GetValue())
	}
	status := int(r.GetStatus())
	return &http.Response{Status: strconv.Itoa(status) + " " + http.StatusText(status), StatusCode: status,
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Body: io.NopCloser(bytes.NewReader(r.GetBody())),
		ContentLength: int64(len(r.GetBody())), Request: req}
}

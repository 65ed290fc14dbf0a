package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/protocol"
)

// ChannelInFlight is how many carried calls one channel runs at once. The
// channel reads no further call while that many are in progress, so a
// device that sends more waits on the stream's flow control: nothing is
// refused and nothing is queued without bound.
const ChannelInFlight = 32

// channelMaxHeaders caps the headers of one carried call.
const channelMaxHeaders = 64

// channelMaxMessage caps one message of a channel: a carried call's body
// is capped at MaxRequestBytes as a unary call's, and its headers ride
// beside it.
const channelMaxMessage = MaxRequestBytes + 16<<10

// channelService serves ChannelService.Carry: a device's unary calls as
// messages on one bidirectional stream (protocol 7). Each carried call is
// made into the HTTP request the unary call would have been (procedure,
// headers, body, the stream's peer address) and served by the same
// handler as a unary call, behind the per-address limits, so it is
// authenticated, limited, deadlined, counted and answered exactly as one;
// its status, headers and body go back as the reply. What it saves is the
// transport's share: no HTTP/2 stream, no headers to encode and decode in
// each direction, no handler goroutine of the HTTP/2 server and no flush
// of its own per call.
type channelService struct {
	// calls serves a carried call: the address guard and the services'
	// mux (set once Handler has built them).
	calls   http.Handler
	carried map[string]bool
	errs    *connect.ErrorWriter
}

func (c *channelService) Carry(ctx context.Context, st *connect.BidiStream[sharespotv1.CarryRequest, sharespotv1.CarryResponse]) error {
	var sendMu sync.Mutex
	send := func(r *sharespotv1.CarryResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return st.Send(r)
	}
	if err := send(&sharespotv1.CarryResponse{MaxInFlight: ChannelInFlight}); err != nil {
		return err
	}
	peer := st.Peer().Addr
	// Calls are received apart, so that the stream's end (the server
	// shutting down, the device gone) is seen while a receive waits.
	calls, received := make(chan *sharespotv1.CarryRequest), make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			call, err := st.Receive()
			if err != nil {
				received <- err
				return
			}
			select {
			case calls <- call:
			case <-stop:
				return
			}
		}
	}()
	// A call, once read, runs to its end as a unary call whose handler
	// started does (the server's shutdown lets those finish): its context
	// is the stream's without the stream's end, and ends with the call's
	// own deadline or the device's cancel.
	base := context.WithoutCancel(ctx)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		running = map[uint64]context.CancelFunc{}
		slots   = make(chan struct{}, ChannelInFlight)
	)
	// Whatever ends the stream, the calls in progress are answered first:
	// a call the device sent after them is not read, and the device takes
	// it as lost when the stream ends.
	defer wg.Wait()
	for {
		var call *sharespotv1.CarryRequest
		select {
		case <-ctx.Done():
			return nil
		case err := <-received:
			if errors.Is(err, io.EOF) {
				return nil // the device closed its side
			}
			return err
		case call = <-calls:
		}
		id := call.GetId()
		if id == 0 {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("channel: a call's id must not be 0"))
		}
		mu.Lock()
		cancel, dup := running[id]
		mu.Unlock()
		if call.GetCancel() {
			if dup {
				cancel()
			}
			continue
		}
		if dup {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("channel: call %d is already in progress on this stream", id))
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		cctx, cancel := context.WithCancel(base)
		mu.Lock()
		running[id] = cancel
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := c.serve(cctx, peer, call)
			mu.Lock()
			delete(running, id)
			mu.Unlock()
			cancel()
			<-slots
			// A reply that cannot be sent is a stream that broke: the
			// device takes each call in progress as lost.
			_ = send(reply)
		}()
	}
}

// serve runs one carried call as the unary call it carries.
func (c *channelService) serve(ctx context.Context, peer string, call *sharespotv1.CarryRequest) *sharespotv1.CarryResponse {
	w := &replyWriter{h: http.Header{}}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, call.GetProcedure(), bytes.NewReader(call.GetBody()))
	if err != nil {
		// No request to answer in its protocol: a Connect error, which is
		// what every carried call speaks.
		r, _ = http.NewRequestWithContext(ctx, http.MethodPost, "/", http.NoBody)
		r.Header.Set("Content-Type", "application/proto")
		c.errs.Write(w, r, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("channel: procedure %q: %v", call.GetProcedure(), err)))
		return w.reply(call.GetId())
	}
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	r.RemoteAddr = peer
	r.ContentLength = int64(len(call.GetBody()))
	hs := call.GetHeaders()
	for _, h := range hs[:min(len(hs), channelMaxHeaders)] {
		r.Header.Add(h.GetName(), h.GetValue())
	}
	if why := c.refusal(call, r); why != nil {
		c.errs.Write(w, r, why)
		return w.reply(call.GetId())
	}
	c.calls.ServeHTTP(w, r)
	return w.reply(call.GetId())
}

// refusal says why a call is not carried, or nil.
func (c *channelService) refusal(call *sharespotv1.CarryRequest, r *http.Request) error {
	if len(call.GetHeaders()) > channelMaxHeaders {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("channel: %d headers in one call; at most %d", len(call.GetHeaders()), channelMaxHeaders))
	}
	if !c.carried[call.GetProcedure()] {
		return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("channel: %q is not a unary procedure of the Sharespot services; call it directly", call.GetProcedure()))
	}
	if mt, ok := protocol.CarriedContentType(r.Header.Get("Content-Type")); !ok {
		r.Header.Set("Content-Type", "application/proto") // answer in Connect's protocol
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("channel: content type %q is not carried; send application/proto or application/json (Connect's unary protocol)", mt))
	}
	return nil
}

// replyWriter keeps what a handler answers, for the reply.
type replyWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *replyWriter) Header() http.Header { return w.h }

func (w *replyWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *replyWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

func (w *replyWriter) reply(id uint64) *sharespotv1.CarryResponse {
	w.WriteHeader(http.StatusOK)
	out := &sharespotv1.CarryResponse{Id: id, Status: uint32(w.status), Body: w.body.Bytes()}
	for name, vs := range w.h {
		for _, v := range vs {
			out.Headers = append(out.Headers, &sharespotv1.ChannelHeader{Name: name, Value: v})
		}
	}
	return out
}

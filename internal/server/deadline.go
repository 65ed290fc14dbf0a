package server

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/api"
)

// bodyDeadline gives every request d to deliver its body, counted from
// when its headers were read: a client that sends headers and then a byte
// at a time is answered (or its connection closed) at the deadline, over
// HTTP/1.1 and HTTP/2 alike.
//
// The deadline is lifted when the body ends. That matters to the inbox
// stream (a server stream: its request body is one small message, then
// the stream stays open for as long as the device listens): over
// HTTP/1.1 a read deadline left on the connection would fire in net/http's
// background read and cancel the stream.
func bodyDeadline(next http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A channel's body is its calls, one after another, for as long as
		// the device holds it open; the stream counts against its
		// address's streams, as an inbox stream does.
		if r.Body != nil && r.Body != http.NoBody && r.URL.Path != sharespotv1connect.ChannelServiceCarryProcedure {
			rc := http.NewResponseController(w)
			if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
				r = api.OwnBody(r)
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the read deadline once the body has ended.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

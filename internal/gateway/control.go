package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sharespot/sharespot/internal/protocol"
)

// Control is one session's side of the gateway that its guest's control
// stream acts on (protocol/control.go).
type Control struct {
	// Acknowledge records a signed acknowledgment, durably
	// (Gateway.Acknowledge for the session).
	Acknowledge func(ctx context.Context, received int64, sig []byte) error
	// State reads the session's figures; an error (revoked, unknown) ends
	// the stream.
	State func() (protocol.GatewayState, error)
}

// StateEvery is how often the gateway tells a control stream the session's
// figures when they changed (and at least this often when they did not:
// the guest knows the host is there).
const StateEvery = time.Second

// ackRate bounds the acknowledgments one control stream has checked: each
// is a signature check. Past it, the stream is read no faster, and of the
// acknowledgments that arrived meanwhile only the highest is checked
// (counts are cumulative: the latest says everything the others said), so
// a flood costs the gateway no more than ackRate checks a second and the
// guest nothing it acknowledged.
const (
	ackRate  = 200 // per second
	ackBurst = 50
)

// ServeControl runs a guest's control stream on conn (after the CONNECT or
// SOCKS handshake answered it) until ctx ends, the guest closes it, or the
// session goes (State fails): it records each acknowledgment the guest
// sends and answers it with the session's state once it is taken, or
// with a refusal; it also sends the state every StateEvery. r holds what
// the handshake read ahead. Nothing on the stream is metered.
func ServeControl(ctx context.Context, conn net.Conn, r *bufio.Reader, c Control) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var mu sync.Mutex // one frame at a time on the wire
	write := func(b []byte) error {
		mu.Lock()
		defer mu.Unlock()
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err := conn.Write(b)
		return err
	}
	sendState := func() (protocol.GatewayState, error) {
		st, err := c.State()
		if err != nil {
			return st, err
		}
		return st, write(protocol.AppendState(nil, st))
	}
	last, err := sendState()
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- readAcks(ctx, r, c, write, sendState) }()
	tick := time.NewTicker(StateEvery)
	defer tick.Stop()
	quiet := 0
	for {
		select {
		case err := <-done:
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		st, err := c.State()
		if err != nil {
			return err
		}
		if quiet++; st == last && quiet < 5 {
			continue
		}
		quiet, last = 0, st
		if err := write(protocol.AppendState(nil, st)); err != nil {
			return err
		}
	}
}

// readAcks reads the guest's frames: acknowledgments, at most ackRate
// checked a second. Anything else ends the stream.
func readAcks(ctx context.Context, r *bufio.Reader, c Control, write func([]byte) error, sendState func() (protocol.GatewayState, error)) error {
	lim := rate.NewLimiter(ackRate, ackBurst)
	for {
		f, err := protocol.ReadFrame(r)
		if err != nil {
			return err
		}
		if f.Type != protocol.FrameAck {
			return write(protocol.AppendRefuse(nil, "only acknowledgments are taken here"))
		}
		if !lim.Allow() {
			// Over the rate: wait for the next check, then take the
			// highest of what arrived meanwhile.
			if err := lim.Wait(ctx); err != nil {
				return err
			}
			for r.Buffered() >= protocol.AckFrameSize {
				g, err := protocol.ReadFrame(r)
				if err != nil {
					return err
				}
				if g.Type != protocol.FrameAck {
					return write(protocol.AppendRefuse(nil, "only acknowledgments are taken here"))
				}
				if g.Received >= f.Received {
					f = g
				}
			}
		}
		if err := c.Acknowledge(ctx, f.Received, f.Signature); err != nil {
			if err := write(protocol.AppendRefuse(nil, err.Error())); err != nil {
				return err
			}
			if errors.Is(err, ErrRevoked) || errors.Is(err, ErrUnknownSession) {
				return io.EOF
			}
			continue
		}
		if _, err := sendState(); err != nil {
			return err
		}
	}
}

// ServeControlHTTP serves a control stream asked for by an HTTP CONNECT to
// protocol.ControlAuthority with the session's credentials as
// Proxy-Authorization (Basic session:code), on an endpoint a gateway
// serves over net/http (the kernel gateway's admission endpoint, the
// WireGuard gateway's address in the tunnel). auth returns the session the
// credentials open and its Control (false: refused, with 407). It answers
// 200 and runs ServeControl on the hijacked connection until the stream
// ends.
func ServeControlHTTP(w http.ResponseWriter, r *http.Request, auth func(user, pass string) (id string, c Control, ok bool)) error {
	var (
		id string
		c  Control
	)
	user, pass, ok := ProxyBasic(r.Header.Get("Proxy-Authorization"))
	if ok {
		id, c, ok = auth(user, pass)
	}
	if !ok {
		w.Header().Set("Proxy-Authenticate", `Basic realm="sharespot"`)
		http.Error(w, "wrong session or access code", http.StatusProxyAuthRequired)
		return nil
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot take the connection over", http.StatusInternalServerError)
		return errors.New("gateway: control stream: the connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Time{}) // the server's read deadline was for the request
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return err
	}
	if err := ServeControl(r.Context(), conn, rw.Reader, c); err != nil {
		return fmt.Errorf("session %s: %w", id, err)
	}
	return nil
}

// ProxyBasic decodes a Proxy-Authorization header, "Basic base64(user:pass)".
func ProxyBasic(h string) (user, pass string, ok bool) {
	scheme, cred, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}

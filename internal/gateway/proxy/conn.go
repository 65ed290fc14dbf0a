package proxy

import (
	"bufio"
	"container/list"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
)

var (
	errDestination = errors.New("proxy: destination not allowed")
	errIdle        = errors.New("proxy: connection idle")
	errGatewayFull = errors.New("proxy: gateway at its connection limit")
)

// pconn is one guest connection.
type pconn struct {
	p      *Proxy
	client net.Conn
	ctx    context.Context // ends when the connection closes
	cancel context.CancelFunc
	addr   netip.Addr   // the guest's address
	s      *session     // set once authenticated
	last   atomic.Int64 // time of the last byte, as time.Since(p.epoch)

	// Under p.mu: the place in p.pending while not yet authenticated,
	// then whether counted in p.relayed.
	pending *list.Element
	relayed bool

	mu     sync.Mutex
	origin net.Conn
	closed bool
}

// close cuts the connection both ways; safe to call more than once and
// from any goroutine.
func (c *pconn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	origin := c.origin
	c.mu.Unlock()
	c.cancel()
	c.client.Close()
	if origin != nil {
		origin.Close()
	}
}

// setOrigin attaches the dialled destination; false if the connection was
// closed meanwhile (origin is then closed too).
func (c *pconn) setOrigin(origin net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		origin.Close()
		return false
	}
	c.origin = origin
	return true
}

func (c *pconn) touch() { c.last.Store(int64(time.Since(c.p.epoch))) }

// idleDeadline is when the connection counts as idle.
func (c *pconn) idleDeadline() time.Time {
	return c.p.epoch.Add(time.Duration(c.last.Load()) + c.p.cfg.IdleTimeout)
}

// setIdleReadDeadline arms src's read deadline at the idle deadline, or
// fails if it has passed.
func (c *pconn) setIdleReadDeadline(src net.Conn) error {
	dl := c.idleDeadline()
	if !time.Now().Before(dl) {
		return errIdle
	}
	return src.SetReadDeadline(dl)
}

// handshake is one proxy protocol's side of the conversation.
type handshake interface {
	// read reads the request, authenticating with auth, and returns the
	// destination host:port. On failure it has already refused.
	read(r *bufio.Reader, w io.Writer, auth func(user, pass string) bool) (string, error)
	// refuse answers a request that cannot be served.
	refuse(w io.Writer, err error)
	// accept tells the guest the tunnel is open.
	accept(w io.Writer, bound net.Addr) error
}

func (p *Proxy) serve(c *pconn) {
	defer p.forget(c)
	defer c.close()
	c.touch()
	conn := c.client
	start := time.Now()
	conn.SetDeadline(start.Add(p.cfg.AuthTimeout))
	lr := &io.LimitedReader{R: conn, N: maxHandshake}
	br := bufio.NewReaderSize(lr, 4096)
	first, err := br.Peek(1)
	if err != nil {
		return
	}
	var h handshake = socksHandshake{}
	if first[0] != socksVersion {
		h = &httpHandshake{lr: lr}
	}
	var s *session
	auth := func(user, pass string) bool {
		if s = p.authenticate(user, pass); s != nil {
			conn.SetDeadline(start.Add(p.cfg.HandshakeTimeout))
		}
		return s != nil
	}
	target, err := h.read(br, conn, auth)
	if err != nil {
		p.log.Debug("handshake refused", "remote", conn.RemoteAddr(), "err", err)
		lingerClose(conn)
		return
	}
	if err := p.promote(c); err != nil {
		h.refuse(conn, err)
		lingerClose(conn)
		return
	}
	if target == protocol.ControlAuthority {
		// The guest's control stream: its acknowledgments, in-band.
		if err := h.accept(conn, conn.LocalAddr()); err != nil {
			return
		}
		conn.SetDeadline(time.Time{})
		c.touch()
		if err := gateway.ServeControl(c.ctx, conn, br, p.controlOf(s)); err != nil {
			p.log.Debug("control stream ended", "session", s.id, "err", err)
		}
		return
	}
	if err := s.register(c); err != nil {
		h.refuse(conn, err)
		lingerClose(conn)
		return
	}
	defer s.unregister(c)
	c.s = s
	origin, err := p.dialer.DialContext(c.ctx, "tcp", target)
	if err != nil {
		p.log.Debug("dial failed", "session", s.id, "err", err)
		h.refuse(conn, err)
		lingerClose(conn)
		return
	}
	if !c.setOrigin(origin) {
		return
	}
	if err := h.accept(conn, origin.LocalAddr()); err != nil {
		return
	}
	conn.SetDeadline(time.Time{})
	pending, _ := br.Peek(br.Buffered())
	c.touch()
	c.relay(origin, pending)
}

// lingerClose ends a refused connection so that the refusal arrives: it
// sends an end of stream and reads what the guest still sends for a
// moment, because closing with unread input would reset the connection
// and could destroy the refusal in flight.
func lingerClose(conn net.Conn) {
	if closeWrite(conn) != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, conn, maxHandshake)
}

// relay copies both ways until both sides are done or either fails.
func (c *pconn) relay(origin net.Conn, pending []byte) {
	var wg sync.WaitGroup
	wg.Go(func() {
		err := c.forward(origin, pending)
		if err == nil {
			err = c.pump(origin, c.client)
		}
		if err != nil {
			c.close()
		}
	})
	if err := c.pump(c.client, origin); err != nil {
		c.close()
	}
	wg.Wait()
}

// forward writes b to dst as the budget allows, waiting for budget other
// connections hold. It fails once the session runs out.
func (c *pconn) forward(dst net.Conn, b []byte) error {
	for len(b) > 0 {
		n, err := c.s.reserve(c.ctx, min(int64(len(b)), c.s.chunk))
		if err != nil {
			return err
		}
		dst.SetWriteDeadline(time.Now().Add(c.p.cfg.IdleTimeout))
		w, err := dst.Write(b[:n])
		c.account(n, int64(w))
		b = b[w:]
		if err != nil {
			return err
		}
	}
	return nil
}

// account settles a copy step: n bytes reserved, w written.
func (c *pconn) account(n, w int64) {
	c.s.commit(n, w)
	if w > 0 {
		c.touch()
		if c.s.lim != nil {
			c.s.lim.WaitN(c.ctx, int(w))
		}
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// bufferedPump copies src to dst through a buffer: read first, then
// reserve budget for what was read. No budget is held while src is idle.
func (c *pconn) bufferedPump(dst, src net.Conn) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		if err := c.setIdleReadDeadline(src); err != nil {
			return err
		}
		k, rerr := src.Read(buf)
		if k > 0 {
			if err := c.forward(dst, buf[:k]); err != nil {
				return err
			}
		}
		switch {
		case rerr == nil:
		case rerr == io.EOF:
			return closeWrite(dst)
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			// setIdleReadDeadline decides whether the connection is idle.
		default:
			return rerr
		}
	}
}

// closeWrite passes an end of stream on.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

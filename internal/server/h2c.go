package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// h2Preface is what an HTTP/2 client with prior knowledge sends first
// (RFC 9113, section 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// cleartext serves plain-TCP connections without net/http's h2c path.
//
// net/http serves cleartext HTTP/2 ("h2c with prior knowledge") by first
// setting a connection up for HTTP/1 — an 4 KiB bufio.Reader and a 4 KiB
// bufio.Writer it keeps for the connection's life — and then spotting the
// preface. Every device holds an idle inbox stream on a connection of its
// own, so those 8 KiB per connection were a third of the server's memory per
// idle device (docs/benchmarks.md). cleartext reads the first bytes itself:
// a connection that opens with the HTTP/2 preface goes straight to
// golang.org/x/net/http2's Server.ServeConn, which allocates no HTTP/1
// buffers; any other is handed, with the bytes already read, to the
// http.Server for HTTP/1.
//
// TLS connections do not come here: net/http hands a TLS connection that
// negotiated h2 to HTTP/2 before allocating HTTP/1 buffers.
type cleartext struct {
	inner   net.Listener
	h1      chan net.Conn // connections for the http.Server, with what was read
	h2      *http2.Server
	opts    *http2.ServeConnOpts
	timeout time.Duration // to read the first bytes

	// shadow carries the http2.Server's graceful-shutdown hook:
	// http2.ConfigureServer registers it on an http.Server, and
	// shadow.Shutdown runs it (a GOAWAY on every connection ServeConn
	// serves). shadow itself never serves.
	shadow *http.Server

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // served by h2
	closed bool
	wg     sync.WaitGroup // sniffing and serving goroutines
	done   chan struct{}
	err    error // Accept's error, once inner fails
}

// newCleartext wraps ln. hs is the HTTP/1 server, whose settings (idle
// timeout, error log, handler) HTTP/2 also takes; base is the context every
// HTTP/2 request's context derives from.
func newCleartext(ln net.Listener, hs *http.Server, base context.Context) *cleartext {
	c := &cleartext{
		inner:   ln,
		h1:      make(chan net.Conn),
		h2:      &http2.Server{IdleTimeout: hs.IdleTimeout},
		timeout: hs.ReadHeaderTimeout,
		shadow:  &http.Server{},
		conns:   map[net.Conn]struct{}{},
		done:    make(chan struct{}),
	}
	c.opts = &http2.ServeConnOpts{Context: base, BaseConfig: hs, Handler: hs.Handler}
	if err := http2.ConfigureServer(c.shadow, c.h2); err != nil {
		panic(err) // only a TLS cipher list can fail it, and shadow has none
	}
	// hs.Shutdown closes c (no new connections), then runs this.
	hs.RegisterOnShutdown(func() { _ = c.shadow.Shutdown(context.Background()) })
	go c.acceptLoop()
	return c
}

func (c *cleartext) acceptLoop() {
	defer close(c.done)
	for {
		conn, err := c.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			continue
		}
		c.wg.Add(1)
		c.mu.Unlock()
		go c.route(conn)
	}
}

// route reads as much of the preface as the connection sends, and no more
// than differs from it, then serves the connection as HTTP/2 or passes it
// to the http.Server.
func (c *cleartext) route(conn net.Conn) {
	defer c.wg.Done()
	var buf [len(h2Preface)]byte
	n := 0
	_ = conn.SetReadDeadline(time.Now().Add(c.timeout))
	for n < len(buf) {
		m, err := conn.Read(buf[n:])
		n += m
		if !bytes.HasPrefix([]byte(h2Preface), buf[:n]) {
			break // HTTP/1 (or garbage, which the http.Server answers)
		}
		if err != nil {
			conn.Close()
			return
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	pc := &replayConn{Conn: conn, pre: buf[:n]}
	if n == len(buf) && string(buf[:]) == h2Preface {
		c.serveH2(pc)
		return
	}
	select {
	case c.h1 <- pc:
	case <-c.done:
		conn.Close()
	}
}

func (c *cleartext) serveH2(conn *replayConn) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return
	}
	c.conns[conn] = struct{}{}
	c.mu.Unlock()
	c.h2.ServeConn(conn, c.opts)
	conn.Close()
	c.mu.Lock()
	delete(c.conns, conn)
	c.mu.Unlock()
}

// Accept gives the http.Server its HTTP/1 connections.
func (c *cleartext) Accept() (net.Conn, error) {
	select {
	case conn := <-c.h1:
		return conn, nil
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil {
			return nil, c.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting; served connections go on until shutdown. Only the
// first call closes the listener: Serve closes it before the http.Server's
// Shutdown closes it again.
func (c *cleartext) Close() error {
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	c.mu.Unlock()
	if !first {
		return nil
	}
	return c.inner.Close()
}

func (c *cleartext) Addr() net.Addr { return c.inner.Addr() }

// wait waits, after the http.Server's Shutdown (which sent every HTTP/2
// connection a GOAWAY), until they have ended or ctx ends, then closes what
// is left.
func (c *cleartext) wait(ctx context.Context) {
	ended := make(chan struct{})
	go func() { c.wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-ctx.Done():
		c.mu.Lock()
		for conn := range c.conns {
			conn.Close()
		}
		c.mu.Unlock()
		<-ended
	}
}

// replayConn returns the bytes route read before reading on.
type replayConn struct {
	net.Conn
	pre []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		r.pre = r.pre[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

// serveTLSH2 serves HTTP/2 over TLS with golang.org/x/net/http2's Server,
// as cleartext HTTP/2 is served, instead of net/http's copy of it, and
// hands each request to hs.Handler itself.
//
// net/http calls an HTTP/2-over-TLS stream's handler through two wrappers
// of its own (initALPNRequest and serverHandler), ~460 bytes deeper on the
// stack of every stream's goroutine. An inbox stream's goroutine lives as
// long as the stream, so that depth is what pushed an idle stream's stack
// past 4 KiB over TLS and not over h2c (docs/benchmarks.md). The HTTP/2
// server does what the wrappers do: it sets the request's TLS state, body
// and remote address. The connection's base context is kept.
func serveTLSH2(hs *http.Server) error {
	if err := http2.ConfigureServer(hs, &http2.Server{IdleTimeout: hs.IdleTimeout}); err != nil {
		return err
	}
	serve := hs.TLSNextProto[http2.NextProtoTLS]
	hs.TLSNextProto[http2.NextProtoTLS] = func(srv *http.Server, c *tls.Conn, h http.Handler) {
		serve(srv, c, direct{Handler: srv.Handler, conn: h})
	}
	return nil
}

// direct is the handler serveTLSH2 gives HTTP/2, with the base context of
// net/http's connection handler (which x/net/http2 asks for by this
// method).
type direct struct {
	http.Handler
	conn http.Handler
}

func (d direct) BaseContext() context.Context {
	if bc, ok := d.conn.(interface{ BaseContext() context.Context }); ok {
		return bc.BaseContext()
	}
	return context.Background()
}

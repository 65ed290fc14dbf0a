package netns

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Content is the body the origin's GET /r/N answers: N pseudorandom bytes
// from a fixed seed (each a prefix of the longer ones), so that a client
// can check by ContentSHA256 that what arrived is what was served, in
// order, none lost or repeated, which a count of zeros cannot show.
func Content(n int64) io.Reader { return io.LimitReader(rand.NewChaCha8(contentSeed), n) }

var contentSeed = sha256.Sum256([]byte("sharespot test origin content"))

// ContentSHA256 is the SHA-256 of Content(n).
func ContentSHA256(n int64) [sha256.Size]byte {
	h := sha256.New()
	io.Copy(h, Content(n))
	return [sha256.Size]byte(h.Sum(nil))
}

// Origin stands for the internet: an HTTP server whose GET /n/N answers N
// zero bytes, GET /r/N answers Content(N), and POST /sink swallows the
// body, plus, with Resolver, a DNS-port sink on UDP and TCP. It counts
// every byte it receives and sends (at the socket, headers included): the
// leak tests measure there.
type Origin struct {
	// Addr is the HTTP listener's host:port.
	Addr string

	recv, sent atomic.Int64
	dnsRecv    atomic.Int64
	srv        *http.Server
	wg         sync.WaitGroup
}

// Received is the bytes the origin read, on every socket.
func (o *Origin) Received() int64 { return o.recv.Load() + o.dnsRecv.Load() }

// Sent is the bytes the origin wrote on its HTTP connections.
func (o *Origin) Sent() int64 { return o.sent.Load() }

// DNSReceived is the bytes the DNS-port sink read (UDP and TCP 53).
func (o *Origin) DNSReceived() int64 { return o.dnsRecv.Load() }

type countConn struct {
	net.Conn
	o *Origin
}

func (c countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.o.recv.Add(int64(n))
	return n, err
}

func (c countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.o.sent.Add(int64(n))
	return n, err
}

type countListener struct {
	net.Listener
	o *Origin
}

func (l countListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countConn{Conn: c, o: l.o}, nil
}

// StartOrigin serves the origin on ln until t ends. With dns set it also
// listens on UDP and TCP port 53 of dns (host only, e.g. "198.18.0.2") in
// ns (nil: the caller's namespace).
func StartOrigin(t testing.TB, ln net.Listener, ns *NS, dns ...string) *Origin {
	t.Helper()
	o := &Origin{Addr: ln.Addr().String()}
	mux := http.NewServeMux()
	// size answers the request's header for a body of {n} bytes, or an
	// error; ok says whether to send the body.
	size := func(w http.ResponseWriter, r *http.Request) (n int64, ok bool) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return 0, false
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		return n, true
	}
	mux.HandleFunc("GET /n/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, ok := size(w, r)
		if !ok {
			return
		}
		// A web page on another origin (the browser suite's guest page)
		// may read it.
		w.Header().Set("Access-Control-Allow-Origin", "*")
		buf := make([]byte, 64<<10)
		for n > 0 {
			k, err := w.Write(buf[:min(n, int64(len(buf)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	})
	mux.HandleFunc("GET /r/{n}", func(w http.ResponseWriter, r *http.Request) {
		if n, ok := size(w, r); ok {
			io.Copy(w, Content(n))
		}
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d\n", n)
	})
	o.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	o.wg.Go(func() { o.srv.Serve(countListener{Listener: ln, o: o}) })
	t.Cleanup(func() {
		o.srv.Close()
		o.wg.Wait()
	})
	for _, host := range dns {
		o.startDNS(t, ns, host)
	}
	return o
}

// startDNS listens on host:53, UDP and TCP, counting what arrives and
// answering each UDP datagram with itself (a tunnel needs a way back).
func (o *Origin) startDNS(t testing.TB, ns *NS, host string) {
	t.Helper()
	addr := net.JoinHostPort(host, "53")
	listen := func() (net.PacketConn, net.Listener, error) {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			pc.Close()
			return nil, nil, err
		}
		return pc, ln, nil
	}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	if ns != nil {
		err = ns.Do(func() (err error) { pc, ln, err = listen(); return err })
	} else {
		pc, ln, err = listen()
	}
	if err != nil {
		t.Fatalf("netns: DNS sink on %s: %v", addr, err)
	}
	o.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			o.dnsRecv.Add(int64(n))
			pc.WriteTo(buf[:n], from)
		}
	})
	o.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				o.dnsRecv.Add(n)
			})
		}
	})
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
	})
}

// Fetch GETs n bytes from the origin at url base ("http://host:port")
// with hc, and returns how many body bytes arrived before the transfer
// ended, failed, or ctx ended.
func Fetch(ctx context.Context, hc *http.Client, base string, n int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/n/"+strconv.FormatInt(n, 10), nil)
	if err != nil {
		return 0, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("origin: %s", res.Status)
	}
	got, err := io.Copy(io.Discard, res.Body)
	if err == nil && got != n {
		err = io.ErrUnexpectedEOF
	}
	return got, err
}

// Reader counts what a running Fetch has received so far.
type Reader struct {
	n    atomic.Int64
	done chan struct{}
	err  error
}

// N is the body bytes received so far.
func (r *Reader) N() int64 { return r.n.Load() }

// Wait waits for the fetch to end and returns its error.
func (r *Reader) Wait() error { <-r.done; return r.err }

// Done is closed when the fetch ended.
func (r *Reader) Done() <-chan struct{} { return r.done }

// StartFetch starts a GET of n bytes in the background; cancel ctx to
// stop it.
func StartFetch(ctx context.Context, hc *http.Client, base string, n int64) *Reader {
	r := &Reader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/n/"+strconv.FormatInt(n, 10), nil)
		if err != nil {
			r.err = err
			return
		}
		res, err := hc.Do(req)
		if err != nil {
			r.err = err
			return
		}
		defer res.Body.Close()
		buf := make([]byte, 32<<10)
		for {
			k, err := res.Body.Read(buf)
			r.n.Add(int64(k))
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				return
			}
		}
	}()
	return r
}

// Package netdelay is a TCP proxy on loopback that holds every chunk of
// bytes a fixed time before passing it on, in each direction: a link with
// a round trip of twice that, as to a database on another machine. The
// benchmarks use it to show what round trips cost where the database is not
// beside the server (docs/benchmarks.md); nothing in the product uses it.
package netdelay

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections to a target with a one-way delay.
type Proxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// Listen starts a proxy on a loopback port to target (host:port).
func Listen(target string, oneWay time.Duration) (*Proxy, error) {
	if oneWay < 0 {
		return nil, errors.New("netdelay: negative delay")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, delay: oneWay, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, closes every connection and waits for them.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			d, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			if !p.track(d) {
				return
			}
			defer d.Close()
			done := make(chan struct{}, 2)
			go func() { p.pipe(d, c); done <- struct{}{} }()
			go func() { p.pipe(c, d); done <- struct{}{} }()
			<-done // one way ended (its far side closed or failed)
			<-done
		}()
	}
}

type chunk struct {
	at time.Time
	b  []byte
}

// pipe copies src to dst, each chunk delivered delay after it was read,
// in order.
func (p *Proxy) pipe(dst, src net.Conn) {
	ch := make(chan chunk, 4096)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{time.Now().Add(p.delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		if d := time.Until(c.at); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			src.Close() // ends the reader, and the other way
			dst.Close()
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite() // the other way goes on until its side ends
	}
	for range ch { // let the reader end
	}
}

// Package forward is the guest's local forwarder. `sharespot connect`
// listens on loopback for the guest's own programs — SOCKS5 without
// credentials, HTTP CONNECT, and plain-HTTP proxy requests (GET
// http://host/path, what http_proxy users send) — and forwards each
// connection to the host's userspace gateway with the session's
// credentials. On the way it
// counts the bytes it relays in both directions, which is what the gateway
// meters (payload bytes, both ways), so the guest can sign what it really
// got (guest.Acker) instead of trusting the host's count.
package forward

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/proxy"
)

// Forwarder relays loopback connections to a gateway.
type Forwarder struct {
	dial           func(ctx context.Context, network, addr string) (net.Conn, error)
	log            *slog.Logger
	ln             net.Listener
	bytes          atomic.Int64
	onGrow         atomic.Pointer[func()]
	mu             sync.Mutex
	conns          map[net.Conn]struct{}
	handshakeLimit time.Duration
}

// Listen opens the forwarder's loopback listener at addr ("127.0.0.1:0"
// for any port) for the session's credentials at gateway (host:port).
func Listen(addr, gateway, session, code string, log *slog.Logger) (*Forwarder, error) {
	d, err := proxy.SOCKS5("tcp", gateway, &proxy.Auth{User: session, Password: code}, &net.Dialer{Timeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	return ListenDial(addr, d.(proxy.ContextDialer).DialContext, log)
}

// ListenDial is Listen for a forwarder whose connections are dialled by
// dial (through a tunnel, rather than a gateway's SOCKS5).
func ListenDial(addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error), log *slog.Logger) (*Forwarder, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("forward: listen address %q must be a loopback address and port, such as 127.0.0.1:1081", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	return &Forwarder{dial: dial, log: log, ln: ln, conns: map[net.Conn]struct{}{}, handshakeLimit: 10 * time.Second}, nil
}

// Addr is where the forwarder listens.
func (f *Forwarder) Addr() string { return f.ln.Addr().String() }

// notifyShift: OnGrow is called each time the count crosses a multiple
// of 64 KiB.
const notifyShift = 16

// SetOnGrow sets a function called (from the relaying goroutines, so it
// must not block) each time the count crosses a multiple of 64 KiB: the
// acknowledger's cue.
func (f *Forwarder) SetOnGrow(fn func()) { f.onGrow.Store(&fn) }

// Bytes is how many bytes the forwarder relayed, both directions.
func (f *Forwarder) Bytes() int64 { return f.bytes.Load() }

// Run serves until ctx ends, then closes every connection.
func (f *Forwarder) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { f.ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer f.closeAll()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("forward: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.serve(ctx, c)
		}()
	}
}

func (f *Forwarder) track(c net.Conn, on bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !on {
		delete(f.conns, c)
		return true
	}
	if f.conns == nil {
		return false // closing
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// serve reads the local handshake, dials the destination through the
// gateway, answers, and relays.
func (f *Forwarder) serve(ctx context.Context, c net.Conn) {
	if !f.track(c, true) {
		c.Close()
		return
	}
	defer f.track(c, false)
	defer c.Close()
	c.SetDeadline(time.Now().Add(f.handshakeLimit))
	r := bufio.NewReader(c)
	first, err := r.Peek(1)
	if err != nil {
		return
	}
	var dest string
	var head []byte // what goes to the destination first (a plain-HTTP request's rewritten head)
	var answer func(ok bool) error
	if first[0] == 0x05 {
		dest, err = readSOCKS5(r, c)
		answer = func(ok bool) error {
			rep := byte(0x00)
			if !ok {
				rep = 0x01
			}
			_, err := c.Write([]byte{0x05, rep, 0, 0x01, 0, 0, 0, 0, 0, 0})
			return err
		}
	} else {
		var plain bool
		dest, head, plain, err = readHTTP(r)
		answer = func(ok bool) error {
			switch {
			case !ok:
				return httpError(c, "502 Bad Gateway", "the hotspot's gateway refused the connection to "+dest)
			case plain:
				return nil // the destination's response is the answer
			}
			_, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			return err
		}
		if errors.Is(err, errNotProxy) {
			httpError(c, "400 Bad Request", err.Error())
		}
	}
	if err != nil {
		f.log.Debug("forward: local handshake", "err", err)
		return
	}
	up, err := f.dial(ctx, "tcp", dest)
	if err != nil {
		f.log.Info("forward: the gateway refused a connection", "to", dest, "err", err)
		answer(false)
		return
	}
	defer up.Close()
	if err := answer(true); err != nil {
		return
	}
	if len(head) > 0 {
		f.count(len(head))
		if _, err := up.Write(head); err != nil {
			return
		}
	}
	c.SetDeadline(time.Time{})
	if !f.track(up, true) {
		return
	}
	defer f.track(up, false)
	done := make(chan struct{}, 2)
	relay := func(dst io.Writer, from io.Reader) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := from.Read(buf)
			if n > 0 {
				f.count(n)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				return
			}
		}
	}
	go relay(up, r) // guest → gateway (r holds what the handshake read ahead)
	go relay(c, up) // gateway → guest
	<-done
	<-done
}

// count adds n relayed bytes, calling OnGrow's function when the count
// crosses a multiple of 64 KiB.
func (f *Forwarder) count(n int) {
	if now := f.bytes.Add(int64(n)); now>>notifyShift != (now-int64(n))>>notifyShift {
		if grew := f.onGrow.Load(); grew != nil {
			(*grew)()
		}
	}
}

// readSOCKS5 reads a SOCKS5 greeting offering "no authentication" and a
// CONNECT request, answers the greeting, and returns host:port.
func readSOCKS5(r *bufio.Reader, w io.Writer) (string, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return "", err
	}
	ok := false
	for _, m := range methods {
		ok = ok || m == 0x00
	}
	if !ok {
		w.Write([]byte{0x05, 0xFF})
		return "", errors.New("forward: the client offers no 'no authentication' method")
	}
	if _, err := w.Write([]byte{0x05, 0x00}); err != nil {
		return "", err
	}
	var req [4]byte
	if _, err := io.ReadFull(r, req[:]); err != nil {
		return "", err
	}
	if req[0] != 0x05 || req[1] != 0x01 {
		w.Write([]byte{0x05, 0x07, 0, 0x01, 0, 0, 0, 0, 0, 0})
		return "", fmt.Errorf("forward: SOCKS5 command %d not supported", req[1])
	}
	var host string
	switch req[3] {
	case 0x01:
		var a [4]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return "", err
		}
		host = netip.AddrFrom4(a).String()
	case 0x04:
		var a [16]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return "", err
		}
		host = netip.AddrFrom16(a).String()
	case 0x03:
		n, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		host = string(b)
	default:
		w.Write([]byte{0x05, 0x08, 0, 0x01, 0, 0, 0, 0, 0, 0})
		return "", fmt.Errorf("forward: SOCKS5 address type %d not supported", req[3])
	}
	var pb [2]byte
	if _, err := io.ReadFull(r, pb[:]); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(int(pb[0])<<8|int(pb[1]))), nil
}

// errNotProxy is a request that is neither CONNECT nor a proxy request
// (absolute http:// URI): someone opened the forwarder as a web server.
var errNotProxy = errors.New("forward: this is a proxy (SOCKS5, HTTP CONNECT, or plain HTTP with an absolute http:// URI): set ALL_PROXY, HTTPS_PROXY or http_proxy to it rather than opening it")

// readHTTP reads an HTTP proxy request: CONNECT host:port, or a
// plain-HTTP request with an absolute URI (GET http://host/path, what
// http_proxy users send). For the latter it returns the request's head
// rewritten for the destination (origin-form request line, no proxy or
// hop-by-hop headers, "Connection: close": one request per connection, so
// a client's next request, perhaps to another host, comes on a new one),
// and plain; the body, if any, follows unchanged from r.
func readHTTP(r *bufio.Reader) (dest string, head []byte, plain bool, err error) {
	req, err := http.ReadRequest(r)
	if err != nil {
		return "", nil, false, err
	}
	if req.Method == http.MethodConnect {
		if _, _, err := net.SplitHostPort(req.Host); err != nil {
			return "", nil, false, fmt.Errorf("forward: CONNECT %q: %w", req.Host, err)
		}
		return req.Host, nil, false, nil
	}
	u := req.URL
	if !u.IsAbs() || u.Host == "" {
		return "", nil, false, errNotProxy
	}
	if u.Scheme != "http" {
		return "", nil, false, fmt.Errorf("%w; %s:// goes through CONNECT (HTTPS_PROXY)", errNotProxy, u.Scheme)
	}
	dest = u.Host
	if u.Port() == "" {
		dest = net.JoinHostPort(u.Hostname(), "80")
	}
	if _, _, err := net.SplitHostPort(dest); err != nil {
		return "", nil, false, fmt.Errorf("forward: %s %q: %w", req.Method, u, err)
	}
	h := req.Header.Clone()
	for _, k := range h.Values("Connection") { // headers the client meant for this hop
		for _, name := range strings.Split(k, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, k := range []string{"Connection", "Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
		h.Del(k)
	}
	h.Set("Connection", "close")
	if len(req.TransferEncoding) > 0 { // ReadRequest took it out of the header
		h.Set("Transfer-Encoding", strings.Join(req.TransferEncoding, ", "))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s %s\r\nHost: %s\r\n", req.Method, u.RequestURI(), req.Proto, u.Host)
	h.Write(&b)
	b.WriteString("\r\n")
	return dest, b.Bytes(), true, nil
}

// httpError answers an HTTP client with status and a one-line reason.
func httpError(w io.Writer, status, reason string) error {
	body := reason + "\n"
	_, err := fmt.Fprintf(w, "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", status, len(body), body)
	return err
}

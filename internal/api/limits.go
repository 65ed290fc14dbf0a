package api

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/metrics"
)

// bodySlack is what a request body may hold besides its message: the
// 5-byte envelope of the gRPC and streaming protocols, with room to spare.
const bodySlack = 1 << 10

// AddressKey is the client address the per-address limits count by: the
// IPv4 address, or the /64 network an IPv6 address is in (one subscriber's
// network, in which it may use any address it likes). remote is host:port
// or a bare address; anything else is its own key.
func AddressKey(remote string) string {
	host := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// addressGuard applies the per-address limits to a call before anything
// of its body is read: the token bucket, then the cap on calls in progress
// (inbox streams counted apart: they stay open). A refusal is
// resource_exhausted (HTTP 429 in the Connect protocol) with Retry-After,
// in the protocol the call came in.
type addressGuard struct {
	rate    *limiterSet
	calls   *inFlight
	streams *inFlight
	// chans are the channels (ChannelService.Carry) apart from the inbox
	// streams, so a device's channel never takes its inbox stream's slot.
	chans   *inFlight
	errs    *connect.ErrorWriter
	metrics *metrics.Server
}

func newAddressGuard(l Limits, m *metrics.Server) *addressGuard {
	return &addressGuard{rate: newLimiterSet(l.PerIP, l.PerIPBurst), calls: newInFlight(l.PerIPInFlight),
		streams: newInFlight(l.PerIPStreams), chans: newInFlight(l.PerIPStreams), errs: connect.NewErrorWriter(), metrics: m}
}

func (a *addressGuard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := AddressKey(r.RemoteAddr)
		if !a.rate.allow(key) {
			a.metrics.Refused(metrics.LimitAddressRate)
			a.refuse(w, r, "too many requests from your address; slow down")
			return
		}
		slots, why, limit := a.calls, "too many calls in progress from your address; wait for one to finish", metrics.LimitAddressCalls
		switch r.URL.Path {
		case sharespotv1connect.InboxServiceSubscribeProcedure:
			slots, why, limit = a.streams, "too many inbox streams open from your address; close one first", metrics.LimitAddressStreams
		case sharespotv1connect.ChannelServiceCarryProcedure:
			slots, why, limit = a.chans, "too many channels open from your address; close one first", metrics.LimitAddressChannels
		}
		if !slots.acquire(key) {
			a.metrics.Refused(limit)
			a.refuse(w, r, why)
			return
		}
		defer slots.release(key)
		if r.URL.Path != sharespotv1connect.ChannelServiceCarryProcedure {
			// A channel's body is a stream of calls for as long as it
			// stays open: each is capped on its own (channelMaxMessage),
			// and each carried call comes through here again.
			r = OwnBody(r)
			r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes+bodySlack)
		}
		next.ServeHTTP(w, r)
	})
}

// OwnBody returns a request whose Body a handler may replace: over
// HTTP/1.x a shallow copy, because net/http must still find its own body
// in the original (to see whether it was read to its end before it reads
// the next request on the connection); over HTTP/2 the request itself,
// whose server keeps the stream's body apart and never looks at
// Request.Body again (a copy is ~250 bytes held for a stream's life).
func OwnBody(r *http.Request) *http.Request {
	if r.ProtoMajor == 2 {
		return r
	}
	return r.WithContext(r.Context())
}

// refuse answers a call that is over a limit; the Retry-After header tells
// a client to try again rather than take the refusal as final (see
// rateLimited).
//
// Over HTTP/1.x a refused call with a body also closes its connection at
// once: net/http would otherwise read the unread body (up to 256 KiB, for
// as long as the client takes) before it sent the refusal, and again
// before it closed.
func (a *addressGuard) refuse(w http.ResponseWriter, r *http.Request, msg string) {
	w.Header().Set("Retry-After", "1")
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
		http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	a.errs.Write(w, r, connect.NewError(connect.CodeResourceExhausted, errors.New(msg)))
}

// limiterSet keeps one token bucket per key.
type limiterSet struct {
	r     rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*limiterEntry
	last  time.Time
}

type limiterEntry struct {
	l    *rate.Limiter
	seen time.Time
}

func newLimiterSet(r rate.Limit, burst int) *limiterSet {
	return &limiterSet{r: r, burst: burst, m: map[string]*limiterEntry{}}
}

func (s *limiterSet) allow(key string) bool {
	if s.r <= 0 {
		return true
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.last) > time.Minute {
		for k, e := range s.m {
			if now.Sub(e.seen) > 5*time.Minute {
				delete(s.m, k)
			}
		}
		s.last = now
	}
	e := s.m[key]
	if e == nil {
		e = &limiterEntry{l: rate.NewLimiter(s.r, s.burst)}
		s.m[key] = e
	}
	e.seen = now
	return e.l.AllowN(now, 1)
}

// inFlight counts what each key has in progress, up to max each (0: no
// cap); a key is forgotten when its count returns to zero.
type inFlight struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func newInFlight(max int) *inFlight { return &inFlight{max: max, n: map[string]int{}} }

// acquire counts one more for key, or reports false at the cap.
func (f *inFlight) acquire(key string) bool {
	if f.max <= 0 {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[key] >= f.max {
		return false
	}
	f.n[key]++
	return true
}

// release gives back what acquire counted.
func (f *inFlight) release(key string) {
	if f.max <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[key]--; f.n[key] <= 0 {
		delete(f.n, key)
	}
}

// LimitListener caps the connections ln hands out: Limits.PerIPConns per
// address and Limits.Conns in all. A connection over either cap is closed
// as soon as it is accepted, before anything is read from it; refusals
// are logged at most every 10 s and counted in m (which may be nil). With
// both caps off it returns ln.
func LimitListener(ln net.Listener, l Limits, log *slog.Logger, m *metrics.Server) net.Listener {
	if l.PerIPConns <= 0 && l.Conns <= 0 {
		return ln
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &limitListener{Listener: ln, log: log, metrics: m, perIP: l.PerIPConns, max: l.Conns, n: map[string]int{}}
}

type limitListener struct {
	net.Listener
	log     *slog.Logger
	metrics *metrics.Server
	perIP   int
	max     int

	mu      sync.Mutex
	n       map[string]int // open connections per address
	open    int
	refused int64 // since the last warning
	warned  time.Time
}

// Accept returns the next connection within the caps, closing those over
// them.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := AddressKey(c.RemoteAddr().String())
		if why := l.take(key); why != "" {
			c.Close()
			l.metrics.Refused(metrics.LimitConns)
			l.logRefusal(key, why)
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.give(key) }}, nil
	}
}

// take counts a connection from key, or says which cap it is over.
func (l *limitListener) take(key string) (over string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.max > 0 && l.open >= l.max:
		return fmt.Sprintf("%d connections in all", l.max)
	case l.perIP > 0 && l.n[key] >= l.perIP:
		return fmt.Sprintf("%d connections from one address", l.perIP)
	}
	l.open++
	if l.perIP > 0 {
		l.n[key]++
	}
	return ""
}

func (l *limitListener) give(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perIP > 0 {
		if l.n[key]--; l.n[key] <= 0 {
			delete(l.n, key)
		}
	}
}

func (l *limitListener) logRefusal(key, cap string) {
	l.mu.Lock()
	l.refused++
	now := time.Now()
	if now.Sub(l.warned) < 10*time.Second {
		l.mu.Unlock()
		return
	}
	n := l.refused
	l.refused, l.warned = 0, now
	l.mu.Unlock()
	l.log.Warn("connections refused: over the cap", "cap", cap, "refused", n, "address", key)
}

// limitedConn gives its place back when closed (once).
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite passes a half-close on, as net/http uses it on a *net.TCPConn.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// errInflated stops a request's decompression at the size cap.
var errInflated = errors.New("compressed message inflates past the size limit; not inflated further")

// boundedGzip is gzip for requests that inflates at most max+1 bytes of a
// message. connect-go reads max+1 bytes to see that a message is too
// large and then, to report its size, inflates the rest: a 64 KiB body of
// zeros is 60 MB of work. This decompressor fails instead, so the call is
// refused (resource_exhausted, naming the limit) after max+1 bytes.
func boundedGzip(max int) connect.HandlerOption {
	return connect.WithCompression("gzip",
		func() connect.Decompressor { return &gzipReader{limit: int64(max) + 1} },
		func() connect.Compressor { return gzip.NewWriter(io.Discard) })
}

type gzipReader struct {
	gz    gzip.Reader
	limit int64
	n     int64
}

func (r *gzipReader) Read(p []byte) (int, error) {
	if r.n >= r.limit {
		return 0, errInflated
	}
	if int64(len(p)) > r.limit-r.n {
		p = p[:r.limit-r.n]
	}
	n, err := r.gz.Read(p)
	r.n += int64(n)
	return n, err
}

func (r *gzipReader) Reset(src io.Reader) error {
	r.n = 0
	return r.gz.Reset(src)
}

func (r *gzipReader) Close() error { return r.gz.Close() }

// GuardAddresses applies the per-address rate and calls-in-progress limits
// to another handler (the dashboard, the guest pages, Stripe's webhook),
// with buckets of its own; its refusals count in m (nil: nowhere).
func GuardAddresses(l Limits, m *metrics.Server, h http.Handler) http.Handler {
	return newAddressGuard(l, m).wrap(h)
}

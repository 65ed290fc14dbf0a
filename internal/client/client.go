// Package client is the Sharespot client library for both roles: it signs a
// device in, calls the API, and receives the device's inbox exactly once.
// The tests use it, and so does the CLI.
package client

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/buildinfo"
	"github.com/sharespot/sharespot/internal/deviceid"
	"github.com/sharespot/sharespot/internal/protocol"
)

// Options tune a client.
type Options struct {
	// HTTPClient overrides the transport (default: HTTP/2, cleartext for
	// http:// URLs).
	HTTPClient *http.Client
	// DeviceName is sent at sign-in.
	DeviceName string
	// JSON makes calls with the Connect JSON codec instead of binary.
	JSON bool
	// ServerURLs are further replicas of the same service, used in order
	// after the base URL when the server in use fails (see failover).
	ServerURLs []string
	// StreamStatus, if set, hears of the inbox stream (Receive): err when
	// a stream fails or cannot be opened, nil when one is open again after
	// a failure; server is the URL in use then.
	StreamStatus func(server string, err error)
	// AckWithin, if positive, lets Receive acknowledge the inbox messages
	// handled within this window with one call, sent when it ends (and
	// when Receive returns), instead of one call per delivery. The
	// messages wait that long more in the server's inbox; nothing is
	// delivered twice to a Receive that goes on (see inboxAcks).
	AckWithin time.Duration
	// Direct sends every unary call as a call of its own. By default
	// they ride on one bidirectional stream per server (ChannelService,
	// protocol 7) whenever it can be opened (channelTransport).
	Direct bool
}

// Client talks to one server as one device.
type Client struct {
	key    ed25519.PrivateKey
	name   string
	base   string
	hc     *http.Client
	fo     *failover // nil with one server
	status func(server string, err error)
	// ackWithin is Options.AckWithin.
	ackWithin time.Duration

	mu        sync.Mutex
	token     string
	expires   time.Time
	deviceID  string
	accountID string

	Auth      sharespotv1connect.AuthServiceClient
	Hotspots  sharespotv1connect.HotspotServiceClient
	Discovery sharespotv1connect.DiscoveryServiceClient
	Sessions  sharespotv1connect.SessionServiceClient
	Payments  sharespotv1connect.PaymentServiceClient
	Inbox     sharespotv1connect.InboxServiceClient
}

// NewHTTPClient returns an HTTP client speaking HTTP/2, in cleartext to
// http:// servers (prior knowledge) and over TLS to https:// ones.
func NewHTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// New returns a client for the server at baseURL acting as the device
// whose key is key.
func New(baseURL string, key ed25519.PrivateKey, opts Options) *Client {
	hc := opts.HTTPClient
	if hc == nil {
		hc = NewHTTPClient()
	}
	if !opts.Direct {
		withChannel := *hc
		withChannel.Transport = newChannelTransport(hc.Transport)
		hc = &withChannel
	}
	base := strings.TrimRight(baseURL, "/")
	c := &Client{key: key, name: opts.DeviceName, base: base, status: opts.StreamStatus, ackWithin: opts.AckWithin,
		deviceID: deviceid.FromPublicKey(key.Public().(ed25519.PublicKey)).String()}
	if len(opts.ServerURLs) > 0 {
		hc = withFailover(hc, append([]string{base}, opts.ServerURLs...))
		c.fo = hc.Transport.(*failover)
	}
	c.hc, c.base = hc, base
	co := []connect.ClientOption{connect.WithInterceptors(userAgent{})}
	if opts.JSON {
		co = append(co, connect.WithProtoJSON())
	}
	authed := append(co, connect.WithInterceptors(&bearer{c}))
	c.Auth = sharespotv1connect.NewAuthServiceClient(hc, base, authed...)
	c.Hotspots = sharespotv1connect.NewHotspotServiceClient(hc, base, authed...)
	c.Discovery = sharespotv1connect.NewDiscoveryServiceClient(hc, base, authed...)
	c.Sessions = sharespotv1connect.NewSessionServiceClient(hc, base, authed...)
	c.Payments = sharespotv1connect.NewPaymentServiceClient(hc, base, authed...)
	c.Inbox = sharespotv1connect.NewInboxServiceClient(hc, base, authed...)
	return c
}

// Server is the URL of the server in use: the base URL, or with several
// the one failover uses now.
func (c *Client) Server() string {
	if c.fo == nil {
		return c.base
	}
	return c.fo.servers[c.fo.cur.Load()].String()
}

// DeviceID is the device's ID, derived from its key (the server derives
// the same at sign-in).
func (c *Client) DeviceID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deviceID
}

// AccountID is the signed-in device's account.
func (c *Client) AccountID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accountID
}

// SignIn signs the device in (enrolling it on first contact).
func (c *Client) SignIn(ctx context.Context) error {
	pub := c.key.Public().(ed25519.PublicKey)
	ch, err := c.Auth.Challenge(ctx, connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: pub}))
	if err != nil {
		return fmt.Errorf("client: sign in: %w", err)
	}
	sig := ed25519.Sign(c.key, protocol.SignInMessage(ch.Msg.Nonce))
	res, err := c.Auth.SignIn(ctx, connect.NewRequest(&sharespotv1.SignInRequest{PublicKey: pub, Nonce: ch.Msg.Nonce, Signature: sig, DeviceName: c.name}))
	if err != nil {
		return fmt.Errorf("client: sign in: %w", err)
	}
	c.mu.Lock()
	c.token, c.expires = res.Msg.Token, time.UnixMilli(res.Msg.ExpiresUnixMs)
	c.deviceID, c.accountID = res.Msg.DeviceId, res.Msg.AccountId
	c.mu.Unlock()
	return nil
}

// AddDeviceProof is what the holder of a new device key runs to agree to
// join the account accountID: it asks ac for a challenge for key's public
// key and signs it for that account. The signed-in device of the account
// then passes nonce and sig in its AddDeviceRequest (AuthService.AddDevice).
func AddDeviceProof(ctx context.Context, ac sharespotv1connect.AuthServiceClient, key ed25519.PrivateKey, accountID string) (nonce, sig []byte, err error) {
	ch, err := ac.Challenge(ctx, connect.NewRequest(&sharespotv1.ChallengeRequest{PublicKey: key.Public().(ed25519.PublicKey)}))
	if err != nil {
		return nil, nil, fmt.Errorf("client: add device proof: %w", err)
	}
	return ch.Msg.Nonce, ed25519.Sign(key, protocol.AddDeviceMessage(accountID, ch.Msg.Nonce)), nil
}

// Token returns a valid bearer token, signing in if needed.
func (c *Client) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	tok, exp := c.token, c.expires
	c.mu.Unlock()
	if tok != "" && time.Until(exp) > time.Minute {
		return tok, nil
	}
	if err := c.SignIn(ctx); err != nil {
		return "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token, nil
}

// bearer adds the token to every call.
// userAgent names the client and its build on every call (User-Agent:
// sharespot/VERSION (REVISION)), so a server's logs and a load balancer's
// tell which builds talk to it.
type userAgent struct{}

func (userAgent) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("User-Agent", buildinfo.UserAgent())
		return next(ctx, req)
	}
}

func (userAgent) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("User-Agent", buildinfo.UserAgent())
		return conn
	}
}

func (userAgent) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

type bearer struct{ c *Client }

func (b *bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		switch req.Spec().Procedure {
		case sharespotv1connect.AuthServiceChallengeProcedure, sharespotv1connect.AuthServiceSignInProcedure:
			return next(ctx, req) // signing in needs no token
		}
		tok, err := b.c.Token(ctx)
		if err != nil {
			return nil, err
		}
		req.Header().Set("Authorization", "Bearer "+tok)
		return next(ctx, req)
	}
}

func (b *bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if tok, err := b.c.Token(ctx); err == nil {
			conn.RequestHeader().Set("Authorization", "Bearer "+tok)
		}
		return conn
	}
}

func (b *bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Handler processes one inbox message. Returning an error stops Receive
// without acknowledging the message, so it is delivered again.
type Handler func(ctx context.Context, env *sharespotv1.Envelope) error

// Receive streams the device's inbox to h, in order, each message once:
// messages at or below after (the highest sequence the caller has already
// processed and persisted) are skipped, each handled message is then
// acknowledged (at once, or with the others of Options.AckWithin's window,
// and before Receive returns), and the stream reconnects with backoff when the server or
// network fails. It returns when ctx ends or h fails. done, if not nil,
// is told each processed sequence, for the caller to persist.
func (c *Client) Receive(ctx context.Context, after uint64, h Handler, done func(seq uint64)) error {
	backoff := 100 * time.Millisecond
	down := false
	acks := newInboxAcks(ctx, c, c.ackWithin)
	defer acks.stop()
	for {
		on := c.Server() // where this stream goes (failover may move on after)
		err := c.receiveOnce(ctx, &after, h, done, &down, acks)
		var hErr handlerError
		if errors.As(err, &hErr) {
			return hErr.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.status != nil {
			if err == nil {
				err = errors.New("the server ended the stream")
			}
			c.status(on, err)
		}
		if err == nil || !down {
			// The stream was up (or ended cleanly): a cut after a
			// healthy stream starts the backoff over, rather than
			// going on from an earlier outage's.
			backoff = 100 * time.Millisecond
		}
		down = true
		wait := backoff
		if ra := retryAfter(err); ra > 0 {
			wait = min(wait, ra) // the server is up and says when to come back
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// retryAfter is the Retry-After (in seconds) of a server's error, or 0.
func retryAfter(err error) time.Duration {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return 0
	}
	n, perr := strconv.Atoi(ce.Meta().Get("Retry-After"))
	if perr != nil || n <= 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

type handlerError struct{ err error }

func (e handlerError) Error() string { return e.err.Error() }

func (c *Client) receiveOnce(ctx context.Context, after *uint64, h Handler, done func(uint64), down *bool, acks *inboxAcks) error {
	stream, err := c.Inbox.Subscribe(ctx, connect.NewRequest(&sharespotv1.SubscribeRequest{AfterSeq: *after}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		if *down {
			// The server answers a subscription at once: the stream is
			// up again.
			*down = false
			if c.status != nil {
				c.status(c.Server(), nil)
			}
		}
		envs := stream.Msg().Envelopes
		for _, env := range envs {
			if env.Seq <= *after {
				continue // delivered again after a reconnect: already processed
			}
			if err := h(ctx, env); err != nil {
				return handlerError{err}
			}
			*after = env.Seq
			if done != nil {
				done(env.Seq)
			}
		}
		if len(envs) > 0 {
			if err := acks.delivered(ctx, *after); err != nil {
				return err
			}
		}
	}
	return stream.Err()
}

// Await reads inbox until a message matches, and fails on a decline, on
// the session ending, on timeout or when ctx ends.
func Await(ctx context.Context, inbox <-chan *sharespotv1.Envelope, timeout time.Duration, match func(*sharespotv1.Envelope) bool) (*sharespotv1.Envelope, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case e := <-inbox:
			if match(e) {
				return e, nil
			}
			// The reasons are the other party's text: made safe to print.
			if d := e.GetDeclined(); d != nil {
				return nil, fmt.Errorf("declined: %s", SafeText(d.Reason))
			}
			if s := e.GetSessionEnded(); s != nil {
				return nil, fmt.Errorf("the session ended: %s", SafeText(s.Session.GetEndReason()))
			}
		case <-t.C:
			return nil, fmt.Errorf("no answer within %v", timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// failover sends each request to the server in use, one of several
// replicas of the same service that share one database. When a server
// cannot be reached (the connection to it cannot be made: the request
// never left), the request goes to the next server at once. When a request
// or a response stream fails after it was sent, the request may have been
// applied, so it is not sent again here: the error goes to the caller, as
// after any network failure (Receive reconnects; a unary call is the
// caller's to retry), and later calls use the next server.
type failover struct {
	base    http.RoundTripper
	servers []*url.URL // [0] is the base URL the service clients address
	bad     []error    // why servers[i] is unusable (an unparsable URL)
	cur     atomic.Int32
}

// withFailover returns hc sending to the first of urls that works.
func withFailover(hc *http.Client, urls []string) *http.Client {
	f := &failover{base: hc.Transport}
	if f.base == nil {
		f.base = http.DefaultTransport
	}
	seen := map[string]bool{}
	for _, s := range urls {
		s = strings.TrimRight(s, "/")
		if seen[s] {
			continue
		}
		seen[s] = true
		u, err := url.Parse(s)
		if err == nil && (u.Scheme == "" || u.Host == "") {
			err = errors.New("want scheme://host[:port]")
		}
		if err != nil {
			err = fmt.Errorf("client: server URL %q: %w", s, err)
			u = &url.URL{}
		}
		f.servers, f.bad = append(f.servers, u), append(f.bad, err)
	}
	out := *hc
	out.Transport = f
	return &out
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport.
func (f *failover) CloseIdleConnections() {
	if c, ok := f.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (f *failover) RoundTrip(req *http.Request) (*http.Response, error) {
	rest, ok := strings.CutPrefix(req.URL.Path, f.servers[0].Path)
	if !ok || req.URL.Host != f.servers[0].Host {
		return f.base.RoundTrip(req) // not addressed to the service
	}
	n := len(f.servers)
	first := int(f.cur.Load())
	sent := false // the original body went to a server (which closes it)
	var err error
	for i := range n {
		at := (first + i) % n
		if f.bad[at] != nil {
			err = f.bad[at]
			continue
		}
		r := req.Clone(req.Context())
		u := *f.servers[at]
		u.Path, u.RawPath, u.RawQuery = u.Path+rest, "", req.URL.RawQuery
		r.URL, r.Host = &u, ""
		if sent && req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				return nil, err // cannot send it again
			}
			body, berr := req.GetBody()
			if berr != nil {
				return nil, err
			}
			r.Body = body
		}
		sent = true
		var resp *http.Response
		resp, err = f.base.RoundTrip(r)
		if err == nil {
			f.cur.CompareAndSwap(int32(first), int32(at))
			resp.Body = &watchedBody{ReadCloser: resp.Body, ctx: req.Context(), fail: func() { f.cur.CompareAndSwap(int32(at), int32((at+1)%n)) }}
			return resp, nil
		}
		if req.Context().Err() != nil {
			return nil, err
		}
		if !unsent(err) {
			f.cur.CompareAndSwap(int32(first), int32((at+1)%n))
			return nil, err
		}
	}
	if !sent && req.Body != nil {
		req.Body.Close()
	}
	return nil, err
}

// unsent reports whether err means the request never reached the server:
// no connection could be made.
func unsent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// watchedBody moves the client on to the next server when a response
// stream breaks (the server went away mid-stream).
type watchedBody struct {
	io.ReadCloser
	ctx  context.Context
	fail func()
	once sync.Once
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.ctx.Err() == nil {
		b.once.Do(b.fail)
	}
	return n, err
}

// EndAndSettle ends a session and waits until it is settled. A guest's End
// of an active session only starts the close (the session is ENDING until
// the host's final count, or the close deadline, settles it), so this
// polls the session until it has ended, or ctx ends.
func (c *Client) EndAndSettle(ctx context.Context, sessionID, reason string) (*sharespotv1.Session, error) {
	// End is idempotent: an answer lost on the way (a server that died
	// mid-answer) is asked for again.
	var res *connect.Response[sharespotv1.EndResponse]
	var err error
	for attempt := 1; ; attempt++ {
		res, err = c.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sessionID, Reason: reason}))
		if err == nil || Final(err) || attempt == 5 || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, err
	}
	return c.AwaitSettled(ctx, res.Msg.Session)
}

// AwaitSettled polls s until it has ended, or ctx ends.
func (c *Client) AwaitSettled(ctx context.Context, s *sharespotv1.Session) (*sharespotv1.Session, error) {
	wait := 20 * time.Millisecond
	for s.State != sharespotv1.SessionState_SESSION_STATE_ENDED {
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("session %s is still %s: %w", s.Id, strings.ToLower(strings.TrimPrefix(s.State.String(), "SESSION_STATE_")), ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
		res, err := c.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: s.Id}))
		if err != nil {
			if Final(err) {
				return s, err
			}
			continue
		}
		s = res.Msg.Session
	}
	return s, nil
}

// SignAck signs, with this device's key, its cumulative count of the bytes
// it received in a session: the guest's evidence of usage
// (protocol.AckMessage).
func (c *Client) SignAck(sessionID string, received int64) *sharespotv1.UsageAck {
	return &sharespotv1.UsageAck{SessionId: sessionID, ReceivedBytes: received, Signature: protocol.SignAck(c.key, sessionID, received)}
}

// Acknowledge signs the count (SignAck) and sends it to the server. It
// returns the count the server holds.
func (c *Client) Acknowledge(ctx context.Context, sessionID string, received int64) (int64, error) {
	res, err := c.Sessions.Acknowledge(ctx, connect.NewRequest(&sharespotv1.AcknowledgeRequest{Ack: c.SignAck(sessionID, received)}))
	if err != nil {
		return 0, err
	}
	return res.Msg.AckedBytes, nil
}

// Package api serves Sharespot's Connect services (gRPC, gRPC-Web and JSON
// over HTTP from one definition). It authenticates every call, applies rate
// limits, and turns domain refusals into Connect codes with messages that
// say what was wrong.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"golang.org/x/time/rate"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/auth"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// ProtocolVersion is the version of the Sharespot protocol this server
// speaks (protocol.Version, with its history).
const ProtocolVersion = protocol.Version

// MaxRequestBytes caps a request message.
const MaxRequestBytes = 64 << 10

// Limits configures the limits per client address and per device; a zero
// field turns its limit off. The per-address ones act before a request's
// body is read (Handler) or before its connection is served
// (LimitListener); an address is an IPv4 address or an IPv6 /64 (see
// AddressKey).
type Limits struct {
	// PerDevice, PerDevBurst: a token bucket per signed-in device.
	PerDevice   rate.Limit
	PerDevBurst int
	// PerIP, PerIPBurst: a token bucket per address, for every call.
	PerIP      rate.Limit
	PerIPBurst int
	// PerIPInFlight caps one address's unary calls in progress.
	PerIPInFlight int
	// PerIPStreams caps one address's open inbox streams, and apart
	// from them its open channels (each carried call counts as a call).
	PerIPStreams int
	// PerIPConns caps one address's open connections; Conns caps all
	// open connections.
	PerIPConns int
	Conns      int
}

// DefaultLimits are generous for people and tight for abuse. Conns is
// left to the operator (sharespot server sets it from the open-files
// limit).
func DefaultLimits() Limits {
	return Limits{PerDevice: 50, PerDevBurst: 200, PerIP: 500, PerIPBurst: 2000,
		PerIPInFlight: 256, PerIPStreams: 1024, PerIPConns: 1024}
}

// Deps are what the API serves.
type Deps struct {
	Store  *store.Store
	Engine *session.Engine
	Auth   *auth.Auth
	Wallet *payment.Wallet
	// Card is the card platform (Stripe); nil when the server has no
	// Stripe key, and then only the wallet pays.
	Card CardPlatform
	Hub  *relay.Hub
	// Acks, if set, holds acknowledgments of what this replica's streams
	// sent and writes them together; nil: each Ack is a write of its own.
	Acks   *relay.Acks
	Now    func() time.Time
	Log    *slog.Logger
	Limits Limits
	// PollInterval bounds how long a stream waits without a wake-up before
	// it looks at its inbox anyway.
	PollInterval time.Duration
	// BusDown, if set, reports that the bus (NATS) is configured but
	// disconnected: streams then poll every 250 ms at most.
	BusDown func() bool
	// HostAway: a hotspot whose host's agent has not been there this long
	// (its inbox stream closed, or not marked since) is offline: shown in
	// discovery, never offered (session.Config.HostAway refuses requests
	// for it). 0: every active hotspot is offered.
	HostAway time.Duration
	// HostGoneGrace: how long after a host's stream ended without its
	// Leave its hotspots are marked offline, unless a new stream marked
	// them meanwhile (default 10 s).
	HostGoneGrace time.Duration
	// Metrics, if set, counts calls, refusals and deliveries.
	Metrics *metrics.Server
	// NameCalls puts each unary call's name (its method, "ReportUsage")
	// on its context for the store's crash hook (store.WithCall): the
	// crash-safety tests only.
	NameCalls bool
}

// CardPlatform is the card payment platform as the API needs it
// (internal/card).
type CardPlatform interface {
	Pay(ctx context.Context, guest session.Party, quoteID, paymentMethod string) (*sharespotv1.PayResponse, error)
	Fund(ctx context.Context, p session.Party, req *sharespotv1.FundByCardRequest) (*sharespotv1.FundByCardResponse, error)
	Onboard(ctx context.Context, p session.Party, returnURL, refreshURL string) (*sharespotv1.PayoutOnboardingResponse, error)
	// TestMode: a test-mode key, with which a card payment needs no
	// PaymentMethod from the device (Stripe's test card is used).
	TestMode() bool
}

// Handler returns an http.Handler serving every service. Before a call's
// body is read, its address must be within its token bucket and its
// limits of calls in progress (refused with resource_exhausted and
// Retry-After); the body is then capped at MaxRequestBytes (plus framing),
// compressed or not.
func Handler(d Deps) http.Handler {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.HostGoneGrace <= 0 {
		d.HostGoneGrace = 10 * time.Second
	}
	if d.PollInterval <= 0 {
		d.PollInterval = 30 * time.Second
	}
	g := &guard{auth: d.Auth, log: d.Log, limits: d.Limits, dev: newLimiterSet(d.Limits.PerDevice, d.Limits.PerDevBurst), metrics: d.Metrics, nameCalls: d.NameCalls}
	opts := []connect.HandlerOption{connect.WithInterceptors(d.Metrics.Interceptor(), g), connect.WithReadMaxBytes(MaxRequestBytes), connect.WithCompressMinBytes(4096),
		boundedGzip(MaxRequestBytes)}
	rpc := http.NewServeMux()
	s := &services{d: d}
	s.pres.s = s
	rpc.Handle(sharespotv1connect.NewAuthServiceHandler(&authService{s}, opts...))
	rpc.Handle(sharespotv1connect.NewHotspotServiceHandler(&hotspotService{s}, opts...))
	rpc.Handle(sharespotv1connect.NewDiscoveryServiceHandler(&discoveryService{s}, opts...))
	rpc.Handle(sharespotv1connect.NewSessionServiceHandler(&sessionService{s}, opts...))
	rpc.Handle(sharespotv1connect.NewPaymentServiceHandler(&paymentService{s}, opts...))
	rpc.Handle(sharespotv1connect.NewInboxServiceHandler(&inboxService{s}, opts...))
	ch := &channelService{carried: protocol.CarriedProcedures(), errs: connect.NewErrorWriter()}
	rpc.Handle(sharespotv1connect.NewChannelServiceHandler(ch, connect.WithInterceptors(d.Metrics.Interceptor(), g),
		connect.WithReadMaxBytes(channelMaxMessage), connect.WithCompressMinBytes(4096), boundedGzip(channelMaxMessage)))
	// Server reflection (gRPC's v1 and v1alpha), so grpcurl and buf curl
	// list and call the services without the proto files. Public, like
	// the descriptors in any client; the address limits apply.
	reflector := grpcreflect.NewStaticReflector(ServiceNames()...)
	rpc.Handle(grpcreflect.NewHandlerV1(reflector))
	rpc.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	ch.calls = newAddressGuard(d.Limits, d.Metrics).wrap(rpc)
	return ch.calls
}

// ServiceNames are the fully qualified names of the services served.
func ServiceNames() []string {
	return []string{sharespotv1connect.AuthServiceName, sharespotv1connect.HotspotServiceName, sharespotv1connect.DiscoveryServiceName,
		sharespotv1connect.SessionServiceName, sharespotv1connect.PaymentServiceName, sharespotv1connect.InboxServiceName,
		sharespotv1connect.ChannelServiceName}
}

type services struct {
	d Deps
	// dbAway is when (Unix ns) an inbox stream or a host's presence mark
	// last found the database unavailable: a host's grace after its
	// stream was cut starts over from the database's return (presence).
	dbAway atomic.Int64
	// pres marks the hosts with a stream open here present.
	pres presence
}

// sawDBAway notes that err, if the database was unavailable, was seen now.
func (s *services) sawDBAway(err error) {
	if errors.Is(err, store.ErrUnavailable) {
		s.dbAway.Store(time.Now().UnixNano())
	}
}

// ---------------------------------------------------------------- auth, limits, errors

type partyKey struct{}

func partyFrom(ctx context.Context) session.Party {
	p, _ := ctx.Value(partyKey{}).(session.Party)
	return p
}

// public procedures need no token.
func public(procedure string) bool {
	switch procedure {
	case sharespotv1connect.AuthServiceChallengeProcedure, sharespotv1connect.AuthServiceSignInProcedure,
		sharespotv1connect.PaymentServicePlatformKeysProcedure:
		return true
	}
	return false
}

// guard authenticates calls and applies the per-device limit; the
// per-address limits act earlier, in addressGuard.
type guard struct {
	auth    *auth.Auth
	log     *slog.Logger
	limits  Limits
	dev     *limiterSet
	metrics *metrics.Server
	// nameCalls: Deps.NameCalls.
	nameCalls bool
}

var _ connect.Interceptor = (*guard)(nil)

func (g *guard) admit(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	if public(procedure) {
		return ctx, nil
	}
	tok, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errors.New("missing Authorization: Bearer token; sign in first"))
	}
	p, err := g.auth.Authenticate(ctx, tok)
	if err != nil {
		return ctx, toConnect(g.log, procedure, err)
	}
	// A channel's opening takes no token of the device's: each call it
	// carries takes its own.
	if procedure != sharespotv1connect.ChannelServiceCarryProcedure && !g.dev.allow(p.DeviceID) {
		g.metrics.Refused(metrics.LimitDeviceRate)
		return ctx, rateLimited("too many requests from this device; slow down")
	}
	return context.WithValue(ctx, partyKey{}, p), nil
}

// rateLimited is a rate-limit refusal: resource exhausted, with a
// Retry-After header (seconds) that tells a client to try again rather than
// take the refusal as final, as it takes "no volume left" or "no funds".
func rateLimited(msg string) error {
	err := connect.NewError(connect.CodeResourceExhausted, errors.New(msg))
	err.Meta().Set("Retry-After", "1")
	return err
}

func (g *guard) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, err := g.admit(ctx, req.Spec().Procedure, req.Header())
		if err != nil {
			return nil, err
		}
		if g.nameCalls {
			ctx = store.WithCall(ctx, path.Base(req.Spec().Procedure))
		}
		resp, err := next(ctx, req)
		if err != nil {
			return nil, toConnect(g.log, req.Spec().Procedure, err)
		}
		return resp, nil
	}
}

func (g *guard) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (g *guard) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	// A stream's goroutine waits as long as the stream stays open, and
	// keeps the stack it grew meanwhile: authentication, and connect's
	// receiving (decoding, the HTTP/2 server's reads), run deep, so they
	// run aside, and this closure, which stays on that stack, keeps its
	// work in calls that return (see aside).
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := g.admitAside(ctx, conn)
		if err != nil {
			return err
		}
		if conn.Spec().Procedure == sharespotv1connect.ChannelServiceCarryProcedure {
			// A channel receives on a goroutine of its own, whose stack
			// goes deep in any case: receiving aside would add a third.
			return g.streamEnded(conn, next(ctx, conn))
		}
		return g.streamEnded(conn, next(ctx, shallowConn{conn}))
	}
}

func (g *guard) admitAside(ctx context.Context, conn connect.StreamingHandlerConn) (context.Context, error) {
	var err error
	aside(func() { ctx, err = g.admit(ctx, conn.Spec().Procedure, conn.RequestHeader()) })
	return ctx, err
}

func (g *guard) streamEnded(conn connect.StreamingHandlerConn, err error) error {
	if err != nil {
		return toConnect(g.log, conn.Spec().Procedure, err)
	}
	return nil
}

// shallowConn receives on goroutines that end (see aside). A stream
// handler sends aside itself (the inbox stream's step).
type shallowConn struct{ connect.StreamingHandlerConn }

func (c shallowConn) Receive(msg any) (err error) {
	aside(func() { err = c.StreamingHandlerConn.Receive(msg) })
	return err
}

// unavailableLogged is when a database outage was last logged.
var unavailableLogged atomic.Int64

// toConnect maps an error to a Connect error. Refusals keep their message;
// anything else is logged and reported as internal without details.
func toConnect(log *slog.Logger, procedure string, err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	var pe *problem.Error
	if errors.As(err, &pe) {
		code := map[problem.Kind]connect.Code{
			problem.Invalid:         connect.CodeInvalidArgument,
			problem.NotFound:        connect.CodeNotFound,
			problem.Denied:          connect.CodePermissionDenied,
			problem.WrongState:      connect.CodeFailedPrecondition,
			problem.Exhausted:       connect.CodeResourceExhausted,
			problem.AlreadyExists:   connect.CodeAlreadyExists,
			problem.Unauthenticated: connect.CodeUnauthenticated,
		}[pe.Kind]
		return connect.NewError(code, errors.New(pe.Msg))
	}
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, store.ErrBusy):
		return connect.NewError(connect.CodeUnavailable, errors.New("server busy; retry"))
	case errors.Is(err, store.ErrUnavailable):
		if now := time.Now().UnixNano(); now-unavailableLogged.Load() > int64(5*time.Second) {
			unavailableLogged.Store(now) // once per 5 s: an outage fails every request
			log.Warn("database unavailable; requests are answered unavailable (retry) until it is back", "procedure", procedure, "err", err)
		}
		ce := connect.NewError(connect.CodeUnavailable, errors.New("the server's database is unavailable; retry"))
		// Clients back off at most this long, so they are served again
		// within a second of the database's return.
		ce.Meta().Set("Retry-After", "1")
		return ce
	case errors.Is(err, store.ErrClosed):
		return connect.NewError(connect.CodeUnavailable, errors.New("server is shutting down; retry"))
	}
	log.Error("request failed", "procedure", procedure, "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error; the server logged it"))
}

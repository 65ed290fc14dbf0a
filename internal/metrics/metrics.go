// Package metrics defines the Prometheus metrics of the server and of a
// host's gateway. Each set registers on a registry it is given (never the
// global default one) and is nil-safe: a nil *Server or *Gateway records
// nothing, so the parts it instruments need no "metrics on?" branches.
//
// The hot paths (one RPC, one commit) take no allocation of their own:
// per-procedure children are looked up once and kept.
package metrics

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric name.
const Namespace = "sharespot"

// claimSteps names the claim step (docs/claims.md) each procedure carries;
// procedures outside the claimed flow are labelled by what they do.
var claimSteps = map[string]string{
	"DiscoveryService/Discover":    "C1.2-C1.3",
	"SessionService/RequestAccess": "C1.6",
	"SessionService/Quote":         "C3.1/C1.12",
	"PaymentService/Pay":           "C3.2/C1.13",
	"SessionService/Confirm":       "C3.3/C1.14",
	"SessionService/Grant":         "C1.7/C1.15",
	"SessionService/Prompt":        "C1.9",
	"SessionService/RequestTopUp":  "C1.11",
	"SessionService/Decline":       "decline",
	"SessionService/End":           "end",
	"SessionService/ReportUsage":   "usage",
	"SessionService/Acknowledge":   "usage",
	"HotspotService/Register":      "register",
	"HotspotService/Update":        "register",
	"InboxService/Subscribe":       "relay",
	"InboxService/Ack":             "relay",
}

// Step is the claim step of a procedure ("/pkg.Service/Method"), or
// "other".
func Step(procedure string) string {
	if s, ok := claimSteps[shortName(procedure)]; ok {
		return s
	}
	return "other"
}

func shortName(procedure string) string {
	svc, method, _ := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	return svc[strings.LastIndexByte(svc, '.')+1:] + "/" + method
}

// Server is the server's metrics.
type Server struct {
	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	streams   prometheus.Gauge
	channels  prometheus.Gauge
	lag       prometheus.Histogram
	delivered prometheus.Counter
	refused   *prometheus.CounterVec
	commits   prometheus.Histogram
	writes    prometheus.Counter

	mu    sync.RWMutex
	procs map[string]*procMetrics
}

// procMetrics are one procedure's children, one counter per code.
type procMetrics struct {
	latency prometheus.Observer
	byCode  [17]prometheus.Counter // connect codes 0 (ok) to 16
}

// NewServer registers the server's metrics on reg.
func NewServer(reg prometheus.Registerer) *Server {
	m := &Server{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "rpc_total",
			Help: "RPCs handled, by procedure, the claim step it carries (docs/claims.md) and its Connect code (ok for success)."},
			[]string{"procedure", "step", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "rpc_duration_seconds",
			Help:    "Time to handle a unary RPC (streams: until the stream ends), by procedure and claim step.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}},
			[]string{"procedure", "step"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "inbox_streams_open",
			Help: "Inbox streams open on this replica."}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "channels_open",
			Help: "Channels (ChannelService.Carry: a device's unary calls on one stream) open on this replica; each carried call counts in rpc_total as a call of its procedure."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "inbox_delivery_lag_seconds",
			Help:    "From a message's commit to the inbox to its sending on a stream.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "inbox_delivered_total",
			Help: "Inbox messages sent on streams (a message re-sent after a reconnection counts again)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "rate_limit_refusals_total",
			Help: "Calls and connections refused by a limit, by limit."}, []string{"limit"}),
		commits: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "store_commit_duration_seconds",
			Help:    "Time of one database commit (SQLite: a batch of writes by the single writer; PostgreSQL: one write transaction).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "store_writes_total",
			Help: "Write functions committed."}),
		procs: map[string]*procMetrics{},
	}
	reg.MustRegister(m.calls, m.latency, m.streams, m.channels, m.lag, m.delivered, m.refused, m.commits, m.writes)
	for _, l := range []string{LimitAddressRate, LimitAddressCalls, LimitAddressStreams, LimitDeviceRate, LimitConns} {
		m.refused.WithLabelValues(l) // present at zero from the start
	}
	return m
}

// Limits a refusal is counted under.
const (
	LimitAddressRate    = "address_rate"
	LimitAddressCalls   = "address_calls"
	LimitAddressStreams = "address_streams"
	// LimitAddressChannels: an address's channels (apart from its inbox
	// streams).
	LimitAddressChannels = "address_channels"
	LimitDeviceRate      = "device_rate"
	LimitConns           = "connections"
)

func (m *Server) proc(procedure string) *procMetrics {
	m.mu.RLock()
	p := m.procs[procedure]
	m.mu.RUnlock()
	if p != nil {
		return p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p = m.procs[procedure]; p != nil {
		return p
	}
	name, step := shortName(procedure), Step(procedure)
	p = &procMetrics{latency: m.latency.WithLabelValues(name, step)}
	for c := range p.byCode {
		code := "ok"
		if c > 0 {
			code = connect.Code(c).String()
		}
		p.byCode[c] = m.calls.WithLabelValues(name, step, code)
	}
	m.procs[procedure] = p
	return p
}

func (p *procMetrics) done(start time.Time, err error) {
	p.latency.Observe(time.Since(start).Seconds())
	c := 0
	if err != nil {
		c = int(connect.CodeOf(err))
		if c < 0 || c >= len(p.byCode) {
			c = int(connect.CodeUnknown)
		}
	}
	p.byCode[c].Inc()
}

// Interceptor counts and times every call by procedure and outcome, and
// counts open inbox streams. Put it outermost, so it sees the codes the
// client gets.
func (m *Server) Interceptor() connect.Interceptor {
	if m == nil {
		return nopInterceptor{}
	}
	return interceptor{m}
}

type interceptor struct{ m *Server }

var _ connect.Interceptor = interceptor{}

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		resp, err := next(ctx, req)
		i.m.proc(req.Spec().Procedure).done(start, err)
		return resp, err
	}
}

func (i interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	// The closure stays on a stream's goroutine for the stream's life, so
	// its work is in calls that return (a smaller frame: see
	// api.aside).
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := i.m.streamOpened(conn)
		return i.m.streamEnded(conn, start, next(ctx, conn))
	}
}

// channelProcedure is ChannelService.Carry's (metrics depends on no
// generated code).
const channelProcedure = "/sharespot.v1.ChannelService/Carry"

// open is the gauge of conn's kind of stream.
func (m *Server) open(conn connect.StreamingHandlerConn) prometheus.Gauge {
	if conn.Spec().Procedure == channelProcedure {
		return m.channels
	}
	return m.streams
}

func (m *Server) streamOpened(conn connect.StreamingHandlerConn) time.Time {
	m.open(conn).Inc()
	return time.Now()
}

func (m *Server) streamEnded(conn connect.StreamingHandlerConn, start time.Time, err error) error {
	m.open(conn).Dec()
	if errors.Is(err, context.Canceled) {
		err = nil // the client went away: the normal end of a stream
	}
	m.proc(conn.Spec().Procedure).done(start, err)
	return err
}

type nopInterceptor struct{}

func (nopInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }
func (nopInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (nopInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Refused counts a refusal by a limit (one of the Limit constants).
func (m *Server) Refused(limit string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(limit).Inc()
}

// Delivered records an inbox message sent on a stream, committed at
// createdMS (Unix milliseconds) and sent at now.
func (m *Server) Delivered(createdMS int64, now time.Time) {
	if m == nil {
		return
	}
	m.delivered.Inc()
	if createdMS > 0 {
		m.lag.Observe(max(0, float64(now.UnixMilli()-createdMS)/1000))
	}
}

// Committed records a database commit of writes write functions that took d.
func (m *Server) Committed(writes int, d time.Duration) {
	if m == nil {
		return
	}
	m.commits.Observe(d.Seconds())
	m.writes.Add(float64(writes))
}

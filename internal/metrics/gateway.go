package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sharespot/sharespot/internal/gateway"
)

// Gateway is a host's metrics: its guests by state, the bytes its gateway
// relayed and granted, the gateway's metering events, and how long and how
// far ahead it saves its counts (the save-ahead rule: a count is durable
// before the bytes it covers pass).
type Gateway struct {
	events  *prometheus.CounterVec
	saves   prometheus.Histogram
	bytes   prometheus.Counter
	guests  *prometheus.Desc
	live    *prometheus.Desc
	ahead   *prometheus.Desc
	usageFn func(string) (used, quota int64, err error)

	mu    sync.Mutex
	state map[string]string // session → state, ended ones removed
	saved map[string]int64  // session → last saved upper bound of its usage
	seen  map[string]int64  // session → used at the last scrape (for bytes)
}

// States a guest is counted under (what hosting.Host notifies).
var gatewayStates = []string{"request", "granted", "online", "low", "exhausted", "ending"}

// NewGateway registers a host's metrics on reg. Usage reads a session's
// use and quota from the gateway (set it with SetUsage once the gateway
// is open; until then bytes are not reported).
func NewGateway(reg prometheus.Registerer) *Gateway {
	g := &Gateway{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "gateway", Name: "events_total",
			Help: "Metering events, by kind (threshold-crossed, exhausted, first-traffic, idle)."}, []string{"kind"}),
		saves: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "gateway", Name: "save_duration_seconds",
			Help:    "Time to make a batch of counts durable; bytes past a session's saved bound wait for it (save-ahead lag).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "gateway", Name: "bytes_total",
			Help: "Bytes the gateway relayed for guests (both directions), as seen at scrapes."}),
		guests: prometheus.NewDesc(Namespace+"_gateway_guests", "Guests by state.", []string{"state"}, nil),
		live:   prometheus.NewDesc(Namespace+"_gateway_session_bytes", "Bytes of the live sessions: used, or granted (quota).", []string{"kind"}, nil),
		ahead: prometheus.NewDesc(Namespace+"_gateway_saved_ahead_bytes",
			"How far the durable counts run ahead of the bytes used, summed over live sessions (what a crash would bill unused).", nil, nil),
		state: map[string]string{}, saved: map[string]int64{}, seen: map[string]int64{},
	}
	for _, k := range []gateway.EventKind{gateway.ThresholdCrossed, gateway.Exhausted, gateway.FirstTraffic, gateway.Idle} {
		g.events.WithLabelValues(k.String())
	}
	reg.MustRegister(g.events, g.saves, g.bytes, g)
	return g
}

// SetUsage gives the function that reads a session's use from the gateway.
func (g *Gateway) SetUsage(usage func(string) (used, quota int64, err error)) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.usageFn = usage
	g.mu.Unlock()
}

// Event counts a metering event.
func (g *Gateway) Event(ev gateway.Event) {
	if g == nil {
		return
	}
	g.events.WithLabelValues(ev.Kind.String()).Inc()
}

// State records a guest's new state; "ended" counts its last bytes
// (used: its final count) and forgets it.
func (g *Gateway) State(sessionID, state string, used int64) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if state == "ended" {
		if d := used - g.seen[sessionID]; d > 0 {
			g.bytes.Add(float64(d))
		}
		delete(g.state, sessionID)
		delete(g.saved, sessionID)
		delete(g.seen, sessionID)
		return
	}
	g.state[sessionID] = state
}

// Store wraps a gateway's store, timing its saves and noting the bounds
// saved.
func (g *Gateway) Store(st gateway.Store) gateway.Store {
	if g == nil {
		return st
	}
	return &timedStore{Store: st, g: g}
}

type timedStore struct {
	gateway.Store
	g *Gateway
}

func (s *timedStore) Save(put []gateway.Record, del []string) error {
	start := time.Now()
	err := s.Store.Save(put, del)
	s.g.saves.Observe(time.Since(start).Seconds())
	if err == nil {
		s.g.mu.Lock()
		for _, r := range put {
			s.g.saved[r.SessionID] = r.Used
		}
		for _, id := range del {
			delete(s.g.saved, id)
		}
		s.g.mu.Unlock()
	}
	return err
}

// Describe implements prometheus.Collector.
func (g *Gateway) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.guests
	ch <- g.live
	ch <- g.ahead
}

// Collect implements prometheus.Collector: guests by state, and the live
// sessions' bytes read from the gateway now.
func (g *Gateway) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	defer g.mu.Unlock()
	counts := map[string]int{}
	for _, s := range gatewayStates {
		counts[s] = 0
	}
	var used, granted, ahead int64
	for id, s := range g.state {
		counts[s]++
		if g.usageFn == nil {
			continue
		}
		u, q, err := g.usageFn(id)
		if err != nil {
			continue
		}
		used, granted = used+u, granted+q
		if d := u - g.seen[id]; d > 0 {
			g.bytes.Add(float64(d))
			g.seen[id] = u
		}
		if b, ok := g.saved[id]; ok && b > u {
			ahead += b - u
		}
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(g.guests, prometheus.GaugeValue, float64(n), s)
	}
	ch <- prometheus.MustNewConstMetric(g.live, prometheus.GaugeValue, float64(used), "used")
	ch <- prometheus.MustNewConstMetric(g.live, prometheus.GaugeValue, float64(granted), "granted")
	ch <- prometheus.MustNewConstMetric(g.ahead, prometheus.GaugeValue, float64(ahead))
}

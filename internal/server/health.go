package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sharespot/sharespot/internal/buildinfo"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/store"
)

// ReadyTimeout bounds the database write /readyz makes.
const ReadyTimeout = 2 * time.Second

// routes serves the API at / and, beside it, /healthz (the process is up;
// "ok" or "degraded: …", and the version), /readyz (it can serve: the
// database takes a write) and /metrics (Prometheus). The three stay outside the
// API's address limits, so a load balancer's checks are never refused.
func (s *Server) routes(api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Cache-Control", "no-store")
		w.Write([]byte(s.Health()))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Cache-Control", "no-store")
		if err := s.Ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg, MaxRequestsInFlight: 4}))
	return mux
}

// Health is /healthz's body: "ok", or "degraded: …" naming what is
// degraded while the server still serves, then the build's version. It
// never fails: /healthz answers 200 while the process is up.
func (s *Server) Health() string {
	status := "ok"
	if s.cfg.Bus != "" && !s.bus.Connected() {
		status = "degraded: " + busDown(s.cfg.Bus)
	}
	return status + "\nversion: " + buildinfo.Get().String() + "\n"
}

// busDown says what losing the bus means.
func busDown(bus string) string {
	return "bus: not connected to " + bus + " (wake-ups between replicas are lost; streams poll the inbox every second, so delivery goes on, slower)"
}

// instrument registers the server's metrics on its registry.
func (s *Server) instrument() {
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := buildinfo.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "build_info",
		Help:        "1, labelled with the server's build: module version, VCS revision and Go version.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.Go}})
	build.Set(1)
	s.reg.MustRegister(build)
	metrics.StoreGauges(s.reg, s.st.QueueLen, func(ctx context.Context) (metrics.InboxStats, error) {
		return store.ReadT(ctx, s.st, func(tx *store.Tx) (metrics.InboxStats, error) {
			var st metrics.InboxStats
			err := tx.QueryRow(`SELECT COUNT(*), COALESCE(MIN(created_ms), 0) FROM inbox`).Scan(&st.Depth, &st.OldestMS)
			return st, err
		})
	}, s.cfg.Now)
	s.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "store_retries_total",
			Help: "PostgreSQL writes run again after a deadlock, a serialization failure or a lost race to insert a row (0 on SQLite)."},
			func() float64 { return float64(s.st.Stats().Retries) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "store_replays_total",
			Help: "PostgreSQL writes run again, statement by statement, because a statement sent ahead did not do what the write expected: mostly refusals (too little money, a sold-out hotspot, a receipt used before). 0 on SQLite."},
			func() float64 { return float64(s.st.Stats().Replays) }))
	s.reg.MustRegister(s.business())
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "inbox_acks_held",
		Help: "Devices whose inbox acknowledgments this replica holds in memory or is writing (written in one batch about 100 ms after they arrive)."}, func() float64 {
		if s.acks == nil {
			return 0
		}
		return float64(s.acks.Held())
	}))
	if s.cfg.Bus == "" {
		return
	}
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "bus_connected",
		Help: "1 when the bus (NATS) is connected, 0 when not; absent without --bus."}, func() float64 {
		if s.bus.Connected() {
			return 1
		}
		return 0
	}))
}

// Ready reports whether the server can serve: the database takes a write
// within ReadyTimeout (through the single writer on SQLite, so a stuck
// writer or a lock held elsewhere shows). The error says what fails.
// Concurrent checks share one write.
//
// The bus is not part of it: a replica that lost the bus still serves
// (its streams poll the inbox), so a load balancer must not take every
// replica out when the bus is down. It shows as degraded on /healthz and
// as sharespot_bus_connected 0.
func (s *Server) Ready(ctx context.Context) error {
	done := s.readyCheck()
	t := time.NewTimer(ReadyTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("database: a write did not complete within %v (locked, or the writer is stuck)", ReadyTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readyCheck starts a database write unless one is under way, and returns
// a channel that gets its outcome.
func (s *Server) readyCheck() <-chan error {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	out := make(chan error, 1)
	s.readyWait = append(s.readyWait, out)
	if len(s.readyWait) > 1 {
		return out // a write is under way: share its outcome
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// A real write that needs the write lock and a writable file,
		// changing nothing.
		err := s.st.Write(ctx, func(tx *store.Tx) error { return tx.Touch() })
		if err != nil {
			err = fmt.Errorf("database: write failed: %w", err)
		}
		s.readyMu.Lock()
		waiting := s.readyWait
		s.readyWait = nil
		s.readyMu.Unlock()
		for _, c := range waiting {
			c <- err
		}
	}()
	return out
}

// Registry is the registry the server's metrics are on.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
)

// scrape reads url/metrics as Prometheus does.
type scrape map[string]*dto.MetricFamily

func scrapeOf(t *testing.T, url string) scrape {
	t.Helper()
	res, err := client.NewHTTPClient().Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", res.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return fams
}

// value is the value of name's series whose labels include labels (a
// histogram's count); -1 when there is none.
func (s scrape) value(name string, labels ...string) float64 {
	f := s[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

func rpcs(s scrape, proc, code string) float64 {
	return s.value("sharespot_rpc_total", "procedure", proc, "code", code)
}

// TestMetricsFollowFlow scrapes /metrics at each step of a real paid flow
// (real clients over HTTP/2, real database) and checks that each step's
// counters move when, and only when, the step happens.
func TestMetricsFollowFlow(t *testing.T) {
	ctx := context.Background()
	env := harness.Start(t, func(c *server.Config) { c.Limits = api.Limits{} })
	s0 := scrapeOf(t, env.URL)
	for _, name := range []string{"sharespot_store_write_queue_length", "sharespot_inbox_depth", "sharespot_inbox_oldest_age_seconds",
		"sharespot_inbox_streams_open", "sharespot_inbox_acks_held", "sharespot_store_retries_total", "sharespot_store_replays_total",
		"go_goroutines", "process_open_fds"} {
		if s0.value(name) < 0 {
			t.Errorf("%s missing before any call", name)
		}
	}
	if got := s0.value("sharespot_rate_limit_refusals_total", "limit", "address_rate"); got != 0 {
		t.Errorf("refusals before any call = %v, want 0", got)
	}

	hostC, guestC := env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, guestC, "EUR", 1000)
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	hs := res.Msg.Hotspot
	s1 := scrapeOf(t, env.URL)
	if got := rpcs(s1, "HotspotService/Register", "ok"); got != 1 {
		t.Errorf("Register ok = %v, want 1", got)
	}
	if got := s1.value("sharespot_rpc_total", "procedure", "AuthService/SignIn", "step", "other", "code", "ok"); got != 2 {
		t.Errorf("SignIn ok = %v, want 2 (host and guest)", got)
	}
	commits1 := s1.value("sharespot_store_commit_duration_seconds")
	if commits1 < 1 {
		t.Errorf("commits after register = %v, want some", commits1)
	}

	in := harness.Listen(t, hostC, nil)
	until(t, "the host's stream counted open", func() bool { return scrapeOf(t, env.URL).value("sharespot_inbox_streams_open") == 1 })

	g := &guest.Guest{C: guestC, Suites: []seal.Suite{seal.Preset}}
	ap := hs.Instruction.AccessPoint
	if _, err := guestC.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: []*sharespotv1.Candidate{{Bssid: ap.Bssid, Ssid: ap.Ssid, SignalDbm: -50}}})); err != nil {
		t.Fatal(err)
	}
	s2 := scrapeOf(t, env.URL)
	if got := s2.value("sharespot_rpc_total", "procedure", "DiscoveryService/Discover", "step", "C1.2-C1.3", "code", "ok"); got != 1 {
		t.Errorf("Discover (C1.2-C1.3) ok = %v, want 1", got)
	}
	if got := rpcs(s2, "SessionService/RequestAccess", "ok"); got > 0 {
		t.Errorf("RequestAccess before it happened = %v, want 0", got)
	}

	// The guest's steps are guest.Session's, without an inbox: the test
	// plays the host.
	ses, err := g.BeginHotspot(ctx, hs.Id, 10*harness.BenchMB)
	if err != nil {
		t.Fatal(err)
	}
	harness.Next[*sharespotv1.Envelope_AccessRequested](t, in)
	s3 := scrapeOf(t, env.URL)
	if got := s3.value("sharespot_rpc_total", "procedure", "SessionService/RequestAccess", "step", "C1.6", "code", "ok"); got != 1 {
		t.Errorf("RequestAccess (C1.6) ok = %v, want 1", got)
	}
	if got := s3.value("sharespot_inbox_delivered_total"); got < 1 {
		t.Errorf("delivered after the host got the request = %v, want ≥ 1", got)
	}
	if got := s3.value("sharespot_inbox_delivery_lag_seconds"); got < 1 {
		t.Errorf("delivery lag observations = %v, want ≥ 1", got)
	}

	q, err := hostC.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * harness.BenchMB, AmountMinor: 100, Currency: "EUR"}))
	if err != nil {
		t.Fatal(err)
	}
	s4 := scrapeOf(t, env.URL)
	if got := rpcs(s4, "SessionService/Quote", "ok"); got != 1 {
		t.Errorf("Quote ok = %v, want 1", got)
	}
	// The guest subscribes to nothing: the quote waits in its inbox.
	if got := s4.value("sharespot_inbox_depth"); got < 1 {
		t.Errorf("inbox depth with the guest's quote unread = %v, want ≥ 1", got)
	}
	rc, err := ses.Pay(ctx, q.Msg.Quote, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Paying an unknown quote is refused: the outcome is counted.
	_, err = guestC.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Msg.Quote.Id + "x"}))
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("paying an unknown quote: %v, want a refusal", err)
	}
	s5 := scrapeOf(t, env.URL)
	if got := rpcs(s5, "PaymentService/Pay", "ok"); got != 1 {
		t.Errorf("Pay ok = %v, want 1", got)
	}
	if got := rpcs(s5, "PaymentService/Pay", ce.Code().String()); got != 1 {
		t.Errorf("Pay %s = %v, want 1", ce.Code(), got)
	}
	if got := s5.value("sharespot_rpc_duration_seconds", "procedure", "PaymentService/Pay"); got != 2 {
		t.Errorf("Pay latency observations = %v, want 2", got)
	}
	if err := ses.Confirm(ctx, q.Msg.Quote, rc); err != nil {
		t.Fatal(err)
	}
	if _, err := hostC.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, UsedBytes: 0, Reason: "test"})); err != nil {
		t.Fatal(err)
	}
	s6 := scrapeOf(t, env.URL)
	for _, p := range []string{"SessionService/Confirm", "SessionService/End"} {
		if got := rpcs(s6, p, "ok"); got != 1 {
			t.Errorf("%s ok = %v, want 1", p, got)
		}
	}
	if c := s6.value("sharespot_store_commit_duration_seconds"); c <= commits1 {
		t.Errorf("commits %v after the flow, %v before: did not move", c, commits1)
	}
	in.Stop()
	until(t, "the host's stream counted closed", func() bool { return scrapeOf(t, env.URL).value("sharespot_inbox_streams_open") == 0 })
	// The host acknowledged what its stream got: held a moment, then
	// written, and the gauge is back at 0.
	until(t, "the host's acknowledgments written", func() bool { return scrapeOf(t, env.URL).value("sharespot_inbox_acks_held") == 0 })
	env.MustAudit(t)
}

// TestMetricsRefusals: calls over the per-address rate are counted under
// their limit, and only those.
func TestMetricsRefusals(t *testing.T) {
	env := harness.Start(t, func(c *server.Config) { c.Limits = api.Limits{PerIP: 0.001, PerIPBurst: 3} })
	// Plain Connect calls (the client library would retry a refusal).
	hc := client.NewHTTPClient()
	refused := 0
	for range 5 {
		res, err := hc.Post(env.URL+sharespotv1connect.PaymentServicePlatformKeysProcedure, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		switch res.StatusCode {
		case http.StatusTooManyRequests:
			refused++
		case http.StatusOK:
		default:
			t.Fatalf("PlatformKeys: %s", res.Status)
		}
	}
	if refused != 2 {
		t.Fatalf("refused %d of 5 calls with a burst of 3, want 2", refused)
	}
	s := scrapeOf(t, env.URL)
	if got := s.value("sharespot_rate_limit_refusals_total", "limit", "address_rate"); got != 2 {
		t.Errorf("address_rate refusals = %v, want 2", got)
	}
	if got := s.value("sharespot_rate_limit_refusals_total", "limit", "device_rate"); got != 0 {
		t.Errorf("device_rate refusals = %v, want 0", got)
	}
}

// TestStoreReplaysMetric: on PostgreSQL a payment from an empty wallet is
// refused after its write ran again, statement by statement (its debit,
// sent ahead, took nothing): sharespot_store_replays_total counts it, and
// nothing else of the flow runs again.
func TestStoreReplaysMetric(t *testing.T) {
	ctx := context.Background()
	env := harness.Start(t, func(c *server.Config) { c.DB = harness.Postgres(t); c.Limits = api.Limits{} })
	hostC := env.Device(t, "host")
	res, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	before := scrapeOf(t, env.URL)
	g := &guest.Guest{C: env.Device(t, "broke"), Suites: []seal.Suite{seal.Preset}}
	if err := harness.PaidFlow(ctx, hostC, res.Msg.Hotspot, g); err == nil || !strings.Contains(err.Error(), "insufficient funds") {
		t.Fatalf("a flow from an empty wallet: %v, want refused for insufficient funds", err)
	}
	after := scrapeOf(t, env.URL)
	if n := after.value("sharespot_store_replays_total") - before.value("sharespot_store_replays_total"); n != 1 {
		t.Errorf("sharespot_store_replays_total rose by %v, want 1 (the refused payment)", n)
	}
	if n := after.value("sharespot_store_retries_total") - before.value("sharespot_store_retries_total"); n != 0 {
		t.Errorf("sharespot_store_retries_total rose by %v, want 0", n)
	}
}

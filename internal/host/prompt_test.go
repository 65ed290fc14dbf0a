package host

import (
	"context"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
)

// eventGateway is a gateway whose events the test sends.
type eventGateway struct {
	mu        sync.Mutex
	quota     map[string]int64
	used      map[string]int64 // what Usage says; 0 unless a test sets it
	threshold map[string]int64 // each admission's prompt level
	ev        chan gateway.Event
}

func (g *eventGateway) Admit(_ context.Context, gr gateway.Grant) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.quota[gr.SessionID] = gr.Quota
	g.threshold[gr.SessionID] = gr.Threshold
	return nil
}

func (g *eventGateway) Extend(_ context.Context, id string, n int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.quota[id] += n
	return nil
}

func (g *eventGateway) Usage(id string) (int64, int64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.used[id], g.quota[id], nil
}

func (g *eventGateway) Revoke(context.Context, string) error                     { return nil }
func (g *eventGateway) Acknowledge(context.Context, string, int64, []byte) error { return nil }
func (g *eventGateway) Evidence(string) (gateway.Evidence, error)                { return gateway.Evidence{}, nil }
func (g *eventGateway) Events() <-chan gateway.Event                             { return g.ev }
func (g *eventGateway) Run(ctx context.Context) error                            { <-ctx.Done(); return nil }
func (g *eventGateway) Addr() string                                             { return "192.0.2.1:1080" }

// promptRig is a host agent on an event gateway and a guest with a paid
// session (warning level 1 MB), the host agent reporting on it.
type promptRig struct {
	ctx    context.Context
	env    *harness.Env
	h      *Host
	gw     *eventGateway
	hostC  *client.Client
	guestC *client.Client
	ses    *guest.Session // the guest's, as its flow runs it
	// stopHost stops the host agent (once; the test's end does too).
	stopHost func()
}

// newPromptRig: 3 MB bought at 1 per MB.
func newPromptRig(t *testing.T) *promptRig { return newHostRig(t, 1, 3_000_000) }

// newHostRig: a guest funded with 10,000 buys buy bytes at priceMinor per
// MB (top-ups at the same price).
func newHostRig(t *testing.T, priceMinor, buy int64) *promptRig {
	const MB, warn = 1_000_000, 1_000_000
	ctx, cancel := context.WithCancel(context.Background())
	env := harness.Start(t, nil)
	hostC, guestC := env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, guestC, "EUR", 10_000)
	hs, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("x"), Bssid: "02:00:00:00:00:0b", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: priceMinor, UnitBytes: MB, MinPurchaseBytes: MB, TopupPriceMinor: priceMinor},
		ShareableBytes: 1000 * MB, WarnAtBytes: warn,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	gw := &eventGateway{quota: map[string]int64{}, used: map[string]int64{}, threshold: map[string]int64{}, ev: make(chan gateway.Event)}
	h := &Host{C: hostC, GW: gw, Threshold: warn, ReportEvery: time.Hour}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	var once sync.Once
	stopHost := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("host: %v", err)
			}
		})
	}
	t.Cleanup(stopHost)
	g := &guest.Guest{C: guestC, Unverified: true} // these tests are about the host's counts alone
	harness.ListenGuest(t, g)
	ses, err := g.BeginHotspot(ctx, hs.Msg.Hotspot.Id, buy)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{}); err != nil {
		t.Fatal(err)
	}
	// The host agent reports on the session once it has handled the
	// payment's confirmation, just after the grant reaches the guest.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		h.mu.Lock()
		active := h.active[ses.ID]
		h.mu.Unlock()
		if active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the host agent did not take the paid session as active")
		}
	}
	return &promptRig{ctx: ctx, env: env, h: h, gw: gw, hostC: hostC, guestC: guestC, ses: ses, stopHost: stopHost}
}

// TestPromptLevelOfASmallPurchase: a first purchase at or below the
// warning level (1 MB) is admitted with half of it as its prompt level, not
// the warning level, which would prompt at once; a larger one with the
// warning level.
func TestPromptLevelOfASmallPurchase(t *testing.T) {
	const MB = 1_000_000
	for _, tt := range []struct{ buy, want int64 }{{MB, MB / 2}, {3 * MB, MB}} {
		r := newHostRig(t, 1, tt.buy)
		r.gw.mu.Lock()
		got := r.gw.threshold[r.ses.ID]
		r.gw.mu.Unlock()
		if got != tt.want {
			t.Errorf("bought %d bytes with a warning level of 1 MB: prompt level %d, want %d", tt.buy, got, tt.want)
		}
	}
}

// TestEarlyPromptHeldBackAtHalf: an early ThresholdCrossed (by the rate)
// with half the volume or more left prompts nothing, though the server
// would take it (0.9 MB left is below the 1 MB warning level); the one at
// the session's level does.
func TestEarlyPromptHeldBackAtHalf(t *testing.T) {
	const MB = 1_000_000
	r := newHostRig(t, 1, 1.5*MB)
	r.gw.ev <- gateway.Event{Kind: gateway.ThresholdCrossed, SessionID: r.ses.ID, Used: 0.6 * MB, Quota: 1.5 * MB}
	r.gw.ev <- gateway.Event{Kind: gateway.ThresholdCrossed, SessionID: r.ses.ID, Used: 0.8 * MB, Quota: 1.5 * MB}
	_, p := harness.NextIn[*sharespotv1.Envelope_LowQuotaPrompt](t, r.ses.Messages())
	if p.LowQuotaPrompt.UsedBytes != 0.8*MB {
		t.Fatalf("prompt %v, want the one with 0.7 MB left, not the early one with 0.9 MB", p.LowQuotaPrompt)
	}
}

// TestPromptAfterAHigherReport: a usage report sent after the threshold
// event but before the prompt (they go on side by side) makes the event's
// count lower than the server's; the prompt carries the gateway's count
// as it is then, and reaches the guest.
func TestPromptAfterAHigherReport(t *testing.T) {
	const MB = 1_000_000
	r := newPromptRig(t)
	r.gw.mu.Lock()
	r.gw.used[r.ses.ID] = 2.7 * MB
	r.gw.mu.Unlock()
	if _, err := r.hostC.Sessions.ReportUsage(r.ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: r.ses.ID, UsedBytes: 2.7 * MB})); err != nil {
		t.Fatal(err)
	}
	r.gw.ev <- gateway.Event{Kind: gateway.ThresholdCrossed, SessionID: r.ses.ID, Used: 2.1 * MB, Quota: 3 * MB}
	_, p := harness.NextIn[*sharespotv1.Envelope_LowQuotaPrompt](t, r.ses.Messages())
	if p.LowQuotaPrompt.UsedBytes != 2.7*MB {
		t.Fatalf("prompt %v, want one at the gateway's 2.7 MB", p.LowQuotaPrompt)
	}
}

// TestPromptOncePerVolume: the gateway's early ThresholdCrossed (at the
// session's rate, before the warning level) that the server refuses leaves
// the prompt to the one at the warning level; a second event for the same
// volume prompts nothing; after a top-up the next one prompts again.
func TestPromptOncePerVolume(t *testing.T) {
	const MB = 1_000_000
	r := newPromptRig(t)
	ctx, gw, ses := r.ctx, r.gw, r.ses
	send := func(used, quota int64) {
		gw.ev <- gateway.Event{Kind: gateway.ThresholdCrossed, SessionID: ses.ID, Used: used, Quota: quota}
	}
	send(MB/2, 3*MB)   // early: 2.5 MB left; this server refuses it
	send(2.5*MB, 3*MB) // at the warning level
	_, p := harness.NextIn[*sharespotv1.Envelope_LowQuotaPrompt](t, ses.Messages())
	if p.LowQuotaPrompt.UsedBytes != 2.5*MB || p.LowQuotaPrompt.GrantedBytes != 3*MB {
		t.Fatalf("prompt %v, want the one at the warning level", p.LowQuotaPrompt)
	}
	send(2.6*MB, 3*MB) // again for the same volume: nothing
	// The host handles events one at a time: once it takes the next one,
	// it is done with that one, and any prompt it sent is in the guest's
	// inbox, before what the top-up request brings.
	gw.ev <- gateway.Event{Kind: gateway.Idle, SessionID: ses.ID}
	if err := ses.RequestTopUp(ctx, MB); err != nil {
		t.Fatal(err)
	}
	// The guest takes the top-up's steps one by one: the next message it
	// gets must be the fee, not a second prompt.
	select {
	case e := <-ses.Messages():
		fi, ok := e.Body.(*sharespotv1.Envelope_FeeInfo)
		if !ok {
			t.Fatalf("after the top-up request the guest got %v, want the fee information (a second prompt for one volume?)", e)
		}
		q := fi.FeeInfo.Quote
		rc, err := ses.Pay(ctx, q, guest.BuyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := ses.Confirm(ctx, q, rc); err != nil {
			t.Fatal(err)
		}
		if _, err := ses.AwaitGrant(ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, q.Id); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no fee information")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, q, _ := gw.Usage(ses.ID); q == 4*MB {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the top-up did not reach the gateway")
		}
	}
	send(3.5*MB, 4*MB)
	_, p = harness.NextIn[*sharespotv1.Envelope_LowQuotaPrompt](t, ses.Messages())
	if p.LowQuotaPrompt.UsedBytes != 3.5*MB || p.LowQuotaPrompt.GrantedBytes != 4*MB {
		t.Fatalf("prompt %v, want the one for the topped-up volume (a second for the first volume came?)", p.LowQuotaPrompt)
	}
}

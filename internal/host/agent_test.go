package host_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/protocol"
)

// countingGate counts what reaches the gate.
type countingGate struct {
	gateway.CodeGate
	admits, extends atomic.Int32
}

func (g *countingGate) Admit(ctx context.Context, gr gateway.Grant) error {
	g.admits.Add(1)
	return g.CodeGate.Admit(ctx, gr)
}

func (g *countingGate) Extend(ctx context.Context, sid string, n int64) error {
	g.extends.Add(1)
	return g.CodeGate.Extend(ctx, sid, n)
}

// TestHostHandlesRedeliveryOnce: inbox delivery is at-least-once, so the
// host agent must treat a confirmation it sees again as already handled:
// the top-up volume reaches the gate once, and no second grant is sent.
func TestHostHandlesRedeliveryOnce(t *testing.T) {
	ctx := context.Background()
	gate := &countingGate{CodeGate: gateway.CodeGate{Address: "192.0.2.1:1080"}}
	hostC, guestC, agent, hs := hostRig(t, gate, 1000, 1_000_000)
	var confirmations []*sharespotv1.Envelope
	hostIn := harness.Listen(t, hostC, func(ctx context.Context, env *sharespotv1.Envelope) error {
		if env.GetPaymentConfirmed() != nil {
			confirmations = append(confirmations, env)
		}
		return agent.Handle(ctx, env)
	})
	ses, _ := buy(t, guestC, hs.Msg.Hotspot.Id, 10_000)
	if _, err := ses.TopUp(ctx, 5000, guest.BuyOptions{}); err != nil {
		t.Fatal(err)
	}
	// The host extends the gate once the server accepted its grant, a
	// moment after the guest may hear of it.
	for deadline := time.Now().Add(5 * time.Second); gate.extends.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	hostIn.Stop()
	if gate.admits.Load() != 1 || gate.extends.Load() != 1 || len(confirmations) != 2 {
		t.Fatalf("admits %d, extends %d, confirmations %d", gate.admits.Load(), gate.extends.Load(), len(confirmations))
	}
	// Deliver both confirmations again.
	for _, c := range confirmations {
		if err := agent.Handle(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if gate.admits.Load() != 1 || gate.extends.Load() != 1 {
		t.Fatalf("after redelivery: admits %d, extends %d", gate.admits.Load(), gate.extends.Load())
	}
	s, err := ses.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.GrantedBytes != 15_000 {
		t.Fatalf("granted %d, want 15000", s.GrantedBytes)
	}
}

// TestHostPassesAcknowledgments: the guest's acknowledgments the server
// relays reach the gateway, which checks the guest's signature again with
// the device key the grant carried (checked against the guest's ID); a
// forged or misaddressed one is dropped.
func TestHostPassesAcknowledgments(t *testing.T) {
	ctx := context.Background()
	gate := &gateway.CodeGate{Address: "192.0.2.1:1080"}
	hostC, guestC, agent, hs := hostRig(t, gate, 1_000_000, 1_000_000_000)
	harness.Listen(t, hostC, agent.Handle)
	ses, _ := buy(t, guestC, hs.Msg.Hotspot.Id, 200_000_000)
	cur, err := ses.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	awaitAck := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			ev, err := gate.Evidence(ses.ID)
			if err == nil && ev.Verified && ev.Acked == want && protocol.VerifyAck(cur.GuestDeviceKey, ses.ID, want, ev.Signature) == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway holds %+v, %v; want %d acknowledged", ev, err, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := ses.Acknowledge(ctx, 4000); err != nil {
		t.Fatal(err)
	}
	awaitAck(4000)

	// A restarted agent passes them on too.
	agent2 := &host.Agent{C: hostC, GW: gate}
	if err := agent2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ackEnv := func(ack *sharespotv1.UsageAck) *sharespotv1.Envelope {
		return &sharespotv1.Envelope{SessionId: ses.ID, Body: &sharespotv1.Envelope_UsageAcknowledged{
			UsageAcknowledged: &sharespotv1.UsageAcknowledged{Ack: ack}}}
	}
	if err := agent2.Handle(ctx, ackEnv(guestC.SignAck(ses.ID, 6000))); err != nil {
		t.Fatal(err)
	}
	awaitAck(6000)
	// Forged (signed by another device), or naming another session than
	// its envelope: dropped.
	if err := agent2.Handle(ctx, ackEnv(hostC.SignAck(ses.ID, 9000))); err != nil {
		t.Fatal(err)
	}
	if err := agent2.Handle(ctx, ackEnv(guestC.SignAck("other", 9000))); err != nil {
		t.Fatal(err)
	}
	awaitAck(6000)
}

// buy is the guest's side of C1.5–C1.7 as guest.Session runs it: guestC,
// listening to its inbox, asks for bytes at hotspot and buys them with
// Session.Buy (the fee, the payment, the confirmation, the grant).
func buy(t *testing.T, guestC *client.Client, hotspot string, bytes int64) (*guest.Session, *sharespotv1.AccessGranted) {
	t.Helper()
	ctx := context.Background()
	g := &guest.Guest{C: guestC}
	harness.ListenGuest(t, g)
	ses, err := g.BeginHotspot(ctx, hotspot, bytes)
	if err != nil {
		t.Fatal(err)
	}
	grant, err := ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ses, grant
}

// hostRig is a server, a host whose agent answers at gate, a hotspot at 1
// cent per unit bytes (the smallest purchase one unit) sharing shareable
// bytes, and a guest with €100.
func hostRig(t *testing.T, gate gateway.Gateway, unit, shareable int64) (hostC, guestC *client.Client, agent *host.Agent, hs *connect.Response[sharespotv1.RegisterResponse]) {
	t.Helper()
	ctx := context.Background()
	env := harness.Start(t, nil)
	hostC, guestC = env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, guestC, "EUR", 10_000)
	agent = &host.Agent{C: hostC, GW: gate}
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hs, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("x"), Bssid: "02:00:00:00:00:09", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 1, UnitBytes: unit, MinPurchaseBytes: unit, TopupPriceMinor: 1},
		ShareableBytes: shareable, WarnAtBytes: 500,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	return hostC, guestC, agent, hs
}

// countingTransport counts the calls of one procedure.
type countingTransport struct {
	http.RoundTripper
	path string
	n    atomic.Int32
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == c.path {
		c.n.Add(1)
	}
	return c.RoundTripper.RoundTrip(r)
}

// TestHostGrantsFromTheConfirmation (C3.3, C1.7): the payment confirmation
// the server relays carries the quote and the guest, so the host's agent
// checks the receipt and grants without reading the session; a
// confirmation without them, as servers before 2026-11-30 send, is
// completed by reading the session and still granted.
func TestHostGrantsFromTheConfirmation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		strip   bool
		wantGet int32
	}{
		{"the quote in the confirmation", false, 0},
		{"an older server's confirmation", true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			env := harness.Start(t, nil)
			gets := &countingTransport{RoundTripper: client.NewHTTPClient().Transport, path: "/sharespot.v1.SessionService/Get"}
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			// Direct: the transport counts Gets as HTTP requests, which a
			// channel would carry inside its one stream.
			hostC := client.New(env.URL, key, client.Options{HTTPClient: &http.Client{Transport: gets}, Direct: true})
			if err := hostC.SignIn(ctx); err != nil {
				t.Fatal(err)
			}
			guestC := env.Device(t, "guest")
			env.Fund(t, guestC, "EUR", 10_000)
			gate := &countingGate{CodeGate: gateway.CodeGate{Address: "192.0.2.1:1080"}}
			agent := &host.Agent{C: hostC, GW: gate}
			if err := agent.Start(ctx); err != nil {
				t.Fatal(err)
			}
			hs, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
			if err != nil {
				t.Fatal(err)
			}
			harness.Listen(t, hostC, func(ctx context.Context, env *sharespotv1.Envelope) error {
				if pc := env.GetPaymentConfirmed(); pc != nil {
					if pc.Quote == nil || pc.GuestDeviceId != guestC.DeviceID() {
						t.Errorf("the confirmation carries quote %v and guest %q", pc.Quote, pc.GuestDeviceId)
					}
					if tc.strip {
						pc.Quote, pc.GuestDeviceId = nil, ""
					}
				}
				return agent.Handle(ctx, env)
			})
			_, ag := buy(t, guestC, hs.Msg.Hotspot.Id, 10*harness.BenchMB)
			if ag.GrantedBytes != 10*harness.BenchMB || gate.admits.Load() != 1 {
				t.Fatalf("granted %d bytes, %d admissions at the gate", ag.GrantedBytes, gate.admits.Load())
			}
			if n := gets.n.Load(); n != tc.wantGet {
				t.Fatalf("the host read the session %d times to grant, want %d", n, tc.wantGet)
			}
		})
	}
}

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
	guestIn := harness.Listen(t, guestC, nil)
	g := &guest.Guest{C: guestC}
	ses, err := g.RequestAccess(ctx, hs.Msg.Hotspot.Id, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	buy := func() { buyQuoted(t, guestC, guestIn, ses.Id) }
	buy()
	if _, err := guestC.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: ses.Id, Bytes: 5000})); err != nil {
		t.Fatal(err)
	}
	buy()
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
	res, err := guestC.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: ses.Id}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Session.GrantedBytes != 15_000 {
		t.Fatalf("granted %d, want 15000", res.Msg.Session.GrantedBytes)
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
	guestIn := harness.Listen(t, guestC, nil)
	g := &guest.Guest{C: guestC}
	ses, err := g.RequestAccess(ctx, hs.Msg.Hotspot.Id, 200_000_000)
	if err != nil {
		t.Fatal(err)
	}
	buyQuoted(t, guestC, guestIn, ses.Id)
	awaitAck := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			ev, err := gate.Evidence(ses.Id)
			if err == nil && ev.Verified && ev.Acked == want && protocol.VerifyAck(ses.GuestDeviceKey, ses.Id, want, ev.Signature) == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway holds %+v, %v; want %d acknowledged", ev, err, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := guestC.Acknowledge(ctx, ses.Id, 4000); err != nil {
		t.Fatal(err)
	}
	awaitAck(4000)

	// A restarted agent passes them on too.
	agent2 := &host.Agent{C: hostC, GW: gate}
	if err := agent2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ackEnv := func(ack *sharespotv1.UsageAck) *sharespotv1.Envelope {
		return &sharespotv1.Envelope{SessionId: ses.Id, Body: &sharespotv1.Envelope_UsageAcknowledged{
			UsageAcknowledged: &sharespotv1.UsageAcknowledged{Ack: ack}}}
	}
	if err := agent2.Handle(ctx, ackEnv(guestC.SignAck(ses.Id, 6000))); err != nil {
		t.Fatal(err)
	}
	awaitAck(6000)
	// Forged (signed by another device), or naming another session than
	// its envelope: dropped.
	if err := agent2.Handle(ctx, ackEnv(hostC.SignAck(ses.Id, 9000))); err != nil {
		t.Fatal(err)
	}
	if err := agent2.Handle(ctx, ackEnv(guestC.SignAck("other", 9000))); err != nil {
		t.Fatal(err)
	}
	awaitAck(6000)
}

// buyQuoted is the guest's side of C3.2–C3.3 and C1.7: it takes the next
// fee from its inbox, pays it, confirms the receipt and waits for the grant.
func buyQuoted(t *testing.T, guestC *client.Client, guestIn *harness.Inbox, sessionID string) *sharespotv1.Envelope_AccessGranted {
	t.Helper()
	ctx := context.Background()
	_, fi := harness.Next[*sharespotv1.Envelope_FeeInfo](t, guestIn)
	pay, err := guestC.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: fi.FeeInfo.Quote.Id}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guestC.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sessionID, Receipt: pay.Msg.Receipt})); err != nil {
		t.Fatal(err)
	}
	_, ag := harness.Next[*sharespotv1.Envelope_AccessGranted](t, guestIn)
	return ag
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
			hostC := client.New(env.URL, key, client.Options{HTTPClient: &http.Client{Transport: gets}})
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
			guestIn := harness.Listen(t, guestC, nil)
			g := &guest.Guest{C: guestC}
			ses, err := g.RequestAccess(ctx, hs.Msg.Hotspot.Id, 10*harness.BenchMB)
			if err != nil {
				t.Fatal(err)
			}
			ag := buyQuoted(t, guestC, guestIn, ses.Id)
			if ag.AccessGranted.GrantedBytes != 10*harness.BenchMB || gate.admits.Load() != 1 {
				t.Fatalf("granted %d bytes, %d admissions at the gate", ag.AccessGranted.GrantedBytes, gate.admits.Load())
			}
			if n := gets.n.Load(); n != tc.wantGet {
				t.Fatalf("the host read the session %d times to grant, want %d", n, tc.wantGet)
			}
		})
	}
}

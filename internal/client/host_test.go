package client_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
)

// countingGate counts what reaches the gate.
type countingGate struct {
	client.CodeGate
	admits, extends atomic.Int32
}

func (g *countingGate) Admit(sid string, code []byte, n int64) error {
	g.admits.Add(1)
	return g.CodeGate.Admit(sid, code, n)
}

func (g *countingGate) Extend(sid string, n int64) error {
	g.extends.Add(1)
	return g.CodeGate.Extend(sid, n)
}

// TestHostHandlesRedeliveryOnce: inbox delivery is at-least-once, so the
// host agent must treat a confirmation it sees again as already handled:
// the top-up volume reaches the gate once, and no second grant is sent.
func TestHostHandlesRedeliveryOnce(t *testing.T) {
	ctx := context.Background()
	env := harness.Start(t, nil)
	host, guest := env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, guest, "EUR", 10_000)
	gate := &countingGate{CodeGate: client.CodeGate{Kind: "proxy", Address: "192.0.2.1:1080"}}
	agent := &client.Host{C: host, Gate: gate}
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hs, err := host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("x"), Bssid: "02:00:00:00:00:09", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 1, UnitBytes: 1000, MinPurchaseBytes: 1000, TopupPriceMinor: 1},
		ShareableBytes: 1_000_000, WarnAtBytes: 500,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	var confirmations []*sharespotv1.Envelope
	hostIn := harness.Listen(t, host, func(ctx context.Context, env *sharespotv1.Envelope) error {
		if env.GetPaymentConfirmed() != nil {
			confirmations = append(confirmations, env)
		}
		return agent.Handle(ctx, env)
	})
	guestIn := harness.Listen(t, guest, nil)
	g := &client.Guest{C: guest}
	ses, err := g.RequestAccess(ctx, hs.Msg.Hotspot.Id, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	buy := func() {
		_, fi := harness.Next[*sharespotv1.Envelope_FeeInfo](t, guestIn)
		pay, err := guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: fi.FeeInfo.Quote.Id}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := guest.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: ses.Id, Receipt: pay.Msg.Receipt})); err != nil {
			t.Fatal(err)
		}
		harness.Next[*sharespotv1.Envelope_AccessGranted](t, guestIn)
	}
	buy()
	if _, err := guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: ses.Id, Bytes: 5000})); err != nil {
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
	res, err := guest.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: ses.Id}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Session.GrantedBytes != 15_000 {
		t.Fatalf("granted %d, want 15000", res.Msg.Session.GrantedBytes)
	}
}

package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
)

// TestFailoverToLiveServer: with its first server gone, a client whose
// ServerURLs name a live one signs in, calls and receives its inbox there.
func TestFailoverToLiveServer(t *testing.T) {
	env := harness.Start(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	guestC := client.New(dead, key, client.Options{ServerURLs: []string{env.URL}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := guestC.SignIn(ctx); err != nil {
		t.Fatalf("sign in through the failover: %v", err)
	}
	guestIn := harness.Listen(t, guestC, nil)

	hostC := env.Device(t, "host")
	hs, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("x"), Bssid: "02:00:00:00:00:0a", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 1, UnitBytes: 1000, MinPurchaseBytes: 1000, TopupPriceMinor: 1},
		ShareableBytes: 1_000_000, WarnAtBytes: 500,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	g := &guest.Guest{C: guestC}
	ses, err := g.RequestAccess(ctx, hs.Msg.Hotspot.Id, 1000)
	if err != nil {
		t.Fatalf("request access through the failover: %v", err)
	}
	if _, err := hostC.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: ses.Id, Reason: "busy"})); err != nil {
		t.Fatal(err)
	}
	got, end := harness.Next[*sharespotv1.Envelope_SessionEnded](t, guestIn)
	if got.SessionId != ses.Id || end.SessionEnded.Session.GetEndReason() != "declined by host: busy" {
		t.Fatalf("guest got %v", got)
	}
}

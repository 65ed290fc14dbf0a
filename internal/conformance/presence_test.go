package conformance

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
)

// TestHostPresence: a hotspot is offered only while its host is there.
// Registering counts as being there for the host-away bound; the host
// agent's inbox stream keeps it there (marked every third of the bound);
// a stream that ends without a word keeps it online for a grace (a cut:
// a load balancer's reload, a replica's restart), and offline after it
// unless a new stream is there; the host's Leave (share stopping) makes it
// offline at once. An offline hotspot is listed
// apart in discovery, with when its host was last there, never among the
// offers, and a request for it is refused at once, with the reason, and
// costs the guest nothing. A withdrawn hotspot is neither.
func TestHostPresence(t *testing.T) {
	const away, grace = 3 * time.Second, 2 * time.Second
	env := harness.Start(t, func(c *server.Config) {
		c.Session = session.DefaultConfig()
		c.Session.HostAway = away
		c.HostGoneGrace = grace
	})
	ctx := context.Background()
	hostC, guestC := env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, guestC, "EUR", 1000)
	reg, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	hs := reg.Msg.Hotspot
	ap := hs.Instruction.AccessPoint
	discover := func() *sharespotv1.DiscoverResponse {
		t.Helper()
		res, err := guestC.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: []*sharespotv1.Candidate{{Bssid: ap.Bssid, Ssid: ap.Ssid, SignalDbm: -50}}}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	online := func() bool {
		t.Helper()
		d := discover()
		switch {
		case len(d.Available) == 1 && len(d.Offline) == 0 && d.Available[0].HotspotId == hs.Id:
			return true
		case len(d.Available) == 0 && len(d.Offline) == 1 && d.Offline[0].HotspotId == hs.Id && d.Offline[0].AccessPoint.GetBssid() == ap.Bssid:
			return false
		}
		t.Fatalf("discovery gave %v", d)
		return false
	}
	await := func(want bool, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for online() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: online is not %v after 10 s", what, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !online() {
		t.Fatal("a hotspot just registered is not offered")
	}

	// Nothing heard from the host for longer than the bound: offline.
	env.Clock.Advance(away + time.Second)
	if online() {
		t.Fatal("a host silent past the bound is still offered")
	}
	seen := discover().Offline[0].SeenUnixMs
	if seen != hs.CreatedUnixMs {
		t.Errorf("last there at %d, want the registration's %d", seen, hs.CreatedUnixMs)
	}
	// A request for it is refused at once and reserves nothing.
	g := &guest.Guest{C: guestC}
	_, err = g.BeginHotspot(ctx, hs.Id, 10*harness.BenchMB)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("request for an offline hotspot: %v, want failed_precondition saying it is offline", err)
	}
	if got := harness.Balance(t, guestC, "EUR"); got != 1000 {
		t.Fatalf("the guest's wallet holds %d after the refusal, want 1000", got)
	}
	list := func() *sharespotv1.Hotspot {
		t.Helper()
		res, err := hostC.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
		if err != nil || len(res.Msg.Hotspots) != 1 {
			t.Fatalf("list: %v, %v", res, err)
		}
		return res.Msg.Hotspots[0]
	}
	if list().Online {
		t.Error("the host's own list says online")
	}

	// The host's agent connects: offered again, and kept so past the
	// bound while its stream stays open.
	in := harness.Listen(t, hostC, nil)
	await(true, "the host's stream opened")
	for range 3 {
		env.Clock.Advance(away / 2)
		time.Sleep(away / 3)
	}
	await(true, "the host's stream stayed open past the bound")
	if !list().Online {
		t.Error("the host's own list says offline while its stream is open")
	}
	// The stream is cut and the host is back on a new one within the
	// grace: online all along, and still after the grace.
	in.Stop()
	in = harness.Listen(t, hostC, nil)
	time.Sleep(grace + time.Second)
	await(true, "the host's stream was cut and opened again within the grace")
	// The stream ends and no other comes: offline after the grace, with
	// no clock moved.
	in.Stop()
	await(false, "the host's stream closed")
	// Back, then stopping with a word (share's Leave): offline at once.
	in = harness.Listen(t, hostC, nil)
	await(true, "the host's stream opened again")
	if _, err := hostC.Hotspots.Leave(ctx, connect.NewRequest(&sharespotv1.LeaveRequest{})); err != nil {
		t.Fatal(err)
	}
	if online() {
		t.Fatal("a host that left is still offered")
	}
	in.Stop()

	// Withdrawn: neither offered nor listed as offline.
	if _, err := hostC.Hotspots.Withdraw(ctx, connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: hs.Id})); err != nil {
		t.Fatal(err)
	}
	if d := discover(); len(d.Available)+len(d.Offline) != 0 {
		t.Fatalf("a withdrawn hotspot in discovery: %v", d)
	}
	env.MustAudit(t)
}

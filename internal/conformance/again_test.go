package conformance

import (
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/seal"
)

// TestRequestSentAgain (C1.6): a request sent again with the same guest
// keys, as a guest does whose first answer was lost (a replica killed, a
// connection or channel broken), is answered with the session the first
// made: no second session, no second request to the host, no second place
// among the account's unpaid requests. The same keys for another volume
// are refused: keys are fresh for every request.
func TestRequestSentAgain(t *testing.T) {
	env := harness.Start(t, nil)
	ctx := t.Context()
	host := env.Device(t, "host")
	hostIn := harness.Listen(t, host, nil)
	hs, err := host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(0)}))
	if err != nil {
		t.Fatal(err)
	}
	g := env.Device(t, "guest")
	var keys []*sharespotv1.GuestKey
	for _, s := range seal.Suites() {
		k, err := seal.GenerateKey(s)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, &sharespotv1.GuestKey{Suite: string(s), PublicKey: k.PublicKey()})
	}
	request := func(bytes int64) (*sharespotv1.Session, error) {
		res, err := g.Sessions.RequestAccess(ctx, connect.NewRequest(&sharespotv1.RequestAccessRequest{
			HotspotId: hs.Msg.Hotspot.Id, Bytes: bytes, GuestKeys: keys, UsageMode: sharespotv1.UsageMode_USAGE_MODE_UNVERIFIED}))
		if err != nil {
			return nil, err
		}
		return res.Msg.Session, nil
	}
	first, err := request(harness.BenchMB)
	if err != nil {
		t.Fatal(err)
	}
	again, err := request(harness.BenchMB)
	if err != nil {
		t.Fatalf("the same request again: %v", err)
	}
	if again.Id != first.Id || again.State != sharespotv1.SessionState_SESSION_STATE_REQUESTED {
		t.Errorf("the same request again made session %s (%v), want %s", again.Id, again.State, first.Id)
	}
	if _, err := request(2 * harness.BenchMB); harness.Code(err) != connect.CodeAlreadyExists {
		t.Errorf("the same keys for another volume: %v, want already_exists", err)
	}
	l, err := g.Sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Msg.Sessions) != 1 {
		t.Errorf("the guest has %d open sessions, want 1", len(l.Msg.Sessions))
	}
	// The host hears of the request once: every message it gets, up to
	// the end of the session it then declines, is counted.
	if _, err := host.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: first.Id, Reason: "busy"})); err != nil {
		t.Fatal(err)
	}
	asked := 0
	timeout := time.After(10 * time.Second)
	for ended := false; !ended; {
		select {
		case m := <-hostIn.C():
			switch m.Body.(type) {
			case *sharespotv1.Envelope_AccessRequested:
				asked++
			case *sharespotv1.Envelope_SessionEnded:
				ended = m.SessionId == first.Id
			}
		case <-timeout:
			t.Fatal("the host heard nothing of the declined session's end within 10 s")
		}
	}
	if asked != 1 {
		t.Errorf("the host was asked %d times, want once", asked)
	}
	env.MustAudit(t)
}

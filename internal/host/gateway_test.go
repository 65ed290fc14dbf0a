package host

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"testing"

	"github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
)

// TestAgentDrivesGateway: the agent's calls reach a real gateway with the
// hotspot's warning level, and its refusals are sorted: what the gateway
// no longer holds is not an error, a malformed call is.
func TestAgentDrivesGateway(t *testing.T) {
	p, err := proxy.New(proxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	a := &Agent{GW: p, Threshold: 1000, Log: slog.New(slog.DiscardHandler)}
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	pub, key, _ := ed25519.GenerateKey(nil)
	sig := func(n int64) []byte { return protocol.SignAck(key, "s", n) }
	if err := a.admit("s", code, 5000, true, pub); err != nil {
		t.Fatal(err)
	}
	if err := a.extend("s", 100); err != nil {
		t.Fatal(err)
	}
	if used, quota, err := p.Usage("s"); err != nil || used != 0 || quota != 5100 {
		t.Errorf("Usage = %d, %d, %v", used, quota, err)
	}
	if gw, _ := a.gateway("ses_any"); gw.Kind != "proxy" || gw.Address != p.Addr() || gw.Address == "" {
		t.Errorf("gateway() = %v", gw)
	}
	if err := a.acknowledgeAt("s", 10, sig(10)); err != nil {
		t.Fatal(err)
	}
	if ev, err := p.Evidence("s"); err != nil || ev.Acked != 10 || !ev.Verified {
		t.Errorf("evidence %+v, %v", ev, err)
	}
	if err := a.acknowledgeAt("unknown", 10, sig(10)); err != nil {
		t.Errorf("an acknowledgment for a session the gateway does not hold: %v", err)
	}
	if err := a.acknowledgeAt("s", 20, sig(19)); err != nil {
		t.Errorf("a badly signed acknowledgment is logged, not retried: %v", err)
	}
	if ev, _ := p.Evidence("s"); ev.Acked != 10 {
		t.Errorf("a badly signed acknowledgment counted: %+v", ev)
	}
	a.revoke("s")
	a.revoke("unknown") // logged, not fatal
	if err := a.acknowledgeAt("s", 20, sig(20)); err != nil {
		t.Errorf("an acknowledgment after revoke: %v", err)
	}
	if err := a.extend("s", 1); err == nil {
		t.Error("extend after revoke succeeded")
	}
}

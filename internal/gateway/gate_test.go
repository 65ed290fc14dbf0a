package gateway_test

import (
	"context"
	"testing"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/seal"
)

// The host agent drives the proxy through its Gate interface.
var _ client.Gate = (*gateway.Gate)(nil)

func TestGate(t *testing.T) {
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
	var g client.Gate = gateway.NewGate(p, "proxy", 1000, nil)
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Admit("s", code, 5000); err != nil {
		t.Fatal(err)
	}
	if err := g.Extend("s", 100); err != nil {
		t.Fatal(err)
	}
	if used, quota, err := p.Usage("s"); err != nil || used != 0 || quota != 5100 {
		t.Errorf("Usage = %d, %d, %v", used, quota, err)
	}
	if gw := g.Gateway(); gw.Kind != "proxy" || gw.Address != p.Addr() || gw.Address == "" {
		t.Errorf("Gateway() = %v", gw)
	}
	if err := g.Acknowledge("s", 10, 2000); err != nil {
		t.Fatal(err)
	}
	if err := g.Acknowledge("unknown", 10, 2000); err != nil {
		t.Errorf("an acknowledgment for a session the gateway does not hold: %v", err)
	}
	if err := g.Acknowledge("s", 10, 0); err == nil {
		t.Error("an acknowledgment without a window was taken")
	}
	g.Revoke("s")
	g.Revoke("unknown") // logged, not fatal
	if err := g.Acknowledge("s", 20, 2000); err != nil {
		t.Errorf("an acknowledgment after Revoke: %v", err)
	}
	if err := g.Extend("s", 1); err == nil {
		t.Error("Extend after Revoke succeeded")
	}
}

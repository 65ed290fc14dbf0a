package guest

import (
	"context"
	"crypto/ed25519"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
)

// TestAckerInBand: the guest's count reaches the host's gateway over the
// control stream, signed, as it grows, with no server at all (nothing
// listens at the client's server address); the gateway's answers come
// back; a gateway that restarts gets the whole count again on the next
// stream; the last count goes when the acker stops.
func TestAckerInBand(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := client.New("http://127.0.0.1:9", key, client.Options{}) // no server
	g := &Guest{C: cl}
	s := &Session{g: g, ID: "ses_inband"}
	code, err := seal.NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	start := func() (*proxy.Proxy, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		p, err := proxy.New(proxy.Config{Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); p.Run(ctx) }()
		for p.Addr() == "" {
			time.Sleep(time.Millisecond)
		}
		if err := p.Admit(ctx, gateway.Grant{SessionID: s.ID, Credential: code, Quota: 100 << 20, Verified: true, GuestKey: key.Public().(ed25519.PublicKey)}); err != nil {
			t.Fatal(err)
		}
		return p, func() { cancel(); <-done }
	}
	p, stop := start()
	var count atomic.Int64
	var states atomic.Int64
	a := &Acker{Session: s, Gateway: p.Addr(), Code: code, Count: count.Load, Base: 1000, Every: 20 * time.Millisecond,
		OnState: func(st protocol.GatewayState) { states.Add(1) }}
	s.Acknowledging(a)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	acked := func(p *proxy.Proxy, want int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ev, err := p.Evidence(s.ID)
			if err == nil && ev.Acked == want {
				if protocol.VerifyAck(key.Public().(ed25519.PublicKey), s.ID, ev.Acked, ev.Signature) != nil {
					t.Fatal("the gateway holds a signature that does not verify")
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the gateway holds %+v (%v), want %d acknowledged", ev, err, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	count.Store(5000)
	acked(p, 6000)
	count.Store(300_000)
	acked(p, 301_000)
	if states.Load() == 0 {
		t.Error("no state from the gateway")
	}
	// The gateway's answer travels back after it stored the count: wait
	// for the acker to have read it.
	for deadline := time.Now().Add(10 * time.Second); a.GatewayAcked() != 301_000; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the gateway confirmed %d, want 301000", a.GatewayAcked())
		}
	}
	// The gateway restarts without its state (a new one, same address
	// cannot be had portably: a new one at a new address stands for it,
	// so the acker is pointed there as connect would after a new grant).
	stop()
	p2, stop2 := start()
	defer stop2()
	a.SetGateway(p2.Addr())
	acked(p2, 301_000) // the whole count, on the new stream
	// Stopped: the last count goes too.
	count.Store(400_000)
	cancel()
	wg.Wait()
	acked(p2, 401_000)
	if s.lastCount() != 401_000 {
		t.Errorf("the session's last count is %d, want 401000 (its End's last word)", s.lastCount())
	}
}

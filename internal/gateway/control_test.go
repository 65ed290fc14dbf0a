package gateway

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/protocol"
)

// TestControlStreamFlood: a guest that floods its control stream with
// acknowledgments gets no more than ackRate of them checked a second
// (each is a signature check), loses none of what it acknowledged (the
// highest count is taken), and is answered.
func TestControlStreamFlood(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	gwSide, guestSide := net.Pipe()
	defer guestSide.Close()
	var (
		mu     sync.Mutex
		checks int
		acked  int64
	)
	c := Control{
		Acknowledge: func(_ context.Context, received int64, sig []byte) error {
			if err := protocol.VerifyAck(key.Public().(ed25519.PublicKey), "ses_flood", received, sig); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			checks++
			acked = max(acked, received)
			return nil
		},
		State: func() (protocol.GatewayState, error) {
			mu.Lock()
			defer mu.Unlock()
			return protocol.GatewayState{Acked: acked, Quota: 1 << 40, Limit: 1 << 40}, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- ServeControl(ctx, gwSide, bufio.NewReader(gwSide), c) }()
	// Read the gateway's answers as they come.
	go func() {
		r := bufio.NewReader(guestSide)
		for {
			if _, err := protocol.ReadFrame(r); err != nil {
				return
			}
		}
	}()
	const flood = 5000
	start := time.Now()
	var buf []byte
	for i := int64(1); i <= flood; i++ {
		buf = protocol.AppendAck(buf, i*1000, protocol.SignAck(key, "ses_flood", i*1000))
	}
	if _, err := guestSide.Write(buf); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		done, n := acked == flood*1000, checks
		mu.Unlock()
		if done {
			elapsed := time.Since(start)
			if limit := int(elapsed.Seconds()*ackRate) + ackBurst + 1; n > limit {
				t.Fatalf("%d acknowledgments checked in %v; at most %d (%d a second, burst %d)", n, elapsed, limit, ackRate, ackBurst)
			}
			t.Logf("%d acknowledgments sent, %d checked in %v, the last taken", flood, n, elapsed.Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the highest acknowledgment was not taken within 10 s (%d taken, %d checks)", acked, n)
		}
	}
	cancel()
	gwSide.Close()
	<-served
}

package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
)

// quiet is how long a stalled connection is watched for bytes that should
// not come. It is not a deadline for anything that should happen.
const quiet = 200 * time.Millisecond

// receive reads exactly n bytes of the pattern at offset off from c.
func receive(t testing.TB, c net.Conn, off, n int64) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, n)
	if k, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d of %d bytes at offset %d: %v", k, n, off, err)
	}
	for i, b := range buf {
		if b != pattern(off+int64(i)) {
			t.Fatalf("byte %d is %d, want %d", off+int64(i), b, pattern(off+int64(i)))
		}
	}
}

// stalled checks that c delivers nothing more for a while and stays open.
func stalled(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	k, err := c.Read(make([]byte, 1))
	switch {
	case k > 0:
		t.Fatal("the guest got a byte beyond its acknowledgment and window")
	case !errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("a held connection ended: %v", err)
	}
}

// TestCreditWindow: a session nobody acknowledged is not held; once the
// guest acknowledges, it gets exactly up to acked + window and then
// stalls, with its connection open; a higher acknowledgment lets the same
// connection go on; the acknowledgment survives a restart.
func TestCreditWindow(t *testing.T) {
	const window = 256 << 10
	ctx := context.Background()
	for _, mode := range copyModes {
		t.Run(mode.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "usage.json")
			st, err := gateway.OpenFileStore(path)
			if err != nil {
				t.Fatal(err)
			}
			o := startOrigin(t, streamN(-1))
			p, stop := startProxy(t, Config{Store: st, noSplice: mode.noSplice})
			pass := admit(t, p, "w", 64<<20, 0)
			ack := func(p *Proxy, n int64) {
				t.Helper()
				if err := p.Acknowledge(ctx, "w", n, window); err != nil {
					t.Fatal(err)
				}
			}
			// A session with no acknowledgment is not held: 1 MiB is four
			// windows.
			free, err := dialSOCKS(p.Addr(), "free", admit(t, p, "free", 64<<20, 0), o.addr)
			if err != nil {
				t.Fatal(err)
			}
			receive(t, free, 0, 1<<20)
			free.Close()

			// Acknowledging as it goes, the guest keeps going.
			ack(p, 0)
			c, err := dialSOCKS(p.Addr(), "w", pass, o.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := int64(0)
			for got < 4<<20 {
				ack(p, got)
				receive(t, c, got, 64<<10)
				got += 64 << 10
			}
			// It stops acknowledging: exactly acked + window, then a stall.
			ack(p, got)
			acked := got
			heldAt := func(p *Proxy, want int64) {
				t.Helper()
				receive(t, c, got, want-got)
				got = want
				stalled(t, c)
				if used, _ := usage(t, p, "w"); used != acked+window {
					t.Errorf("used %d, want acked %d + window %d", used, acked, window)
				}
			}
			heldAt(p, acked+window)
			// A higher acknowledgment: the same connection goes on.
			ack(p, got)
			acked = got
			heldAt(p, acked+window)
			// A lower one changes nothing.
			ack(p, 1)
			heldAt(p, acked+window)

			// Restart: the acknowledgment is read back from the store.
			c.Close()
			stop()
			st2, err := gateway.OpenFileStore(path)
			if err != nil {
				t.Fatal(err)
			}
			p2 := newProxy(t, Config{Store: st2, noSplice: mode.noSplice})
			if used, _ := usage(t, p2, "w"); used != acked+window {
				t.Fatalf("after restart: used %d, want %d", used, acked+window)
			}
			o2 := startOrigin(t, streamN(-1))
			c, err = dialSOCKS(p2.Addr(), "w", pass, o2.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got = 0
			stalled(t, c) // nothing: the guest is a window beyond its acknowledgment
			if err := p2.Acknowledge(ctx, "w", acked+window, window); err != nil {
				t.Fatal(err)
			}
			receive(t, c, 0, window)
			stalled(t, c)
			if used, _ := usage(t, p2, "w"); used != acked+2*window {
				t.Errorf("after restart: used %d, want %d", used, acked+2*window)
			}
		})
	}
}

// TestAcknowledgeRefusals: acknowledgments of unknown or revoked sessions
// and without a window are refused.
func TestAcknowledgeRefusals(t *testing.T) {
	ctx := context.Background()
	p := newProxy(t, Config{})
	admit(t, p, "a", 1000, 0)
	if err := p.Acknowledge(ctx, "nobody", 1, 1); !errors.Is(err, gateway.ErrUnknownSession) {
		t.Errorf("unknown session: %v", err)
	}
	if err := p.Acknowledge(ctx, "a", 1, 0); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("no window: %v", err)
	}
	if err := p.Revoke(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := p.Acknowledge(ctx, "a", 1, 1); !errors.Is(err, gateway.ErrRevoked) {
		t.Errorf("revoked session: %v", err)
	}
}

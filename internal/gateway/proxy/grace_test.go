package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
)

// readToEnd reads c until it ends, checking the pattern from offset off,
// and returns the bytes read and how the stream ended.
func readToEnd(t testing.TB, c net.Conn, off int64) (int64, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64<<10)
	n := int64(0)
	for {
		k, err := c.Read(buf)
		for i := range k {
			if buf[i] != pattern(off+n+int64(i)) {
				t.Fatalf("byte %d is %d, want %d", off+n+int64(i), buf[i], pattern(off+n+int64(i)))
			}
		}
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
}

// TestGrace: a session that runs out in the middle of a download keeps its
// connection, stalled, and refuses new ones; a top-up within the grace
// period resumes the same connection, which completes with every byte and
// no reset. Without a top-up the connection is closed when the grace
// period is over, and not before.
func TestGrace(t *testing.T) {
	const quota, total = 1 << 20, 3 << 20
	ctx := context.Background()
	for _, mode := range copyModes {
		for _, topUp := range []bool{true, false} {
			name := mode.name + "/top-up"
			if !topUp {
				name = mode.name + "/none"
			}
			t.Run(name, func(t *testing.T) {
				o := startOrigin(t, streamN(total))
				const grace = 2 * time.Second
				p := newProxy(t, Config{Grace: grace, noSplice: mode.noSplice})
				pass := admit(t, p, "g", quota, 0)
				c, err := dialSOCKS(p.Addr(), "g", pass, o.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				receive(t, c, 0, quota)
				nextEvent(t, p, "g", gateway.Exhausted)
				stalled(t, c)
				if c2, err := dialSOCKS(p.Addr(), "g", pass, o.addr); err == nil {
					c2.Close()
					t.Error("a session that ran out got a new connection")
				}
				if !topUp {
					n, err := readToEnd(t, c, quota)
					if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
						t.Errorf("after the grace period: %d more bytes, %v; want the connection closed", n, err)
					}
					if used, _ := usage(t, p, "g"); used != quota {
						t.Errorf("used %d, want %d", used, quota)
					}
					return
				}
				if err := p.Extend(ctx, "g", total); err != nil {
					t.Fatal(err)
				}
				n, err := readToEnd(t, c, quota)
				if n != total-quota || err != io.EOF {
					t.Errorf("after the top-up: %d more bytes, ended with %v; want %d and EOF", n, err, total-quota)
				}
				if k := o.accepted.Load(); k != 1 {
					t.Errorf("the origin saw %d connections, want the one", k)
				}
				if used, q := usage(t, p, "g"); used != total || q != quota+total {
					t.Errorf("Usage = %d/%d, want %d/%d", used, q, total, quota+total)
				}
			})
		}
	}
}

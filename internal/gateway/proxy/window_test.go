package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
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

// TestCreditWindow: an unverified session is not held; a verified one is
// held from its first byte to its last acknowledgment plus the window,
// max(1 MB, 2 % of its quota), with its connection open; a higher
// acknowledgment lets the same connection go on; the acknowledgment
// survives a restart.
func TestCreditWindow(t *testing.T) {
	const quota = 64 << 20
	window := protocol.Window(quota)
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
			ack := func(p *Proxy, n int64) {
				t.Helper()
				if err := p.Acknowledge(ctx, "w", n, ackOf("w", n)); err != nil {
					t.Fatal(err)
				}
			}
			// An unverified session is not held: 4 MiB is three windows.
			free, err := dialSOCKS(p.Addr(), "free", admit(t, p, "free", quota, 0), o.addr)
			if err != nil {
				t.Fatal(err)
			}
			receive(t, free, 0, 4<<20)
			free.Close()

			// A verified one that acknowledges nothing gets one window.
			pass := admitVerified(t, p, "w", quota)
			c, err := dialSOCKS(p.Addr(), "w", pass, o.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, acked := int64(0), int64(0)
			heldAt := func(p *Proxy, want int64) {
				t.Helper()
				receive(t, c, got, want-got)
				got = want
				stalled(t, c)
				if used, _ := usage(t, p, "w"); used != acked+window {
					t.Errorf("used %d, want acked %d + window %d", used, acked, window)
				}
				if ev, err := p.Evidence("w"); err != nil || !ev.Held || ev.Acked != acked {
					t.Errorf("evidence %+v, %v; want held at %d", ev, err, acked)
				}
			}
			heldAt(p, window)
			// Acknowledging as it goes, the guest keeps going.
			for got < 4<<20 {
				ack(p, got)
				receive(t, c, got, 64<<10)
				got += 64 << 10
			}
			// It stops acknowledging: exactly acked + window, then a stall.
			ack(p, got)
			acked = got
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
			if err := p2.Acknowledge(ctx, "w", acked+window, ackOf("w", acked+window)); err != nil {
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

// TestAcknowledgeRefusals: acknowledgments of unknown, unverified or
// revoked sessions, and badly signed ones, are refused.
func TestAcknowledgeRefusals(t *testing.T) {
	ctx := context.Background()
	p := newProxy(t, Config{})
	admit(t, p, "u", 1000, 0)
	admitVerified(t, p, "a", 1000)
	if err := p.Acknowledge(ctx, "nobody", 1, ackOf("nobody", 1)); !errors.Is(err, gateway.ErrUnknownSession) {
		t.Errorf("unknown session: %v", err)
	}
	if err := p.Acknowledge(ctx, "u", 1, ackOf("u", 1)); !errors.Is(err, gateway.ErrUnverified) {
		t.Errorf("unverified session: %v", err)
	}
	if err := p.Acknowledge(ctx, "a", 2, ackOf("a", 1)); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("a signature of another count: %v", err)
	}
	if err := p.Acknowledge(ctx, "a", 1, ackOf("u", 1)); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("a signature of another session: %v", err)
	}
	if err := p.Revoke(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := p.Acknowledge(ctx, "a", 1, ackOf("a", 1)); !errors.Is(err, gateway.ErrRevoked) {
		t.Errorf("revoked session: %v", err)
	}
}

// control opens a session's control stream on the gateway (HTTP CONNECT to
// the control authority with Basic credentials) and returns the answer's
// status and the stream.
func control(t *testing.T, addr, user, pass string) (int, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cred := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", protocol.ControlAuthority, protocol.ControlAuthority, cred)
	r := bufio.NewReader(c)
	res, err := http.ReadResponse(r, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, c, r
}

// frame reads the next frame of a control stream.
func frame(t *testing.T, c net.Conn, r *bufio.Reader) protocol.Frame {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	f, err := protocol.ReadFrame(r)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestControlStream: the guest's acknowledgments in-band, on the
// gateway's own listener: each answered with the session's figures once
// durable, and the window moves with them; refusals are answered and the
// stream stays open; nothing on it is metered; wrong credentials get no
// stream, nor does a revoked session keep one.
func TestControlStream(t *testing.T) {
	const quota = 64 << 20
	window := protocol.Window(quota)
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "usage.json"))
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, Config{Store: st})
	pass := admitVerified(t, p, "v", quota)
	if code, _, _ := control(t, p.Addr(), "v", "wrong"); code != http.StatusProxyAuthRequired {
		t.Fatalf("wrong code: %d", code)
	}
	code, c, r := control(t, p.Addr(), "v", pass)
	if code != http.StatusOK {
		t.Fatalf("control stream: %d", code)
	}
	if f := frame(t, c, r); f.Type != protocol.FrameState || f.State != (protocol.GatewayState{Quota: quota, Limit: window}) {
		t.Fatalf("first frame %+v", f)
	}
	c.Write(protocol.AppendAck(nil, 5_000_000, ackOf("v", 5_000_000)))
	if f := frame(t, c, r); f.Type != protocol.FrameState || f.State.Acked != 5_000_000 || f.State.Limit != 5_000_000+window {
		t.Fatalf("after an acknowledgment: %+v", f)
	}
	// Durable when answered: a restart keeps it.
	if ev, _ := p.Evidence("v"); ev.Acked != 5_000_000 || protocol.VerifyAck(guestPub, "v", ev.Acked, ev.Signature) != nil {
		t.Fatalf("evidence %+v", ev)
	}
	c.Write(protocol.AppendAck(nil, 9_000_000, ackOf("v", 1)))
	if f := frame(t, c, r); f.Type != protocol.FrameRefuse {
		t.Fatalf("a bad signature: %+v", f)
	}
	c.Write(protocol.AppendAck(nil, 6_000_000, ackOf("v", 6_000_000)))
	if f := frame(t, c, r); f.Type != protocol.FrameState || f.State.Acked != 6_000_000 {
		t.Fatalf("the stream stays open after a refusal: %+v", f)
	}
	if used, _ := usage(t, p, "v"); used != 0 {
		t.Errorf("the control stream was metered: %d bytes", used)
	}
	// An unverified session's stream refuses acknowledgments.
	upass := admit(t, p, "u", quota, 0)
	_, uc, ur := control(t, p.Addr(), "u", upass)
	frame(t, uc, ur)
	uc.Write(protocol.AppendAck(nil, 1, ackOf("u", 1)))
	if f := frame(t, uc, ur); f.Type != protocol.FrameRefuse || !strings.Contains(f.Text, "unverified") {
		t.Fatalf("unverified: %+v", f)
	}
	// Revoked: the stream ends.
	if err := p.Revoke(context.Background(), "v"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	for {
		if _, err := protocol.ReadFrame(r); err != nil {
			break
		}
	}
}

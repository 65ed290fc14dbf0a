package bus

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/relay"
)

func TestSubjectAndURL(t *testing.T) {
	if got, want := Subject("P56IOI7-MZJNU2Y"), "sharespot.wake.P56IOI7-MZJNU2Y"; got != want {
		t.Errorf("Subject = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"nats://127.0.0.1:4222", true},
		{"tls://nats.example:4222", true},
		{"nats://a:4222,nats://b:4222", true},
		{"nats://user:pw@a:4222", true},
		{"", false},
		{"127.0.0.1:4222", false},
		{"http://a:4222", false},
		{"nats://a:4222,b:4222", false},
	} {
		t.Run(tc.url, func(t *testing.T) {
			if got := IsURL(tc.url); got != tc.want {
				t.Errorf("IsURL(%q) = %v, want %v", tc.url, got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2", true},
		{"", false},
		{"a.b", false},
		{"a*", false},
		{">", false},
		{"a b", false},
	} {
		if got := validToken(tc.id); got != tc.want {
			t.Errorf("validToken(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
	if got := redact("nats://user:secret@a:4222,nats://b:4222"); got != "nats://xxxxx@a:4222,nats://b:4222" {
		t.Errorf("redact = %q", got)
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second}
	for i, w := range want {
		if got := Backoff(i + 1); got != w {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := Backoff(1 << 20); got != 5*time.Second {
		t.Errorf("Backoff(large) = %v", got)
	}
}

func TestDialRefusesMalformedURL(t *testing.T) {
	for _, u := range []string{"", "localhost:4222", "postgres://x"} {
		if b, err := Dial(u, relay.NewHub(), Options{}); err == nil {
			b.Close()
			t.Errorf("Dial(%q) succeeded", u)
		}
	}
	if _, err := Dial("nats://127.0.0.1:1", nil, Options{}); err == nil {
		t.Error("Dial without a hub succeeded")
	}
	var b *NATS
	if err := b.Close(); err != nil {
		t.Errorf("Close on nil: %v", err)
	}
}

func deviceID(t *testing.T) string {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	return "TEST-" + hex.EncodeToString(b[:])
}

func woken(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// counter counts received wake-ups per device.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[id]++
}

func (c *counter) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

// TestWakeCrossesReplicas: a wake-up on one replica wakes the other's
// stream for that device, and its own at once; a replica does not hear
// its own wake-ups back.
func TestWakeCrossesReplicas(t *testing.T) {
	url := natstest.Require(t)
	ha, hb := relay.NewHub(), relay.NewHub()
	var ca, cb counter
	a, err := Dial(url, ha, Options{Name: "test-a", observe: ca.add})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Dial(url, hb, Options{Name: "test-b", observe: cb.add})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !a.Connected() || !b.Connected() {
		t.Fatal("not connected to a reachable NATS")
	}

	dev := deviceID(t)
	waw, cancelA := ha.Watch(dev)
	wa := waw.C
	defer cancelA()
	wbw, cancelB := hb.Watch(dev)
	wb := wbw.C
	defer cancelB()
	a.Wake(dev)
	if !woken(wa, time.Second) {
		t.Error("the local stream was not woken")
	}
	if !woken(wb, 5*time.Second) {
		t.Fatal("the other replica's stream was not woken within 5s")
	}

	// The other way round, many times: every wake-up arrives (none is
	// dropped on a healthy bus), and none comes back to its sender. (Other
	// tests may share the NATS server: count this device only.)
	const n = 200
	for range n {
		b.Wake(dev)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ca.count(dev) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := ca.count(dev); got != n {
		t.Errorf("a received %d wake-ups, want %d", got, n)
	}
	if err := b.nc.Flush(); err != nil { // the server has sent b all it would
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := cb.count(dev); got != 1 {
		t.Errorf("b received %d wake-ups for the device, want only a's one: it heard its own back", got)
	}
	if s := a.Stats(); s.Dropped != 0 || s.Published != 1 {
		t.Errorf("a stats %+v, want 1 published, 0 dropped", s)
	}
	if s := b.Stats(); s.Dropped != 0 || s.Published != n {
		t.Errorf("b stats %+v, want %d published, 0 dropped", s, n)
	}

	// A device ID that is no subject token is woken locally only.
	wxw, cancelX := ha.Watch("a.b")
	wx := wxw.C
	defer cancelX()
	a.Wake("a.b")
	if !woken(wx, time.Second) {
		t.Error("the local stream of an odd device ID was not woken")
	}
	if a.Stats().Dropped != 1 {
		t.Errorf("odd device ID: stats %+v, want it dropped", a.Stats())
	}
}

// TestUnreachableBusNeverBlocks: with nothing at the bus's address, Dial
// succeeds, Wake returns at once however often it is called (more than
// the queue holds), the local hub is still woken, and Close returns.
func TestUnreachableBusNeverBlocks(t *testing.T) {
	hub := relay.NewHub()
	b, err := Dial("nats://127.0.0.1:1", hub, Options{QueueLen: 16})
	if err != nil {
		t.Fatalf("Dial to an unreachable bus: %v", err)
	}
	if b.Connected() {
		t.Fatal("connected to nothing")
	}
	dev := deviceID(t)
	ww, cancel := hub.Watch(dev)
	w := ww.C
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100_000 {
			b.Wake(dev)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Wake blocked with the bus down")
	}
	if !woken(w, time.Second) {
		t.Error("the local stream was not woken")
	}
	if s := b.Stats(); s.Dropped == 0 || s.Published+s.Dropped > 100_000 {
		t.Errorf("stats %+v: want wake-ups dropped while the bus is down", s)
	}
	closed := make(chan struct{})
	go func() { b.Close(); b.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked with the bus down")
	}
	b.Wake(dev) // after Close: local only, no panic
}

// flakyProxy forwards TCP to a NATS server; while down it accepts and
// closes at once, and Break cuts every live connection.
type flakyProxy struct {
	ln     net.Listener
	target string
	down   atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newFlakyProxy(t *testing.T, target string) *flakyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.Break() })
	return p
}

func (p *flakyProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go func() { io.Copy(u, c); u.Close() }()
		go func() { io.Copy(c, u); c.Close() }()
	}
}

// Break cuts every connection.
func (p *flakyProxy) Break() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestReconnects: when the connection to NATS breaks and the server stays
// unreachable for a while, the bus keeps retrying and carries wake-ups
// again once it is back; meanwhile Wake does not block.
func TestReconnects(t *testing.T) {
	url := natstest.Require(t)
	host := url[len("nats://"):]
	proxy := newFlakyProxy(t, host)
	ha, hb := relay.NewHub(), relay.NewHub()
	a, err := Dial("nats://"+proxy.ln.Addr().String(), ha, Options{Name: "test-flaky"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Dial(url, hb, Options{Name: "test-steady"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	dev := deviceID(t)
	wbw, cancel := hb.Watch(dev)
	wb := wbw.C
	defer cancel()

	a.Wake(dev)
	if !woken(wb, 5*time.Second) {
		t.Fatal("no wake-up before the break")
	}
	proxy.down.Store(true)
	proxy.Break()
	deadline := time.Now().Add(5 * time.Second)
	for a.Connected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.Connected() {
		t.Fatal("still connected after the break")
	}
	for range 10_000 {
		a.Wake(dev) // must not block while reconnecting
	}
	time.Sleep(1500 * time.Millisecond) // several failed attempts
	proxy.down.Store(false)
	deadline = time.Now().Add(15 * time.Second)
	for !a.Connected() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !a.Connected() {
		t.Fatal("not reconnected within 15s of NATS coming back")
	}
	// Drain whatever the reconnect buffer carried, then a fresh wake-up
	// must cross.
	for woken(wb, 200*time.Millisecond) {
	}
	a.Wake(dev)
	if !woken(wb, 5*time.Second) {
		t.Fatal("no wake-up after reconnecting")
	}
	t.Logf("stats after the outage: %+v", a.Stats())
}

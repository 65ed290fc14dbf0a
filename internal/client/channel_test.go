package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/server"
)

// paths records the path of every HTTP request a client makes.
type paths struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen []string
}

func (p *paths) RoundTrip(r *http.Request) (*http.Response, error) {
	p.mu.Lock()
	p.seen = append(p.seen, r.URL.Path)
	p.mu.Unlock()
	return p.next.RoundTrip(r)
}

func (p *paths) count(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.seen {
		if s == path {
			n++
		}
	}
	return n
}

func newDevice(t *testing.T, url string, direct bool) (*client.Client, *paths) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hc := client.NewHTTPClient()
	p := &paths{next: hc.Transport}
	hc.Transport = p
	c := client.New(url, key, client.Options{HTTPClient: hc, Direct: direct})
	if err := c.SignIn(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c, p
}

// TestChannelCarriesCalls: a signed-in device's unary calls ride its one
// channel (no HTTP request of their own), and each answer, a refusal's
// code, message and Retry-After included, is the one the same call gets
// by itself.
func TestChannelCarriesCalls(t *testing.T) {
	env := harness.Start(t, func(c *server.Config) { c.Limits.PerDevice, c.Limits.PerDevBurst = 1, 6 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	carried, p := newDevice(t, env.URL, false)
	direct, pd := newDevice(t, env.URL, true)

	for i, c := range []*client.Client{carried, direct} {
		hs, err := c.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(i)}))
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		l, err := c.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
		if err != nil || len(l.Msg.Hotspots) != 1 || l.Msg.Hotspots[0].Id != hs.Msg.Hotspot.Id {
			t.Fatalf("list: %v, %v", l, err)
		}
	}
	if n := p.count(sharespotv1connect.HotspotServiceRegisterProcedure) + p.count(sharespotv1connect.HotspotServiceListProcedure); n != 0 {
		t.Errorf("%d carried calls went as HTTP requests of their own", n)
	}
	if n := p.count(sharespotv1connect.ChannelServiceCarryProcedure); n != 1 {
		t.Errorf("the device opened %d channels, want 1", n)
	}
	if n := pd.count(sharespotv1connect.ChannelServiceCarryProcedure); n != 0 {
		t.Errorf("a Direct device opened %d channels", n)
	}

	// A refusal: the same code and message either way.
	get := func(c *client.Client) error {
		_, err := c.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: "no-such-session"}))
		return err
	}
	errC, errD := get(carried), get(direct)
	if errC == nil || connect.CodeOf(errC) != connect.CodeOf(errD) || errC.Error() != errD.Error() {
		t.Errorf("carried refusal %v, direct %v", errC, errD)
	}

	// The per-device limit counts carried calls: a burst past it is
	// refused with Retry-After, which the client takes as not final.
	var limited error
	for range 20 {
		if err := get(carried); connect.CodeOf(err) == connect.CodeResourceExhausted {
			limited = err
			break
		}
	}
	var ce *connect.Error
	if !errors.As(limited, &ce) || ce.Meta().Get("Retry-After") == "" || client.Final(limited) {
		t.Errorf("20 calls past a limit of 6: want resource_exhausted with Retry-After, got %v", limited)
	}
}

// TestChannelFallsBackToCalls: a server that does not open channels (one
// before protocol 7, or a proxy that refuses the stream) gets each call
// by itself, and the device does not try again for each call.
func TestChannelFallsBackToCalls(t *testing.T) {
	env := harness.Start(t, nil)
	target, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = client.NewHTTPClient().Transport
	refused := 0
	var mu sync.Mutex
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == sharespotv1connect.ChannelServiceCarryProcedure {
			mu.Lock()
			refused++
			mu.Unlock()
			http.NotFound(w, r)
			return
		}
		rp.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: front, Protocols: protos}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c, p := newDevice(t, "http://"+ln.Addr().String(), false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 3 {
		if _, err := c.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{})); err != nil {
			t.Fatalf("list without a channel: %v", err)
		}
	}
	if n := p.count(sharespotv1connect.HotspotServiceListProcedure); n != 3 {
		t.Errorf("%d of 3 calls went by themselves", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused != 1 {
		t.Errorf("the device asked %d times for a channel the server refused, want once", refused)
	}
}

// cutProxy forwards TCP to a server; it can hold what passes, and cut
// every connection.
type cutProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	cond  *sync.Cond
	held  bool
	conns []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln}
	p.cond = sync.NewCond(&p.mu)
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go p.pipe(s, c)
			go p.pipe(c, s)
		}
	}()
	return p
}

func (p *cutProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		p.mu.Lock()
		for p.held {
			p.cond.Wait()
		}
		p.mu.Unlock()
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func (p *cutProxy) hold() {
	p.mu.Lock()
	p.held = true
	p.mu.Unlock()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns, p.held = nil, false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// TestChannelBreaksAsALostAnswer: a call whose channel breaks before its
// reply fails as a call whose connection broke (Lost: the caller retries
// it), and the next call opens a new channel.
func TestChannelBreaksAsALostAnswer(t *testing.T) {
	env := harness.Start(t, nil)
	u, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := newCutProxy(t, u.Host)
	c, p := newDevice(t, "http://"+px.ln.Addr().String(), false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list := func() error {
		_, err := c.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
		return err
	}
	if err := list(); err != nil {
		t.Fatal(err)
	}
	px.hold()
	errs := make(chan error, 1)
	go func() { errs <- list() }()
	time.Sleep(200 * time.Millisecond) // the call is sent, and held
	px.cut()
	if err := <-errs; err == nil || !client.Lost(err) {
		t.Errorf("a call cut with its channel: %v; want an error the client retries (Lost)", err)
	}
	if err := list(); err != nil {
		t.Fatalf("after the channel broke: %v", err)
	}
	if n := p.count(sharespotv1connect.ChannelServiceCarryProcedure); n != 2 {
		t.Errorf("%d channels opened, want a second after the break", n)
	}
	if n := p.count(sharespotv1connect.HotspotServiceListProcedure); n != 0 {
		t.Errorf("%d calls went by themselves", n)
	}
}

// TestChannelClosedWhenIdle: a channel no call has used for its idle time
// is closed (its server's stream ends), and the next call opens another.
func TestChannelClosedWhenIdle(t *testing.T) {
	defer client.SetChannelIdle(2 * time.Second)()
	env := harness.Start(t, nil)
	c, p := newDevice(t, env.URL, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list := func() {
		t.Helper()
		if _, err := c.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{})); err != nil {
			t.Fatal(err)
		}
	}
	// Calls closer together than the idle time keep one channel.
	for range 5 {
		list()
		time.Sleep(100 * time.Millisecond)
	}
	if n := p.count(sharespotv1connect.ChannelServiceCarryProcedure); n != 1 {
		t.Fatalf("%d channels for calls 100 ms apart, want 1", n)
	}
	if n := channelsOpen(t, env.URL); n != "1" {
		t.Fatalf("the server counts %s channels open, want 1", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for channelsOpen(t, env.URL) != "0" {
		if time.Now().After(deadline) {
			t.Fatal("the server still holds the idle channel")
		}
		time.Sleep(50 * time.Millisecond)
	}
	list()
	if n := p.count(sharespotv1connect.ChannelServiceCarryProcedure); n != 2 {
		t.Errorf("%d channels opened, want a second after the first was idle", n)
	}
	if n := p.count(sharespotv1connect.HotspotServiceListProcedure); n != 0 {
		t.Errorf("%d calls went by themselves", n)
	}
}

// channelsOpen reads the server's sharespot_channels_open.
func channelsOpen(t *testing.T, url string) string {
	t.Helper()
	res, err := client.NewHTTPClient().Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^sharespot_channels_open (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no sharespot_channels_open in /metrics")
	}
	return string(m[1])
}

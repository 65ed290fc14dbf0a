package nft

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/netns"
)

// fixture is a topology with the kernel gateway running in the host
// namespace and an origin in the internet namespace.
type fixture struct {
	t      testing.TB
	tp     *netns.Topology
	origin *netns.Origin
	base   string // the origin's URL (IPv4)
	base6  string // the origin's URL (IPv6)
	store  gateway.Store
	admit  string // admission endpoint host:port
	// persistAhead is the gateway's initial save-ahead lead (0: default).
	persistAhead int64
	gw           *Gateway
	// The walled garden and captive portal (zero: off).
	garden    []netip.AddrPort
	portalURL string
	dns       bool
	ev        *events
	cancel    context.CancelFunc
	done      chan error
}

const admitPort = "8475"

func newFixture(t testing.TB, guests int) *fixture {
	t.Helper()
	netns.RequireRoot(t)
	netns.RequireTools(t, "ip")
	tp := netns.NewTopology(t, guests)
	ln, err := tp.Internet.Listen("tcp", "[::]:80")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tp: tp, persistAhead: 256 << 10}
	f.origin = netns.StartOrigin(t, ln, tp.Internet, tp.Net4.String(), tp.Net6.String())
	f.base = "http://" + net.JoinHostPort(tp.Net4.String(), "80")
	f.base6 = "http://" + net.JoinHostPort(tp.Net6.String(), "80")
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "gateway.json"))
	if err != nil {
		t.Fatal(err)
	}
	f.store = st
	f.admit = net.JoinHostPort(tp.HostLAN4.String(), admitPort)
	t.Cleanup(func() { f.stop() })
	return f
}

// start runs a new Gateway over the fixture's store.
func (f *fixture) start() {
	f.t.Helper()
	ln, err := f.tp.Host.Listen("tcp", "[::]:"+admitPort)
	if err != nil {
		f.t.Fatal(err)
	}
	gw, err := New(Config{LAN: f.tp.LAN, Uplink: f.tp.Uplink, Listener: ln, Advertise: f.admit, NetNS: f.tp.Host.FD(), Store: f.store,
		PersistAhead: f.persistAhead, IdleAfter: time.Hour, Garden: f.garden, PortalURL: f.portalURL, AllowDNS: f.dns})
	if err != nil {
		ln.Close()
		f.t.Fatal(err)
	}
	f.gw = gw
	f.ev = collect(gw.Events())
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan error, 1)
	go func() { f.done <- gw.Run(ctx) }()
}

// stop makes Run return (the table stays, as after a host restart).
func (f *fixture) stop() {
	if f.cancel == nil {
		return
	}
	f.cancel()
	if err := <-f.done; err != nil {
		f.t.Errorf("gateway Run: %v", err)
	}
	f.cancel = nil
}

// grant admits a session with a fresh code.
func (f *fixture) grant(id string, quota, threshold int64) []byte {
	f.t.Helper()
	code := bytes.Repeat([]byte{byte(len(id)) + id[len(id)-1]}, 32)
	if err := f.gw.Admit(context.Background(), gateway.Grant{SessionID: id, Credential: code, Quota: quota, Threshold: threshold}); err != nil {
		f.t.Fatalf("admit %s: %v", id, err)
	}
	return code
}

// present posts the code from inside the guest's namespace.
func (f *fixture) present(g *netns.Guest, id string, code []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Present(ctx, g.HTTPClient(), f.admit, id, code)
	return err
}

// events collects a gateway's events.
type events struct {
	mu   sync.Mutex
	all  []gateway.Event
	more chan struct{}
}

func collect(ch <-chan gateway.Event) *events {
	e := &events{more: make(chan struct{}, 1)}
	go func() {
		for ev := range ch {
			e.mu.Lock()
			e.all = append(e.all, ev)
			e.mu.Unlock()
			select {
			case e.more <- struct{}{}:
			default:
			}
		}
	}()
	return e
}

// wait returns the first event of kind for id, or fails after d.
func (e *events) wait(t testing.TB, kind gateway.EventKind, id string, d time.Duration) gateway.Event {
	t.Helper()
	return e.waitFor(t, kind, id, d, func(gateway.Event) bool { return true })
}

// waitFor is wait for the first such event that ok accepts.
func (e *events) waitFor(t testing.TB, kind gateway.EventKind, id string, d time.Duration, ok func(gateway.Event) bool) gateway.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		e.mu.Lock()
		for _, ev := range e.all {
			if ev.Kind == kind && ev.SessionID == id && ok(ev) {
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		select {
		case <-e.more:
		case <-deadline:
			t.Fatalf("no %s event for %s within %s", kind, id, d)
		}
	}
}

// first returns the first event of kind for id so far, if any.
func (e *events) first(kind gateway.EventKind, id string) (gateway.Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.all {
		if ev.Kind == kind && ev.SessionID == id {
			return ev, true
		}
	}
	return gateway.Event{}, false
}

func (e *events) count(kind gateway.EventKind, id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == kind && ev.SessionID == id {
			n++
		}
	}
	return n
}

// guestClient is an HTTP client in the guest's namespace with a bound on
// the whole request (a cut-off transfer otherwise stalls forever).
func guestClient(g *netns.Guest, timeout time.Duration) *http.Client {
	hc := g.HTTPClient()
	hc.Timeout = timeout
	return hc
}

// settle waits until the origin's counters stop moving (bounded), so a
// leak measured afterwards includes everything in flight.
func settle(o *netns.Origin) {
	last := int64(-1)
	for range 20 {
		n := o.Received() + o.Sent()
		if n == last {
			return
		}
		last = n
		time.Sleep(100 * time.Millisecond)
	}
}

package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
	xproxy "golang.org/x/net/proxy"
)

// dialFrom connects to addr from the loopback address local (127.0.0.2,
// …: each is another guest address to the gateway).
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: wait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// greeted sends a SOCKS5 greeting on c and reports whether the gateway
// answered it (false: it closed the connection unanswered).
func greeted(t *testing.T, c net.Conn) bool {
	t.Helper()
	io.WriteString(c, "\x05\x01\x02")
	c.SetReadDeadline(time.Now().Add(wait))
	var b [2]byte
	_, err := io.ReadFull(c, b[:])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("no answer to a greeting and not closed")
	}
	c.SetReadDeadline(time.Time{})
	return err == nil && b == [2]byte{socksVersion, methodUserPass}
}

// closedByGateway reports whether the gateway closed c (within wait).
func closedByGateway(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, c)
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestHandshakeFloodLeavesGuestsIn: one address opening connections far
// past MaxConns and never authenticating keeps no paying guest out.
func TestHandshakeFloodLeavesGuestsIn(t *testing.T) {
	const size = 100 << 10
	o := startOrigin(t, streamN(size))
	p := newProxy(t, Config{MaxConns: 8})
	pass := admit(t, p, "s", 1<<20, 0)
	for range 64 {
		dialFrom(t, "127.0.0.2", p.Addr())
	}
	for _, proto := range protocols {
		c, err := proto.dial(p.Addr(), "s", pass, o.addr)
		if err != nil {
			t.Fatalf("%s: a paying guest was kept out: %v", proto.name, err)
		}
		if n := drain(t, c); n != size {
			t.Errorf("%s: guest got %d bytes, want %d", proto.name, n, size)
		}
		c.Close()
	}
}

// TestHandshakeBudget: connections not yet authenticated have a budget of
// their own per address and in all, and a deadline that ends with
// authentication.
func TestHandshakeBudget(t *testing.T) {
	const size = 10 << 10
	o := startOrigin(t, streamN(size))
	t.Run("per_address", func(t *testing.T) {
		p := newProxy(t, Config{MaxHandshakesPerAddr: 3})
		var held []net.Conn
		for range 3 {
			c := dialFrom(t, "127.0.0.2", p.Addr())
			if !greeted(t, c) {
				t.Fatal("a connection within the budget was refused")
			}
			held = append(held, c)
		}
		if greeted(t, dialFrom(t, "127.0.0.2", p.Addr())) {
			t.Error("a connection over the address's budget was served")
		}
		if !greeted(t, dialFrom(t, "127.0.0.3", p.Addr())) {
			t.Error("another address was refused")
		}
		held[0].Close()
		for end := time.Now().Add(wait); !greeted(t, dialFrom(t, "127.0.0.2", p.Addr())); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("a closed handshake did not free its place")
			}
		}
	})
	t.Run("in_all_oldest_goes", func(t *testing.T) {
		p := newProxy(t, Config{MaxHandshakes: 3, HandshakeTimeout: 3 * wait})
		pass := admit(t, p, "s", 1<<20, 0)
		var held []net.Conn
		for i := range 3 {
			c := dialFrom(t, "127.0.0."+strconv.Itoa(2+i), p.Addr())
			if !greeted(t, c) {
				t.Fatal("a connection within the budget was refused")
			}
			held = append(held, c)
		}
		c, err := dialSOCKS(p.Addr(), "s", pass, o.addr)
		if err != nil {
			t.Fatalf("a paying guest was kept out: %v", err)
		}
		if n := drain(t, c); n != size {
			t.Errorf("guest got %d bytes, want %d", n, size)
		}
		c.Close()
		if !closedByGateway(t, held[0]) {
			t.Error("the oldest handshake was not closed to make room")
		}
	})
	t.Run("auth_timeout", func(t *testing.T) {
		p := newProxy(t, Config{AuthTimeout: 100 * time.Millisecond, HandshakeTimeout: 3 * wait})
		pass := admit(t, p, "s", 1<<20, 0)
		c := dialFrom(t, "127.0.0.2", p.Addr())
		if !greeted(t, c) || !closedByGateway(t, c) {
			t.Error("a connection that never authenticates was not closed")
		}
		// Authenticated in time, a guest may take longer for the rest.
		d, err := xproxy.SOCKS5("tcp", p.Addr(), &xproxy.Auth{User: "s", Password: pass}, slowDialer{400 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		g, err := d.Dial("tcp", o.addr)
		if err != nil {
			t.Fatalf("an authenticated guest was cut by the authentication deadline: %v", err)
		}
		if n := drain(t, g); n != size {
			t.Errorf("guest got %d bytes, want %d", n, size)
		}
		g.Close()
	})
}

// slowDialer connects, and then delays every write after the first
// three (greeting, credentials): the CONNECT request comes late.
type slowDialer struct{ delay time.Duration }

func (d slowDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	return &slowConn{Conn: c, delay: d.delay}, nil
}

type slowConn struct {
	net.Conn
	delay  time.Duration
	writes int
}

func (c *slowConn) Write(b []byte) (int, error) {
	if c.writes++; c.writes > 2 {
		time.Sleep(c.delay)
	}
	return c.Conn.Write(b)
}

// ownAddrs are this machine's interface addresses other than loopback and
// link-local ones.
func ownAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	ias, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, ia := range ias {
		n, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		a, ok := netip.AddrFromSlice(n.IP)
		if a = a.Unmap(); ok && !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		// CI machines have one; a skip there would prove nothing.
		if os.Getenv("CI") == "true" {
			t.Fatal("this machine has no address but loopback and link-local ones")
		}
		t.Skip("this machine has no address but loopback and link-local ones")
	}
	return out
}

// TestOwnAddressesRefused: by default a guest reaches no service of the
// host through any of the host's own addresses, on any port; with
// LocalDestinations (--allow-local) it does.
func TestOwnAddressesRefused(t *testing.T) {
	own := ownAddrs(t)
	o := startOriginOn(t, ":0", streamN(-1)) // every address, IPv4 and IPv6
	_, port, _ := net.SplitHostPort(o.addr)
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	runProxy(t, p)
	pass := admit(t, p, "s", 1<<20, 0)
	for _, a := range own {
		target := net.JoinHostPort(a.String(), port)
		t.Run(target, func(t *testing.T) {
			_, err := dialHTTP(p.Addr(), "s", pass, target)
			var se *statusError
			if !errors.As(err, &se) || se.code != http.StatusForbidden {
				t.Errorf("CONNECT %s: %v, want 403", target, err)
			}
			if c, err := dialSOCKS(p.Addr(), "s", pass, target); err == nil {
				c.Close()
				t.Errorf("SOCKS CONNECT %s admitted", target)
			}
		})
	}
	if n := o.accepted.Load(); n != 0 {
		t.Fatalf("the host's own service saw %d connections", n)
	}

	local := newProxy(t, Config{AllowDestination: gateway.LocalDestinations})
	pass = admit(t, local, "s", 1<<20, 0)
	target := net.JoinHostPort(own[0].String(), port)
	c, err := dialSOCKS(local.Addr(), "s", pass, target)
	if err != nil {
		t.Fatalf("with LocalDestinations, CONNECT %s: %v", target, err)
	}
	c.Close()
}

// TestDefaultDestinations: which destinations the default policy allows.
// The host's own addresses are refused by the gateway besides
// (TestOwnAddressesRefused).
func TestDefaultDestinations(t *testing.T) {
	tests := []struct {
		dest         string
		def, withLoc bool // DefaultDestinations, LocalDestinations
	}{
		{"8.8.8.8:443", true, true},
		{"[2001:db8::1]:443", true, true},
		{"198.18.0.2:80", true, true},
		// The host's private networks: its home router, its NAS, its
		// provider's NAT.
		{"192.168.1.1:80", false, false},
		{"10.0.0.1:445", false, false},
		{"172.16.5.4:80", false, false},
		{"172.31.255.1:80", false, false},
		{"100.64.0.1:80", false, false},
		{"100.127.255.254:80", false, false},
		{"[fd00::1]:80", false, false},
		{"[fc00::1]:80", false, false},
		{"[::ffff:192.168.1.1]:80", false, false},
		{"[64:ff9b::192.168.1.1]:80", false, false},
		{"[64:ff9b::8.8.8.8]:80", true, true},
		{"172.32.0.1:80", true, true},
		{"100.128.0.1:80", true, true},
		{"127.0.0.1:80", false, true},
		{"[::1]:80", false, true},
		{"8.8.8.8:0", false, false},
		{"0.0.0.0:80", false, false},
		{"[::]:80", false, false},
		{"255.255.255.255:80", false, false},
		{"224.0.0.1:80", false, false},
		{"[fe80::1]:80", false, false},
		// Cloud metadata and host endpoints.
		{"169.254.169.254:80", false, false},
		{"169.254.170.2:80", false, false},
		{"169.254.0.1:80", false, false},
		{"[fd00:ec2::254]:80", false, false},
		{"100.100.100.200:80", false, false},
		{"168.63.129.16:80", false, false},
		{"[::ffff:169.254.169.254]:80", false, false},
		{"[::ffff:100.100.100.200]:80", false, false},
		{"192.0.0.192:80", false, false},
		{"[::169.254.169.254]:80", false, false}, // IPv4-compatible
		{"[::127.0.0.1]:80", false, true},
		{"[::192.168.1.1]:80", false, false},
	}
	for _, tt := range tests {
		ap := netip.MustParseAddrPort(tt.dest)
		if got := gateway.DefaultDestinations(ap); got != tt.def {
			t.Errorf("DefaultDestinations(%s) = %v, want %v", tt.dest, got, tt.def)
		}
		if got := gateway.LocalDestinations(ap); got != tt.withLoc {
			t.Errorf("LocalDestinations(%s) = %v, want %v", tt.dest, got, tt.withLoc)
		}
	}
}

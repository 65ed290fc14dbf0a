package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NS is a network namespace a test made. It is deleted when the test ends.
type NS struct {
	Name string
	fd   int
}

// New makes a namespace with a unique name (role plus random suffix, so
// tests run in parallel and after a crashed run), brings its loopback up,
// and deletes it when t ends.
func New(t testing.TB, role string) *NS {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "ip")
	var b [4]byte
	rand.Read(b[:])
	name := "ss-" + role + "-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("netns: ip netns add %s: %v: %s", name, err, out)
	}
	fd, err := unix.Open(filepath.Join("/run/netns", name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("netns: open %s: %v", name, err)
	}
	n := &NS{Name: name, fd: fd}
	t.Cleanup(func() {
		unix.Close(fd)
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("netns: ip netns del %s: %v: %s", name, err, out)
		}
	})
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// FD is an open descriptor of the namespace (for nftables.WithNetNSFd and
// netlink.NewHandleAt).
func (n *NS) FD() int { return n.fd }

// IP runs `ip -n NAME args...` and fails t on error.
func (n *NS) IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := n.Cmd("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("netns: ip -n %s %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
}

// Cmd is a command to run as is (the caller adds -n for ip).
func (n *NS) Cmd(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

// Exec is a command run inside the namespace (ip netns exec).
func (n *NS) Exec(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// creates stay in the namespace after fn returns. The thread is discarded
// afterwards (it stays locked when the goroutine ends), so no other
// goroutine ever runs in the namespace by accident.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Sysctl sets a /proc/sys/net key (e.g. "ipv4/ip_forward") inside the
// namespace.
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	err := n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys/net", key), []byte(value), 0o644)
	})
	if err != nil {
		t.Fatalf("netns: sysctl net.%s=%s in %s: %v", strings.ReplaceAll(key, "/", "."), value, n.Name, err)
	}
}

// SendBufferMax is the most a TCP socket of the namespace may buffer to
// send (the maximum of its net.ipv4.tcp_wmem, up to which the kernel
// grows a socket's send buffer): what a sender can still write after its
// peer stops receiving, none of it delivered.
func (n *NS) SendBufferMax(t testing.TB) int64 {
	t.Helper()
	var max int64
	err := n.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
		if err != nil {
			return err
		}
		f := strings.Fields(string(b))
		if len(f) != 3 {
			return fmt.Errorf("tcp_wmem is %q, want three numbers", b)
		}
		max, err = strconv.ParseInt(f[2], 10, 64)
		return err
	})
	if err != nil {
		t.Fatalf("netns: send buffer maximum in %s: %v", n.Name, err)
	}
	return max
}

// TCPRetransmitted is the TCP segments the namespace has sent again
// (RetransSegs of /proc/net/snmp, IPv4 and IPv6 together): a test that
// bounds the bytes a transfer takes on the wire reads it before and after,
// since a loaded machine makes TCP retransmit, and every segment sent
// again crosses the wire and is counted again.
func (n *NS) TCPRetransmitted(t testing.TB) int64 {
	t.Helper()
	var segs int64
	err := n.Do(func() error {
		// thread-self: /proc/self/net is the main thread's namespace.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Tcp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, name := range names {
				if name == "RetransSegs" && i < len(f) {
					segs, err = strconv.ParseInt(f[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Tcp RetransSegs in /proc/net/snmp")
	})
	if err != nil {
		t.Fatalf("netns: TCP retransmissions in %s: %v", n.Name, err)
	}
	return segs
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the namespace.
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// DialContext connects from inside the namespace.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Dial connects from inside the namespace (so that an NS is a dialer for
// golang.org/x/net/proxy).
func (n *NS) Dial(network, addr string) (net.Conn, error) {
	return n.DialContext(context.Background(), network, addr)
}

// HTTPClient is an HTTP client whose connections start in the namespace.
func (n *NS) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}}
}

// Guest is a guest's namespace on the host's LAN.
type Guest struct {
	*NS
	Addr4, Addr6 netip.Addr
	MAC          net.HardwareAddr
	// Port is the guest's bridge port in the host namespace.
	Port string
}

// Topology is guests on a bridge in the host's namespace (the LAN, one
// link they share, as Wi-Fi stations share an AP), the host forwarding to
// an internet namespace over a veth pair (the uplink). The internet has no
// route back to the LAN: replies only come back through the host's NAT.
type Topology struct {
	Host, Internet *NS
	Guests         []*Guest
	// LAN and Uplink are interface names in Host.
	LAN, Uplink string
	// Host addresses on the LAN and the uplink; the internet's addresses.
	HostLAN4, HostLAN6, HostUp4, HostUp6, Net4, Net6 netip.Addr
}

// Addresses of the topology. The LAN and uplink IPv6 prefixes are
// documentation prefixes standing for global ones.
var (
	lan4 = netip.MustParsePrefix("10.77.0.0/24")
	lan6 = netip.MustParsePrefix("2001:db8:77::/64")
	up4  = netip.MustParsePrefix("198.18.0.0/24")
	up6  = netip.MustParsePrefix("2001:db8:18::/64")
)

// first is the i-th address of p.
func first(p netip.Prefix, i int) netip.Addr {
	a := p.Addr()
	for range i {
		a = a.Next()
	}
	return a
}

// NewTopology builds guests guest namespaces, a host and an internet.
// Forwarding is on in the host; nothing filters yet.
func NewTopology(t testing.TB, guests int) *Topology {
	t.Helper()
	tp := &Topology{Host: New(t, "host"), Internet: New(t, "net"), LAN: "lan0", Uplink: "up0",
		HostLAN4: first(lan4, 1), HostLAN6: first(lan6, 1), HostUp4: first(up4, 1), HostUp6: first(up6, 1),
		Net4: first(up4, 2), Net6: first(up6, 2)}
	h, in := tp.Host, tp.Internet
	h.IP(t, "link", "add", tp.LAN, "type", "bridge")
	h.IP(t, "addr", "add", prefix(tp.HostLAN4, lan4), "dev", tp.LAN)
	h.IP(t, "addr", "add", prefix(tp.HostLAN6, lan6), "dev", tp.LAN, "nodad")
	h.IP(t, "link", "set", tp.LAN, "up")
	h.IP(t, "link", "add", tp.Uplink, "type", "veth", "peer", "name", "eth0", "netns", in.Name)
	h.IP(t, "addr", "add", prefix(tp.HostUp4, up4), "dev", tp.Uplink)
	h.IP(t, "addr", "add", prefix(tp.HostUp6, up6), "dev", tp.Uplink, "nodad")
	h.IP(t, "link", "set", tp.Uplink, "up")
	in.IP(t, "addr", "add", prefix(tp.Net4, up4), "dev", "eth0")
	in.IP(t, "addr", "add", prefix(tp.Net6, up6), "dev", "eth0", "nodad")
	in.IP(t, "link", "set", "eth0", "up")
	h.Sysctl(t, "ipv4/ip_forward", "1")
	h.Sysctl(t, "ipv6/conf/all/forwarding", "1")
	for i := range guests {
		tp.Guests = append(tp.Guests, tp.addGuest(t, i))
	}
	return tp
}

func prefix(a netip.Addr, p netip.Prefix) string {
	return netip.PrefixFrom(a, p.Bits()).String()
}

func (tp *Topology) addGuest(t testing.TB, i int) *Guest {
	t.Helper()
	g := &Guest{NS: New(t, fmt.Sprintf("g%d", i)), Addr4: first(lan4, 2+i), Addr6: first(lan6, 2+i),
		MAC: net.HardwareAddr{0x02, 0x77, 0, 0, 0, byte(2 + i)}, Port: fmt.Sprintf("gp%d", i)}
	h := tp.Host
	h.IP(t, "link", "add", g.Port, "type", "veth", "peer", "name", "eth0", "netns", g.Name)
	h.IP(t, "link", "set", g.Port, "master", tp.LAN, "up")
	g.IP(t, "link", "set", "eth0", "address", g.MAC.String())
	g.IP(t, "addr", "add", prefix(g.Addr4, lan4), "dev", "eth0")
	g.Sysctl(t, "ipv6/conf/eth0/accept_ra", "0")
	g.Sysctl(t, "ipv6/conf/eth0/accept_dad", "0")
	g.IP(t, "link", "set", "eth0", "up")
	g.IP(t, "route", "add", "default", "via", tp.HostLAN4.String())
	g.settle(t)
	return g
}

// settle waits until the guest's link-local IPv6 address is there and no
// address is tentative, so that its addresses do not change under a
// program the test starts next. (Chromium aborts a page load with
// ERR_NETWORK_CHANGED when an address of its namespace comes or goes, and
// with duplicate address detection the link-local address turned valid 1
// to 2 s after the link came up.)
func (g *Guest) settle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a bound, not a timing: the kernel's link watch runs within a second
	for {
		out, err := exec.Command("ip", "-n", g.Name, "-6", "addr", "show", "dev", "eth0").CombinedOutput()
		if err != nil {
			t.Fatalf("netns: ip -n %s -6 addr show dev eth0: %v: %s", g.Name, err, out)
		}
		if s := string(out); strings.Contains(s, "inet6 fe80:") && !strings.Contains(s, "tentative") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("netns: the addresses of %s did not settle: %s", g.Name, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AddIPv6 gives the guest its global IPv6 address and a default route via
// the host, as a router advertisement would.
func (g *Guest) AddIPv6(t testing.TB, tp *Topology) {
	t.Helper()
	g.IP(t, "addr", "add", prefix(g.Addr6, lan6), "dev", "eth0", "nodad")
	g.IP(t, "-6", "route", "add", "default", "via", tp.HostLAN6.String())
}

// Clone makes g impersonate victim on the LAN: victim's MAC and addresses.
func (g *Guest) Clone(t testing.TB, victim *Guest) {
	t.Helper()
	g.IP(t, "link", "set", "eth0", "down")
	g.IP(t, "link", "set", "eth0", "address", victim.MAC.String())
	g.IP(t, "addr", "flush", "dev", "eth0")
	g.IP(t, "addr", "add", prefix(victim.Addr4, lan4), "dev", "eth0")
	g.IP(t, "link", "set", "eth0", "up")
	g.IP(t, "route", "replace", "default", "via", first(lan4, 1).String())
}

package wg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gvnet"
	"github.com/sharespot/sharespot/internal/protocol"
)

// netstackNet is the gateway's side of the tunnel: a netstack that takes
// every guest's TCP and UDP and forwards it from the host, and answers
// the gateway's own services (DNS, the control stream).
type netstackNet struct {
	g      *Gateway
	dev    *gvnet.Device
	dialer net.Dialer
	ctl    *http.Server
	wg     sync.WaitGroup
}

func newNetstack(g *Gateway) (*netstackNet, error) {
	dev, err := gvnet.New(g.cfg.MTU, g.self, true)
	if err != nil {
		return nil, fmt.Errorf("wireguard: %w", err)
	}
	dev.Filter = func(p []byte, fromPeer bool) bool { return g.pass(p, fromPeer, time.Now()) }
	n := &netstackNet{g: g, dev: dev}
	n.dialer = net.Dialer{Timeout: g.cfg.DialTimeout, ControlContext: n.control}
	tf := tcp.NewForwarder(dev.Stack, 0, 4096, n.forwardTCP)
	dev.Stack.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(dev.Stack, n.forwardUDP)
	dev.Stack.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	return n, nil
}

// serve runs the control stream's endpoint until ctx ends.
func (n *netstackNet) serve(ctx context.Context) {
	ln, err := n.dev.ListenTCP(netip.AddrPortFrom(n.g.self, ControlPort))
	if err != nil {
		n.g.log.Error("cannot serve the control stream in the tunnel", "err", err)
		return
	}
	n.ctl = &http.Server{
		Handler:           http.HandlerFunc(n.handleControl),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() {
		<-ctx.Done()
		n.ctl.Close()
	}()
	n.ctl.Serve(ln)
}

func (n *netstackNet) close() {
	n.wg.Wait()
	n.dev.Shutdown()
}

// handleControl serves a guest's control stream: its credentials must be
// those of the session whose address the connection comes from.
func (n *netstackNet) handleControl(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect || r.Host != protocol.ControlAuthority {
		http.Error(w, "this is the gateway's control stream: CONNECT "+protocol.ControlAuthority, http.StatusBadRequest)
		return
	}
	from, _ := netip.ParseAddrPort(r.RemoteAddr)
	err := gateway.ServeControlHTTP(w, r, func(user, pass string) (string, gateway.Control, bool) {
		s := n.g.bySource(from.Addr())
		if s == nil || s.id != user || !s.credential(pass) {
			return "", gateway.Control{}, false
		}
		return s.id, n.g.controlOf(s), true
	})
	if err != nil {
		n.g.log.Debug("control stream ended", "err", err)
	}
}

// forwardTCP takes a guest's connection: to the gateway's DNS, relayed to
// the host's resolver; to anywhere the policy allows, dialled from the
// host and joined; anything else reset.
func (n *netstackNet) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	s := n.g.bySource(gvnet.AddrOf(id.RemoteAddress))
	dst := netip.AddrPortFrom(gvnet.AddrOf(id.LocalAddress), id.LocalPort)
	if s == nil {
		r.Complete(true)
		return
	}
	var out net.Conn
	var err error
	ctx, cancel := context.WithTimeout(context.Background(), n.g.cfg.DialTimeout)
	defer cancel()
	switch {
	case dst.Addr() == n.g.self && dst.Port() == DNSPort:
		out, err = n.dialResolver(ctx, "tcp")
	case dst.Addr() == n.g.self, n.g.cfg.Network.Contains(dst.Addr()):
		err = errDestination // the gateway's other ports, other guests
	default:
		out, err = n.dialer.DialContext(ctx, "tcp", dst.String())
	}
	if err != nil {
		n.g.log.Debug("guest connection refused", "session", s.id, "to", dst, "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		out.Close()
		r.Complete(true)
		return
	}
	r.Complete(false)
	in := gonet.NewTCPConn(&wq, ep)
	if !s.track(in) {
		in.Close()
		out.Close()
		return
	}
	n.wg.Go(func() {
		defer s.untrack(in)
		join(in, out)
	})
}

// join copies both ways until both directions end, then closes both.
func join(a, b net.Conn) {
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if c, ok := dst.(interface{ CloseWrite() error }); ok {
			c.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Go(func() { half(a, b) })
	wg.Go(func() { half(b, a) })
	wg.Wait()
	a.Close()
	b.Close()
}

// forwardUDP takes a guest's UDP flow: to the gateway's DNS, relayed to
// the host's resolver; to anywhere the policy allows, relayed from the
// host until it is idle for UDPTimeout; anything else dropped.
func (n *netstackNet) forwardUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	s := n.g.bySource(gvnet.AddrOf(id.RemoteAddress))
	dst := netip.AddrPortFrom(gvnet.AddrOf(id.LocalAddress), id.LocalPort)
	if s == nil {
		return // dropped
	}
	var out net.Conn
	var err error
	timeout := n.g.cfg.UDPTimeout
	ctx, cancel := context.WithTimeout(context.Background(), n.g.cfg.DialTimeout)
	defer cancel()
	switch {
	case dst.Addr() == n.g.self && dst.Port() == DNSPort:
		out, err = n.dialResolver(ctx, "udp")
		timeout = 10 * time.Second
	case dst.Addr() == n.g.self, n.g.cfg.Network.Contains(dst.Addr()):
		err = errDestination
	default:
		out, err = n.dialer.DialContext(ctx, "udp", dst.String())
	}
	if err != nil {
		n.g.log.Debug("guest datagram refused", "session", s.id, "to", dst, "err", err)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		out.Close()
		return
	}
	in := gonet.NewUDPConn(&wq, ep)
	f := &udpFlow{in: in, out: out}
	if !s.track(f) {
		f.Close()
		return
	}
	n.wg.Go(func() {
		defer s.untrack(f)
		f.relay(timeout)
	})
}

// udpFlow is one guest's UDP flow and the host's socket for it.
type udpFlow struct {
	in   *gonet.UDPConn
	out  net.Conn
	once sync.Once
}

func (f *udpFlow) Close() error {
	f.once.Do(func() {
		f.in.Close()
		f.out.Close()
	})
	return nil
}

// relay copies datagrams both ways until neither side sent one for
// timeout.
func (f *udpFlow) relay(timeout time.Duration) {
	defer f.Close()
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer f.Close()
		buf := make([]byte, 64<<10)
		for {
			src.SetReadDeadline(time.Now().Add(timeout))
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	wg.Go(func() { pipe(f.out, f.in) })
	wg.Go(func() { pipe(f.in, f.out) })
	wg.Wait()
}

var errDestination = errors.New("wireguard: destination not allowed")

// control refuses destinations the policy does not allow, on every
// address the dialer tries.
func (n *netstackNet) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %v", errDestination, err)
	}
	if !n.g.policy.Allowed(ap) {
		return errDestination
	}
	return nil
}

// dialResolver connects to the first of the host's resolvers that
// answers (the gateway's DNS, relayed).
func (n *netstackNet) dialResolver(ctx context.Context, network string) (net.Conn, error) {
	var d net.Dialer
	err := errors.New("wireguard: no DNS resolver configured")
	for _, r := range n.g.cfg.DNS {
		var c net.Conn
		if c, err = d.DialContext(ctx, network, r.String()); err == nil {
			return c, nil
		}
	}
	return nil, err
}

// systemResolvers reads the host's resolvers from /etc/resolv.conf.
func systemResolvers() []netip.AddrPort {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, netip.AddrPortFrom(a.WithZone(""), 53))
			}
		}
	}
	return out
}

// Package gvnet is a gVisor netstack behind a WireGuard TUN device, in
// userspace: the WireGuard gateway's side of its tunnel (which takes every
// guest's connection) and a guest's (which dials through it). Each packet
// between wireguard-go and the stack goes through a filter, where the
// gateway meters and the guest counts.
package gvnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// NIC is the stack's one network interface.
const NIC = 1

// Device is an IPv4 netstack and the TUN device wireguard-go reads and
// writes in front of it.
type Device struct {
	Stack *stack.Stack
	ep    *channel.Endpoint
	mtu   int
	// Filter sees each packet, fromPeer (wireguard-go decrypted it, for
	// the stack) or not (the stack sends it to a peer), and says whether
	// it passes. Set before the device is used.
	Filter func(p []byte, fromPeer bool) bool
	// out hands the stack's packets to Read one at a time: the stack's
	// sender waits in WriteNotify until wireguard-go takes its packet, so
	// a burst waits instead of overrunning wireguard-go's queues (which
	// lost packets under 16 flows: retransmission timeouts, transfers at
	// a few MB/s).
	out    chan *buffer.View
	events chan tun.Event
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

var _ tun.Device = (*Device)(nil)

// New makes a stack with the address a (its own, for its services or its
// connections) and a route for everything through the device. taker: the
// stack takes packets to any address and answers from any (a gateway
// that forwards its peers' connections). Loopback packets are accepted
// like any other: what they may reach is the caller's policy.
func New(mtu int, a netip.Addr, taker bool) (*Device, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true})},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{Stack: s, ep: channel.New(1024, uint32(mtu), ""), mtu: mtu, Filter: func([]byte, bool) bool { return true },
		out: make(chan *buffer.View), events: make(chan tun.Event, 1), ctx: ctx, cancel: cancel}
	d.ep.AddNotify(d)
	d.events <- tun.EventUp
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return nil, fmt.Errorf("netstack: SACK: %v", err)
	}
	// No RACK loss detection: after a cut at the quota (every packet
	// dropped for a while, then a top-up) gVisor's RACK sender recovered
	// two segments per probe timeout (200 ms), so a download stalled
	// there crawled at ~13 KB/s for up to 90 s after the top-up. Without
	// it the sender's next retransmission (backed off about as long as
	// the cut lasted) restarts it at full speed. Loss under load is then
	// found by duplicate ACKs and SACK (RFC 6675), as before RACK.
	norack := tcpip.TCPRecovery(0)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &norack); err != nil {
		return nil, fmt.Errorf("netstack: recovery: %v", err)
	}
	if err := s.CreateNIC(NIC, d.ep); err != nil {
		return nil, fmt.Errorf("netstack: NIC: %v", err)
	}
	if taker {
		if err := s.SetPromiscuousMode(NIC, true); err != nil {
			return nil, fmt.Errorf("netstack: %v", err)
		}
		if err := s.SetSpoofing(NIC, true); err != nil {
			return nil, fmt.Errorf("netstack: %v", err)
		}
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}
	if err := s.AddProtocolAddress(NIC, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("netstack: address %s: %v", a, err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: NIC}})
	return d, nil
}

func (d *Device) File() *os.File           { return nil }
func (d *Device) MTU() (int, error)        { return d.mtu, nil }
func (d *Device) Name() (string, error)    { return "sharespot", nil }
func (d *Device) Events() <-chan tun.Event { return d.events }
func (d *Device) BatchSize() int           { return 1 }

// Close stops the device's reads (wireguard-go closes it with itself).
func (d *Device) Close() error {
	d.once.Do(func() {
		d.cancel()
		close(d.events)
	})
	return nil
}

// Shutdown closes the stack (after the WireGuard device).
func (d *Device) Shutdown() {
	d.Close()
	d.Stack.Close()
	d.ep.Close()
}

// WriteNotify implements channel.Notification: the stack queued a packet;
// it is handed to Read, waiting until Read takes it or the device closes.
func (d *Device) WriteNotify() {
	pkt := d.ep.Read()
	if pkt == nil {
		return
	}
	v := pkt.ToView()
	pkt.DecRef()
	select {
	case d.out <- v:
	case <-d.ctx.Done():
		v.Release()
	}
}

// Read hands wireguard-go the next packet the stack sends that the filter
// passes.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		var v *buffer.View
		select {
		case v = <-d.out:
		case <-d.ctx.Done():
			return 0, os.ErrClosed
		}
		b := bufs[0][offset:]
		n, _ := v.Read(b)
		v.Release()
		if d.Filter(b[:n], false) {
			sizes[0] = n
			return 1, nil
		}
	}
}

// Write takes the packets wireguard-go decrypted into the stack, those
// that are IPv4 and pass the filter.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	for _, buf := range bufs {
		p := buf[offset:]
		if len(p) == 0 || p[0]>>4 != 4 || !d.Filter(p, true) {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		d.ep.InjectInbound(header.IPv4ProtocolNumber, pkt)
		pkt.DecRef()
	}
	return len(bufs), nil
}

// Full is a netip address and port as the stack's.
func Full(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: NIC, Addr: tcpip.AddrFrom4(ap.Addr().Unmap().As4()), Port: ap.Port()}
}

// AddrOf is the stack's address as a netip one.
func AddrOf(a tcpip.Address) netip.Addr { return netip.AddrFrom4(a.As4()) }

// Dial connects from the stack to ap (IPv4), by TCP or UDP.
func (d *Device) Dial(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	if !ap.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("netstack: %s: only IPv4 goes through the tunnel", ap)
	}
	switch network {
	case "tcp", "tcp4":
		return gonet.DialContextTCP(ctx, d.Stack, Full(ap), ipv4.ProtocolNumber)
	case "udp", "udp4":
		to := Full(ap)
		return gonet.DialUDP(d.Stack, nil, &to, ipv4.ProtocolNumber)
	}
	return nil, fmt.Errorf("netstack: network %q", network)
}

// ListenTCP listens on the stack at ap.
func (d *Device) ListenTCP(ap netip.AddrPort) (net.Listener, error) {
	return gonet.ListenTCP(d.Stack, Full(ap), ipv4.ProtocolNumber)
}

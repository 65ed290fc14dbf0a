// Package wg is the WireGuard metering gateway: wireguard-go in userspace
// with the gVisor netstack behind it, no root and no kernel module, so an
// unrooted host (a laptop, a phone) meters each guest at IP level — every
// app, TCP and UDP, with no proxy settings.
//
// Each session is a WireGuard peer. Its access code (32 random bytes,
// sealed to the guest as for the other gateways) is the peer's private
// key: the gateway derives the public key (X25519) and lets that key in
// with one address in the tunnel's network (Config.Network, the gateway
// itself at its first address). The guest's configuration — the stock
// WireGuard app's .conf, or `sharespot connect`'s own tunnel — is the code,
// the gateway's public key and endpoint, its address and the gateway's
// DNS (Gateway.Peer).
//
// Packets pass between wireguard-go and the netstack through the
// gateway's TUN device (tun.go), which meters them: every IP packet a peer
// sends or is sent counts its whole length (IP header included, as the
// kernel gateway counts), against the session's meter (gateway.Meter:
// quota, threshold and early prompt, usage saved ahead of use, the credit
// window of a verified session). A packet that does not fit is dropped,
// as the kernel gateway's quota drops it; TCP resumes by itself after a
// top-up, at full speed from its next retransmission (internal/gvnet).
// wireguard-go's cryptokey routing already drops a packet whose inner
// source is not its peer's address, so a guest cannot spend another's
// volume.
//
// In the netstack, TCP and UDP to any destination are taken (promiscuous)
// and forwarded from the host with the proxy's destination policy
// (gateway.Policy): private networks, loopback, link-local, cloud
// metadata and the host's own addresses are refused (a TCP reset, a
// dropped datagram), as are the other guests' addresses. The gateway's own
// address answers DNS (port 53, UDP and TCP, relayed to the host's
// resolvers) and the control stream (TCP port 1: protocol/control.go; not
// metered), on which a verified guest acknowledges what it received.
package wg

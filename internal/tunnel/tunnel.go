// Package tunnel is the guest's side of the WireGuard gateway: the
// session's tunnel in userspace (wireguard-go and the gVisor netstack, no
// root), which `sharespot connect` puts behind its local forwarder, and
// the configuration the stock WireGuard app takes (Conf).
//
// The tunnel counts what passes it the way the gateway does: every IP
// packet's whole length, both ways, but the control stream's (to the
// gateway's address in the tunnel, port protocol.TunnelControlPort), which
// the gateway does not meter. A verified guest acknowledges that count.
package tunnel

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/gvnet"
	"github.com/sharespot/sharespot/internal/protocol"
)

// MTU is the tunnel's (WireGuard's usual, room for its headers on a 1500
// link).
const MTU = 1420

// Config is one session's tunnel: the access code (the guest's private
// key) and the gateway's description from the access response.
type Config struct {
	Key       [32]byte
	PublicKey [32]byte // the gateway's
	Endpoint  string   // host:port
	Address   netip.Addr
	Gateway   netip.Addr
}

// ConfigOf is the tunnel of an access response's gateway and its code.
func ConfigOf(gw *sharespotv1.Gateway, code []byte) (Config, error) {
	var c Config
	if gw.GetKind() != "wireguard" {
		return c, fmt.Errorf("tunnel: the gateway is %q, not wireguard", gw.GetKind())
	}
	if len(code) != 32 || len(gw.WireguardPublicKey) != 32 {
		return c, fmt.Errorf("tunnel: want a 32-byte code and gateway key, got %d and %d bytes", len(code), len(gw.WireguardPublicKey))
	}
	copy(c.Key[:], code)
	copy(c.PublicKey[:], gw.WireguardPublicKey)
	c.Endpoint = gw.Address
	var err error
	if c.Address, err = netip.ParseAddr(gw.TunnelAddress); err != nil {
		return c, fmt.Errorf("tunnel: address %q: %w", gw.TunnelAddress, err)
	}
	if c.Gateway, err = netip.ParseAddr(gw.TunnelGateway); err != nil {
		return c, fmt.Errorf("tunnel: gateway %q: %w", gw.TunnelGateway, err)
	}
	return c, nil
}

// Conf is the configuration file the WireGuard apps import (wg-quick's
// format): everything through the tunnel, IPv6 included (the gateway
// carries none of it, so none leaves beside the meter), the gateway as
// DNS.
func (c Config) Conf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nAddress = %s/32\nDNS = %s\nMTU = %d\n\n", base64.StdEncoding.EncodeToString(c.Key[:]), c.Address, c.Gateway, MTU)
	fmt.Fprintf(&b, "[Peer]\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 25\n", base64.StdEncoding.EncodeToString(c.PublicKey[:]), c.Endpoint)
	return b.String()
}

// Tunnel is a session's tunnel in userspace.
type Tunnel struct {
	cfg      Config
	wg       *device.Device
	dev      *gvnet.Device
	n        atomic.Int64
	resolver *net.Resolver
}

// Open brings the tunnel up (the handshake happens with the first
// packet).
func Open(cfg Config) (*Tunnel, error) {
	dev, err := gvnet.New(MTU, cfg.Address, false)
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	t := &Tunnel{cfg: cfg, dev: dev}
	dev.Filter = t.count
	t.wg = device.NewDevice(dev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	uapi := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\nallowed_ip=0.0.0.0/0\npersistent_keepalive_interval=25\n",
		hex.EncodeToString(cfg.Key[:]), hex.EncodeToString(cfg.PublicKey[:]), cfg.Endpoint)
	if err := t.wg.IpcSet(uapi); err == nil {
		err = t.wg.Up()
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	dns := netip.AddrPortFrom(cfg.Gateway, protocol.TunnelDNSPort)
	t.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dev.Dial(ctx, network, dns)
	}}
	return t, nil
}

// DialContext connects through the tunnel (IPv4); names are resolved by
// the gateway's DNS.
func (t *Tunnel) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	p, err := net.LookupPort(network, port)
	if err != nil {
		return nil, err
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		ips, err := t.resolver.LookupNetIP(ctx, "ip4", host)
		if err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("tunnel: %s has no IPv4 address", host)
		}
		a = ips[0]
	}
	return t.dev.Dial(ctx, network, netip.AddrPortFrom(a.Unmap(), uint16(p)))
}

// ControlAddr is where the gateway's control stream is, in the tunnel.
func (t *Tunnel) ControlAddr() string {
	return netip.AddrPortFrom(t.cfg.Gateway, protocol.TunnelControlPort).String()
}

// Bytes is what passed the tunnel both ways, counted as the gateway counts
// (IP packet lengths, the control stream's aside).
func (t *Tunnel) Bytes() int64 { return t.n.Load() }

// Close takes the tunnel down.
func (t *Tunnel) Close() {
	t.wg.Close()
	t.dev.Shutdown()
}

// count counts an IPv4 packet (fromPeer: it arrived from the gateway)
// unless it is of the control stream; it lets every packet pass.
func (t *Tunnel) count(p []byte, fromPeer bool) bool {
	if len(p) < 20 || p[0]>>4 != 4 {
		return true
	}
	ihl := int(p[0]&0x0f) * 4
	peer, port := netip.AddrFrom4([4]byte(p[16:20])), 2 // to the gateway: its destination and port
	if fromPeer {
		peer, port = netip.AddrFrom4([4]byte(p[12:16])), 0
	}
	if peer == t.cfg.Gateway && p[9] == 6 && len(p) >= ihl+4 && binary.BigEndian.Uint16(p[ihl+port:]) == protocol.TunnelControlPort {
		return true
	}
	t.n.Add(int64(len(p)))
	return true
}

// ParseConf reads a configuration Conf wrote (the fields it writes; wg-
// quick's others are refused).
func ParseConf(text string) (Config, error) {
	var c Config
	seen := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line == "[Interface]" || line == "[Peer]" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return c, fmt.Errorf("tunnel: configuration line %q", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		seen[k] = true
		var err error
		switch k {
		case "PrivateKey", "PublicKey":
			var b []byte
			if b, err = base64.StdEncoding.DecodeString(v); err == nil && len(b) != 32 {
				err = fmt.Errorf("%d bytes", len(b))
			}
			if k == "PrivateKey" {
				copy(c.Key[:], b)
			} else {
				copy(c.PublicKey[:], b)
			}
		case "Address":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(v); err == nil {
				c.Address = p.Addr()
			}
		case "DNS":
			c.Gateway, err = netip.ParseAddr(v)
		case "Endpoint":
			c.Endpoint = v
		case "MTU", "AllowedIPs", "PersistentKeepalive":
		default:
			err = errors.New("unknown key")
		}
		if err != nil {
			return c, fmt.Errorf("tunnel: configuration %s = %q: %v", k, v, err)
		}
	}
	for _, k := range []string{"PrivateKey", "PublicKey", "Address", "DNS", "Endpoint"} {
		if !seen[k] {
			return c, fmt.Errorf("tunnel: configuration without %s", k)
		}
	}
	return c, nil
}

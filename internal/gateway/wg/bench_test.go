package wg_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/gateway/wg"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/tunnel"
)

// BenchmarkWireGuardThroughput downloads from an origin on loopback over
// 1 and 16 parallel connections of one guest, whose tunnel (wireguard-go
// and the gVisor netstack, internal/tunnel) runs in this process. One op
// is 1 MiB; MB/s is the total rate.
//
//	direct            no tunnel, no gateway
//	bare-wireguard-go wireguard-go with its own netstack (tun/netstack) and
//	                  a plain forwarder in it (accept, dial the origin,
//	                  io.Copy both ways): no metering, no policy — the
//	                  ceiling for any WireGuard gateway built this way
//	wireguard         the WireGuard gateway: every packet metered, the
//	                  destination policy, no store
//	wireguard-filestore  the same, usage saved ahead of use to a FileStore,
//	                  as `sharespot share --gateway wireguard` runs it
//	proxy             the proxy gateway (SOCKS5, no tunnel) for comparison
func BenchmarkWireGuardThroughput(b *testing.B) {
	for _, streams := range []int{1, 16} {
		for _, via := range []string{"direct", "bare-wireguard-go", "wireguard", "wireguard-filestore", "proxy"} {
			b.Run(fmt.Sprintf("%s/streams=%d", via, streams), func(b *testing.B) {
				benchThroughput(b, via, streams)
			})
		}
	}
}

func benchThroughput(b *testing.B, via string, streams int) {
	const opSize = 1 << 20
	origin := sink(b)
	var dial func() (net.Conn, error)
	switch via {
	case "direct":
		dial = func() (net.Conn, error) { return net.Dial("tcp", origin.String()) }
	case "bare-wireguard-go":
		tn, addr := bareWireGuard(b, origin)
		dial = func() (net.Conn, error) { return tn.DialContext(context.Background(), "tcp", addr.String()) }
	case "wireguard", "wireguard-filestore":
		var store gateway.Store
		if via == "wireguard-filestore" {
			st, err := gateway.OpenFileStore(filepath.Join(b.TempDir(), "usage.json"))
			if err != nil {
				b.Fatal(err)
			}
			store = st
		}
		r := &rig{store: store, origin: origin}
		key, err := wg.NewKey()
		if err != nil {
			b.Fatal(err)
		}
		r.start(b, key)
		tn := r.admit(b, gateway.Grant{SessionID: "bench", Quota: 1 << 62})
		dial = func() (net.Conn, error) { return tn.DialContext(context.Background(), "tcp", origin.String()) }
	case "proxy":
		p, err := gwproxy.New(gwproxy.Config{Addr: "127.0.0.1:0", AllowDestination: func(ap netip.AddrPort) bool { return ap == origin }})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		b.Cleanup(func() { cancel(); <-done })
		code, _ := seal.NewAccessCode()
		if err := p.Admit(ctx, gateway.Grant{SessionID: "bench", Credential: code, Quota: 1 << 62}); err != nil {
			b.Fatal(err)
		}
		for p.Addr() == "" || strings.HasSuffix(p.Addr(), ":0") {
			time.Sleep(time.Millisecond)
		}
		d, err := proxy.SOCKS5("tcp", p.Addr(), &proxy.Auth{User: "bench", Password: seal.FormatCode(code)}, proxy.Direct)
		if err != nil {
			b.Fatal(err)
		}
		dial = func() (net.Conn, error) { return d.Dial("tcp", origin.String()) }
	}
	conns := make([]net.Conn, streams)
	for i := range conns {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	total := int64(b.N) * opSize
	b.SetBytes(opSize)
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, c := range conns {
		share := total / int64(streams)
		if i == 0 {
			share += total % int64(streams)
		}
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for share > 0 {
				n, err := c.Read(buf[:min(int64(len(buf)), share)])
				share -= int64(n)
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
}

// sink is an origin on loopback that writes to every connection until it
// closes.
func sink(tb testing.TB) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				go io.Copy(io.Discard, c)
				buf := make([]byte, 256<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			})
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// bareWireGuard is wireguard-go with its own gVisor netstack and a plain
// forwarder to origin listening in it, and a guest's tunnel to it; it
// returns the tunnel and the forwarder's address in the tunnel.
func bareWireGuard(tb testing.TB, origin netip.AddrPort) (*tunnel.Tunnel, netip.AddrPort) {
	tb.Helper()
	self, peer := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	dev, tnet, err := netstack.CreateNetTUN([]netip.Addr{self}, nil, tunnel.MTU)
	if err != nil {
		tb.Fatal(err)
	}
	wgd := device.NewDevice(dev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	tb.Cleanup(wgd.Close)
	serverKey, _ := wg.NewKey()
	guestKey, _ := wg.NewKey()
	serverPub, _ := wg.PublicKey(serverKey[:])
	guestPub, _ := wg.PublicKey(guestKey[:])
	if err := wgd.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=%s/32\n",
		hex.EncodeToString(serverKey[:]), hex.EncodeToString(guestPub[:]), peer)); err != nil {
		tb.Fatal(err)
	}
	if err := wgd.Up(); err != nil {
		tb.Fatal(err)
	}
	state, err := wgd.IpcGet()
	if err != nil {
		tb.Fatal(err)
	}
	var port string
	for line := range strings.SplitSeq(state, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			port = v
		}
	}
	if _, err := strconv.Atoi(port); err != nil {
		tb.Fatalf("wireguard-go's port: %q", port)
	}
	fwd := netip.AddrPortFrom(self, 80)
	ln, err := tnet.ListenTCPAddrPort(fwd)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", origin.String())
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	tn, err := tunnel.Open(tunnel.Config{Key: guestKey, PublicKey: serverPub, Endpoint: "127.0.0.1:" + port, Address: peer, Gateway: self})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(tn.Close)
	return tn, fwd
}

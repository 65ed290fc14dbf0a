package proxy

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sharespot/sharespot/internal/gateway"
)

// BenchmarkProxyThroughput downloads through the gateway on loopback and,
// for comparison, directly from the same origin, over 1 and 16 parallel
// connections of one session. One op is 1 MiB; MB/s is the total rate.
//
//	direct           no gateway
//	bare-relay       a plain TCP forwarder (io.Copy both ways, splice on
//	                 Linux): no SOCKS, no metering — the cost of the extra
//	                 hop alone, the ceiling for any userspace gateway
//	proxy            splice path (Linux), no store
//	proxy-buffered   userspace copy path, no store
//	proxy-filestore  splice path, usage saved ahead of use to a FileStore
func BenchmarkProxyThroughput(b *testing.B) {
	for _, streams := range []int{1, 16} {
		for _, via := range []string{"direct", "bare-relay", "proxy", "proxy-buffered", "proxy-filestore"} {
			b.Run(fmt.Sprintf("%s/streams=%d", via, streams), func(b *testing.B) {
				benchThroughput(b, via, streams)
			})
		}
	}
}

func benchThroughput(b *testing.B, via string, streams int) {
	const opSize = 1 << 20
	o := startOrigin(b, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	dial := func() (net.Conn, error) { return net.Dial("tcp", o.addr) }
	switch via {
	case "direct":
	case "bare-relay":
		relay := startOrigin(b, func(c net.Conn) {
			up, err := net.Dial("tcp", o.addr)
			if err != nil {
				return
			}
			defer up.Close()
			go io.Copy(up, c)
			io.Copy(c, up)
		})
		dial = func() (net.Conn, error) { return net.Dial("tcp", relay.addr) }
	default:
		cfg := Config{noSplice: via == "proxy-buffered"}
		if via == "proxy-filestore" {
			st, err := gateway.OpenFileStore(filepath.Join(b.TempDir(), "usage.json"))
			if err != nil {
				b.Fatal(err)
			}
			cfg.Store = st
		}
		p := newProxy(b, cfg)
		pass := admit(b, p, "bench", 1<<62, 0)
		dial = func() (net.Conn, error) { return dialSOCKS(p.Addr(), "bench", pass, o.addr) }
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

// BenchmarkProxyNewConnections: one session with a FileStore fetching 4 MiB
// per connection, one connection after another, as an HTTP client without
// keep-alive does. Each new connection starts from the session's lead, so
// this is where the save-ahead shows. One op is one connection.
func BenchmarkProxyNewConnections(b *testing.B) {
	const perConn = 4 << 20
	o := startOrigin(b, streamN(-1))
	st, err := gateway.OpenFileStore(filepath.Join(b.TempDir(), "usage.json"))
	if err != nil {
		b.Fatal(err)
	}
	p := newProxy(b, Config{Store: st})
	pass := admit(b, p, "bench", 1<<62, 0)
	buf := make([]byte, 256<<10)
	b.SetBytes(perConn)
	b.ResetTimer()
	for range b.N {
		c, err := dialSOCKS(p.Addr(), "bench", pass, o.addr)
		if err != nil {
			b.Fatal(err)
		}
		for got := 0; got < perConn; {
			n, err := c.Read(buf[:min(len(buf), perConn-got)])
			got += n
			if err != nil {
				b.Fatal(err)
			}
		}
		c.Close()
	}
}

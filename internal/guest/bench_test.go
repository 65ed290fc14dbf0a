package guest

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/forward"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/seal"
)

// BenchmarkVerifiedThroughput measures what verified usage costs a guest's
// downloads: each iteration grants a fresh session of 50 MB or 1 GB (so
// the credit window is the 1 MB or 20 MB a real purchase of that size has)
// and downloads 48 MB
// through the guest's forwarder and the userspace gateway, in 1 or 16
// parallel streams. "unverified": the gateway holds the session to its
// quota alone. "verified": it holds it to acknowledged + 1 MB from the
// first byte, and the guest's Acker signs the forwarder's count in-band to
// the gateway's control stream as it grows (poked by the forwarder every
// 64 KiB). The gateway keeps its usage in a file store, as a host does.
// Compare the MB/s.
func BenchmarkVerifiedThroughput(b *testing.B) {
	const total = 48_000_000
	oln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, total)
	osrv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/n/"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(body[:n])
	})}
	go osrv.Serve(oln)
	defer osrv.Close()
	oap := netip.MustParseAddrPort(oln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Gateways with a store, as a host has (usage saved ahead of use,
	// acknowledgments saved with it): one that carries what loopback
	// does, one that holds each session to 50 MB/s (a fast mobile link).
	gateways := map[int64]*proxy.Proxy{}
	for _, rl := range []int64{0, 50_000_000} {
		st, err := gateway.OpenFileStore(filepath.Join(b.TempDir(), "gateway.json"))
		if err != nil {
			b.Fatal(err)
		}
		gw, err := proxy.New(proxy.Config{Addr: "127.0.0.1:0", Store: st, RateLimit: rl, AllowDestination: func(ap netip.AddrPort) bool { return ap == oap }})
		if err != nil {
			b.Fatal(err)
		}
		go gw.Run(ctx)
		for gw.Addr() == "" {
			time.Sleep(time.Millisecond)
		}
		gateways[rl] = gw
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	// No server: the acknowledgments' copies to it fail at once, as
	// they would while it is away; the gateway needs none of them.
	g := &Guest{C: client.New("http://127.0.0.1:9", key, client.Options{})}
	n := 0
	for _, c := range []struct{ quota, rate int64 }{{50_000_000, 0}, {1_000_000_000, 0}, {50_000_000, 50_000_000}} {
		quota, gw := c.quota, gateways[c.rate]
		for _, verified := range []bool{false, true} {
			for _, streams := range []int{1, 16} {
				name := fmt.Sprintf("unverified/streams=%d", streams)
				if verified {
					name = fmt.Sprintf("verified/streams=%d", streams)
				}
				name = fmt.Sprintf("bought=%dMB/link=%s/%s", quota/1_000_000, cmp.Or(map[int64]string{50_000_000: "50MBps"}[c.rate], "loopback"), name)
				b.Run(name, func(b *testing.B) {
					b.SetBytes(total)
					for b.Loop() {
						b.StopTimer()
						n++
						s := &Session{g: g, ID: fmt.Sprintf("ses_bench%d", n)}
						code, err := seal.NewAccessCode()
						if err != nil {
							b.Fatal(err)
						}
						grant := gateway.Grant{SessionID: s.ID, Credential: code, Quota: quota}
						if verified {
							grant.Verified, grant.GuestKey = true, key.Public().(ed25519.PublicKey)
						}
						if err := gw.Admit(ctx, grant); err != nil {
							b.Fatal(err)
						}
						fwd, err := forward.Listen("127.0.0.1:0", gw.Addr(), s.ID, seal.FormatCode(code), nil)
						if err != nil {
							b.Fatal(err)
						}
						sctx, stop := context.WithCancel(ctx)
						var wg sync.WaitGroup
						wg.Go(func() { fwd.Run(sctx) })
						if verified {
							a := &Acker{Session: s, Gateway: gw.Addr(), Code: code, Count: fwd.Bytes}
							fwd.SetOnGrow(a.Poke)
							s.Acknowledging(a)
							wg.Go(func() { a.Run(sctx) })
						}
						hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "socks5", Host: fwd.Addr()}), DisableKeepAlives: true}}
						b.StartTimer()
						download(b, hc, oln.Addr().String(), total, streams)
						b.StopTimer()
						stop()
						wg.Wait()
						if err := gw.Revoke(ctx, s.ID); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
				})
			}
		}
	}
}

// download fetches total bytes from origin in streams parallel requests.
func download(b *testing.B, hc *http.Client, origin string, total, streams int) {
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for range streams {
		wg.Go(func() {
			res, err := hc.Get(fmt.Sprintf("http://%s/n/%d", origin, total/streams))
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			if got, _ := io.Copy(io.Discard, res.Body); got != int64(total/streams) {
				errs <- fmt.Errorf("got %d of %d bytes", got, total/streams)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

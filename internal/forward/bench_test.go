package forward

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// BenchmarkThroughput downloads through the gateway directly (SOCKS5 with
// the session's credentials, as a program given the proxy URL does) and
// through the forwarder (as `sharespot connect` offers it), one 64 MB
// transfer per iteration; compare the MB/s.
func BenchmarkThroughput(b *testing.B) {
	const n = 64 << 20
	r := newRig(b, 1<<50)
	for _, tc := range []struct {
		name  string
		proxy *url.URL
	}{
		{"direct", &url.URL{Scheme: "socks5", User: url.UserPassword(r.sid, r.code), Host: r.gw.Addr()}},
		{"forwarder", &url.URL{Scheme: "socks5", Host: r.fwd.Addr()}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(tc.proxy), DisableKeepAlives: true}}
			b.SetBytes(n)
			for b.Loop() {
				res, err := hc.Get(fmt.Sprintf("%s/n/%d", r.origin, n))
				if err != nil {
					b.Fatal(err)
				}
				if got, _ := io.Copy(io.Discard, res.Body); got != n {
					b.Fatalf("got %d bytes", got)
				}
				res.Body.Close()
			}
		})
	}
}

package nft

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/netns"
	"github.com/sharespot/sharespot/internal/portal"
)

// TestWalledGardenSuite: with the captive portal on, a guest that is not
// admitted reaches the server (the walled garden) and the host's endpoint,
// has its port-80 requests (IPv4 and IPv6, any address) answered by the
// portal's redirect, may ask the host's resolver (AllowDNS), and gets
// nothing else to the internet: not the origin, not other ports of the
// server's address, not DNS to an outside resolver, not IPv6. Admitted, it
// reaches the origin on port 80 and the Captive Portal API says so; revoked,
// it is back behind the portal.
func TestWalledGardenSuite(t *testing.T) {
	f := newFixture(t, 2)
	// The "server": an HTTP listener in the internet namespace on 8474,
	// and a second port on the same address the garden does not open.
	var serverHits, otherHits atomic.Int64
	srvAddr := netip.AddrPortFrom(f.tp.Net4, 8474)
	serve := func(addr string, hits *atomic.Int64) {
		ln, err := f.tp.Internet.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "server\n") }),
			ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		t.Cleanup(func() { hs.Close() })
	}
	serve(srvAddr.String(), &serverHits)
	serve(net.JoinHostPort(f.tp.Net4.String(), "8080"), &otherHits)
	// The host's resolver: a UDP sink on the host's LAN address.
	var resolverGot atomic.Int64
	pc, err := f.tp.Host.ListenPacket("udp", net.JoinHostPort(f.tp.HostLAN4.String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			resolverGot.Add(int64(n))
		}
	}()
	portalURL := "https://" + srvAddr.String() + "/guest/?bssid=02:5e:00:00:00:01&ssid=Cafe&admit=" + f.admit
	f.garden, f.portalURL, f.dns = []netip.AddrPort{srvAddr}, portalURL, true
	f.start()
	g := f.tp.Guests[0]
	g.AddIPv6(t, f.tp)
	ctx := context.Background()
	noRedirect := func(gu *netns.Guest) *http.Client {
		hc := guestClient(gu, 3*time.Second)
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		return hc
	}
	portalAnswer := func(t *testing.T, url string) {
		t.Helper()
		res, err := noRedirect(g).Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusFound || res.Header.Get("Location") != portalURL {
			t.Fatalf("GET %s: %s to %q, want 302 to the portal", url, res.Status, res.Header.Get("Location"))
		}
	}
	captive := func(t *testing.T) portal.Captive {
		t.Helper()
		res, err := guestClient(g, 3*time.Second).Get("http://" + f.admit + CaptivePath)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if ct := res.Header.Get("Content-Type"); ct != portal.CaptiveContentType {
			t.Fatalf("captive API content type %q", ct)
		}
		var c portal.Captive
		if err := json.NewDecoder(res.Body).Decode(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("before_admission", func(t *testing.T) {
		before, beforeDNS := f.origin.Received(), f.origin.DNSReceived()
		portalAnswer(t, f.base+"/n/1000000")               // the origin's own address
		portalAnswer(t, "http://203.0.113.9/generate_204") // any address (an Android probe)
		portalAnswer(t, f.base6+"/n/1000000")              // IPv6
		portalAnswer(t, "http://"+f.admit+"/anything?x=1") // the endpoint itself
		if c := captive(t); !c.Captive || c.UserPortalURL != portalURL || c.BytesRemaining != nil {
			t.Fatalf("captive API before admission: %+v", c)
		}
		res, err := guestClient(g, 3*time.Second).Get("http://" + srvAddr.String() + "/healthz")
		if err != nil {
			t.Fatalf("the server through the walled garden: %v", err)
		}
		res.Body.Close()
		if serverHits.Load() != 1 {
			t.Fatalf("server hits %d, want 1", serverHits.Load())
		}
		for _, addr := range []string{net.JoinHostPort(f.tp.Net4.String(), "8080"), net.JoinHostPort(f.tp.Net4.String(), "443"),
			net.JoinHostPort(f.tp.Net6.String(), "8474")} {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := g.DialContext(dctx, "tcp", addr)
			cancel()
			if err == nil {
				c.Close()
				t.Errorf("before admission the guest connected to %s", addr)
			}
		}
		dnsTunnel(t, g, net.JoinHostPort(f.tp.Net4.String(), "53"), 50*kB)
		dnsTunnel(t, g, net.JoinHostPort(f.tp.Net6.String(), "53"), 50*kB)
		dnsTunnel(t, g, net.JoinHostPort(f.tp.HostLAN4.String(), "53"), 10*kB)
		settle(f.origin)
		if leak, dns := f.origin.Received()-before, f.origin.DNSReceived()-beforeDNS; leak != 0 || dns != 0 || otherHits.Load() != 0 {
			t.Fatalf("before admission the internet got %d bytes (DNS %d), the server's other port %d requests", leak, dns, otherHits.Load())
		}
		if resolverGot.Load() == 0 {
			t.Fatal("AllowDNS: nothing reached the host's resolver")
		}
	})

	code := f.grant("s-portal", 5*mB, 0)
	t.Run("admitted", func(t *testing.T) {
		// A connection made before admission (redirected to the portal)
		// must not keep the guest on the portal once admitted.
		if err := f.present(g, "s-portal", code); err != nil {
			t.Fatal(err)
		}
		n, err := netns.Fetch(ctx, guestClient(g, wait), f.base, 1*mB)
		if err != nil || n != 1*mB {
			t.Fatalf("admitted fetch on port 80: %d bytes, %v", n, err)
		}
		c := captive(t)
		used, quota := usage(t, f.gw, "s-portal")
		if c.Captive || c.BytesRemaining == nil || *c.BytesRemaining != quota-used {
			t.Fatalf("captive API when admitted: %+v, want not captive with %d bytes remaining", c, quota-used)
		}
	})

	t.Run("revoked", func(t *testing.T) {
		if err := f.gw.Revoke(ctx, "s-portal"); err != nil {
			t.Fatal(err)
		}
		portalAnswer(t, f.base+"/n/1000000")
		if c := captive(t); !c.Captive {
			t.Fatalf("captive API after revocation: %+v", c)
		}
	})
}

package dashboard_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/dashboard"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
)

// BenchmarkPages measures what a page load and a live poll cost on a
// server holding SHARESPOT_BENCH_SESSIONS settled sessions (default 2000)
// over 16 hosts: the operator's page runs the whole ledger audit and the
// usage reconciliation each time, the host's page reads one account's.
func BenchmarkPages(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("SHARESPOT_BENCH_SESSIONS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	env := harness.Start(b, func(c *server.Config) { c.Limits = api.Limits{} })
	hosts := make([]*client.Client, 16)
	hss := make([]*sharespotv1.Hotspot, len(hosts))
	for i := range hosts {
		hosts[i] = env.Device(b, "host")
		res, err := hosts[i].Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(i)}))
		if err != nil {
			b.Fatal(err)
		}
		hss[i] = res.Msg.Hotspot
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		g := &guest.Guest{C: env.Device(b, "guest"), Suites: []seal.Suite{seal.Preset}}
		env.Fund(b, g.C, "EUR", 1<<40)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if err := harness.PaidFlow(ctx, hosts[i%16], hss[i%16], g); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	key, err := dashboard.LoadOrCreateKey(dashboard.KeyPath(env.Dir))
	if err != nil {
		b.Fatal(err)
	}
	opTok, _, err := dashboard.OperatorLink(ctx, env.Srv.Store(), key, env.Clock.Now())
	if err != nil {
		b.Fatal(err)
	}
	hostLink, _, err := hosts[0].DashboardLink(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cookie := func(tok string) *http.Cookie {
		req, _ := http.NewRequest(http.MethodPost, env.URL+"/dashboard/signin", stringsReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		res, err := noRedirect.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		res.Body.Close()
		for _, c := range res.Cookies() {
			if c.Name == dashboard.CookieName {
				return c
			}
		}
		b.Fatalf("no cookie: %s", res.Status)
		return nil
	}
	op, hostC := cookie(opTok), cookie(tokenOf(b, hostLink))
	for _, c := range []struct {
		name   string
		cookie *http.Cookie
		path   string
	}{{"operator-page", op, "/dashboard/"}, {"operator-live", op, "/dashboard/live"}, {"host-page", hostC, "/dashboard/"}, {"host-live", hostC, "/dashboard/live"}} {
		b.Run(fmt.Sprintf("%s/sessions=%d", c.name, n), func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodGet, env.URL+c.path, nil)
				req.AddCookie(c.cookie)
				res, err := noRedirect.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					b.Fatalf("%s: %s", c.path, res.Status)
				}
			}
		})
	}
}

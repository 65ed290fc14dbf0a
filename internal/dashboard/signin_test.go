package dashboard_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/dashboard"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/store"
)

// noRedirect is a plain HTTP/1.1 client, as a browser's requests arrive.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func post(t *testing.T, u string, form url.Values, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

func tokenOf(t testing.TB, link string) string {
	t.Helper()
	i := strings.LastIndex(link, "/")
	return link[i+1:]
}

func TestSignInOnceUnderRace(t *testing.T) {
	env := harness.Start(t, nil)
	host := env.Device(t, "host")
	link, _, err := host.DashboardLink(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	same := map[string]string{"Sec-Fetch-Site": "same-origin"}
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := post(t, env.URL+"/dashboard/signin", url.Values{"token": {tokenOf(t, link)}}, same)
			mu.Lock()
			codes[res.StatusCode]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[http.StatusSeeOther] != 1 || codes[http.StatusNotFound] != 7 {
		t.Fatalf("8 uses of one link: %v, want one sign-in (303) and seven refusals (404)", codes)
	}
}

func TestSignInRefusals(t *testing.T) {
	env := harness.Start(t, nil)
	host := env.Device(t, "host")
	ctx := context.Background()
	link, _, err := host.DashboardLink(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok := url.Values{"token": {tokenOf(t, link)}}
	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		{"cross-site", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": env.URL}},
		{"same-site other origin", map[string]string{"Sec-Fetch-Site": "same-site"}},
		{"other origin", map[string]string{"Origin": "http://evil.example"}},
		{"null origin", map[string]string{"Origin": "null"}},
		{"no origin at all", nil},
	} {
		if res := post(t, env.URL+"/dashboard/signin", tok, tc.hdr); res.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", tc.name, res.StatusCode)
		}
	}
	// The refused attempts did not use the link up.
	res := post(t, env.URL+"/dashboard/signin", tok, map[string]string{"Origin": env.URL})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in from this origin: status %d", res.StatusCode)
	}
	var cookie *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == dashboard.CookieName {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/dashboard/" || cookie.Secure {
		t.Fatalf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/dashboard/, not Secure over cleartext", cookie)
	}
	for _, h := range []string{"Content-Security-Policy", "Referrer-Policy", "X-Content-Type-Options"} {
		if res.Header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	if !strings.Contains(res.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("CSP %q allows more than the page's own", res.Header.Get("Content-Security-Policy"))
	}
	get := func(path string) int {
		req, _ := http.NewRequest(http.MethodGet, env.URL+path, nil)
		req.AddCookie(cookie)
		res, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if c := get("/dashboard/live"); c != http.StatusOK {
		t.Fatalf("live with the cookie: %d", c)
	}
	// A session ends after SessionTTL, also for the live endpoint.
	env.Clock.Advance(dashboard.SessionTTL)
	if c := get("/dashboard/live"); c != http.StatusUnauthorized {
		t.Errorf("live after the session's lifetime: %d, want 401", c)
	}
	if c := get("/dashboard/"); c != http.StatusUnauthorized {
		t.Errorf("page after the session's lifetime: %d, want 401", c)
	}

	// A host link needs the device's bearer token.
	for _, auth := range []string{"", "Bearer sst_forged", "Basic eDp5"} {
		req, _ := http.NewRequest(http.MethodPost, env.URL+"/dashboard/link", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Errorf("link with Authorization %q: %d, want 401", auth, res.StatusCode)
		}
	}
}

func TestAdminKey(t *testing.T) {
	env := harness.Start(t, nil)
	path := dashboard.KeyPath(env.Dir)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("the server made no admin key: %v", err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != dashboard.KeySize {
		t.Errorf("admin key %s: mode %v, %d bytes; want 0600, %d", path, fi.Mode().Perm(), fi.Size(), dashboard.KeySize)
	}
	key, err := dashboard.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st := env.Srv.Store()
	if _, _, err := dashboard.OperatorLink(ctx, st, key, env.Clock.Now()); err != nil {
		t.Fatalf("operator link with the server's key: %v", err)
	}
	other := make([]byte, dashboard.KeySize)
	other[0] = 1
	if _, _, err := dashboard.OperatorLink(ctx, st, other, env.Clock.Now()); err == nil || !strings.Contains(err.Error(), "not the one") {
		t.Errorf("operator link with another key: %v, want a refusal naming the key", err)
	}
	// A link stored under another key does not sign in here.
	var tok string
	err = st.Write(ctx, func(tx *store.Tx) error {
		var err error
		tok, _, err = dashboard.CreateLink(tx, other, dashboard.RoleOperator, "", env.Clock.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := post(t, env.URL+"/dashboard/signin", url.Values{"token": {tok}}, map[string]string{"Sec-Fetch-Site": "same-origin"}); res.StatusCode != http.StatusNotFound {
		t.Errorf("a link made with another key: %d, want 404", res.StatusCode)
	}
	err = st.Write(ctx, func(tx *store.Tx) error {
		_, _, err := dashboard.CreateLink(tx, key, dashboard.RoleHost, "", env.Clock.Now())
		return err
	})
	if err == nil {
		t.Error("a host link without an account was made")
	}
}

// TestSecureCookieOverTLS: over TLS the session cookie is Secure.
func TestSecureCookieOverTLS(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir()+"/d.db", store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	key := make([]byte, dashboard.KeySize)
	key[1] = 7
	now := time.Now()
	if err := st.Write(ctx, func(tx *store.Tx) error { _, err := dashboard.RecordKey(tx, key, now.UnixMilli()); return err }); err != nil {
		t.Fatal(err)
	}
	d, err := dashboard.New(dashboard.Deps{Store: st, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(d.Handler())
	defer srv.Close()
	tok, _, err := dashboard.OperatorLink(ctx, st, key, now)
	if err != nil {
		t.Fatal(err)
	}
	hc := srv.Client()
	hc.CheckRedirect = noRedirect.CheckRedirect
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/dashboard/signin", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", srv.URL)
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || len(res.Cookies()) != 1 || !res.Cookies()[0].Secure {
		t.Fatalf("sign-in over TLS: %s, cookies %v; want a Secure cookie", res.Status, res.Cookies())
	}
}

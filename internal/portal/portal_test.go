package portal_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/portal"
)

func TestHandlerServesEmbeddedPages(t *testing.T) {
	h := portal.Handler(func(context.Context, string) (bool, error) { return false, nil })
	for path, ctype := range map[string]string{"/guest/": "text/html", "/guest/app.js": "javascript", "/guest/hpke.js": "javascript", "/guest/style.css": "text/css"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Header().Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q", path, rec.Code, rec.Header().Get("Content-Type"))
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self';") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/guest/", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
}

// No asset comes from elsewhere: no absolute URL in a src, href, CSS url()
// or import; and the page says what to do without JavaScript.
func TestNoThirdPartyAssets(t *testing.T) {
	h := portal.Handler(func(context.Context, string) (bool, error) { return false, nil })
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import|import\s*\(`)
	for _, f := range []string{"/guest/", "/guest/app.js", "/guest/hpke.js", "/guest/style.css"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", f, nil))
		if m := external.FindString(rec.Body.String()); m != "" {
			t.Errorf("%s loads something from elsewhere: %q", f, m)
		}
		if f == "/guest/" && !strings.Contains(rec.Body.String(), "<noscript>") {
			t.Errorf("the page has no <noscript> message")
		}
	}
}

func TestRedirect(t *testing.T) {
	const to = "https://sharespot.example/guest/?bssid=02:5e:00:00:00:01&ssid=Caf%C3%A9"
	rec := httptest.NewRecorder()
	portal.Redirect(rec, httptest.NewRequest("GET", "http://connectivitycheck.gstatic.com/generate_204", nil), to)
	if rec.Code != http.StatusFound || rec.Header().Get("Location") != to || rec.Header().Get("Cache-Control") != "no-store" ||
		!strings.Contains(rec.Body.String(), `href="https://sharespot.example/guest/?bssid=02:5e:00:00:00:01&amp;ssid=Caf%C3%A9"`) {
		t.Fatalf("GET: %d %v %q", rec.Code, rec.Header(), rec.Body.String())
	}
	rec = httptest.NewRecorder()
	portal.Redirect(rec, httptest.NewRequest("POST", "http://example.com/form", nil), to)
	if rec.Code != http.StatusNetworkAuthenticationRequired {
		t.Fatalf("POST: %d, want 511", rec.Code)
	}
	if got := portal.PageURL("https://s.example/", "02:5e:00:00:00:01", "Café & Bar", "192.168.12.1:8475"); got !=
		"https://s.example/guest/?admit=192.168.12.1%3A8475&bssid=02%3A5e%3A00%3A00%3A00%3A01&ssid=Caf%C3%A9+%26+Bar" {
		t.Fatalf("PageURL: %s", got)
	}
	if got := portal.Origin("https://s.example:8443/guest/?x"); got != "https://s.example:8443/" {
		t.Fatalf("Origin: %s", got)
	}
}

func TestCaptiveJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	left := int64(1234)
	portal.WriteCaptive(rec, portal.Captive{Captive: false, UserPortalURL: "https://s.example/guest/", BytesRemaining: &left})
	if rec.Header().Get("Content-Type") != "application/captive+json" ||
		strings.TrimSpace(rec.Body.String()) != `{"captive":false,"user-portal-url":"https://s.example/guest/","bytes-remaining":1234}` {
		t.Fatalf("%v %s", rec.Header(), rec.Body.String())
	}
}

// TestConnectJSONOverHTTP1 is what a browser on a cleartext or HTTP/1.1
// connection does: unary calls as JSON POSTs and the inbox stream as
// Connect envelopes, over HTTP/1.1, against the real server.
func TestConnectJSONOverHTTP1(t *testing.T) {
	env := harness.Start(t, nil)
	hc := &http.Client{Transport: &http.Transport{}} // HTTP/1.1 to http:// URLs
	token := ""
	call := func(method string, in, out any) {
		t.Helper()
		body, _ := json.Marshal(in)
		req, _ := http.NewRequest("POST", env.URL+"/sharespot.v1."+method, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 || res.Proto != "HTTP/1.1" {
			t.Fatalf("%s: %s %s: %s", method, res.Proto, res.Status, b)
		}
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: %v: %s", method, err, b)
		}
	}
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	b64 := base64.StdEncoding.EncodeToString
	var ch struct{ Nonce string }
	call("AuthService/Challenge", map[string]any{"publicKey": b64(pub)}, &ch)
	nonce, _ := base64.StdEncoding.DecodeString(ch.Nonce)
	var si struct{ Token, DeviceId string }
	call("AuthService/SignIn", map[string]any{"publicKey": b64(pub), "nonce": ch.Nonce,
		"signature": b64(ed25519.Sign(key, append([]byte("sharespot/signin/v1\x00"), nonce...)))}, &si)
	token = si.Token
	var reg struct{ Hotspot struct{ Id string } }
	call("HotspotService/Register", map[string]any{"instruction": map[string]any{
		"accessPoint":    map[string]any{"ssid": b64([]byte("Cafe")), "bssid": "02:5e:00:00:00:07", "security": "SECURITY_WPA2"},
		"tariff":         map[string]any{"currency": "EUR", "priceMinor": "10", "unitBytes": "1000000", "minPurchaseBytes": "1000000", "topupPriceMinor": "10"},
		"shareableBytes": "100000000", "warnAtBytes": "1000000"}}, &reg)

	// The stream, enveloped JSON over HTTP/1.1.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	payload := []byte(`{"afterSeq":"0"}`)
	env5 := append([]byte{0, 0, 0, 0, 0}, payload...)
	binary.BigEndian.PutUint32(env5[1:5], uint32(len(payload)))
	req, _ := http.NewRequestWithContext(ctx, "POST", env.URL+"/sharespot.v1.InboxService/Subscribe", bytes.NewReader(env5))
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Proto != "HTTP/1.1" {
		t.Fatalf("stream: %s %s", res.Proto, res.Status)
	}
	// A guest (the Go client) asks this host for access.
	guestC := env.Device(t, "guest")
	g := &guest.Guest{C: guestC}
	if _, err := g.RequestAccess(ctx, reg.Hotspot.Id, 2_000_000); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(res.Body)
	var sr struct {
		Envelopes []struct {
			Seq             string
			AccessRequested *struct {
				HotspotId, Bytes string
			}
		}
	}
	var msg []byte
	head := make([]byte, 5)
	// The server may open the stream with an empty message; read until
	// one carries envelopes.
	for range 10 {
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatal(err)
		}
		msg = make([]byte, binary.BigEndian.Uint32(head[1:]))
		if _, err := io.ReadFull(r, msg); err != nil {
			t.Fatal(err)
		}
		if head[0] != 0 || bytes.Contains(msg, []byte("envelopes")) {
			break
		}
	}
	if err := json.Unmarshal(msg, &sr); err != nil || head[0] != 0 || len(sr.Envelopes) != 1 || sr.Envelopes[0].AccessRequested == nil ||
		sr.Envelopes[0].AccessRequested.HotspotId != reg.Hotspot.Id || sr.Envelopes[0].AccessRequested.Bytes != "2000000" {
		t.Fatalf("stream message (flags %d): %s (%v)", head[0], msg, err)
	}
}

func TestPAC(t *testing.T) {
	h := portal.Handler(func(_ context.Context, gw string) (bool, error) { return gw == "192.168.12.1:1080", nil })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "https://sharespot.example:8443/guest/proxy.pac?gw=192.168.12.1:1080", nil))
	want := "function FindProxyForURL(url, host) {\n  if (host === \"sharespot.example\") return \"DIRECT\";\n  return \"PROXY 192.168.12.1:1080\";\n}\n"
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/x-ns-proxy-autoconfig" || !strings.HasSuffix(rec.Body.String(), want) {
		t.Fatalf("%d %q\n%s", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	for _, bad := range []string{"", "?gw=192.168.12.1", "?gw=x\";alert(1);\":1080", "?gw=h:0", "?gw=h:99999"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/guest/proxy.pac"+strings.ReplaceAll(bad, ";", "%3B"), nil))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, rec.Code)
		}
	}
	// A proxy no session runs at: no PAC for it.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/guest/proxy.pac?gw=203.0.113.9:3128", nil))
	if rec.Code != http.StatusNotFound || strings.Contains(rec.Body.String(), "FindProxyForURL") {
		t.Errorf("an unknown gateway: %d %s", rec.Code, rec.Body.String())
	}
}

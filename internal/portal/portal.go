// Package portal is the guest's web side: the pages a person with a stock
// phone uses to buy data from a hotspot (served by the Sharespot server at
// Path, assets embedded, nothing from elsewhere), and the captive-portal
// pieces the host's kernel gateway answers with (RFC 8908 API, the
// redirect of intercepted port-80 requests).
//
// The pages call the same Connect API as the CLI, with JSON over HTTP/1.1
// or HTTP/2. The device key is a non-extractable Ed25519 WebCrypto key kept
// in IndexedDB (the same key type as the CLI's, so the server verifies it
// unchanged); the session's HPKE key is a non-extractable X25519 key, and
// the sealed access code is opened in the page (static/hpke.js), so the
// code is never in clear outside the guest's browser and the host's
// admission endpoint.
package portal

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Path is where the server serves the guest pages.
const Path = "/guest/"

//go:embed static
var static embed.FS

// csp allows only this origin's scripts, styles and connections (the API).
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the guest pages under Path. knownGateway says whether a
// running session was granted at a gateway (host:port): the proxy
// auto-config is served for those only, so this server never hands a
// phone a PAC pointing at a proxy of somebody's choosing.
func Handler(knownGateway func(ctx context.Context, address string) (bool, error)) http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(strings.TrimSuffix(Path, "/"), http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if r.URL.Path == PACPath {
			PAC(w, r, knownGateway)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// PageURL is the guest page on the server at serverURL for one hotspot:
// the page discovers it by its BSSID and SSID and presents the access code
// at admit (host:port of the kernel gateway's admission endpoint).
func PageURL(serverURL, bssid, ssid, admit string) string {
	q := url.Values{"bssid": {bssid}, "ssid": {ssid}}
	if admit != "" {
		q.Set("admit", admit)
	}
	return strings.TrimSuffix(serverURL, "/") + Path + "?" + q.Encode()
}

// CaptiveContentType is the media type of the Captive Portal API (RFC 8908).
const CaptiveContentType = "application/captive+json"

// Captive is the Captive Portal API's JSON (RFC 8908 §5). A volume-metered
// session has no time limit, so SecondsRemaining stays unset.
type Captive struct {
	Captive          bool   `json:"captive"`
	UserPortalURL    string `json:"user-portal-url,omitempty"`
	VenueInfoURL     string `json:"venue-info-url,omitempty"`
	CanExtendSession *bool  `json:"can-extend-session,omitempty"`
	SecondsRemaining *int64 `json:"seconds-remaining,omitempty"`
	BytesRemaining   *int64 `json:"bytes-remaining,omitempty"`
}

// WriteCaptive answers a Captive Portal API request.
func WriteCaptive(w http.ResponseWriter, c Captive) {
	w.Header().Set("Content-Type", CaptiveContentType)
	w.Header().Set("Cache-Control", "private, no-store")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	json.NewEncoder(w).Encode(c)
}

// Redirect answers an intercepted request of a guest not yet admitted: a
// GET or HEAD gets 302 Found to the portal (what the Android, iOS and
// Windows connectivity probes take as a captive portal), anything else 511
// Network Authentication Required (RFC 6585); both uncacheable, with a
// page that links to the portal.
func Redirect(w http.ResponseWriter, r *http.Request, portal string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Not kept alive: once admitted, the browser's next connection to the
	// same address must reach the real site, not this redirected one.
	h.Set("Connection", "close")
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		h.Set("Location", portal)
		w.WriteHeader(http.StatusFound)
	} else {
		w.WriteHeader(http.StatusNetworkAuthenticationRequired)
	}
	esc := htmlEscape(portal)
	w.Write([]byte(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">` +
		`<meta http-equiv="refresh" content="0;url=` + esc + `"><title>Sign in to this network</title></head>` +
		`<body><p>This network sells data through Sharespot. <a href="` + esc + `">Open the sign-in page</a>.</p></body></html>`))
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;").Replace(s)
}

// AdmitPage is the host's admission page, GET on the kernel gateway's
// admission endpoint. The guest page (on the server, over HTTPS) cannot
// post to the host's cleartext endpoint (mixed content), so it navigates
// here with the session ID, the code and its own address in the URL
// fragment, which never leaves the browser; this page posts them to the
// endpoint from its own origin and goes back to the guest page, only to
// an address under back (the portal's origin), adding #admitted.
func AdmitPage(w http.ResponseWriter, back string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	origin, _ := json.Marshal(back)
	w.Write([]byte(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Connecting…</title><style>body{font:17px/1.5 system-ui,sans-serif;max-width:32rem;margin:1rem auto;padding:0 1rem;color:#111}a{color:#0b57d0}</style></head>
<body><h1>Connecting you</h1><p id="m" role="status">Presenting your access code to this hotspot…</p>
<noscript><p>This step needs JavaScript: turn it on and go back to the Sharespot page.</p></noscript>
<script>
(async function () {
  const allowed = ` + string(origin) + `;
  const p = new URLSearchParams(location.hash.slice(1));
  history.replaceState(null, "", location.pathname); // the code leaves the address bar
  const back = p.get("back") || "";
  const safeBack = back.startsWith(allowed) ? back : allowed;
  const m = document.getElementById("m");
  try {
    const res = await fetch("/admit", { method: "POST", body: new URLSearchParams({ session: p.get("session") || "", code: p.get("code") || "" }) });
    const text = (await res.text()).trim();
    if (!res.ok) throw new Error(text || res.statusText);
    m.textContent = "Online. Going back to your Sharespot page…";
    location.replace(safeBack.split("#")[0] + "#admitted");
  } catch (e) {
    m.textContent = "The hotspot refused: " + e.message + ". ";
    const a = document.createElement("a"); a.href = safeBack.split("#")[0]; a.textContent = "Back to the Sharespot page";
    m.appendChild(a);
  }
})();
</script></body></html>`))
}

// Origin is the scheme://host[:port]/ of a URL (the portal's), or "".
func Origin(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Scheme == "" || p.Host == "" {
		return ""
	}
	return p.Scheme + "://" + p.Host + "/"
}

// PACPath is the proxy auto-config file for phones on a host's userspace
// gateway: /guest/proxy.pac?gw=HOST:PORT.
const PACPath = Path + "proxy.pac"

// PAC answers a proxy auto-config request: this server (the host the
// request named) directly, everything else through the gateway at the
// query's gw (host:port, as the access response's Gateway.Address gives
// it). A phone's Wi-Fi proxy setting takes its URL ("Automatic" on iOS,
// "Proxy auto-config" on Android); its browser then asks for the proxy's
// user name and password, which the guest page shows (session ID and
// access code).
func PAC(w http.ResponseWriter, r *http.Request, knownGateway func(ctx context.Context, address string) (bool, error)) {
	gw := r.URL.Query().Get("gw")
	host, port, err := net.SplitHostPort(gw)
	if err != nil || host == "" || strings.ContainsAny(host, "\"'\\;\r\n ") {
		http.Error(w, "gw must be the gateway's host:port, e.g. ?gw=192.168.12.1:1080", http.StatusBadRequest)
		return
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		http.Error(w, "gw has a bad port", http.StatusBadRequest)
		return
	}
	known, err := knownGateway(r.Context(), gw)
	if err != nil {
		http.Error(w, "cannot check the gateway now; try again", http.StatusServiceUnavailable)
		return
	}
	if !known {
		http.Error(w, "no session runs at the gateway "+gw+": a proxy auto-config is served only for a host's gateway a session was granted at", http.StatusNotFound)
		return
	}
	self := r.Host
	if h, _, err := net.SplitHostPort(self); err == nil {
		self = h
	}
	self = strings.Trim(self, "[]")
	js, _ := json.Marshal(self)
	w.Header().Set("Content-Type", "application/x-ns-proxy-autoconfig")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write([]byte("// Sharespot: this server directly, everything else through the host's gateway.\n" +
		"function FindProxyForURL(url, host) {\n" +
		"  if (host === " + string(js) + ") return \"DIRECT\";\n" +
		"  return \"PROXY " + net.JoinHostPort(host, port) + "\";\n" +
		"}\n"))
}

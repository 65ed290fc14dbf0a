// Package dashboard serves the web dashboard under /dashboard/: a host's
// view of its own hotspots, live sessions, earnings and history, and the
// operator's view of the whole deployment (sessions by state, money by
// currency and day, fees, the ledger audit, top hosts, the usage
// reconciliation between hosts and guests).
//
// Pages are rendered on the server from embedded templates; one small
// embedded script polls /dashboard/live for the live numbers (a live
// session's rate and usage over time come from its host's usage reports,
// kept in usage_samples), draws each live session's usage chart, and shows
// times in the viewer's time zone. Nothing is loaded from elsewhere, and
// the Content-Security-Policy says so. Under 40rem wide every table is
// shown as labelled blocks, one per row (app.css).
//
// Sign-in is by single-use links that expire after LinkTTL: a host's agent,
// signed in with its device key, asks for one at POST /dashboard/link
// (`sharespot share --dashboard` or `sharespot dashboard-link`); an operator's is made by `sharespot
// server admin-link` with the admin key. Following a link shows a page
// whose button (a same-origin POST) uses the link and sets an HttpOnly,
// SameSite=Strict session cookie (Secure over TLS). Links and sessions
// are kept in the database as HMAC-SHA256 under the admin key.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// CookieName is the session cookie's name.
const CookieName = "sharespot_dashboard"

// csp allows the page's own scripts, styles and requests, nothing else.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Authenticator turns a device's bearer token into its party.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (session.Party, error)
}

// Deps are what the dashboard needs.
type Deps struct {
	Store *store.Store
	Auth  Authenticator
	// Key is the admin key (LoadOrCreateKey).
	Key []byte
	Now func() time.Time
	Log *slog.Logger
	// SecureCookies marks the cookie Secure even when a request did not
	// arrive over TLS here (a TLS-terminating proxy in front).
	SecureCookies bool
	// HostAway is the server's bound on a host's absence
	// (session.Config.HostAway): a hotspot shows offline past it.
	HostAway time.Duration
}

// Dashboard serves the pages.
type Dashboard struct {
	d    Deps
	tmpl *template.Template
}

// New builds the dashboard.
func New(d Deps) (*Dashboard, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if len(d.Key) < KeySize {
		return nil, errors.New("dashboard: the admin key is missing")
	}
	t, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard: templates: %w", err)
	}
	return &Dashboard{d: d, tmpl: t}, nil
}

var funcs = template.FuncMap{
	"money": money.Format,
	"bytes": size.Format,
	"short": func(id string) string { return protocol.ShortID(id, 8) },
	// when is a time as the page shows it before its script puts it in
	// the viewer's time zone (app.js, from the element's data-ms).
	"when": func(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04 UTC") },
	"iso":  func(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339) },
	"dict": func(kv ...any) (map[string]any, error) {
		if len(kv)%2 != 0 {
			return nil, errors.New("dict: odd number of arguments")
		}
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			k, ok := kv[i].(string)
			if !ok {
				return nil, errors.New("dict: keys are strings")
			}
			m[k] = kv[i+1]
		}
		return m, nil
	},
}

// Handler serves /dashboard/ and below.
func (h *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /dashboard/{$}", h.index)
	mux.HandleFunc("GET /dashboard/signin/{token}", h.signInPage)
	mux.HandleFunc("POST /dashboard/signin", h.signIn)
	mux.HandleFunc("POST /dashboard/signout", h.signOut)
	mux.HandleFunc("GET /dashboard/live", h.live)
	mux.HandleFunc("POST /dashboard/link", h.link)
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /dashboard/static/", http.StripPrefix("/dashboard/static/", http.FileServerFS(static)))
	mux.HandleFunc("/dashboard", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/dashboard/", http.StatusSeeOther) })
	return headers(mux)
}

// headers sets what every dashboard response carries.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		// The sign-in page's URL holds the link's token: never send it on.
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
		next.ServeHTTP(w, r)
	})
}

func (h *Dashboard) viewer(r *http.Request) (viewer, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return viewer{}, false
	}
	var v viewer
	var ok bool
	err = h.d.Store.Read(r.Context(), func(tx *store.Tx) error {
		var err error
		v, ok, err = lookupSession(tx, h.d.Key, c.Value, h.d.Now().UnixMilli())
		return err
	})
	if err != nil {
		h.d.Log.Warn("dashboard: look up session", "err", err)
		return viewer{}, false
	}
	return v, ok
}

func (h *Dashboard) render(w http.ResponseWriter, status int, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	var b strings.Builder
	if err := h.tmpl.ExecuteTemplate(&b, name, data); err != nil {
		h.d.Log.Error("dashboard: render", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(status)
	w.Write([]byte(b.String()))
}

type message struct {
	Title, Text string
}

func (h *Dashboard) index(w http.ResponseWriter, r *http.Request) {
	v, ok := h.viewer(r)
	if !ok {
		h.render(w, http.StatusUnauthorized, "message.html", message{"Sign in", "Open the one-time link that `sharespot dashboard-link` or `sharespot share --dashboard` (hosts) or `sharespot server admin-link` (operators) prints."})
		return
	}
	now := h.d.Now()
	page := struct {
		V      viewer
		CSRF   string
		NowMS  int64
		Host   *HostData
		Op     *OperatorData
		Charts []Chart
	}{V: v, CSRF: v.csrf, NowMS: now.UnixMilli()}
	err := h.d.Store.Read(r.Context(), func(tx *store.Tx) error {
		var err error
		if v.Role == RoleHost {
			page.Host, err = LoadHost(tx, v.AccountID, now, h.d.HostAway)
			return err
		}
		page.Op, err = LoadOperator(tx, now)
		return err
	})
	if err != nil {
		h.d.Log.Error("dashboard: load", "role", v.Role, "err", err)
		http.Error(w, "the dashboard could not be read", http.StatusInternalServerError)
		return
	}
	if page.Host != nil {
		page.Charts = dayCharts(page.Host.Days, now, "Earnings by day", func(d DayMoney) int64 { return d.HostMinor })
		h.render(w, http.StatusOK, "host.html", page)
		return
	}
	page.Charts = dayCharts(page.Op.Days, now, "Charged by day", func(d DayMoney) int64 { return d.ChargedMinor })
	h.render(w, http.StatusOK, "operator.html", page)
}

func (h *Dashboard) signInPage(w http.ResponseWriter, r *http.Request) {
	token := r.PathValue("token")
	var role Role
	err := h.d.Store.Read(r.Context(), func(tx *store.Tx) error {
		var err error
		role, err = peekLink(tx, h.d.Key, token, h.d.Now().UnixMilli())
		return err
	})
	if errors.Is(err, errLink) {
		h.render(w, http.StatusNotFound, "message.html", message{"Link not valid", errLink.Error()})
		return
	}
	if err != nil {
		h.d.Log.Error("dashboard: read link", "err", err)
		http.Error(w, "the link could not be checked", http.StatusInternalServerError)
		return
	}
	h.render(w, http.StatusOK, "signin.html", struct {
		Role  Role
		Token string
	}{role, token})
}

// sameOrigin refuses a state-changing request another site's page sent.
// Browsers say where a request came from in Sec-Fetch-Site, which a page
// cannot set; where it is missing (older browsers) the Origin must be this
// host. (Origin alone does not do: under Referrer-Policy no-referrer,
// which these pages set, Chromium sends "Origin: null" with a form.)
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin"
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return false
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func (h *Dashboard) secure(r *http.Request) bool { return r.TLS != nil || h.d.SecureCookies }

func (h *Dashboard) signIn(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		h.render(w, http.StatusForbidden, "message.html", message{"Refused", "This sign-in did not come from this dashboard's own page: open the link again."})
		return
	}
	token := r.PostFormValue("token")
	var v viewer
	err := h.d.Store.Write(r.Context(), func(tx *store.Tx) error {
		var err error
		v, err = useLink(tx, h.d.Key, token, h.d.Now())
		return err
	})
	if errors.Is(err, errLink) {
		h.render(w, http.StatusNotFound, "message.html", message{"Link not valid", errLink.Error()})
		return
	}
	if err != nil {
		h.d.Log.Error("dashboard: use link", "err", err)
		http.Error(w, "the sign-in could not be completed", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: v.cookie, Path: "/dashboard/", HttpOnly: true, Secure: h.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: int(SessionTTL / time.Second)})
	h.d.Log.Info("dashboard: signed in", "role", v.Role, "account", v.AccountID)
	http.Redirect(w, r, "/dashboard/", http.StatusSeeOther)
}

func (h *Dashboard) signOut(w http.ResponseWriter, r *http.Request) {
	v, ok := h.viewer(r)
	if !ok {
		http.Redirect(w, r, "/dashboard/", http.StatusSeeOther)
		return
	}
	if !sameOrigin(r) || r.PostFormValue("csrf") != v.csrf {
		h.render(w, http.StatusForbidden, "message.html", message{"Refused", "This sign-out did not come from this dashboard's own page."})
		return
	}
	err := h.d.Store.Write(r.Context(), func(tx *store.Tx) error {
		_, err := tx.Exec(`DELETE FROM dashboard_sessions WHERE hash = ?`, hash(h.d.Key, v.cookie))
		return err
	})
	if err != nil {
		h.d.Log.Error("dashboard: sign out", "err", err)
		http.Error(w, "the sign-out could not be completed", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/dashboard/", HttpOnly: true, Secure: h.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	h.render(w, http.StatusOK, "message.html", message{"Signed out", "You are signed out of the dashboard."})
}

// LiveSession as the live endpoint sends it.
type liveJSON struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Used        int64  `json:"used"`
	Granted     int64  `json:"granted"`
	UsedText    string `json:"used_text"`
	GrantedText string `json:"granted_text"`
	// RateBPS is bytes per second between the last two usage reports;
	// absent where it cannot be told (LiveSession.Rate).
	RateBPS  *int64 `json:"rate_bps,omitempty"`
	RateText string `json:"rate_text"`
	// Samples are [unix ms, bytes used] pairs, oldest first.
	Samples [][2]int64 `json:"samples"`
}

func liveOf(s LiveSession) liveJSON {
	j := liveJSON{ID: s.ID, State: s.State, Used: s.UsedBytes, Granted: s.GrantedBytes, UsedText: size.Format(s.UsedBytes),
		GrantedText: size.Format(s.GrantedBytes), RateText: s.RateText(), Samples: make([][2]int64, 0, len(s.Samples))}
	if s.Rate >= 0 {
		j.RateBPS = &s.Rate
	}
	for _, p := range s.Samples {
		j.Samples = append(j.Samples, [2]int64{p.AtMS, p.Used})
	}
	return j
}

// Live is the live endpoint's answer.
type Live struct {
	NowMS    int64            `json:"now_ms"`
	Sessions []liveJSON       `json:"sessions"`
	States   map[string]int64 `json:"states,omitempty"`
}

func (h *Dashboard) live(w http.ResponseWriter, r *http.Request) {
	v, ok := h.viewer(r)
	if !ok {
		http.Error(w, "sign in first", http.StatusUnauthorized)
		return
	}
	now := h.d.Now()
	out := Live{NowMS: now.UnixMilli(), Sessions: []liveJSON{}}
	err := h.d.Store.Read(r.Context(), func(tx *store.Tx) error {
		var ls []LiveSession
		var err error
		if v.Role == RoleHost {
			ls, err = live(tx, now, hostScope, v.AccountID)
		} else {
			ls, err = live(tx, now, "")
			if err == nil {
				var sc []StateCount
				sc, err = stateCounts(tx)
				out.States = map[string]int64{}
				for _, c := range sc {
					out.States[c.State] = c.N
				}
			}
		}
		for _, s := range ls {
			out.Sessions = append(out.Sessions, liveOf(s))
		}
		return err
	})
	if err != nil {
		h.d.Log.Error("dashboard: live", "err", err)
		http.Error(w, "the live numbers could not be read", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// LinkAnswer is POST /dashboard/link's answer.
type LinkAnswer struct {
	// Path is the sign-in page's path on this server.
	Path          string `json:"path"`
	ExpiresUnixMS int64  `json:"expires_unix_ms"`
}

// link makes a host's sign-in link for the account of the device whose
// bearer token authorises the request. A browser cannot be made to send
// one (it needs the Authorization header), so no origin check applies.
func (h *Dashboard) link(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		http.Error(w, "sign in with the device key and send its bearer token", http.StatusUnauthorized)
		return
	}
	p, err := h.d.Auth.Authenticate(r.Context(), tok)
	if err != nil {
		if problem.KindOf(err) != 0 {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		h.d.Log.Error("dashboard: authenticate", "err", err)
		http.Error(w, "the token could not be checked", http.StatusInternalServerError)
		return
	}
	var ans LinkAnswer
	err = h.d.Store.Write(r.Context(), func(tx *store.Tx) error {
		token, exp, err := CreateLink(tx, h.d.Key, RoleHost, p.AccountID, h.d.Now())
		ans = LinkAnswer{Path: SignInPath(token), ExpiresUnixMS: exp.UnixMilli()}
		return err
	})
	if err != nil {
		h.d.Log.Error("dashboard: create link", "err", err)
		http.Error(w, "the link could not be made", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(ans)
}

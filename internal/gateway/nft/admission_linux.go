package nft

// Admission: the endpoint a guest presents its code at, and the binding of
// its IP and MAC address.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/portal"
	"github.com/sharespot/sharespot/internal/protocol"
)

// authenticate returns the session whose ID and access code these are.
func (g *Gateway) authenticate(sessionID, code string) *session {
	g.mu.Lock()
	s := g.sessions[sessionID]
	g.mu.Unlock()
	want := g.dummy
	if s != nil {
		want = s.hash
	}
	if !gateway.CodeMatches(want, code) || s == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.m.Revoked() {
		return nil
	}
	return s
}

// neighbour finds the MAC the kernel resolved for addr on the LAN.
func (g *Gateway) neighbour(addr netip.Addr) (net.HardwareAddr, error) {
	link, err := g.nl.LinkByName(g.cfg.LAN)
	if err != nil {
		return nil, fmt.Errorf("find LAN interface %s: %w", g.cfg.LAN, err)
	}
	fam := netlink.FAMILY_V4
	if addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	for range 3 {
		ns, err := g.nl.NeighList(link.Attrs().Index, fam)
		if err != nil {
			return nil, fmt.Errorf("read neighbour table: %w", err)
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if ok && a.Unmap() == addr && len(n.HardwareAddr) == 6 &&
				n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
				return slices.Clone(n.HardwareAddr), nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("no neighbour entry for %s on %s", addr, g.cfg.LAN)
}

// bind admits addr (and its MAC) for s. Admitting an address bound to
// another session, or more than MaxBindings addresses, is refused.
func (g *Gateway) bind(s *session, addr netip.Addr) (binding, error) {
	mac, err := g.neighbour(addr)
	if err != nil {
		return binding{}, err
	}
	return g.bindMAC(s, binding{addr: addr, mac: mac})
}

// bindMAC binds an address and MAC to s.
func (g *Gateway) bindMAC(s *session, b binding) (binding, error) {
	addr, mac := b.addr, b.mac
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.m.Revoked() {
		return binding{}, gateway.ErrRevoked
	}
	if o := g.byAddr[addr]; o != nil {
		if o != s {
			return binding{}, errAddrTaken
		}
		for _, old := range s.bindings {
			if old.addr == addr && slices.Equal(old.mac, mac) {
				return b, nil
			}
		}
		return binding{}, errAddrTaken
	}
	if len(s.bindings) >= g.cfg.MaxBindings {
		return binding{}, errTooManyBindings
	}
	g.nftMu.Lock()
	err := g.addBindingLocked(b, s.tag)
	if err == nil {
		err = g.nc.Flush()
	}
	g.nftMu.Unlock()
	if err != nil {
		return binding{}, fmt.Errorf("add binding %s: %w", b, err)
	}
	s.bindings = append(s.bindings, b)
	g.byAddr[addr] = s
	g.log.Info("guest bound", "session", s.id, "addr", addr, "mac", mac)
	if g.cfg.PortalURL != "" {
		g.forgetRedirects(addr)
	}
	return b, nil
}

// forgetRedirects deletes the conntrack entries of addr's port-80
// connections: made before admission, they are redirected to the portal,
// and a browser that reuses one (an idle or preconnected socket) would
// keep getting the portal. Without its entry, the connection's next packet
// is tracked anew and reaches the real destination, which resets it, and
// the browser opens a fresh, unredirected one.
func (g *Gateway) forgetRedirects(addr netip.Addr) {
	f := &netlink.ConntrackFilter{}
	fam := netlink.InetFamily(netlink.FAMILY_V4)
	if addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	err := errors.Join(f.AddIP(netlink.ConntrackOrigSrcIP, addr.AsSlice()), f.AddProtocol(unix.IPPROTO_TCP),
		f.AddPort(netlink.ConntrackOrigDstPort, 80))
	if err == nil {
		_, err = g.nl.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f)
	}
	if err != nil {
		g.log.Warn("cannot forget a guest's redirected connections; its browser may see the portal again until they close", "addr", addr, "err", err)
	}
}

func (g *Gateway) handler() http.Handler {
	mux := g.mux()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect && r.Host == protocol.ControlAuthority {
			g.handleControl(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// handleControl serves a guest's control stream (gateway.ServeControlHTTP).
// The stream reaches the host itself, so the kernel meters none of it.
func (g *Gateway) handleControl(w http.ResponseWriter, r *http.Request) {
	err := gateway.ServeControlHTTP(w, r, func(user, pass string) (string, gateway.Control, bool) {
		s := g.authenticate(user, pass)
		if s == nil {
			return "", gateway.Control{}, false
		}
		return s.id, g.controlOf(s), true
	})
	if err != nil {
		g.log.Debug("control stream ended", "err", err)
	}
}

func (g *Gateway) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admit", g.handleAdmit)
	mux.HandleFunc("OPTIONS /admit", corsPreflight)
	if g.cfg.PortalURL != "" {
		mux.HandleFunc("GET /admit", func(w http.ResponseWriter, r *http.Request) { portal.AdmitPage(w, portal.Origin(g.cfg.PortalURL)) })
		mux.HandleFunc("GET "+CaptivePath, g.handleCaptive)
		// Everything else is an intercepted request (any host, any path)
		// of a guest not yet admitted, or a person who typed the
		// endpoint's address: send both to the portal.
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { portal.Redirect(w, r, g.cfg.PortalURL) })
	}
	return mux
}

// corsPreflight lets the guest page, served by the Sharespot server (another
// origin), post the code here: the request carries no credentials, and
// the session ID and code are the authentication. Private Network Access
// (Chromium) asks for the last header when the page is on a public
// address and this endpoint on a private one.
func corsPreflight(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "POST")
	h.Set("Access-Control-Allow-Headers", "Content-Type")
	h.Set("Access-Control-Allow-Private-Network", "true")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// handleCaptive is the Captive Portal API (RFC 8908): captive until this
// address is admitted, then the bytes left.
func (g *Gateway) handleCaptive(w http.ResponseWriter, r *http.Request) {
	c := portal.Captive{Captive: true, UserPortalURL: g.cfg.PortalURL}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		g.mu.Lock()
		s := g.byAddr[ap.Addr().Unmap().WithZone("")]
		var id string
		if s != nil {
			id = s.id
		}
		g.mu.Unlock()
		if s != nil {
			if used, quota, err := g.Usage(id); err == nil {
				left := max(quota-used, 0)
				yes := true
				c = portal.Captive{Captive: left == 0, UserPortalURL: g.cfg.PortalURL, BytesRemaining: &left, CanExtendSession: &yes}
			}
		}
	}
	portal.WriteCaptive(w, c)
}

func (g *Gateway) handleAdmit(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Access-Control-Allow-Origin", "*")
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "malformed form", http.StatusBadRequest)
		return
	}
	sid, code := r.PostForm.Get("session"), r.PostForm.Get("code")
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		http.Error(w, "unknown peer address", http.StatusBadRequest)
		return
	}
	addr := ap.Addr().Unmap().WithZone("")
	if addr.IsLinkLocalUnicast() || addr.IsLoopback() {
		http.Error(w, "present the code from the address you browse with, not a link-local one", http.StatusBadRequest)
		return
	}
	s := g.authenticate(sid, code)
	if s == nil {
		http.Error(w, "wrong session or access code", http.StatusForbidden)
		return
	}
	if _, err := g.bind(s, addr); err != nil {
		switch {
		case errors.Is(err, errAddrTaken), errors.Is(err, errTooManyBindings):
			http.Error(w, err.Error(), http.StatusConflict)
		case errors.Is(err, gateway.ErrRevoked):
			http.Error(w, "session revoked", http.StatusForbidden)
		default:
			g.log.Warn("cannot bind a guest", "session", sid, "addr", addr, "err", err)
			http.Error(w, "cannot admit this address now; try again", http.StatusServiceUnavailable)
		}
		return
	}
	used, quota, _ := g.Usage(sid)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "online %s used=%s quota=%s\n", addr, strconv.FormatInt(used, 10), strconv.FormatInt(quota, 10))
}

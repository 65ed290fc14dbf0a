package nft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/seal"
)

// CaptivePath is where the admission endpoint serves the Captive Portal
// API (RFC 8908); its URL is what DHCP option 114 and the IPv6 RA option
// (RFC 8910) announce.
const CaptivePath = "/captive-portal/api"

// Kind is what guests are told the kernel gateway is (Gateway.Kind in the
// access response).
const Kind = "nftables"

// Defaults for Config's zero fields.
const (
	DefaultTable        = "sharespot"
	DefaultPollInterval = 100 * time.Millisecond
	DefaultIdleAfter    = time.Minute
	DefaultPersistAhead = 4 << 20
	DefaultMaxBindings  = 4
)

const (
	// maxLeadFactor bounds the save-ahead lead at this many PersistAhead.
	maxLeadFactor = 64
	// minPacket: a session with fewer bytes left than a bare IPv4+TCP
	// header is exhausted.
	minPacket = 40
	// mtu is a full-size packet on an Ethernet or Wi-Fi LAN.
	mtu = 1500
	// shrinkAfter: a session idle this long has its saved bound brought
	// back to PersistAhead above its use.
	shrinkAfter = time.Second
)

var (
	errAddrTaken       = errors.New("this address is admitted for another session")
	errTooManyBindings = errors.New("too many addresses admitted for this session")
)

// Config configures a Gateway. Zero fields take the defaults above.
type Config struct {
	// LAN is the interface guests are on (a Wi-Fi AP interface, or a
	// bridge); Uplink the one traffic leaves by (NAT).
	LAN, Uplink string
	// Listen is the admission endpoint's TCP address, normally the host's
	// LAN address and a port; Listener, if set, is used instead (tests
	// make it inside a network namespace).
	Listen   string
	Listener net.Listener
	// Advertise is the host:port guests are told (default the listener's).
	Advertise string
	// NetNS is an open file descriptor of the network namespace holding
	// LAN and Uplink; 0 means the caller's.
	NetNS int
	// Table names the nftables table (family inet) the gateway owns.
	Table string
	// Store keeps usage across restarts; nil keeps it only in memory.
	Store gateway.Store
	// Log receives diagnostics; never a secret.
	Log *slog.Logger
	// PollInterval is how often the kernel counters are read (events are
	// at most this late).
	PollInterval time.Duration
	// IdleAfter is how long a session goes without traffic before Idle.
	IdleAfter time.Duration
	// PersistAhead is the initial lead of the usage bound saved ahead of
	// use; it doubles (up to 64×) while traffic outruns the saves.
	PersistAhead int64
	// MaxBindings bounds the addresses one session may be admitted from.
	MaxBindings int
	// Garden is the walled garden: TCP destinations (the Sharespot
	// server's addresses and port) every guest on the LAN reaches, admitted
	// or not, so that a guest with only a browser can buy; this traffic is
	// not metered.
	Garden []netip.AddrPort
	// PortalURL, if set, turns the captive portal on: unadmitted guests'
	// TCP port-80 requests are redirected to the admission endpoint, which
	// answers them with a redirect to PortalURL (the server's guest page
	// for this hotspot), and it serves the Captive Portal API (RFC 8908)
	// at CaptivePath.
	PortalURL string
	// AllowDNS lets guests, admitted or not, ask the host's own DNS
	// resolver (UDP and TCP port 53 on the host); without it the host
	// drops DNS from the LAN and guests need addresses, not names.
	AllowDNS bool
	// TopUpTime is how long a top-up takes: ThresholdCrossed comes when a
	// session's remaining volume would last less than that at its current
	// rate, if that is before its threshold. Default
	// gateway.DefaultTopUpTime; negative: at the threshold only.
	TopUpTime time.Duration
}

// Present is the guest's side of admission: it posts the session ID and
// access code to the gateway's admission endpoint (addr is host:port, as
// the access response's Gateway.Address gives it). hc nil uses a client
// with a 10 s timeout. It returns the endpoint's answer ("online ...").
func Present(ctx context.Context, hc *http.Client, addr, sessionID string, code []byte) (string, error) {
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	form := url.Values{"session": {sessionID}, "code": {seal.FormatCode(code)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/admit", strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("nft: present the access code to %s: %w", addr, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	res, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("nft: present the access code to %s: %w", addr, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
	msg := strings.TrimSpace(string(body))
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("nft: the gateway at %s refused the access code: %s: %s", addr, res.Status, msg)
	}
	return msg, nil
}

// ResolveGarden returns the walled garden for a server URL: every address
// its host resolves to, with its port (443 for https, 80 for http when the
// URL names none). Guests reach the server directly, so the URL must be
// the one they use; a loopback address is refused (guests cannot reach
// the host's loopback).
func ResolveGarden(ctx context.Context, serverURL string) ([]netip.AddrPort, error) {
	u, err := url.Parse(serverURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("nft: the server URL for guests %q is not an http(s):// URL", serverURL)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, fmt.Errorf("nft: the server URL for guests %q has a bad port", serverURL)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("nft: resolve the server %s for the walled garden: %w", u.Hostname(), err)
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		a = a.Unmap()
		if a.IsLoopback() || a.IsUnspecified() {
			return nil, fmt.Errorf("nft: the server URL for guests %q is a loopback address guests cannot reach: give --guest-server with the address or name guests use (https://…), or --no-portal", serverURL)
		}
		out = append(out, netip.AddrPortFrom(a, uint16(p)))
	}
	return out, nil
}

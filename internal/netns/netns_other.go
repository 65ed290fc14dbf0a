//go:build !linux

package netns

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
)

const supported = false

// NS is a network namespace; none exist on this OS.
type NS struct{ Name string }

// New skips t (fails in CI): network namespaces need Linux.
func New(t testing.TB, role string) *NS {
	t.Helper()
	RequireRoot(t)
	return nil
}

func (n *NS) FD() int                         { return -1 }
func (n *NS) IP(t testing.TB, args ...string) {}
func (n *NS) Do(fn func() error) error        { return nil }
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	return nil, net.UnknownNetworkError(network)
}
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return nil, net.UnknownNetworkError(network)
}
func (n *NS) Dial(network, addr string) (net.Conn, error) {
	return nil, net.UnknownNetworkError(network)
}
func (n *NS) HTTPClient() *http.Client { return http.DefaultClient }

// Guest is a guest's namespace on the host's LAN.
type Guest struct {
	*NS
	Addr4, Addr6 netip.Addr
	MAC          net.HardwareAddr
	Port         string
}

// Topology is never built on this OS.
type Topology struct {
	Host, Internet *NS
	Guests         []*Guest
	LAN, Uplink    string

	HostLAN4, HostLAN6, HostUp4, HostUp6, Net4, Net6 netip.Addr
}

// NewTopology skips t (fails in CI).
func NewTopology(t testing.TB, guests int) *Topology {
	t.Helper()
	RequireRoot(t)
	return nil
}

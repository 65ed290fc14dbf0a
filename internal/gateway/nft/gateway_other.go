//go:build !linux

package nft

import (
	"context"
	"errors"
	"net/netip"

	"github.com/sharespot/sharespot/internal/gateway"
)

// errNotLinux: the kernel gateway is nftables, which only Linux has.
var errNotLinux = errors.New("nft: the kernel gateway needs Linux (nftables); use the proxy gateway")

// Gateway is the kernel metering gateway; on this OS New always fails.
type Gateway struct{}

var _ gateway.Gateway = (*Gateway)(nil)

// New fails: nftables is Linux-only.
func New(Config) (*Gateway, error) { return nil, errNotLinux }

// Teardown fails: nftables is Linux-only.
func Teardown(int, string) error { return errNotLinux }

func (*Gateway) Admit(context.Context, gateway.Grant) error  { return errNotLinux }
func (*Gateway) Extend(context.Context, string, int64) error { return errNotLinux }
func (*Gateway) Revoke(context.Context, string) error        { return errNotLinux }
func (*Gateway) Acknowledge(context.Context, string, int64, []byte) error {
	return errNotLinux
}
func (*Gateway) Evidence(string) (gateway.Evidence, error) { return gateway.Evidence{}, errNotLinux }
func (*Gateway) Usage(string) (int64, int64, error)        { return 0, 0, errNotLinux }
func (*Gateway) Events() <-chan gateway.Event              { return nil }
func (*Gateway) Run(context.Context) error                 { return errNotLinux }
func (*Gateway) Addr() string                              { return "" }
func (*Gateway) Close() error                              { return nil }
func (*Gateway) Bindings(string) ([]netip.Addr, error)     { return nil, errNotLinux }

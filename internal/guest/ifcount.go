package guest

import (
	"fmt"
	"net"
	"net/netip"
)

// InterfaceTo names the local interface whose network holds addr: the one
// a guest's traffic to the host's kernel gateway (and through it) passes.
func InterfaceTo(addr netip.Addr) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("guest: list interfaces: %w", err)
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err == nil && pfx.Masked().Contains(addr.Unmap()) {
				return ifc.Name, nil
			}
		}
	}
	return "", fmt.Errorf("guest: no interface of this device is on %s's network", addr)
}

// InterfaceCounter counts the bytes an interface received and sent since
// it was made: what a guest behind the kernel gateway acknowledges. The
// counts include every header the interface carries (the kernel gateway
// counts IP packet lengths), and whatever else the interface passes (the
// control stream, the host's DNS): an honest guest's count runs at or above
// the gateway's, never below (docs/gateways.md has the measured
// difference).
type InterfaceCounter struct {
	name string
	base int64
}

// NewInterfaceCounter starts counting name.
func NewInterfaceCounter(name string) (*InterfaceCounter, error) {
	n, err := interfaceBytes(name)
	if err != nil {
		return nil, err
	}
	return &InterfaceCounter{name: name, base: n}, nil
}

// Bytes is what the interface received and sent since the counter was
// made (0 when it cannot be read now).
func (c *InterfaceCounter) Bytes() int64 {
	n, err := interfaceBytes(c.name)
	if err != nil {
		return 0
	}
	return max(n-c.base, 0)
}

package nft

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Forwarding keys under /proc/sys: the kernel gateway routes guests'
// packets, so the host must forward IPv4 (required) and IPv6 (if guests
// have IPv6 addresses).
var forwardingKeys = []struct {
	key, sysctl string
	required    bool
}{
	{"net/ipv4/ip_forward", "net.ipv4.ip_forward", true},
	{"net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding", false},
}

// EnableForwarding turns IP forwarding on under procSys (/proc/sys; a test
// passes a directory). It returns the sysctls it changed and, for IPv6
// forwarding it could not turn on, warnings; it fails with what to run
// when IPv4 forwarding is off and cannot be turned on.
func EnableForwarding(procSys string) (changed, warnings []string, err error) {
	for _, k := range forwardingKeys {
		p := filepath.Join(procSys, filepath.FromSlash(k.key))
		b, rerr := os.ReadFile(p)
		if rerr == nil && bytes.Equal(bytes.TrimSpace(b), []byte("1")) {
			continue
		}
		werr := rerr
		if werr == nil {
			werr = os.WriteFile(p, []byte("1\n"), 0o644)
		}
		switch {
		case werr == nil:
			changed = append(changed, k.sysctl+"=1")
		case k.required:
			return changed, warnings, fmt.Errorf("nft: IP forwarding is off and cannot be turned on (%w): run `sysctl -w %s=1` as root (and set it in /etc/sysctl.d/ to keep it), then start again", errors.Unwrap(werr), k.sysctl)
		default:
			warnings = append(warnings, fmt.Sprintf("%s is off and cannot be turned on (%v): guests' IPv6 traffic will not be forwarded; run `sysctl -w %s=1`", k.sysctl, werr, k.sysctl))
		}
	}
	return changed, warnings, nil
}

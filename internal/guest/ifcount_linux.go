package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// interfaceBytes is an interface's received plus sent bytes, from the
// kernel's table of the calling thread's network namespace
// (/proc/thread-self/net/dev: what the thread reaches the host by).
func interfaceBytes(name string) (int64, error) {
	b, err := os.ReadFile("/proc/thread-self/net/dev")
	if err != nil {
		if b, err = os.ReadFile("/proc/self/net/dev"); err != nil {
			return 0, fmt.Errorf("guest: count interface %s: %w", name, err)
		}
	}
	return parseNetDev(b, name)
}

// parseNetDev finds name's line in /proc/net/dev's table
// ("  eth0: rx_bytes rx_packets … (8 fields) tx_bytes …") and returns its
// received plus sent bytes.
func parseNetDev(b []byte, name string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		ifc, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(ifc) != name {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			return 0, fmt.Errorf("guest: interface %s: %d counters in /proc/net/dev, want 16", name, len(f))
		}
		rx, err1 := strconv.ParseInt(f[0], 10, 64)
		tx, err2 := strconv.ParseInt(f[8], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("guest: interface %s: malformed counters %q", name, rest)
		}
		return rx + tx, nil
	}
	return 0, fmt.Errorf("guest: no interface %s in this network namespace", name)
}

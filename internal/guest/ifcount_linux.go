package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// interfaceBytes is an interface's received plus sent bytes, from sysfs.
func interfaceBytes(name string) (int64, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return 0, fmt.Errorf("guest: interface name %q", name)
	}
	var total int64
	for _, f := range []string{"rx_bytes", "tx_bytes"} {
		b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "statistics", f))
		if err != nil {
			return 0, fmt.Errorf("guest: count interface %s: %w", name, err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("guest: count interface %s: %w", name, err)
		}
		total += n
	}
	return total, nil
}

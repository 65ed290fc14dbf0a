package nft

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeKey(t *testing.T, dir, key, v string) string {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEnableForwarding(t *testing.T) {
	dir := t.TempDir()
	v4 := writeKey(t, dir, "net/ipv4/ip_forward", "0\n")
	writeKey(t, dir, "net/ipv6/conf/all/forwarding", "1\n")
	changed, warn, err := EnableForwarding(dir)
	if err != nil || !slices.Equal(changed, []string{"net.ipv4.ip_forward=1"}) || len(warn) != 0 {
		t.Fatalf("changed %v, warnings %v, err %v", changed, warn, err)
	}
	if b, _ := os.ReadFile(v4); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("ip_forward is %q after enabling", b)
	}
	// Already on: nothing changes.
	if changed, _, err := EnableForwarding(dir); err != nil || len(changed) != 0 {
		t.Fatalf("second run changed %v, err %v", changed, err)
	}
	// IPv4 forwarding that cannot be turned on is refused with what to run.
	if _, _, err := EnableForwarding(t.TempDir()); err == nil || !strings.Contains(err.Error(), "sysctl -w net.ipv4.ip_forward=1") {
		t.Fatalf("missing key: %v", err)
	}
}

func TestResolveGarden(t *testing.T) {
	got, err := ResolveGarden(t.Context(), "https://198.18.0.2/")
	if err != nil || len(got) != 1 || got[0].String() != "198.18.0.2:443" {
		t.Fatalf("https without a port: %v, %v", got, err)
	}
	got, err = ResolveGarden(t.Context(), "http://[2001:db8::5]:8474")
	if err != nil || len(got) != 1 || got[0].String() != "[2001:db8::5]:8474" {
		t.Fatalf("IPv6 with a port: %v, %v", got, err)
	}
	for in, want := range map[string]string{
		"https://127.0.0.1:8474": "loopback", "ftp://198.18.0.2": "not an http(s)", "https://198.18.0.2:0": "bad port", "198.18.0.2": "not an http(s)",
	} {
		if _, err := ResolveGarden(t.Context(), in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", in, err, want)
		}
	}
}

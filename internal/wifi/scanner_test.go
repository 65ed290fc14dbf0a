package wifi

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

const (
	open = sharespotv1.Security_SECURITY_OPEN
	wep  = sharespotv1.Security_SECURITY_WEP
	wpa  = sharespotv1.Security_SECURITY_WPA
	wpa2 = sharespotv1.Security_SECURITY_WPA2
	wpa3 = sharespotv1.Security_SECURITY_WPA3
	owe  = sharespotv1.Security_SECURITY_OWE
	unsp = sharespotv1.Security_SECURITY_UNSPECIFIED
)

// fakeRunner stands in for the radio: it records each call and returns a
// canned answer.
type fakeRunner struct {
	out   []byte
	err   error
	calls [][]string // each: name, then args
}

func (f *fakeRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, append([]string{name}, args...))
	return f.out, f.err
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// scene is the eleven access points of testdata/nmcli-dev-wifi-list.txt and
// testdata/iw-dev-scan.txt, in nmcli's order.
var scene = []AccessPoint{
	{BSSID: "3c:37:86:5a:1b:01", SSID: []byte("Café:Bar\\Lounge"), FreqMHz: 5180, SignalDBM: -45, Security: wpa3, Connected: true},
	{BSSID: "3c:37:86:5a:1b:02", SSID: []byte("cafe-guest"), FreqMHz: 2437, SignalDBM: -49, Security: wpa2},
	{BSSID: "3e:37:86:5a:1b:03", SSID: nil, FreqMHz: 2462, SignalDBM: -54, Security: wpa2},
	{BSSID: "b0:be:76:10:20:30", SSID: []byte("sixgig"), FreqMHz: 5955, SignalDBM: -58, Security: wpa3},
	{BSSID: "f4:92:bf:00:11:22", SSID: []byte("Airport Free WiFi"), FreqMHz: 5745, SignalDBM: -59, Security: open},
	{BSSID: "f6:92:bf:00:11:22", SSID: nil, FreqMHz: 5745, SignalDBM: -60, Security: owe},
	{BSSID: "a4:2b:b0:de:ad:01", SSID: []byte("Caf\xe9 24"), FreqMHz: 2412, SignalDBM: -62, Security: wpa2},
	{BSSID: "00:1a:1e:aa:bb:cc", SSID: []byte("eduroam"), FreqMHz: 5500, SignalDBM: -65, Security: wpa2},
	{BSSID: "c8:3a:35:01:02:03", SSID: []byte("--"), FreqMHz: 2462, SignalDBM: -70, Security: wpa2},
	{BSSID: "02:00:5e:10:00:01", SSID: []byte("FreeWifi"), FreqMHz: 2437, SignalDBM: -75, Security: open},
	{BSSID: "00:0f:66:12:34:56", SSID: []byte("linksys"), FreqMHz: 2437, SignalDBM: -52, Security: wep},
}

// sceneIn returns the scene's access points with these BSSIDs, in this order.
func sceneIn(t *testing.T, bssids ...string) []AccessPoint {
	t.Helper()
	var out []AccessPoint
	for _, b := range bssids {
		found := false
		for _, ap := range scene {
			if ap.BSSID == b {
				out, found = append(out, ap), true
			}
		}
		if !found {
			t.Fatalf("no %s in the scene", b)
		}
	}
	return out
}

// checkCandidates fails unless every access point is one the server takes
// as a candidate (registry.Discover's checks) and no BSSID repeats.
func checkCandidates(t *testing.T, aps []AccessPoint) {
	t.Helper()
	seen := map[string]bool{}
	for i, ap := range aps {
		mac, err := net.ParseMAC(ap.BSSID)
		if err != nil || len(mac) != 6 || mac.String() != ap.BSSID {
			t.Fatalf("ap %d: BSSID %q is not six lower-case colon-separated octets", i, ap.BSSID)
		}
		if mac[0]&1 == 1 || ap.BSSID == "00:00:00:00:00:00" {
			t.Fatalf("ap %d: BSSID %s is not a station address", i, ap.BSSID)
		}
		if seen[ap.BSSID] {
			t.Fatalf("ap %d: BSSID %s repeats", i, ap.BSSID)
		}
		seen[ap.BSSID] = true
		if len(ap.SSID) > 32 {
			t.Fatalf("ap %d: SSID is %d bytes", i, len(ap.SSID))
		}
		if ap.SignalDBM < -150 || ap.SignalDBM > 30 {
			t.Fatalf("ap %d: signal %d dBm", i, ap.SignalDBM)
		}
		if ap.FreqMHz < 0 || ap.FreqMHz > 100000 {
			t.Fatalf("ap %d: frequency %d MHz", i, ap.FreqMHz)
		}
		if _, ok := sharespotv1.Security_name[int32(ap.Security)]; !ok {
			t.Fatalf("ap %d: security %d", i, ap.Security)
		}
	}
}

func TestFileScanner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scan.json")
	if err := os.WriteFile(path, []byte(`[{"ssid_hex": "436166e9", "bssid": "02:00:00:00:00:01", "signal_dbm": -48, "frequency_mhz": 5955, "security": "wpa3"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	aps, err := FileScanner{Path: path}.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("Caf\xe9"), SignalDBM: -48, FreqMHz: 5955, Security: wpa3}}
	if d := cmp.Diff(want, aps); d != "" {
		t.Fatalf("scan (-want +got):\n%s", d)
	}
	if _, err := (FileScanner{Path: filepath.Join(t.TempDir(), "missing.json")}).Scan(context.Background()); err == nil {
		t.Fatal("missing file accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (FileScanner{Path: path}).Scan(ctx); err == nil {
		t.Fatal("scan with a cancelled context succeeded")
	}
}

func TestMergeByBSSID(t *testing.T) {
	a := AccessPoint{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), SignalDBM: -70, Connected: true}
	aStrong := AccessPoint{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), SignalDBM: -50}
	b := AccessPoint{BSSID: "02:00:00:00:00:02", SSID: []byte("b"), SignalDBM: -60}
	got := mergeByBSSID([]AccessPoint{a, b, aStrong})
	want := []AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), SignalDBM: -50, Connected: true}, b}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("merge (-want +got):\n%s", d)
	}
}

// nmLevelToQuality is NetworkManager's nm_wifi_utils_level_to_quality for a
// dBm value (src/core/devices/wifi/nm-wifi-utils.c).
func nmLevelToQuality(dbm int) int {
	v := min(max(dbm, -100), -40) + 40
	if v < 0 {
		v = -v
	}
	return 100 - int(100.0*float64(v)/60.0)
}

func TestQualityToDBM(t *testing.T) {
	for dbm := -100; dbm <= -40; dbm++ {
		if got := qualityToDBM(nmLevelToQuality(dbm)); int(got) != dbm {
			t.Errorf("NetworkManager's %d dBm → quality %d → %d dBm", dbm, nmLevelToQuality(dbm), got)
		}
	}
	for q, want := range map[int]int32{100: -40, 92: -45, 50: -70, 0: -100, -3: -100, 250: -40} {
		if got := qualityToDBM(q); got != want {
			t.Errorf("qualityToDBM(%d) = %d, want %d", q, got, want)
		}
	}
	prev := qualityToDBM(0)
	for q := 1; q <= 100; q++ {
		if got := qualityToDBM(q); got < prev {
			t.Fatalf("qualityToDBM(%d) = %d < qualityToDBM(%d) = %d", q, got, q-1, prev)
		}
		prev = qualityToDBM(q)
	}
}

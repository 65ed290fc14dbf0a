package wifi

import (
	"bytes"
	"strings"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

func TestParseScanFile(t *testing.T) {
	aps, err := ParseScanFile(strings.NewReader(`[
		{"ssid": "cafe", "bssid": "02:00:00:00:00:01", "signal_dbm": -48, "frequency_mhz": 2437, "security": "wpa2"},
		{"ssid_hex": "ff00", "bssid": "02:00:00:00:00:02", "signal_dbm": -80, "frequency_mhz": 5955, "security": "open"},
		{"ssid": "", "bssid": "02:00:00:00:00:03", "security": "wpa3"}
	]`))
	if err != nil {
		t.Fatal(err)
	}
	if len(aps) != 3 || string(aps[0].SSID) != "cafe" || !bytes.Equal(aps[1].SSID, []byte{0xff, 0}) || len(aps[2].SSID) != 0 {
		t.Fatalf("aps = %+v", aps)
	}
	if aps[0].Security != sharespotv1.Security_SECURITY_WPA2 || aps[1].FreqMHz != 5955 {
		t.Fatalf("aps = %+v", aps)
	}
	c := Candidates(aps)
	if len(c) != 3 || c[0].Bssid != "02:00:00:00:00:01" || c[0].SignalDbm != -48 {
		t.Fatalf("candidates = %v", c)
	}
}

func TestParseScanFileRejects(t *testing.T) {
	for name, in := range map[string]string{
		"not json":         `nope`,
		"object":           `{"ssid": "x"}`,
		"unknown field":    `[{"ssid": "x", "bssid": "02:00:00:00:00:01", "security": "wpa2", "colour": "red"}]`,
		"both ssid forms":  `[{"ssid": "x", "ssid_hex": "78", "bssid": "02:00:00:00:00:01", "security": "wpa2"}]`,
		"bad hex":          `[{"ssid_hex": "zz", "bssid": "02:00:00:00:00:01", "security": "wpa2"}]`,
		"unknown security": `[{"ssid": "x", "bssid": "02:00:00:00:00:01", "security": "wpa9"}]`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseScanFile(strings.NewReader(in)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzParseScanFile(f *testing.F) {
	f.Add([]byte(`[{"ssid": "cafe", "bssid": "02:00:00:00:00:01", "signal_dbm": -48, "frequency_mhz": 2437, "security": "wpa2"}]`))
	f.Add([]byte(`[{"ssid_hex": "ff00", "bssid": "x", "security": "open"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		aps, err := ParseScanFile(bytes.NewReader(b))
		if err == nil && aps == nil {
			t.Fatal("nil result without error")
		}
	})
}

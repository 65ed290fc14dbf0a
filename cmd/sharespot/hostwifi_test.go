package main

import (
	"bytes"
	"context"
	"io/fs"
	"strings"
	"testing"
)

// nmcliFake answers share's nmcli calls as NetworkManager would (see
// internal/wifi/hotspot_test.go for where the formats come from).
type nmcliFake struct{ calls []string }

func (f *nmcliFake) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, line)
	switch {
	case strings.HasPrefix(line, "nmcli -g GENERAL.HWADDR device show"):
		return []byte("02\\:5E\\:00\\:00\\:00\\:09\n"), nil
	case strings.HasPrefix(line, "nmcli -s -g"):
		return []byte("Cafe\nsecret-pass\n"), nil
	}
	return nil, nil
}

func TestShareAccessPoint(t *testing.T) {
	read := func(p string) ([]byte, error) {
		if p == "/sys/class/net/wlan1/address" {
			return []byte("02:5e:00:00:00:07\n"), nil
		}
		return nil, fs.ErrNotExist
	}
	tests := []struct {
		name      string
		cmd       ShareCmd
		wantBSSID string
		wantErr   string
		wantCalls int // nmcli calls, including the take-down
	}{
		{"bssid given", ShareCmd{SSID: "Cafe", BSSID: "02:5e:00:00:00:01"}, "02:5e:00:00:00:01", "", 0},
		{"nothing names the access point", ShareCmd{SSID: "Cafe"}, "", "name the access point", 0},
		{"hotspot reads the BSSID back", ShareCmd{SSID: "Cafe", wifiFlags: wifiFlags{Hotspot: "wlan0", HotspotPassword: "secret-pass"}}, "02:5e:00:00:00:09", "", 4},
		{"hotspot with a bssid", ShareCmd{SSID: "Cafe", BSSID: "02:5e:00:00:00:01", wifiFlags: wifiFlags{Hotspot: "wlan0"}}, "", "--bssid goes without --hotspot", 0},
		{"existing interface", ShareCmd{SSID: "Cafe", wifiFlags: wifiFlags{Iface: "wlan1"}}, "02:5e:00:00:00:07", "", 0},
		{"existing interface, matching bssid", ShareCmd{SSID: "Cafe", BSSID: "02:5e:00:00:00:07", wifiFlags: wifiFlags{Iface: "wlan1"}}, "02:5e:00:00:00:07", "", 0},
		{"existing interface, other bssid", ShareCmd{SSID: "Cafe", BSSID: "02:5e:00:00:00:08", wifiFlags: wifiFlags{Iface: "wlan1"}}, "", "is not the address of wlan1", 0},
		{"missing interface", ShareCmd{SSID: "Cafe", wifiFlags: wifiFlags{Iface: "wlan9"}}, "", "--iface", 0},
		{"password without hotspot", ShareCmd{SSID: "Cafe", BSSID: "02:5e:00:00:00:01", wifiFlags: wifiFlags{HotspotPassword: "12345678"}}, "", "goes with --hotspot", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &nmcliFake{}
			var out bytes.Buffer
			c := tt.cmd
			ap, err := c.accessPoint(context.Background(), &out, r, read)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.BSSID != tt.wantBSSID {
				t.Errorf("BSSID = %q, want %q", c.BSSID, tt.wantBSSID)
			}
			ap.down(&out)
			if len(r.calls) != tt.wantCalls {
				t.Errorf("nmcli calls %q, want %d", r.calls, tt.wantCalls)
			}
			if tt.wantCalls > 0 && r.calls[len(r.calls)-1] != "nmcli connection delete sharespot-wlan0" {
				t.Errorf("not taken down: %q", r.calls)
			}
		})
	}
}

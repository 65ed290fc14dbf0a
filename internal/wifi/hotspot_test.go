package wifi

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
)

// The nmcli outputs below are constructed, not captured (this machine has
// no radio): `nmcli -g FIELDS` is get-values mode, which prints terse
// values one field per line with ':' and '\' escaped by '\' (nmcli(1),
// "--get-values"; the escaping is utils.c's, as for the scan in
// testdata/README.md). `nmcli device wifi hotspot` prints
// "Device 'IFACE' successfully activated with 'UUID'." and the hint
// "Hint: "nmcli dev wifi show-password" shows the Wi-Fi name and password.",
// which Up does not read.

// scriptRunner answers each command line with its own canned output.
type scriptRunner struct {
	out   map[string]string // "nmcli -g ..." → stdout
	fail  map[string]error
	calls []string
}

func (r *scriptRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	r.calls = append(r.calls, line)
	for prefix, err := range r.fail {
		if strings.HasPrefix(line, prefix) {
			return nil, err
		}
	}
	for prefix, out := range r.out {
		if strings.HasPrefix(line, prefix) {
			return []byte(out), nil
		}
	}
	return nil, nil
}

const (
	activated = "Device 'wlan0' successfully activated with '5d1a2c54-2a4d-4a35-9a57-6b2f2f0f3f4e'.\nHint: \"nmcli dev wifi show-password\" shows the Wi-Fi name and password.\n"
	hwaddr    = "3C\\:37\\:86\\:5A\\:1B\\:01\n"
)

func TestHotspotUpDown(t *testing.T) {
	tests := []struct {
		name     string
		h        Hotspot
		conShow  string // nmcli -s -g ssid,psk connection show
		wantUp   string // the bring-up command
		wantInfo HotspotInfo
	}{
		{
			name:     "with a password",
			h:        Hotspot{Interface: "wlan0", SSID: "Cafe", Password: "correct horse"},
			conShow:  "Cafe\ncorrect horse\n",
			wantUp:   "nmcli device wifi hotspot ifname wlan0 con-name sharespot-wlan0 ssid Cafe password correct horse",
			wantInfo: HotspotInfo{SSID: "Cafe", BSSID: "3c:37:86:5a:1b:01", Password: "correct horse"},
		},
		{
			name:     "password made up by NetworkManager, colon in the SSID",
			h:        Hotspot{Interface: "wlan0", SSID: "Café:Bar", Name: "shop"},
			conShow:  "Café\\:Bar\nx7Kq2mPz\n",
			wantUp:   "nmcli device wifi hotspot ifname wlan0 con-name shop ssid Café:Bar",
			wantInfo: HotspotInfo{SSID: "Café:Bar", BSSID: "3c:37:86:5a:1b:01", Password: "x7Kq2mPz"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &scriptRunner{out: map[string]string{
				"nmcli device wifi hotspot":                                                     activated,
				"nmcli -g GENERAL.HWADDR device show wlan0":                                     hwaddr,
				"nmcli -s -g 802-11-wireless.ssid,802-11-wireless-security.psk connection show": tt.conShow,
			}}
			h := tt.h
			h.Runner = r
			info, err := h.Up(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if info != tt.wantInfo {
				t.Errorf("Up = %+v, want %+v", info, tt.wantInfo)
			}
			if r.calls[0] != tt.wantUp {
				t.Errorf("brought up with %q, want %q", r.calls[0], tt.wantUp)
			}
			if err := h.Down(context.Background()); err != nil {
				t.Fatal(err)
			}
			if last := r.calls[len(r.calls)-1]; last != "nmcli connection delete "+h.name() {
				t.Errorf("took down with %q", last)
			}
		})
	}
}

func TestHotspotUpFails(t *testing.T) {
	boom := errors.New("Error: Connection activation failed: 802.1X supplicant took too long to authenticate.")
	tests := []struct {
		name     string
		h        Hotspot
		out      map[string]string
		fail     map[string]error
		want     string
		teardown bool // the half-made connection is deleted
	}{
		{"no interface", Hotspot{SSID: "a"}, nil, nil, "interface", false},
		{"option as interface", Hotspot{Interface: "--help", SSID: "a"}, nil, nil, "interface", false},
		{"no SSID", Hotspot{Interface: "wlan0"}, nil, nil, "SSID", false},
		{"SSID too long", Hotspot{Interface: "wlan0", SSID: strings.Repeat("a", 33)}, nil, nil, "SSID", false},
		{"short password", Hotspot{Interface: "wlan0", SSID: "a", Password: "1234567"}, nil, nil, "8 to 63", false},
		{"nmcli fails", Hotspot{Interface: "wlan0", SSID: "a"}, nil, map[string]error{"nmcli device wifi hotspot": boom}, "supplicant", false},
		{"no address", Hotspot{Interface: "wlan0", SSID: "a"}, map[string]string{"nmcli -g GENERAL.HWADDR": "\n"}, nil, "not a MAC", true},
		{"garbled SSID read-back", Hotspot{Interface: "wlan0", SSID: "a"},
			map[string]string{"nmcli -g GENERAL.HWADDR": hwaddr, "nmcli -s -g": "a:b\npw\n"}, nil, "unescaped", true},
		{"SSID read-back missing a line", Hotspot{Interface: "wlan0", SSID: "a"},
			map[string]string{"nmcli -g GENERAL.HWADDR": hwaddr, "nmcli -s -g": "a\n"}, nil, "want 2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &scriptRunner{out: tt.out, fail: tt.fail}
			h := tt.h
			h.Runner = r
			_, err := h.Up(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Up = %v, want an error saying %q", err, tt.want)
			}
			deleted := slices.ContainsFunc(r.calls, func(c string) bool { return strings.HasPrefix(c, "nmcli connection delete") })
			if deleted != tt.teardown {
				t.Errorf("connection deleted: %v, want %v (calls %q)", deleted, tt.teardown, r.calls)
			}
		})
	}
}

func TestInterfaceMAC(t *testing.T) {
	files := map[string]string{"/sys/class/net/wlan0/address": "3c:37:86:5a:1b:01\n", "/sys/class/net/bad0/address": "nonsense\n",
		"/sys/class/net/ib0/address": "80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:3b:4c\n"}
	read := func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}
	tests := []struct {
		iface, want, err string
	}{
		{"wlan0", "3c:37:86:5a:1b:01", ""},
		{"bad0", "", "not a MAC"},
		{"ib0", "", "not a MAC"}, // InfiniBand's 20-byte address is no BSSID
		{"wlan9", "", "file does not exist"},
		{"../wlan0", "", "interface name"},
		{"", "", "interface name"},
	}
	for _, tt := range tests {
		t.Run(tt.iface, func(t *testing.T) {
			got, err := InterfaceMAC(read, tt.iface)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("InterfaceMAC = %q, %v; want an error saying %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("InterfaceMAC = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func FuzzParseNMCLIValue(f *testing.F) {
	f.Add([]byte(hwaddr))
	f.Add([]byte("Caf\\\\e\\:x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseNMCLIValue(b)
		if err == nil && strings.Contains(v, "\n") {
			t.Fatalf("value %q holds a newline", v)
		}
	})
}

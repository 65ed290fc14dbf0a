package wifi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseIW(t *testing.T) {
	aps, err := ParseIW(readTestdata(t, "iw-dev-scan.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := sceneIn(t, "f4:92:bf:00:11:22", "3c:37:86:5a:1b:01", "3c:37:86:5a:1b:02", "3e:37:86:5a:1b:03",
		"b0:be:76:10:20:30", "f6:92:bf:00:11:22", "a4:2b:b0:de:ad:01", "00:1a:1e:aa:bb:cc",
		"c8:3a:35:01:02:03", "02:00:5e:10:00:01", "00:0f:66:12:34:56")
	if d := cmp.Diff(want, aps); d != "" {
		t.Fatalf("scan (-want +got):\n%s", d)
	}
	checkCandidates(t, aps)
}

func TestParseIWOlder(t *testing.T) {
	aps, err := ParseIW(readTestdata(t, "iw-dev-scan-older.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := []AccessPoint{
		{BSSID: "00:11:22:33:44:55", SSID: nil, FreqMHz: 2412, SignalDBM: -67, Security: wpa2},
		{BSSID: "00:11:22:33:44:56", SSID: nil, FreqMHz: 5220, SignalDBM: -71, Security: wpa2},
		{BSSID: "90:f6:52:0a:0b:0c", SSID: []byte(" old wpa "), FreqMHz: 2437, SignalDBM: -81, Security: wpa},
		{BSSID: "ac:84:c6:01:02:03", SSID: []byte("corp-secure"), FreqMHz: 5260, SignalDBM: -63, Security: wpa3, Connected: true},
		{BSSID: "ac:84:c6:01:02:04", SSID: []byte("home\tnet\n"), FreqMHz: 5260, SignalDBM: -64, Security: wpa3},
		{BSSID: "b0:be:76:10:20:31", SSID: []byte("日本"), FreqMHz: 6115, SignalDBM: -77, Security: wpa3},
	}
	if d := cmp.Diff(want, aps); d != "" {
		t.Fatalf("scan (-want +got):\n%s", d)
	}
	checkCandidates(t, aps)
}

// TestNMCLIAndIWAgree: the two tools' views of the same air give the same
// candidates, down to the dBm (qualityToDBM inverts NetworkManager's own
// dBm-to-quality mapping exactly for whole dBm).
func TestNMCLIAndIWAgree(t *testing.T) {
	fromNM, err := ParseNMCLI(readTestdata(t, "nmcli-dev-wifi-list.txt"))
	if err != nil {
		t.Fatal(err)
	}
	fromIW, err := ParseIW(readTestdata(t, "iw-dev-scan.txt"))
	if err != nil {
		t.Fatal(err)
	}
	byBSSID := func(a, b AccessPoint) int { return strings.Compare(a.BSSID, b.BSSID) }
	slices.SortFunc(fromNM, byBSSID)
	slices.SortFunc(fromIW, byBSSID)
	if d := cmp.Diff(fromNM, fromIW); d != "" {
		t.Fatalf("nmcli and iw disagree (-nmcli +iw):\n%s", d)
	}
}

func TestParseIWCases(t *testing.T) {
	const hdr = "BSS 02:00:00:00:00:01(on wlan0)\n\tfreq: 2412\n"
	for _, tc := range []struct {
		name string
		out  string
		want []AccessPoint
	}{
		{"no access points", "", []AccessPoint{}},
		{"half dBm in iw's printf form, rounded away from zero",
			hdr + "\tsignal: -48.-50 dBm\n\tSSID: a\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), FreqMHz: 2412, SignalDBM: -49, Security: open}}},
		{"signal without a unit is a quality",
			hdr + "\tsignal: 50/100\n\tSSID: a\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), FreqMHz: 2412, SignalDBM: -70, Security: open}}},
		{"no signal line ranks weakest; header without interface",
			"BSS 02:00:00:00:00:01\n\tSSID: a\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), SignalDBM: -100, Security: open}}},
		{"only the first SSID line of the block counts, and only at the top level",
			hdr + "\tsignal: -50.00 dBm\n\tSSID: first\n\tOWE Transition Mode:\n\t\tBSSID: 02:00:00:00:00:09\n\t\tSSID: nested\n" +
				"\tInformation elements from Beacon frame:\n\tSSID: second\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("first"), FreqMHz: 2412, SignalDBM: -50, Security: open}}},
		{"RSN without authentication suites is WPA2; WPA's suites do not make RSN WPA3",
			hdr + "\tsignal: -50.00 dBm\n\tSSID: a\n\tRSN:\t * Version: 1\n\t\t * Group cipher: CCMP\n\tWPA:\t * Version: 1\n\t\t * Authentication suites: SAE\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), FreqMHz: 2412, SignalDBM: -50, Security: wpa2}}},
		{"RSN with an unknown suite only is WPA2",
			hdr + "\tsignal: -50.00 dBm\n\tSSID: a\n\tRSN:\t * Version: 1\n\t\t * Authentication suites: DPP 00-0f-ac:99\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), FreqMHz: 2412, SignalDBM: -50, Security: wpa2}}},
		{"dropped: multicast BSSID, 33-byte SSID; kept: the 32-byte one",
			"BSS 01:00:5e:00:00:01(on wlan0)\n\tSSID: a\n" +
				"BSS 02:00:00:00:00:02(on wlan0)\n\tSSID: " + strings.Repeat("\\x41", 33) + "\n" +
				"BSS 02:00:00:00:00:03(on wlan0)\n\tsignal: 30.00 dBm\n\tSSID: " + strings.Repeat("A", 32) + "\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:03", SSID: []byte(strings.Repeat("A", 32)), SignalDBM: 30, Security: open}}},
		{"a signal the server would refuse is clamped",
			hdr + "\tsignal: 99.00 dBm\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", FreqMHz: 2412, SignalDBM: 30, Security: open}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aps, err := ParseIW([]byte(tc.out))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, aps); d != "" {
				t.Fatalf("scan (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseIWRejects(t *testing.T) {
	for name, out := range map[string]string{
		"an error on stdout":                             "command failed: Operation not permitted (-1)\n",
		"details before the first BSS":                   "\tfreq: 2412\nBSS 02:00:00:00:00:01(on wlan0)\n",
		"BSSID of five octets":                           "BSS 02:00:00:00:00(on wlan0)\n",
		"freq not a number":                              "BSS 02:00:00:00:00:01(on wlan0)\n\tfreq: 2.4 GHz\n",
		"freq out of range":                              "BSS 02:00:00:00:00:01(on wlan0)\n\tfreq: 4294967295\n",
		"signal without unit":                            "BSS 02:00:00:00:00:01(on wlan0)\n\tsignal: -48\n",
		"signal with one decimal":                        "BSS 02:00:00:00:00:01(on wlan0)\n\tsignal: -48.5 dBm\n",
		"signal quality over 100 fine, but not a number": "BSS 02:00:00:00:00:01(on wlan0)\n\tsignal: x/100\n",
	} {
		t.Run(name, func(t *testing.T) {
			if aps, err := ParseIW([]byte(out)); err == nil {
				t.Fatalf("accepted: %+v", aps)
			}
		})
	}
	_, err := ParseIW([]byte("BSS 02:00:00:00:00:01(on wlan0)\n\tfreq: 2412\nscan aborted!\n"))
	if !errors.Is(err, ErrScanAborted) {
		t.Fatalf("scan aborted: err %v", err)
	}
}

func TestParseIWSignal(t *testing.T) {
	for in, want := range map[string]int32{
		" -48.00 dBm": -48, "-48.49 dBm": -48, "-48.-50 dBm": -49, "0.-50 dBm": -1, "-0.-49 dBm": 0,
		"-1.00 dBm": -1, "-200.00 dBm": -150, "12.00 dBm": 12, "-48 dBm": -48,
		"100/100": -40, "0/100": -100, "255/100": -40,
	} {
		got, err := parseIWSignal(in)
		if err != nil || got != want {
			t.Errorf("parseIWSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// escapeIW is iw's print_ssid_escaped (util.c), as a test oracle.
func escapeIW(ssid []byte) string {
	var b strings.Builder
	for i, c := range ssid {
		switch {
		case c > ' ' && c < 0x7f && c != '\\':
			b.WriteByte(c)
		case c == ' ' && i != 0 && i != len(ssid)-1:
			b.WriteByte(' ')
		default:
			fmt.Fprintf(&b, "\\x%.2x", c)
		}
	}
	return b.String()
}

func TestDecodeIWSSID(t *testing.T) {
	for in, want := range map[string]string{
		`Caf\xc3\xa9:Bar\x5cLounge`: "Café:Bar\\Lounge",
		`\x20a b\x20`:               " a b ",
		`\xE9`:                      "\xe9",
		`\x0`:                       `\x0`,  // too short: literal
		`\xzz`:                      `\xzz`, // not hex: literal
		`a\b`:                       `a\b`,  // old iw printed '\' as is
		``:                          ``,
	} {
		if got := decodeIWSSID(in); string(got) != want {
			t.Errorf("decodeIWSSID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIWScanner(t *testing.T) {
	r := &fakeRunner{out: readTestdata(t, "iw-dev-scan-older.txt")}
	aps, err := IWScanner{Runner: r, Interface: "wlp3s0"}.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([][]string{{"iw", "dev", "wlp3s0", "scan"}}, r.calls); d != "" {
		t.Fatalf("calls (-want +got):\n%s", d)
	}
	if len(aps) != 6 || !aps[3].Connected {
		t.Fatalf("aps %+v", aps)
	}

	for _, name := range []string{"", "-u", "wlan0 scan", "a/b", "..", "averyveryverylongname"} {
		r := &fakeRunner{}
		if _, err := (IWScanner{Runner: r, Interface: name}).Scan(context.Background()); err == nil || len(r.calls) != 0 {
			t.Errorf("interface %q: err %v, calls %v", name, err, r.calls)
		}
	}

	for stderr, hint := range map[string]string{
		"command failed: Operation not permitted (-1)":  "needs root or CAP_NET_ADMIN",
		"command failed: Device or resource busy (-16)": "another scan is running",
		"command failed: Network is down (-100)":        "the interface is down",
		"command failed: No such device (-19)":          "iw scan on wlan9",
	} {
		failed := &CommandError{Cmd: "iw dev wlan9 scan", Stderr: stderr, Err: errors.New("exit status 255")}
		_, err := IWScanner{Runner: &fakeRunner{err: failed}, Interface: "wlan9"}.Scan(context.Background())
		if !errors.Is(err, failed) || !strings.Contains(err.Error(), hint) || !strings.Contains(err.Error(), stderr) {
			t.Errorf("stderr %q: err %v", stderr, err)
		}
	}
}

func FuzzParseIW(f *testing.F) {
	f.Add(readTestdata(f, "iw-dev-scan.txt"))
	f.Add(readTestdata(f, "iw-dev-scan-older.txt"))
	f.Add([]byte("BSS 02:00:00:00:00:01(on wlan0) -- associated\n\tfreq: 5955.0\n\tsignal: -0.-50 dBm\n\tSSID: \\x00\\xff\n\tRSN:\t * Version: 1\n\t\t * Authentication suites: FT/SAE\nBSS 02:00:00:00:00:01\n\tsignal: 7/100\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		aps, err := ParseIW(out)
		if err != nil {
			return
		}
		if aps == nil {
			t.Fatal("nil result without error")
		}
		checkCandidates(t, aps)
	})
}

// FuzzIWSSIDRoundTrip: decoding what iw prints for an SSID gives back its bytes.
func FuzzIWSSIDRoundTrip(f *testing.F) {
	f.Add([]byte("Café:Bar\\Lounge"))
	f.Add([]byte(" \\x41 "))
	f.Add([]byte{0, 0xff, '\\', 'x', '4'})
	f.Fuzz(func(t *testing.T, ssid []byte) {
		if got := decodeIWSSID(escapeIW(ssid)); !bytes.Equal(got, ssid) {
			t.Fatalf("%q printed as %q decodes to %q", ssid, escapeIW(ssid), got)
		}
	})
}

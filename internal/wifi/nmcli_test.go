package wifi

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

func TestParseNMCLI(t *testing.T) {
	aps, err := ParseNMCLI(readTestdata(t, "nmcli-dev-wifi-list.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(scene, aps); d != "" {
		t.Fatalf("scan (-want +got):\n%s", d)
	}
	checkCandidates(t, aps)
}

func TestParseNMCLICases(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want []AccessPoint
	}{
		{"no access points", "", []AccessPoint{}},
		{"SSID with a NUL byte, which the SSID field would cut",
			" :02\\:00\\:00\\:00\\:00\\:01:6162006364:6:2437 MHz:50:WPA2\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("ab\x00cd"), FreqMHz: 2437, SignalDBM: -70, Security: wpa2}}},
		{"lower-case hex, SSID of NUL bytes is hidden",
			" :02\\:00\\:00\\:00\\:00\\:01:0000000000:6:2437 MHz:50:wpa-unknown\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: nil, FreqMHz: 2437, SignalDBM: -70, Security: unsp}}},
		{"one AP seen by two Wi-Fi devices: keep the stronger, still connected",
			"*:02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:40:WPA2\n :02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:90:WPA2\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), FreqMHz: 2412, SignalDBM: -46, Security: wpa2, Connected: true}}},
		{"multicast, broadcast and zero BSSIDs and a 33-byte SSID are dropped",
			" :03\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:40:WPA2\n" +
				" :FF\\:FF\\:FF\\:FF\\:FF\\:FF:61:1:2412 MHz:40:WPA2\n" +
				" :00\\:00\\:00\\:00\\:00\\:00:61:1:2412 MHz:40:WPA2\n" +
				" :02\\:00\\:00\\:00\\:00\\:02:" + strings.Repeat("61", 33) + ":1:2412 MHz:40:WPA2\n" +
				" :02\\:00\\:00\\:00\\:00\\:03:" + strings.Repeat("61", 32) + ":1:2412 MHz:40:WPA2\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:03", SSID: []byte(strings.Repeat("a", 32)), FreqMHz: 2412, SignalDBM: -76, Security: wpa2}}},
		{"IN-USE printed empty, security as in pretty mode",
			":02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:100:--\n",
			[]AccessPoint{{BSSID: "02:00:00:00:00:01", SSID: []byte("a"), FreqMHz: 2412, SignalDBM: -40, Security: open}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aps, err := ParseNMCLI([]byte(tc.out))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, aps); d != "" {
				t.Fatalf("scan (-want +got):\n%s", d)
			}
		})
	}
}

func TestNMCLISecurity(t *testing.T) {
	for in, want := range map[string]sharespotv1.Security{
		"": open, "--": open, "OWE-TM": open, "WEP": wep, "WPA1": wpa, "WPA1 802.1X": wpa,
		"WPA1 WPA2": wpa2, "WPA2 802.1X": wpa2, "WPA2 WPA3": wpa3, "WPA3": wpa3, "OWE": owe,
		"WPA-EAP-SUITE-B-192": wpa3, "WPA2 802.1X WPA-EAP-SUITE-B-192": wpa3, "WPA4": unsp,
	} {
		if got := nmcliSecurity(in); got != want {
			t.Errorf("nmcliSecurity(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestParseNMCLIRejects(t *testing.T) {
	for name, out := range map[string]string{
		"the SSID field as well (wrong field list)": " :02\\:00\\:00\\:00\\:00\\:01:a:61:1:2412 MHz:40:WPA2\n",
		"BSSID not escaped":                         " :02:00:00:00:00:01:61:1:2412 MHz:40:WPA2\n",
		"too few fields":                            " :02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:40\n",
		"IN-USE yes":                                "yes:02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:40:WPA2\n",
		"BSSID of eight octets":                     " :02\\:00\\:00\\:00\\:00\\:01\\:02\\:03:61:1:2412 MHz:40:WPA2\n",
		"BSSID with dashes":                         " :02-00-00-00-00-01:61:1:2412 MHz:40:WPA2\n",
		"odd SSID-HEX":                              " :02\\:00\\:00\\:00\\:00\\:01:616:1:2412 MHz:40:WPA2\n",
		"SSID-HEX not hex":                          " :02\\:00\\:00\\:00\\:00\\:01:zz:1:2412 MHz:40:WPA2\n",
		"channel not a number":                      " :02\\:00\\:00\\:00\\:00\\:01:61:x:2412 MHz:40:WPA2\n",
		"FREQ without unit":                         " :02\\:00\\:00\\:00\\:00\\:01:61:1:2412:40:WPA2\n",
		"FREQ out of range":                         " :02\\:00\\:00\\:00\\:00\\:01:61:1:200000 MHz:40:WPA2\n",
		"SIGNAL over 100":                           " :02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:101:WPA2\n",
		"SIGNAL in dBm":                             " :02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:-40:WPA2\n",
		"lone trailing backslash":                   " :02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:40:WPA2\\\n",
		"an error message on stdout":                "Error: Wi-Fi scan timed out.\n",
	} {
		t.Run(name, func(t *testing.T) {
			if aps, err := ParseNMCLI([]byte(out)); err == nil {
				t.Fatalf("accepted: %+v", aps)
			}
		})
	}
}

func TestSplitTerse(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		// As nmcli -t -e yes prints the SSID field: colons and backslashes escaped.
		{`*:3C\:37\:86\:5A\:1B\:01:Café\:Bar\\Lounge:36`, []string{"*", "3C:37:86:5A:1B:01", `Café:Bar\Lounge`, "36"}},
		{`\\\:\\:\:`, []string{`\:\`, ":"}},
		{`a::b:`, []string{"a", "", "b", ""}},
		{` `, []string{" "}},
		{``, []string{""}},
	} {
		got, err := splitTerse(tc.line)
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("%q (-want +got):\n%s", tc.line, d)
		}
	}
	if _, err := splitTerse(`a\`); err == nil {
		t.Error("lone trailing backslash accepted")
	}
}

// escapeTerse escapes a value the way nmcli -t -e yes does.
func escapeTerse(v string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(v)
}

func TestNMCLIScanner(t *testing.T) {
	r := &fakeRunner{out: readTestdata(t, "nmcli-dev-wifi-list.txt")}
	aps, err := NMCLIScanner{Runner: r}.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantCalls := [][]string{{"nmcli", "-t", "-e", "yes", "-f", "IN-USE,BSSID,SSID-HEX,CHAN,FREQ,SIGNAL,SECURITY", "dev", "wifi", "list", "--rescan", "yes"}}
	if d := cmp.Diff(wantCalls, r.calls); d != "" {
		t.Fatalf("calls (-want +got):\n%s", d)
	}
	if d := cmp.Diff(scene, aps); d != "" {
		t.Fatalf("scan (-want +got):\n%s", d)
	}

	failed := &CommandError{Cmd: "nmcli ...", Stderr: "Error: NetworkManager is not running.", Err: errors.New("exit status 8")}
	_, err = NMCLIScanner{Runner: &fakeRunner{err: failed}}.Scan(context.Background())
	if !errors.Is(err, failed) || !strings.Contains(err.Error(), "NetworkManager is not running") {
		t.Fatalf("err %v", err)
	}
	_, err = NMCLIScanner{Runner: &fakeRunner{out: []byte("garbage\n")}}.Scan(context.Background())
	if err == nil || !strings.Contains(err.Error(), "nmcli output line 1") {
		t.Fatalf("err %v", err)
	}
}

func FuzzParseNMCLI(f *testing.F) {
	f.Add(readTestdata(f, "nmcli-dev-wifi-list.txt"))
	f.Add([]byte("*:02\\:00\\:00\\:00\\:00\\:01:61:1:2412 MHz:40:WPA2\n :02\\:00\\:00\\:00\\:00\\:01:0000:1:5955 MHz:100:\n"))
	f.Add([]byte(" :03\\:00\\:00\\:00\\:00\\:01::0:0 MHz:0:OWE-TM\\\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		aps, err := ParseNMCLI(out)
		if err != nil {
			return
		}
		if aps == nil {
			t.Fatal("nil result without error")
		}
		checkCandidates(t, aps)
	})
}

// FuzzSplitTerse: splitting what nmcli would print gives back the values.
func FuzzSplitTerse(f *testing.F) {
	f.Add("*", "3C:37:86:5A:1B:01", `Café:Bar\Lounge`)
	f.Add("", `\`, ":")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		want := []string{a, b, c}
		line := escapeTerse(a) + ":" + escapeTerse(b) + ":" + escapeTerse(c)
		got, err := splitTerse(line)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("%q (-want +got):\n%s", line, d)
		}
	})
}

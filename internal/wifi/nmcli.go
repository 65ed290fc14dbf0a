package wifi

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// NMCLIFields are the fields NMCLIScanner asks nmcli for, in this order.
//
// SSID-HEX and not SSID: nmcli prints the SSID field through
// nm_utils_ssid_to_utf8, which passes UTF-8 through but converts any other
// bytes from a legacy charset picked by the locale (ISO-8859-1 by default,
// '?' when that fails). So the Latin-1 SSID "Caf\xe9" and the UTF-8 SSID
// "Caf\xc3\xa9" both print as "Café", and the server, which matches SSIDs
// byte for byte, could never find the first. The SSID field also stops at a
// NUL byte, leaves a newline in an SSID unescaped (splitting the record over
// two lines), and shows a hidden network as "" — or "--" outside terse mode,
// like a network really named "--". SSID-HEX is the SSID's raw bytes in
// upper-case hex, empty for a hidden network, and never needs escaping.
const NMCLIFields = "IN-USE,BSSID,SSID-HEX,CHAN,FREQ,SIGNAL,SECURITY"

const nmcliFieldCount = 7

// nmcliArgs are the arguments of the nmcli scan: terse output (-t) with ':'
// and '\' escaped inside values (-e yes), a fresh scan rather than the cached
// list (--rescan yes).
func nmcliArgs() []string {
	return []string{"-t", "-e", "yes", "-f", NMCLIFields, "dev", "wifi", "list", "--rescan", "yes"}
}

// NMCLIScanner scans through NetworkManager's nmcli. It needs no root:
// NetworkManager's polkit policy lets a local user rescan.
type NMCLIScanner struct {
	Runner Runner
}

// Scan runs nmcli -t -e yes -f NMCLIFields dev wifi list --rescan yes and
// parses its output.
func (s NMCLIScanner) Scan(ctx context.Context) ([]AccessPoint, error) {
	out, err := s.Runner.Run(ctx, "nmcli", nmcliArgs()...)
	if err != nil {
		return nil, fmt.Errorf("wifi: scan with nmcli: %w", err)
	}
	return ParseNMCLI(out)
}

// ParseNMCLI parses the terse output of
//
//	nmcli -t -e yes -f IN-USE,BSSID,SSID-HEX,CHAN,FREQ,SIGNAL,SECURITY dev wifi list
//
// one access point per line, for example
//
//	*:3C\:37\:86\:5A\:1B\:01:436166C3A9:36:5180 MHz:92:WPA2 WPA3
//
// Fields are separated by ':'; a ':' or '\' inside a value is escaped with
// '\' (so every colon of the BSSID is). IN-USE is "*" for the access point
// the device is connected to, " " otherwise. FREQ is "<MHz> MHz". SIGNAL is
// NetworkManager's quality, 0–100, converted to dBm by qualityToDBM.
// SECURITY is a space-separated list of "WEP", "WPA1", "WPA2", "WPA3", "OWE",
// "OWE-TM", "802.1X", "WPA-EAP-SUITE-B-192", empty for an open network.
//
// A line that does not have this shape is an error: the output is not what
// this parser was written for. A well-formed entry that cannot be a candidate
// (see Scanner) is dropped.
func ParseNMCLI(out []byte) ([]AccessPoint, error) {
	aps := make([]AccessPoint, 0, 32)
	for i, line := range strings.Split(string(out), "\n") {
		if line == "" {
			continue
		}
		ap, ok, err := parseNMCLILine(line)
		if err != nil {
			return nil, fmt.Errorf("wifi: nmcli output line %d: %w", i+1, err)
		}
		if ok {
			aps = append(aps, ap)
		}
	}
	return mergeByBSSID(aps), nil
}

func parseNMCLILine(line string) (ap AccessPoint, ok bool, err error) {
	f, err := splitTerse(line)
	if err != nil {
		return ap, false, err
	}
	if len(f) != nmcliFieldCount {
		return ap, false, fmt.Errorf("%d fields, want %d (%s)", len(f), nmcliFieldCount, NMCLIFields)
	}
	inUse, rawBSSID, ssidHex, channel, freq, signal, security := f[0], f[1], f[2], f[3], f[4], f[5], f[6]

	switch inUse {
	case "*":
		ap.Connected = true
	case " ", "":
	default:
		return ap, false, fmt.Errorf("IN-USE %q is neither \"*\" nor \" \"", inUse)
	}
	bssid, station, err := parseBSSID(rawBSSID)
	if err != nil {
		return ap, false, err
	}
	ssid, err := hex.DecodeString(ssidHex)
	if err != nil {
		return ap, false, fmt.Errorf("SSID-HEX %q: %w", ssidHex, err)
	}
	if !isDecimal(channel) {
		return ap, false, fmt.Errorf("CHAN %q is not a number", channel)
	}
	mhz, unit, _ := strings.Cut(freq, " ")
	if !isDecimal(mhz) || unit == "" {
		return ap, false, fmt.Errorf("FREQ %q is not \"<number> MHz\"", freq)
	}
	mhzN, err := strconv.Atoi(mhz)
	if err != nil || mhzN > maxFreqMHz {
		return ap, false, fmt.Errorf("FREQ %q is out of range", freq)
	}
	q, err := strconv.Atoi(signal)
	if !isDecimal(signal) || err != nil || q > 100 {
		return ap, false, fmt.Errorf("SIGNAL %q is not a quality from 0 to 100", signal)
	}

	if !station || len(ssid) > maxSSIDLen {
		return ap, false, nil
	}
	ap.BSSID = bssid
	ap.SSID = hiddenSSID(ssid)
	ap.FreqMHz = int32(mhzN)
	ap.SignalDBM = qualityToDBM(q)
	ap.Security = nmcliSecurity(security)
	return ap, true, nil
}

// splitTerse splits one line of nmcli's terse output into its values: ':'
// separates values, '\' escapes the next byte (nmcli escapes only ':' and
// '\'; ':' and '\' are ASCII, so byte-wise is safe in UTF-8).
func splitTerse(line string) ([]string, error) {
	var fields []string
	var b strings.Builder
	for i := 0; i < len(line); i++ {
		switch c := line[i]; c {
		case '\\':
			if i+1 == len(line) {
				return nil, errors.New("ends in a lone backslash")
			}
			i++
			b.WriteByte(line[i])
		case ':':
			fields = append(fields, b.String())
			b.Reset()
		default:
			b.WriteByte(c)
		}
	}
	return append(fields, b.String()), nil
}

// nmcliSecurity maps nmcli's SECURITY value to the strongest security it
// lists. "802.1X" only qualifies WPA1 or WPA2 (enterprise). "OWE-TM" marks an
// open access point whose OWE twin is a separate BSS, so it is open.
// A value with no known word is unspecified, not an error, so that a word
// added by a later NetworkManager does not fail the scan.
func nmcliSecurity(s string) sharespotv1.Security {
	words := strings.Fields(s)
	if len(words) == 0 {
		return sharespotv1.Security_SECURITY_OPEN
	}
	sec := sharespotv1.Security_SECURITY_UNSPECIFIED
	for _, w := range words {
		switch w {
		case "--", "OWE-TM":
			sec = stronger(sec, sharespotv1.Security_SECURITY_OPEN)
		case "WEP":
			sec = stronger(sec, sharespotv1.Security_SECURITY_WEP)
		case "OWE":
			sec = stronger(sec, sharespotv1.Security_SECURITY_OWE)
		case "WPA1":
			sec = stronger(sec, sharespotv1.Security_SECURITY_WPA)
		case "WPA2":
			sec = stronger(sec, sharespotv1.Security_SECURITY_WPA2)
		case "WPA3", "WPA-EAP-SUITE-B-192":
			sec = stronger(sec, sharespotv1.Security_SECURITY_WPA3)
		}
	}
	return sec
}

func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

package wifi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// ErrScanAborted is iw's "scan aborted!": the kernel stopped the scan (often
// because NetworkManager or wpa_supplicant started its own); try again.
var ErrScanAborted = errors.New("wifi: iw: scan aborted; try again")

// IWScanner scans with iw, straight through nl80211. It needs root or
// CAP_NET_ADMIN, and an interface that is up.
type IWScanner struct {
	Runner    Runner
	Interface string // e.g. "wlan0"
}

// Scan runs iw dev <Interface> scan and parses its output.
func (s IWScanner) Scan(ctx context.Context) ([]AccessPoint, error) {
	if !validIfname(s.Interface) {
		return nil, fmt.Errorf("wifi: iw scan: %q is not a network interface name (e.g. wlan0)", s.Interface)
	}
	out, err := s.Runner.Run(ctx, "iw", "dev", s.Interface, "scan")
	if err != nil {
		var ce *CommandError
		if errors.As(err, &ce) {
			switch {
			case strings.Contains(ce.Stderr, "Operation not permitted"):
				return nil, fmt.Errorf("wifi: iw scan on %s needs root or CAP_NET_ADMIN: %w", s.Interface, err)
			case strings.Contains(ce.Stderr, "Device or resource busy"):
				return nil, fmt.Errorf("wifi: iw scan on %s: another scan is running; try again: %w", s.Interface, err)
			case strings.Contains(ce.Stderr, "Network is down"):
				return nil, fmt.Errorf("wifi: iw scan on %s: the interface is down; bring it up first: %w", s.Interface, err)
			}
		}
		return nil, fmt.Errorf("wifi: iw scan on %s: %w", s.Interface, err)
	}
	return ParseIW(out)
}

// validIfname: what Linux accepts as an interface name (1–15 bytes, no '/',
// no whitespace, not "." or ".."), and not starting with '-' so that it can't
// be taken for an option.
func validIfname(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return false
		}
	}
	return true
}

// ParseIW parses the output of iw dev <if> scan (or iw dev <if> scan dump):
// a block per BSS, for example
//
//	BSS 3c:37:86:5a:1b:01(on wlan0) -- associated
//		freq: 5180
//		capability: ESS Privacy SpectrumMgmt (0x0111)
//		signal: -45.00 dBm
//		SSID: Caf\xc3\xa9
//		RSN:	 * Version: 1
//			 * Authentication suites: PSK SAE
//
// Top-level lines of a block start with one tab, the parts of an element
// with two or more. "-- associated" marks the access point the interface is
// connected to. freq is whole MHz, or "5180.0" with the kHz offset in newer
// iw. signal is "<dBm>.<hundredths> dBm", or "<n>/100" from drivers that
// report no unit. iw prints an SSID byte as \xNN unless it is printable
// ASCII (a space only inside the SSID, never '\'); ParseIW decodes them back
// to the raw bytes. A hidden network has an empty "SSID: " line (older iw),
// no SSID line (newer iw, which skips empty elements), or NUL bytes.
//
// Security: an RSN element is WPA3 if its authentication suites include SAE
// or Suite B, else WPA2 if they include PSK, 802.1X or FILS, else OWE if
// OWE, else WPA2; a WPA element without RSN is WPA; "Privacy" in capability
// without either is WEP; otherwise open.
func ParseIW(out []byte) ([]AccessPoint, error) {
	aps := make([]AccessPoint, 0, 32)
	var cur *iwBSS
	for i, line := range strings.Split(string(out), "\n") {
		if line == "" {
			continue
		}
		n := i + 1
		if line[0] != '\t' {
			if rest, ok := strings.CutPrefix(line, "BSS "); ok {
				if cur != nil {
					if ap, ok := cur.accessPoint(); ok {
						aps = append(aps, ap)
					}
				}
				b, err := parseIWHeader(rest)
				if err != nil {
					return nil, fmt.Errorf("wifi: iw output line %d: %w", n, err)
				}
				cur = b
				continue
			}
			if strings.TrimSpace(line) == "scan aborted!" {
				return nil, ErrScanAborted
			}
			return nil, fmt.Errorf("wifi: iw output line %d: %.40q is not a \"BSS <bssid>(on <if>)\" line", n, line)
		}
		if cur == nil {
			return nil, fmt.Errorf("wifi: iw output line %d: details before the first BSS line", n)
		}
		if err := cur.line(line); err != nil {
			return nil, fmt.Errorf("wifi: iw output line %d: %w", n, err)
		}
	}
	if cur != nil {
		if ap, ok := cur.accessPoint(); ok {
			aps = append(aps, ap)
		}
	}
	return mergeByBSSID(aps), nil
}

// iwBSS collects one BSS block.
type iwBSS struct {
	ap         AccessPoint
	station    bool // the BSSID can be an access point's
	haveSSID   bool // an SSID line was seen (the first one counts)
	ssidTooBig bool
	haveSignal bool
	privacy    bool
	rsn, wpa   bool
	rsnAKM     sharespotv1.Security // strongest authentication suite in RSN
	element    string               // name of the current top-level line
}

func parseIWHeader(rest string) (*iwBSS, error) {
	mac := rest
	if end := strings.IndexAny(rest, "( "); end >= 0 {
		mac = rest[:end]
	}
	bssid, station, err := parseBSSID(mac)
	if err != nil {
		return nil, err
	}
	_, status, _ := strings.Cut(rest, " -- ")
	return &iwBSS{ap: AccessPoint{BSSID: bssid, Connected: status == "associated"}, station: station}, nil
}

func (b *iwBSS) line(line string) error {
	depth := len(line) - len(strings.TrimLeft(line, "\t"))
	body := line[depth:]
	if depth == 1 {
		name, value, _ := strings.Cut(body, ":")
		b.element = name
		switch name {
		case "freq":
			mhz, khz, hasKHz := strings.Cut(strings.TrimSpace(value), ".")
			f, err := strconv.Atoi(mhz)
			if !isDecimal(mhz) || (hasKHz && !isDecimal(khz)) || err != nil || f > maxFreqMHz {
				return fmt.Errorf("freq %q is not a frequency in MHz", value)
			}
			b.ap.FreqMHz = int32(f)
		case "signal":
			dbm, err := parseIWSignal(value)
			if err != nil {
				return err
			}
			b.ap.SignalDBM, b.haveSignal = dbm, true
		case "capability":
			for _, w := range strings.Fields(value) {
				if w == "Privacy" {
					b.privacy = true
				}
			}
		case "SSID":
			if !b.haveSSID {
				ssid := decodeIWSSID(strings.TrimPrefix(value, " "))
				b.haveSSID = true
				b.ssidTooBig = len(ssid) > maxSSIDLen
				b.ap.SSID = hiddenSSID(ssid)
			}
		case "RSN":
			b.rsn = true
		case "WPA":
			b.wpa = true
		}
	}
	if b.element == "RSN" {
		if _, suites, ok := strings.Cut(body, "* Authentication suites:"); ok {
			for _, w := range strings.Fields(suites) {
				b.rsnAKM = stronger(b.rsnAKM, iwAKM(w))
			}
		}
	}
	return nil
}

// iwAKM classifies one word of iw's "Authentication suites:" in an RSN
// element ("PSK", "SAE", "FT/SAE", "SAE-EXT-KEY", "IEEE 802.1X",
// "802.1X/SUITE-B-192", "OWE", "FILS/SHA-256", ...).
func iwAKM(w string) sharespotv1.Security {
	switch {
	case strings.Contains(w, "SAE"), strings.Contains(w, "SUITE-B"):
		return sharespotv1.Security_SECURITY_WPA3
	case strings.Contains(w, "PSK"), strings.Contains(w, "802.1X"), strings.Contains(w, "FILS"):
		return sharespotv1.Security_SECURITY_WPA2
	case w == "OWE":
		return sharespotv1.Security_SECURITY_OWE
	}
	return sharespotv1.Security_SECURITY_UNSPECIFIED
}

func (b *iwBSS) accessPoint() (AccessPoint, bool) {
	if !b.station || b.ssidTooBig {
		return AccessPoint{}, false
	}
	ap := b.ap
	if !b.haveSignal {
		ap.SignalDBM = -100 // no reading: rank it with the weakest
	}
	switch {
	case b.rsn && b.rsnAKM != sharespotv1.Security_SECURITY_UNSPECIFIED:
		ap.Security = b.rsnAKM
	case b.rsn:
		ap.Security = sharespotv1.Security_SECURITY_WPA2
	case b.wpa:
		ap.Security = sharespotv1.Security_SECURITY_WPA
	case b.privacy:
		ap.Security = sharespotv1.Security_SECURITY_WEP
	default:
		ap.Security = sharespotv1.Security_SECURITY_OPEN
	}
	return ap, true
}

// parseIWSignal parses iw's signal value: " -48.00 dBm" (printf "%d.%.2d"
// of mBm/100 and mBm%100, so -48.5 dBm prints as "-48.-50" and -0.5 dBm as
// "0.-50"), or " 60/100" for a driver that reports no unit, which is taken
// as a quality on NetworkManager's scale. It rounds to whole dBm.
func parseIWSignal(v string) (int32, error) {
	v = strings.TrimSpace(v)
	if num, ok := strings.CutSuffix(v, " dBm"); ok {
		whole, frac, hasFrac := strings.Cut(num, ".")
		neg := strings.HasPrefix(whole, "-")
		w, err := strconv.Atoi(strings.TrimPrefix(whole, "-"))
		if err != nil || !isDecimal(strings.TrimPrefix(whole, "-")) {
			return 0, fmt.Errorf("signal %q is not \"<dBm> dBm\"", v)
		}
		hundredths := 0
		if hasFrac {
			if f, ok := strings.CutPrefix(frac, "-"); ok {
				neg, frac = true, f
			}
			if len(frac) != 2 || !isDecimal(frac) {
				return 0, fmt.Errorf("signal %q is not \"<dBm> dBm\"", v)
			}
			hundredths, _ = strconv.Atoi(frac)
		}
		w = min(w, 1000) // keep the arithmetic small; clampSignal bounds it
		dbm := (w*100 + hundredths + 50) / 100
		if neg {
			dbm = -dbm
		}
		return clampSignal(dbm), nil
	}
	if q, ok := strings.CutSuffix(v, "/100"); ok && isDecimal(q) {
		n, err := strconv.Atoi(q)
		if err == nil {
			return qualityToDBM(n), nil
		}
	}
	return 0, fmt.Errorf("signal %q is neither \"<dBm> dBm\" nor \"<n>/100\"", v)
}

// decodeIWSSID turns iw's escaped SSID back into its bytes: \xNN is the
// byte 0xNN; anything else is itself (old iw printed '\' unescaped).
func decodeIWSSID(s string) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			hi, okHi := unhex(s[i+2])
			lo, okLo := unhex(s[i+3])
			if okHi && okLo {
				out = append(out, hi<<4|lo)
				i += 3
				continue
			}
		}
		out = append(out, s[i])
	}
	return out
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

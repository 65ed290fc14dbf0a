// Package wifi scans for access points (C1.1). Without a radio (CI, the
// demo, a laptop) a scan comes from a JSON file.
package wifi

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// AccessPoint is one access point seen on the air.
type AccessPoint struct {
	SSID      []byte
	BSSID     string
	SignalDBM int32
	FreqMHz   int32
	Security  sharespotv1.Security
	// Connected: this device is associated with the access point now
	// (nmcli's IN-USE "*", iw's "-- associated"). Not sent to the server.
	Connected bool
}

// Candidate renders ap as an entry of the candidate set.
func (ap AccessPoint) Candidate() *sharespotv1.Candidate {
	return &sharespotv1.Candidate{Bssid: ap.BSSID, Ssid: ap.SSID, SignalDbm: ap.SignalDBM, FrequencyMhz: ap.FreqMHz, Security: ap.Security}
}

// Candidates renders a scan as the candidate set.
func Candidates(aps []AccessPoint) []*sharespotv1.Candidate {
	out := make([]*sharespotv1.Candidate, 0, len(aps))
	for _, ap := range aps {
		out = append(out, ap.Candidate())
	}
	return out
}

// fileEntry is one access point in a scan file. The SSID is given as text
// ("ssid") or, for non-UTF-8 SSIDs, as hex ("ssid_hex").
type fileEntry struct {
	SSID     *string `json:"ssid"`
	SSIDHex  *string `json:"ssid_hex"`
	BSSID    string  `json:"bssid"`
	Signal   int32   `json:"signal_dbm"`
	Freq     int32   `json:"frequency_mhz"`
	Security string  `json:"security"`
}

var securities = map[string]sharespotv1.Security{
	"open": sharespotv1.Security_SECURITY_OPEN, "wep": sharespotv1.Security_SECURITY_WEP,
	"wpa": sharespotv1.Security_SECURITY_WPA, "wpa2": sharespotv1.Security_SECURITY_WPA2,
	"wpa3": sharespotv1.Security_SECURITY_WPA3, "owe": sharespotv1.Security_SECURITY_OWE,
}

// ParseScanFile reads a JSON array of access points:
//
//	[{"ssid": "cafe", "bssid": "02:00:00:00:00:01", "signal_dbm": -48, "frequency_mhz": 2437, "security": "wpa2"}]
func ParseScanFile(r io.Reader) ([]AccessPoint, error) {
	dec := json.NewDecoder(io.LimitReader(r, 1<<20))
	dec.DisallowUnknownFields()
	var entries []fileEntry
	if err := dec.Decode(&entries); err != nil {
		return nil, fmt.Errorf("wifi: scan file: %w", err)
	}
	out := make([]AccessPoint, 0, len(entries))
	for i, e := range entries {
		ap := AccessPoint{BSSID: e.BSSID, SignalDBM: e.Signal, FreqMHz: e.Freq}
		switch {
		case e.SSID != nil && e.SSIDHex != nil:
			return nil, fmt.Errorf("wifi: scan file entry %d: give ssid or ssid_hex, not both", i)
		case e.SSID != nil:
			ap.SSID = []byte(*e.SSID)
		case e.SSIDHex != nil:
			b, err := hex.DecodeString(*e.SSIDHex)
			if err != nil {
				return nil, fmt.Errorf("wifi: scan file entry %d: ssid_hex: %w", i, err)
			}
			ap.SSID = b
		}
		sec, ok := securities[e.Security]
		if !ok {
			return nil, fmt.Errorf("wifi: scan file entry %d: security %q is not one of open, wep, wpa, wpa2, wpa3, owe", i, e.Security)
		}
		ap.Security = sec
		out = append(out, ap)
	}
	return out, nil
}

// ReadScanFile reads a scan file from disk.
func ReadScanFile(path string) ([]AccessPoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("wifi: %w", err)
	}
	defer f.Close()
	return ParseScanFile(f)
}

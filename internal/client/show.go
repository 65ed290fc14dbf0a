package client

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/size"
)

// SSIDText shows an SSID (the host's text): as it is when it is UTF-8
// that SafeText would leave alone, else as hex (which `connect` also
// accepts as the hotspot's name).
func SSIDText(ssid []byte) string {
	if utf8.Valid(ssid) && !strings.ContainsFunc(string(ssid), escaped) {
		return string(ssid)
	}
	return fmt.Sprintf("0x%x", ssid)
}

// FormatMoney formats minor units in the currency's usual form: 1234 EUR
// is "12.34 EUR".
func FormatMoney(minor int64, currency string) string { return money.Format(minor, currency) }

// FormatBytes formats a byte count with decimal units (1 MB = 10^6 bytes).
func FormatBytes(n int64) string { return size.Format(n) }

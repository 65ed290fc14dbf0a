package client

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/size"
)

// ShowOffers writes the available set as a table (C1.4): each access
// point's information and its tariff.
func ShowOffers(w io.Writer, offers []*sharespotv1.Offer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tSSID\tBSSID\tSIGNAL\tPRICE\tTOP-UP\tMIN\tAVAILABLE")
	for i, o := range offers {
		t := o.Tariff
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s / %s\t%s / %s\t%s\t%s\n", i+1, SSIDText(o.AccessPoint.GetSsid()), SafeText(o.AccessPoint.GetBssid()),
			signalText(o.SignalDbm), FormatMoney(t.PriceMinor, t.Currency), FormatBytes(t.UnitBytes), FormatMoney(t.TopupPriceMinor, t.Currency),
			FormatBytes(t.UnitBytes), FormatBytes(t.MinPurchaseBytes), FormatBytes(o.AvailableBytes))
	}
	return tw.Flush()
}

// signalText shows a signal strength; 0 dBm (1 mW at the receiver, never
// seen in practice) is what a scan without one gives, shown as "?".
func signalText(dbm int32) string {
	if dbm == 0 {
		return "?"
	}
	return fmt.Sprintf("%d dBm", dbm)
}

// ShowPrompt writes the low-quota prompt for a person (C1.10).
func ShowPrompt(w io.Writer, p *sharespotv1.LowQuotaPrompt) {
	fmt.Fprintf(w, "Data is running low: %s left of %s (used %s). Buy more?\n",
		FormatBytes(p.RemainingBytes), FormatBytes(p.GrantedBytes), FormatBytes(p.UsedBytes))
}

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

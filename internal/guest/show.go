package guest

import (
	"fmt"
	"io"
	"text/tabwriter"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/protocol"
)

// ShowOffers writes the available set as a table (C1.4): each access
// point's information and its tariff.
func ShowOffers(w io.Writer, offers []*sharespotv1.Offer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tSSID\tBSSID\tSIGNAL\tPRICE\tTOP-UP\tMIN\tAVAILABLE\tHOST'S RECORD")
	for i, o := range offers {
		t := o.Tariff
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s / %s\t%s / %s\t%s\t%s\t%s\n", i+1, client.SSIDText(o.AccessPoint.GetSsid()), client.SafeText(o.AccessPoint.GetBssid()),
			signalText(o.SignalDbm), client.FormatMoney(t.PriceMinor, t.Currency), client.FormatBytes(t.UnitBytes), client.FormatMoney(t.TopupPriceMinor, t.Currency),
			client.FormatBytes(t.UnitBytes), client.FormatBytes(t.MinPurchaseBytes), client.FormatBytes(o.AvailableBytes), protocol.RecordText(o.HostRecord))
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
	fmt.Fprintf(w, "%s Buy more?\n", PromptText(p))
}

// PromptText is what the low-quota prompt says, without the question.
func PromptText(p *sharespotv1.LowQuotaPrompt) string {
	return fmt.Sprintf("Data is running low: %s left of %s (used %s).",
		client.FormatBytes(p.RemainingBytes), client.FormatBytes(p.GrantedBytes), client.FormatBytes(p.UsedBytes))
}

package registry

import (
	"testing"

	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/protocol"
)

// FuzzParseInstruction feeds the network-sharing instruction, as any
// client may send it (protobuf bytes), to the registry's validation: it
// must never panic, and what it accepts must be within every bound the
// rest of the server relies on.
func FuzzParseInstruction(f *testing.F) {
	for _, in := range []*sharespotv1.ShareInstruction{
		{AccessPoint: &sharespotv1.AccessPoint{Ssid: []byte("Cafe"), Bssid: "02:00:00:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
			Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: 1_000_000, MinPurchaseBytes: 10_000_000, TopupPriceMinor: 12},
			ShareableBytes: 1_000_000_000, WarnAtBytes: 5_000_000},
		{AccessPoint: &sharespotv1.AccessPoint{Ssid: []byte{0xff, 0}, Bssid: "02-00-00-00-00-01"}, Tariff: &sharespotv1.Tariff{Currency: "eur", UnitBytes: -1}},
		{},
	} {
		b, err := proto.Marshal(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := new(sharespotv1.ShareInstruction)
		if proto.Unmarshal(b, in) != nil {
			return
		}
		h, err := parseInstruction(in)
		if err != nil {
			return
		}
		switch {
		case h.ShareableBytes <= 0 || h.ShareableBytes > MaxShareable:
			t.Fatalf("accepted shareable_bytes %d", h.ShareableBytes)
		case h.WarnAtBytes < 0 || h.WarnAtBytes >= h.ShareableBytes:
			t.Fatalf("accepted warn_at_bytes %d of %d", h.WarnAtBytes, h.ShareableBytes)
		case h.Tariff.UnitBytes <= 0 || h.Tariff.MinPurchase <= 0 || h.Tariff.MinPurchase > h.ShareableBytes:
			t.Fatalf("accepted tariff %+v", h.Tariff)
		case h.Tariff.PriceMinor < 0 || h.Tariff.TopUpPriceMinor < 0:
			t.Fatalf("accepted negative prices %+v", h.Tariff)
		}
		if _, err := NormalizeBSSID(h.BSSID); err != nil {
			t.Fatalf("accepted BSSID %q that does not normalize again: %v", h.BSSID, err)
		}
		if _, err := protocol.Price(h.ShareableBytes, max(h.Tariff.PriceMinor, h.Tariff.TopUpPriceMinor), h.Tariff.UnitBytes); err != nil {
			t.Fatalf("accepted a tariff that cannot price its whole volume: %v", err)
		}
	})
}

package harness

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/seal"
)

// BenchMB is the megabyte the flow benchmarks price in.
const BenchMB = 1_000_000

// BenchInstruction is hotspot i's instruction in the flow benchmarks: 10
// cents per MB, 1 MB at least, practically unlimited volume.
func BenchInstruction(i int) *sharespotv1.ShareInstruction {
	return &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(fmt.Sprintf("bench-%d", i)), Bssid: fmt.Sprintf("02:be:00:00:%02x:%02x", i>>8, i&0xff), Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: BenchMB, MinPurchaseBytes: BenchMB, TopupPriceMinor: 12},
		ShareableBytes: 1 << 50,
		WarnAtBytes:    BenchMB,
	}
}

// PaidFlow runs one complete paid flow of the flow benchmarks: discover →
// request → quote → pay → confirm → grant (HPKE-sealed code) → end and
// settle. The caller plays both sides: it calls the host's steps itself
// instead of waiting for the host's inbox, so relay latency is not part of
// it (it is measured on its own). The guest buys 10 MB for 1 EUR and the
// host ends the session having metered 7 MB.
func PaidFlow(ctx context.Context, host *client.Client, hs *sharespotv1.Hotspot, g *guest.Guest) error {
	ap := hs.Instruction.AccessPoint
	if _, err := g.C.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: []*sharespotv1.Candidate{{Bssid: ap.Bssid, Ssid: ap.Ssid, SignalDbm: -50}}})); err != nil {
		return fmt.Errorf("discover: %w", err)
	}
	ses, err := g.BeginHotspot(ctx, hs.Id, 10*BenchMB)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	defer ses.Close()
	q, err := host.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * BenchMB, AmountMinor: 100, Currency: "EUR"}))
	if err != nil {
		return fmt.Errorf("quote: %w", err)
	}
	rc, err := ses.Pay(ctx, q.Msg.Quote, guest.BuyOptions{})
	if err != nil {
		return err
	}
	if err := ses.Confirm(ctx, q.Msg.Quote, rc); err != nil {
		return err
	}
	if err := Grant(ctx, host, g, ses.ID, q.Msg.Quote, 10*BenchMB); err != nil {
		return err
	}
	if _, err := host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.ID, UsedBytes: 7 * BenchMB, Reason: "bench"})); err != nil {
		return fmt.Errorf("end: %w", err)
	}
	return nil
}

// Grant is the host's grant of bytes for a paid quote, as the flow tests
// play the host: the session's first grant carries a fresh access code
// sealed to the guest (HPKE, the preset suite) and a proxy gateway at
// 192.0.2.1:1080; a top-up's carries neither.
func Grant(ctx context.Context, host *client.Client, g *guest.Guest, sessionID string, q *sharespotv1.Quote, bytes int64) error {
	req := &sharespotv1.GrantRequest{SessionId: sessionID, QuoteId: q.Id, GrantedBytes: bytes}
	if q.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
		code, err := seal.NewAccessCode()
		if err != nil {
			return err
		}
		sealed, err := seal.Seal(seal.Preset, g.PublicKey(sessionID, seal.Preset), seal.Binding{SessionID: sessionID, HostID: host.DeviceID(), GuestID: g.C.DeviceID()}, code)
		if err != nil {
			return err
		}
		req.SealedCode = &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext}
		req.Gateway = &sharespotv1.Gateway{Kind: "proxy", Address: "192.0.2.1:1080"}
	}
	if _, err := host.Sessions.Grant(ctx, connect.NewRequest(req)); err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	return nil
}

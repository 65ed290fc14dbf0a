package conformance

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/wifi"
)

const (
	MB       = 1_000_000
	currency = "EUR"
)

// instruction is the host's network-sharing instruction in these tests:
// 10 cents per MB, top-ups at 12 cents per MB, at least 10 MB, 1 GB shared,
// warn below 5 MB.
func instruction() *sharespotv1.ShareInstruction {
	return &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("Cafe Sharespot"), Bssid: "02:5E:00:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: currency, PriceMinor: 10, UnitBytes: MB, MinPurchaseBytes: 10 * MB, TopupPriceMinor: 12},
		ShareableBytes: 1000 * MB,
		WarnAtBytes:    5 * MB,
	}
}

// flow is one guest buying from one host, the guest going through its
// flow as guest.Session runs it.
type flow struct {
	env         *harness.Env
	host, guest *client.Client
	hostAgent   *host.Agent
	gate        *gateway.CodeGate
	g           *guest.Guest
	hostIn      *harness.Inbox // every message, the host agent's first
	guestIn     *client.Inbox  // routed to the guest's sessions
	hotspot     *sharespotv1.Hotspot
}

func newFlow(t *testing.T, mod func(*server.Config)) *flow {
	t.Helper()
	ctx := context.Background()
	f := &flow{env: harness.Start(t, mod)}
	f.host, f.guest = f.env.Device(t, "host"), f.env.Device(t, "guest")
	f.gate = &gateway.CodeGate{Address: "192.0.2.1:1080"}
	f.hostAgent = &host.Agent{C: f.host, GW: f.gate}
	if err := f.hostAgent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	f.g = &guest.Guest{C: f.guest}
	res, err := f.host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: instruction()}))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	f.hotspot = res.Msg.Hotspot
	f.hostIn = harness.Listen(t, f.host, f.hostAgent.Handle)
	f.guestIn = harness.ListenGuest(t, f.g)
	f.env.Fund(t, f.guest, currency, 10_000)
	return f
}

// claimStep is a claim step of the guest's purchase: its subtest's name
// (which starts with the claim ID) and its checks of the step's event.
type claimStep struct {
	name  string
	check func(t *testing.T, e guest.Event)
}

// buyByClaims is ses.Buy(kind) with each step the guest takes checked as
// its claim, in a subtest named for it, as the step happens: the fee, the
// payment, the confirmation and the grant (C3.1–C3.3 and C1.7, or
// C1.12–C1.15). A step the flow did not take, or took out of order, fails.
func buyByClaims(t *testing.T, ses *guest.Session, kind sharespotv1.QuoteKind, steps map[guest.Step]claimStep) *sharespotv1.AccessGranted {
	t.Helper()
	var took []guest.Step
	ses.Observe = func(e guest.Event) {
		took = append(took, e.Step)
		cs, ok := steps[e.Step]
		if !ok {
			return
		}
		if id, _, _ := strings.Cut(cs.name, "_"); e.Claim() != id {
			t.Fatalf("the guest calls step %d of a %v purchase %s, want %s", e.Step, kind, e.Claim(), id)
		}
		if !t.Run(cs.name, func(t *testing.T) { cs.check(t, e) }) {
			t.FailNow()
		}
	}
	defer func() { ses.Observe = nil }()
	grant, err := ses.Buy(context.Background(), kind, guest.BuyOptions{})
	if err != nil {
		t.Fatalf("buy %v: %v", kind, err)
	}
	if want := []guest.Step{guest.StepFee, guest.StepPaid, guest.StepConfirmed, guest.StepGranted}; !slices.Equal(took, want) {
		t.Fatalf("the guest's purchase took steps %v, want %v", took, want)
	}
	return grant
}

// buy has f's guest ask for bytes at f's hotspot and buy them through
// guest.Session.Buy; it returns the session, the fee it paid and the
// access response.
func (f *flow) buy(t *testing.T, bytes int64) (*guest.Session, *sharespotv1.Quote, *sharespotv1.AccessGranted) {
	t.Helper()
	ses, err := f.g.BeginHotspot(context.Background(), f.hotspot.Id, bytes)
	if err != nil {
		t.Fatal(err)
	}
	var fee *sharespotv1.Quote
	ses.Observe = func(e guest.Event) {
		if e.Step == guest.StepFee {
			fee = e.Quote
		}
	}
	grant, err := ses.Buy(context.Background(), sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{})
	ses.Observe = nil
	if err != nil {
		t.Fatalf("buy: %v", err)
	}
	return ses, fee, grant
}

// feeOf waits for the host's fee of ses's first purchase (C3.1), for the
// tests that take the steps after it one by one.
func feeOf(t *testing.T, ses *guest.Session) *sharespotv1.Quote {
	t.Helper()
	_, fi := harness.NextIn[*sharespotv1.Envelope_FeeInfo](t, ses.Messages())
	return fi.FeeInfo.Quote
}

// TestClaim walks claims 1–3 in order through one session. Each subtest
// depends on the ones before it, as each claim step does.
func TestClaim(t *testing.T) {
	ctx := context.Background()
	f := newFlow(t, nil)
	var (
		cands   []*sharespotv1.Candidate
		offers  []*sharespotv1.Offer
		offer   *sharespotv1.Offer
		ses     *guest.Session
		fee     *sharespotv1.Quote
		rc      *sharespotv1.Receipt
		grant   *sharespotv1.AccessGranted
		code    []byte
		topFee  *sharespotv1.Quote
		prompt  *sharespotv1.LowQuotaPrompt
		guest0  = harness.Balance(t, f.guest, currency)
		chargeA = int64(100 * 10) // 100 MB at 10 cents
		chargeB = int64(50 * 12)  // 50 MB at 12 cents
	)
	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}

	step("C1.1_scan_candidate_set", func(t *testing.T) {
		aps, err := wifi.ReadScanFile("testdata/scan.json")
		if err != nil {
			t.Fatal(err)
		}
		cands = wifi.Candidates(aps)
		if len(cands) != 4 || !bytes.Equal(cands[3].Ssid, []byte{0xff, 0x00, 0xfe}) {
			t.Fatalf("candidate set = %v", cands)
		}
	})
	step("C1.2_send_candidate_set", func(t *testing.T) {
		res, err := f.guest.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{Candidates: cands}))
		if err != nil {
			t.Fatal(err)
		}
		offers = res.Msg.Available
	})
	step("C1.3_available_set_with_tariff", func(t *testing.T) {
		// Only the registered candidate comes back: not the unregistered
		// ones, and not one whose registered BSSID shows another SSID.
		if len(offers) != 1 {
			t.Fatalf("available set has %d entries, want 1: %v", len(offers), offers)
		}
		o := offers[0]
		want := instruction().Tariff
		if o.HotspotId != f.hotspot.Id || o.AccessPoint.Bssid != "02:5e:00:00:00:01" || o.HostDeviceId != f.host.DeviceID() ||
			o.Tariff.PriceMinor != want.PriceMinor || o.Tariff.TopupPriceMinor != want.TopupPriceMinor || o.Tariff.Currency != currency ||
			o.SignalDbm != -48 || o.AvailableBytes != 1000*MB {
			t.Fatalf("offer = %v", o)
		}
	})
	step("C1.4_show_available_set", func(t *testing.T) {
		var b strings.Builder
		if err := guest.ShowOffers(&b, offers); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Cafe Sharespot", "02:5e:00:00:00:01", "-48 dBm", "€0.10 / 1 MB", "€0.12 / 1 MB", "1 GB"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("shown set lacks %q:\n%s", want, b.String())
			}
		}
	})
	step("C1.5_access_request_for_available_ap", func(t *testing.T) {
		offer = offers[0] // the user's choice, from the available set
		if offer.AccessPoint.Bssid != cands[0].Bssid && !strings.EqualFold(offer.AccessPoint.Bssid, cands[0].Bssid) {
			t.Fatalf("chosen access point %s is not a candidate", offer.AccessPoint.Bssid)
		}
	})
	step("C1.6_request_reaches_host_via_server", func(t *testing.T) {
		var err error
		ses, err = f.g.Begin(ctx, offer, 100*MB)
		if err != nil {
			t.Fatal(err)
		}
		env, req := harness.Next[*sharespotv1.Envelope_AccessRequested](t, f.hostIn)
		if env.SessionId != ses.ID || req.AccessRequested.GuestDeviceId != f.guest.DeviceID() || req.AccessRequested.Bytes != 100*MB {
			t.Fatalf("host got %v", env)
		}
	})
	// Claim 3 and C1.7: the guest buys as guest.Session.Buy does; each
	// step is checked as it happens.
	grant = buyByClaims(t, ses, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, map[guest.Step]claimStep{
		guest.StepFee: {"C3.1_fee_information", func(t *testing.T, e guest.Event) {
			fee = e.Quote
			if fee.SessionId != ses.ID || fee.AmountMinor != chargeA || fee.Bytes != 100*MB || fee.Kind != sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
				t.Fatalf("fee info = %v", fee)
			}
		}},
		guest.StepPaid: {"C3.2_pay_and_payment_success_response", func(t *testing.T, e guest.Event) {
			rc = e.Receipt
			if rc == nil || e.Quote.GetId() != fee.Id {
				t.Fatalf("paid quote %s with receipt %v, want a receipt for %s", e.Quote.GetId(), rc, fee.Id)
			}
			if got := harness.Balance(t, f.guest, currency); got != guest0-chargeA {
				t.Fatalf("guest balance %d, want %d", got, guest0-chargeA)
			}
			escrow := escrowOf(t, f.env, ses.ID)
			if escrow != chargeA {
				t.Fatalf("escrow %d, want %d", escrow, chargeA)
			}
		}},
		guest.StepConfirmed: {"C3.3_payment_response_reaches_host", func(t *testing.T, e guest.Event) {
			_, pc := harness.Next[*sharespotv1.Envelope_PaymentConfirmed](t, f.hostIn)
			if pc.PaymentConfirmed.QuoteId != fee.Id || !bytes.Equal(pc.PaymentConfirmed.Receipt.Signature, rc.Signature) {
				t.Fatalf("host got %v", pc)
			}
		}},
		guest.StepGranted: {"C1.7_access_response_code_and_volume", func(t *testing.T, e guest.Event) {
			g := e.Grant
			if g.GrantedBytes != 100*MB || g.TotalGrantedBytes != 100*MB || g.SealedCode == nil || g.Gateway.GetAddress() == "" || g.QuoteId != fee.Id {
				t.Fatalf("access response = %v", g)
			}
		}},
	})
	step("C2.1_preset_rule_opens_code", func(t *testing.T) {
		if grant.SealedCode.Suite != string(seal.Preset) {
			t.Fatalf("suite %q, want the preset %q", grant.SealedCode.Suite, seal.Preset)
		}
		var err error
		if code, err = ses.Code(grant); err != nil {
			t.Fatal(err)
		}
		for _, m := range f.guestIn.Handled() {
			if m.Session == ses.ID && m.Body == fmt.Sprintf("%T", &sharespotv1.Envelope_EncryptionMessage{}) {
				t.Fatal("preset rule in force, yet the guest got an encryption message")
			}
		}
	})
	step("C1.8_online_with_code_and_volume", func(t *testing.T) {
		// Until the gateway lands, the host-side check the guest presents
		// its code to is the gate; the gateway issue moves real bytes here.
		vol, err := f.gate.Check(ses.ID, code)
		if err != nil || vol != 100*MB {
			t.Fatalf("gate check = %d, %v", vol, err)
		}
		wrong := bytes.Clone(code)
		wrong[0] ^= 1
		if _, err := f.gate.Check(ses.ID, wrong); err == nil {
			t.Fatal("gate accepted a wrong code")
		}
	})
	step("C1.9_low_quota_prompt", func(t *testing.T) {
		// With more than half the volume and more than the warning level
		// left, the server refuses a prompt: it checks. (Between the two,
		// a gateway may prompt early, from the guest's rate.)
		_, err := f.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: ses.ID, UsedBytes: 40 * MB}))
		if harness.Code(err) != connect.CodeFailedPrecondition {
			t.Fatalf("prompt at 60 MB left: %v, want failed_precondition", err)
		}
		if _, err := f.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: ses.ID, UsedBytes: 96 * MB})); err != nil {
			t.Fatal(err)
		}
		_, p := harness.NextIn[*sharespotv1.Envelope_LowQuotaPrompt](t, ses.Messages())
		if p.LowQuotaPrompt.RemainingBytes != 4*MB || p.LowQuotaPrompt.UsedBytes != 96*MB {
			t.Fatalf("prompt = %v", p.LowQuotaPrompt)
		}
		prompt = p.LowQuotaPrompt
	})
	step("C1.10_show_prompt", func(t *testing.T) {
		var b strings.Builder
		guest.ShowPrompt(&b, prompt)
		if !strings.Contains(b.String(), "4 MB left of 100 MB (used 96 MB). Buy more?") {
			t.Fatalf("shown prompt: %q", b.String())
		}
	})
	step("C1.11_add_data_request", func(t *testing.T) {
		if err := ses.RequestTopUp(ctx, 50*MB); err != nil {
			t.Fatal(err)
		}
		_, tr := harness.Next[*sharespotv1.Envelope_TopUpRequested](t, f.hostIn)
		if tr.TopUpRequested.Bytes != 50*MB {
			t.Fatalf("host got %v", tr)
		}
	})
	buyByClaims(t, ses, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, map[guest.Step]claimStep{
		guest.StepFee: {"C1.12_additional_fee_information", func(t *testing.T, e guest.Event) {
			topFee = e.Quote
			if topFee.Kind != sharespotv1.QuoteKind_QUOTE_KIND_TOPUP || topFee.AmountMinor != chargeB || topFee.Bytes != 50*MB {
				t.Fatalf("additional fee = %v", topFee)
			}
		}},
		guest.StepPaid: {"C1.13_additional_payment_success", func(t *testing.T, e guest.Event) {
			if e.Receipt == nil || e.Quote.GetId() != topFee.Id {
				t.Fatalf("paid quote %s with receipt %v, want a receipt for %s", e.Quote.GetId(), e.Receipt, topFee.Id)
			}
			if got := escrowOf(t, f.env, ses.ID); got != chargeA+chargeB {
				t.Fatalf("escrow %d, want %d", got, chargeA+chargeB)
			}
		}},
		guest.StepConfirmed: {"C1.14_additional_payment_reaches_host", func(t *testing.T, e guest.Event) {
			_, pc := harness.Next[*sharespotv1.Envelope_PaymentConfirmed](t, f.hostIn)
			if pc.PaymentConfirmed.Kind != sharespotv1.QuoteKind_QUOTE_KIND_TOPUP || pc.PaymentConfirmed.QuoteId != topFee.Id {
				t.Fatalf("host got %v", pc)
			}
		}},
		guest.StepGranted: {"C1.15_add_data_response", func(t *testing.T, e guest.Event) {
			g := e.Grant
			if g.GrantedBytes != 50*MB || g.TotalGrantedBytes != 150*MB || g.SealedCode != nil || g.QuoteId != topFee.Id {
				t.Fatalf("add-data response = %v", g)
			}
			if vol, err := f.gate.AwaitVolume(ses.ID, code, 150*MB, 5*time.Second); err != nil || vol != 150*MB {
				t.Fatalf("gate volume after top-up = %d, %v", vol, err)
			}
		}},
	})
	step("settlement_on_end", func(t *testing.T) {
		// The host meters 120 MB of 150 MB; the guest, which counted as
		// much, acknowledged it (signed) and ends the session.
		if _, err := f.host.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: ses.ID, UsedBytes: 120 * MB})); err != nil {
			t.Fatal(err)
		}
		if _, err := ses.Acknowledge(ctx, 120*MB); err != nil {
			t.Fatal(err)
		}
		// Ending takes both parties: after the guest's End the session
		// waits for the host's final count, which the host agent sends on
		// SessionEnding; the guest's End returns once it settled.
		var ending *sharespotv1.Session
		ses.Observe = func(e guest.Event) {
			if e.Step == guest.StepEnding {
				ending = e.Session
			}
		}
		settled, err := ses.End(ctx, "done")
		if err != nil {
			t.Fatal(err)
		}
		if ending.GetState() != sharespotv1.SessionState_SESSION_STATE_ENDING {
			t.Fatalf("after the guest's End the session is %v, want ENDING", ending.GetState())
		}
		_, toHost := harness.Next[*sharespotv1.Envelope_SessionEnding](t, f.hostIn)
		if toHost.SessionEnding.Reason != "done" {
			t.Fatalf("host told %v", toHost.SessionEnding)
		}
		_, ended := harness.Next[*sharespotv1.Envelope_SessionEnded](t, f.hostIn)
		s := ended.SessionEnded.Session
		if settled.State != s.State || settled.SettledHostMinor != s.SettledHostMinor || settled.RefundedMinor != s.RefundedMinor {
			t.Fatalf("the guest's End returned %v; the host was told %v", settled, s)
		}
		// Tranches: the first 100 MB whole at its price (1000), then 20 MB
		// of the 50 MB top-up at 12 per MB (240).
		paid := chargeA + chargeB    // 1600
		charged := chargeA + 20*12   // 1240
		fee := charged * 500 / 10000 // 62
		if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.SettledHostMinor != charged-fee || s.SettledFeeMinor != fee || s.RefundedMinor != paid-charged {
			t.Fatalf("settlement = %v", s)
		}
		if q := s.Quotes; len(q) != 2 || q[0].Tranche != 1 || q[0].UsedBytes != 100*MB || q[0].BilledMinor != chargeA ||
			q[1].Tranche != 2 || q[1].UsedBytes != 20*MB || q[1].BilledMinor != 240 {
			t.Fatalf("tranches = %v", q)
		}
		if got := harness.Balance(t, f.guest, currency); got != guest0-charged {
			t.Fatalf("guest balance %d, want %d", got, guest0-charged)
		}
		if got := harness.Balance(t, f.host, currency); got != charged-fee {
			t.Fatalf("host balance %d, want %d", got, charged-fee)
		}
		if _, err := f.gate.Check(ses.ID, code); err == nil {
			t.Fatal("gate still admits an ended session")
		}
		f.env.MustAudit(t)
	})
}

// TestClaim2Negotiated is claim 2's second alternative: the server's
// encryption message names the protocol (here the ML-KEM-768 + X25519
// hybrid), and the guest opens the code with it. The guest takes its
// purchase's steps one by one, so that the test sees the encryption
// message come before the access response.
func TestClaim2Negotiated(t *testing.T) {
	ctx := context.Background()
	f := newFlow(t, func(c *server.Config) {
		c.Session = sessionConfig()
		c.Session.Suites = []seal.Suite{seal.SuiteMLKEM768X25519, seal.Preset}
		c.Session.Announce = true
	})
	ses, err := f.g.BeginHotspot(ctx, f.hotspot.Id, 100*MB)
	if err != nil {
		t.Fatal(err)
	}
	q := feeOf(t, ses)
	rc, err := ses.Pay(ctx, q, guest.BuyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ses.Confirm(ctx, q, rc); err != nil {
		t.Fatal(err)
	}
	var suite string
	t.Run("C2.2_encryption_message_names_protocol", func(t *testing.T) {
		_, em := harness.NextIn[*sharespotv1.Envelope_EncryptionMessage](t, ses.Messages())
		suite = em.EncryptionMessage.Suite
		if _, err := seal.ParseSuite(suite); err != nil || suite != string(seal.SuiteMLKEM768X25519) {
			t.Fatalf("encryption message names %q", suite)
		}
	})
	t.Run("C2.3_decrypt_with_named_protocol", func(t *testing.T) {
		g, err := ses.AwaitGrant(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, q.Id)
		if err != nil {
			t.Fatal(err)
		}
		if g.SealedCode.Suite != suite {
			t.Fatalf("code sealed with %q, announced %q", g.SealedCode.Suite, suite)
		}
		code, err := ses.Code(g)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.gate.Check(ses.ID, code); err != nil {
			t.Fatal(err)
		}
	})
}

func escrowOf(t *testing.T, env *harness.Env, sessionID string) int64 {
	t.Helper()
	b, err := store.ReadT(context.Background(), env.Srv.Store(), func(tx *store.Tx) (int64, error) {
		return ledger.Balance(tx, ledger.Escrow(sessionID, currency).ID)
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

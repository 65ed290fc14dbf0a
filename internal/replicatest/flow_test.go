package replicatest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
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
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/store"
)

const (
	MB       = 1_000_000
	currency = "EUR"
	funded   = int64(10_000)
	ssid     = "Cafe Sharespot"

	// awaitTimeout bounds every wait for an inbox message. It is a
	// failure guard, not a benchmark: far above a wake-up's round trip,
	// far below the 1 h poll TestReplicas sets, so a wake-up that did
	// not arrive fails the test.
	awaitTimeout = 10 * time.Second
)

// flow is one guest buying from one host, each device talking to its own
// replicas, on one PostgreSQL database.
type flow struct {
	st          *store.Store
	host, guest *client.Client
	agent       *host.Agent
	gate        *gateway.CodeGate
	g           *guest.Guest

	// midFlow, if set, runs once in the host agent just before it
	// handles the initial payment confirmation: the guest has paid and
	// confirmed, and waits for its access response.
	midFlow     func()
	midFlowOnce sync.Once

	stopInboxes context.CancelFunc
	// hostIn has every message on C (the host agent handles them first);
	// guestIn routes the guest's to its sessions (guest.Guest.Listen).
	hostIn, guestIn *client.Inbox
	bssid           string
	hotspotID, sid  string
	ses             *guest.Session // the flow's session, as the guest runs it

	mu    sync.Mutex
	steps []step
}

// step is one message's trip: from the call that caused it to its
// arrival in the other device's handler.
type step struct {
	name string
	took time.Duration
}

func newDevice(name string, urls []string) *client.Client {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return client.New(urls[0], key, client.Options{DeviceName: name, ServerURLs: urls[1:]})
}

// newFlow makes the devices: the host on hostURLs, the guest on
// guestURLs (each list: the replica in use first, then its failovers).
func newFlow(st *store.Store, hostURLs, guestURLs []string) *flow {
	var b [5]byte
	rand.Read(b[:])
	f := &flow{st: st, gate: &gateway.CodeGate{Address: "192.0.2.1:1080"},
		bssid: fmt.Sprintf("02:%02X:%02X:%02X:%02X:%02X", b[0], b[1], b[2], b[3], b[4])}
	f.host, f.guest = newDevice("host", hostURLs), newDevice("guest", guestURLs)
	f.agent = &host.Agent{C: f.host, GW: f.gate}
	// The replica the guest talks to may die after committing a call but
	// before answering it (TestReplicas kills it there). The client does
	// not re-send a call that reached a server; the guest does, on the
	// next replica, finding out what the first did.
	// Unverified: the flow plays the host's count with no data path (the
	// money each party ends with is checked against the tranches).
	f.g = &guest.Guest{C: f.guest, Retry: true, Wait: awaitTimeout, Unverified: true}
	return f
}

func (f *flow) record(name string, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.steps = append(f.steps, step{name, time.Since(since)})
}

// report lists the steps' times.
func (f *flow) report() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, s := range f.steps {
		fmt.Fprintf(&b, "  %-40s %8v\n", s.name, s.took.Round(100*time.Microsecond))
	}
	return b.String()
}

// setup signs both devices in, registers the hotspot, funds the guest and
// starts both inboxes, the host's with its agent.
func (f *flow) setup(ctx context.Context) error {
	for _, c := range []*client.Client{f.host, f.guest} {
		if err := c.SignIn(ctx); err != nil {
			return err
		}
	}
	if err := f.agent.Start(ctx); err != nil {
		return err
	}
	res, err := f.host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(ssid), Bssid: f.bssid, Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: currency, PriceMinor: 10, UnitBytes: MB, MinPurchaseBytes: 10 * MB, TopupPriceMinor: 12},
		ShareableBytes: 1000 * MB,
		WarnAtBytes:    5 * MB,
	}}))
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	f.hotspotID = res.Msg.Hotspot.Id
	err = f.st.Write(ctx, func(tx *store.Tx) error {
		_, err := payment.Fund(tx, time.Now().UnixMilli(), f.guest.AccountID(), currency, funded, "replicatest:"+f.guest.AccountID(), "test funding")
		return err
	})
	if err != nil {
		return fmt.Errorf("fund: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	f.stopInboxes = cancel
	f.hostIn = client.Listen(rctx, f.host, client.InboxOptions{All: true, Handle: func(ctx context.Context, env *sharespotv1.Envelope) error {
		if pc := env.GetPaymentConfirmed(); pc != nil && pc.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL && f.midFlow != nil {
			f.midFlowOnce.Do(f.midFlow)
		}
		return f.agent.Handle(ctx, env)
	}})
	f.guestIn, err = f.g.Listen(rctx, nil)
	return err
}

// drain waits until each device has handled every message its inbox
// ever held.
func (f *flow) drain(ctx context.Context) error {
	deadline := time.Now().Add(awaitTimeout)
	for {
		pending := ""
		err := f.st.Read(ctx, func(tx *store.Tx) error {
			for _, d := range []struct {
				name string
				c    *client.Client
				in   *client.Inbox
			}{{"host", f.host, f.hostIn}, {"guest", f.guest, f.guestIn}} {
				var next int64
				if err := tx.QueryRow(`SELECT next_seq FROM devices WHERE id = ?`, d.c.DeviceID()).Scan(&next); err != nil {
					return err
				}
				if n := int64(len(d.in.Handled())); n < next-1 {
					pending += fmt.Sprintf(" %s handled %d of %d;", d.name, n, next-1)
				}
			}
			return nil
		})
		if err != nil || pending == "" {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("inboxes not drained within %v:%s", awaitTimeout, pending)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop stops both inboxes.
func (f *flow) stop() error {
	if f.stopInboxes == nil {
		return nil
	}
	f.stopInboxes()
	for _, in := range []*client.Inbox{f.hostIn, f.guestIn} {
		if err := in.Wait(10 * time.Second); err != nil {
			return err
		}
	}
	return nil
}

// buy is the guest's purchase of kind (guest.Session.Buy) that the call
// at since led to: the fee, the payment, the confirmation and the grant.
// It times the fee's trip from since and the grant's from the
// confirmation.
func (f *flow) buy(ctx context.Context, kind sharespotv1.QuoteKind, since time.Time) (*sharespotv1.AccessGranted, error) {
	var confirmed time.Time
	f.ses.Observe = func(e guest.Event) {
		switch e.Step {
		case guest.StepFee:
			f.record(fmt.Sprintf("%v: request → fee information", kind), since)
		case guest.StepPaid:
			confirmed = time.Now()
		case guest.StepGranted:
			f.record(fmt.Sprintf("%v: confirm → access granted", kind), confirmed)
		}
	}
	defer func() { f.ses.Observe = nil }()
	grant, err := f.ses.Buy(ctx, kind, guest.BuyOptions{})
	if err != nil {
		return nil, fmt.Errorf("buy %v: %w", kind, err)
	}
	return grant, nil
}

// open is claims 1–3 up to the first grant: request 100 MB, quote, pay,
// confirm, grant; it returns the access code.
func (f *flow) open(ctx context.Context) ([]byte, error) {
	if err := f.setup(ctx); err != nil {
		return nil, err
	}
	res, err := f.guest.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{
		Candidates: []*sharespotv1.Candidate{{Bssid: f.bssid, Ssid: []byte(ssid), SignalDbm: -48}}}))
	if err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	if len(res.Msg.Available) != 1 || res.Msg.Available[0].HotspotId != f.hotspotID {
		return nil, fmt.Errorf("available set %v, want hotspot %s", res.Msg.Available, f.hotspotID)
	}
	requested := time.Now()
	if f.ses, err = f.g.Begin(ctx, res.Msg.Available[0], 100*MB); err != nil {
		return nil, fmt.Errorf("request access: %w", err)
	}
	f.sid = f.ses.ID
	grant, err := f.buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, requested)
	if err != nil {
		return nil, err
	}
	code, err := f.ses.Code(grant)
	if err != nil {
		return nil, err
	}
	if vol, err := f.gate.Check(f.sid, code); err != nil || vol != 100*MB || grant.TotalGrantedBytes != 100*MB {
		return nil, fmt.Errorf("gate check = %d, %v; total granted %d", vol, err, grant.TotalGrantedBytes)
	}
	return code, nil
}

// prompt is C1.9: the host warns of low quota, and the guest hears it.
func (f *flow) prompt(ctx context.Context) error {
	if _, err := f.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: f.sid, UsedBytes: 96 * MB})); err != nil {
		return fmt.Errorf("prompt: %w", err)
	}
	if _, err := client.Await(ctx, f.ses.Messages(), awaitTimeout, func(env *sharespotv1.Envelope) bool { return env.GetLowQuotaPrompt() != nil }); err != nil {
		return fmt.Errorf("waiting for the low-quota prompt: %w", err)
	}
	return nil
}

// run is claims 1–3 through one session: open, low-quota prompt, top-up
// of 50 MB, pay, confirm, grant, usage of 120 MB, end, and the claimed
// settlement.
func (f *flow) run(ctx context.Context) error {
	code, err := f.open(ctx)
	if err != nil {
		return err
	}

	prompted := time.Now()
	if err := f.prompt(ctx); err != nil {
		return err
	}
	f.record("prompt → low-quota prompt", prompted)
	toppedUp := time.Now()
	if err := f.ses.RequestTopUp(ctx, 50*MB); err != nil {
		return fmt.Errorf("request top-up: %w", err)
	}
	grant, err := f.buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, toppedUp)
	if err != nil {
		return err
	}
	if vol, err := f.gate.AwaitVolume(f.sid, code, 150*MB, 5*time.Second); err != nil || vol != 150*MB || grant.TotalGrantedBytes != 150*MB {
		return fmt.Errorf("gate volume after the top-up = %d, %v; total granted %d", vol, err, grant.TotalGrantedBytes)
	}
	if _, err := f.host.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: f.sid, UsedBytes: 120 * MB})); err != nil {
		return fmt.Errorf("report usage: %w", err)
	}
	ended := time.Now()
	// The guest ends; the host agent's final count settles the session.
	s, err := f.ses.End(ctx, "done")
	if err != nil {
		return fmt.Errorf("end: %w", err)
	}
	// 1600 paid; 120 of 150 MB used: the first tranche whole (100 MB,
	// 1000) and 20 MB of the top-up at 12 per MB (240): 1240 charged, 62
	// of it the platform's fee, 1178 to the host, 360 back.
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.SettledHostMinor != 1178 || s.SettledFeeMinor != 62 || s.RefundedMinor != 360 {
		return fmt.Errorf("settlement = %v", s)
	}
	if _, err := client.Await(ctx, f.hostIn.C(), awaitTimeout, func(env *sharespotv1.Envelope) bool {
		return env.SessionId == f.sid && env.GetSessionEnded() != nil
	}); err != nil {
		return fmt.Errorf("host: waiting for the session's end: %w", err)
	}
	f.record("end → host told the session ended", ended)
	return nil
}

// check checks the database after the run: the money invariants, the
// claimed settlement with each quote paid and granted once, and each
// device's inbox handled exactly once with nothing lost.
func (f *flow) check(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := harness.Audit(ctx, f.st); err != nil {
		t.Errorf("audit: %v", err)
	}
	err := f.st.Read(ctx, func(tx *store.Tx) error {
		var bal [3]int64
		for i, id := range []string{ledger.Wallet(f.guest.AccountID(), currency).ID, ledger.Wallet(f.host.AccountID(), currency).ID} {
			var err error
			if bal[i], err = ledger.Balance(tx, id); err != nil {
				return err
			}
		}
		var err error
		if bal[2], err = ledger.FeeTotal(tx, currency); err != nil {
			return err
		}
		if guestC, hostC, fee := bal[0], bal[1], bal[2]; guestC != funded-1240 || hostC != 1178 || fee != 62 {
			t.Errorf("settled guest %d, host %d, fee %d; want %d, 1178, 62 (tranches: 100 MB at 10, 20 MB at 12)", guestC, hostC, fee, funded-1240)
		}
		var receipts, payments int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM receipts WHERE quote_id IN (SELECT id FROM quotes WHERE session_id = ?)`, f.sid).Scan(&receipts); err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT COUNT(*) FROM ledger_transfers WHERE id LIKE 'pay:%'`).Scan(&payments); err != nil {
			return err
		}
		if receipts != 2 || payments != 2 {
			t.Errorf("%d receipts and %d payments; want 2 of each (initial and top-up), each once", receipts, payments)
		}
		for _, d := range []struct {
			name, id string
			msgs     []client.Handled
		}{{"host", f.host.DeviceID(), f.hostIn.Handled()}, {"guest", f.guest.DeviceID(), f.guestIn.Handled()}} {
			for _, err := range harness.CheckDelivery(tx, d.id, d.msgs) {
				t.Errorf("%s inbox: %v", d.name, err)
			}
		}
		grants := map[string]int{}
		for _, m := range f.guestIn.Handled() {
			if m.QuoteID != "" {
				if grants[m.QuoteID]++; grants[m.QuoteID] > 1 {
					t.Errorf("quote %s granted twice", m.QuoteID)
				}
			}
		}
		if len(grants) != 2 {
			t.Errorf("the guest saw %d grants, want 2", len(grants))
		}
		return nil
	})
	if err != nil {
		t.Errorf("read the database: %v", err)
	}
}

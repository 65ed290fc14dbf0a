package conformance

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

// The tests in this file fire the same money-moving call from many
// goroutines at once and check that exactly the serial outcome happened:
// a quote is charged once, a wallet never goes below zero, a top-up is
// sold once, and a session ended while it is being paid refunds what was
// paid. They run on SQLite and, with SHARESPOT_TEST_DB=postgres, on
// PostgreSQL, where the writes really run side by side.

const racers = 16

// race runs fn from racers goroutines released together and returns their
// errors.
func race(fn func(i int) error) []error {
	errs := make([]error, racers)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range racers {
		done.Go(func() {
			start.Wait()
			errs[i] = fn(i)
		})
	}
	start.Done()
	done.Wait()
	return errs
}

// tally counts the successes and checks every failure has one of the
// allowed codes.
func tally(t *testing.T, what string, errs []error, allowed ...connect.Code) (ok int) {
	t.Helper()
	for i, err := range errs {
		if err == nil {
			ok++
			continue
		}
		code := harness.Code(err)
		good := false
		for _, c := range allowed {
			good = good || code == c
		}
		if !good {
			t.Errorf("%s %d: %v (code %v), want success or one of %v", what, i, err, code, allowed)
		}
	}
	return ok
}

// quoted has g (listening) ask for bytes at f's hotspot and returns the
// session and the host agent's quote.
func quoted(t *testing.T, f *flow, g *guest.Guest, bytes int64) (*guest.Session, *sharespotv1.Quote) {
	t.Helper()
	ses, err := g.BeginHotspot(context.Background(), f.hotspot.Id, bytes)
	if err != nil {
		t.Fatal(err)
	}
	return ses, feeOf(t, ses)
}

// payAtOnce has racers goroutines pay quoteID at the same time: exactly
// one may succeed, the others learn it is already paid. It returns the
// receipt of the one that paid.
func payAtOnce(t *testing.T, f *flow, quoteID, what string) *sharespotv1.Receipt {
	t.Helper()
	var mu sync.Mutex
	var receipt *sharespotv1.Receipt
	errs := race(func(int) error {
		res, err := f.guest.Payments.Pay(context.Background(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: quoteID}))
		if err == nil {
			mu.Lock()
			receipt = res.Msg.Receipt
			mu.Unlock()
		}
		return err
	})
	if n := tally(t, what+" pay", errs, connect.CodeAlreadyExists); n != 1 {
		t.Fatalf("%d of %d payments of one %s succeeded, want exactly 1", n, racers, what)
	}
	return receipt
}

// confirmAtOnce has racers goroutines confirm one receipt at the same
// time: exactly one confirmation may take.
func confirmAtOnce(t *testing.T, f *flow, sessionID string, receipt *sharespotv1.Receipt, what string) {
	t.Helper()
	errs := race(func(int) error {
		_, err := f.guest.Sessions.Confirm(context.Background(), connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sessionID, Receipt: receipt}))
		return err
	})
	if n := tally(t, what+" confirm", errs, connect.CodeAlreadyExists, connect.CodeFailedPrecondition); n != 1 {
		t.Fatalf("%d of %d confirmations of one %s succeeded, want exactly 1", n, racers, what)
	}
}

func sessionOf(t *testing.T, c *client.Client, id string) *sharespotv1.Session {
	t.Helper()
	res, err := c.Sessions.Get(context.Background(), connect.NewRequest(&sharespotv1.GetRequest{SessionId: id}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.Session
}

func committedBytes(t *testing.T, f *flow) int64 {
	t.Helper()
	hs, err := store.ReadT(context.Background(), f.env.Srv.Store(), func(tx *store.Tx) (*registry.Hotspot, error) { return registry.Get(tx, f.hotspot.Id) })
	if err != nil {
		t.Fatal(err)
	}
	return hs.CommittedBytes
}

func TestConcurrentPayments(t *testing.T) {
	ctx := context.Background()

	t.Run("one_quote_paid_and_confirmed_at_once", func(t *testing.T) {
		f := newFlow(t, nil)
		ses, q := quoted(t, f, f.g, 10*MB)
		receipt := payAtOnce(t, f, q.Id, "quote")
		if got := harness.Balance(t, f.guest, currency); got != 10_000-q.AmountMinor {
			t.Fatalf("wallet %d after paying %d once from 10000", got, q.AmountMinor)
		}
		confirmAtOnce(t, f, ses.ID, receipt, "receipt")
		g, err := ses.AwaitGrant(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, q.Id)
		if err != nil {
			t.Fatal(err)
		}
		if g.TotalGrantedBytes != 10*MB {
			t.Fatalf("granted %d in all, want 10 MB", g.TotalGrantedBytes)
		}
		if s := sessionOf(t, f.guest, ses.ID); s.GrantedBytes != 10*MB {
			t.Fatalf("session granted %d bytes, want 10 MB once", s.GrantedBytes)
		}
		f.env.MustAudit(t)
	})

	t.Run("one_wallet_too_little_for_all", func(t *testing.T) {
		// Eight devices of one account, one wallet holding enough for
		// five of their eight quotes, all paying at once.
		f := newFlow(t, unpaidUpTo(8))
		payer := f.env.Device(t, "payer")
		f.env.Fund(t, payer, currency, 500)
		devices := []*client.Client{payer}
		for len(devices) < 8 {
			_, key, _ := ed25519.GenerateKey(rand.Reader)
			if _, err := addDevice(t, f.env.URL, payer, key, ""); err != nil {
				t.Fatal(err)
			}
			d := client.New(f.env.URL, key, client.Options{})
			if err := d.SignIn(ctx); err != nil {
				t.Fatal(err)
			}
			devices = append(devices, d)
		}
		quotes := make([]*sharespotv1.Quote, len(devices))
		for i, d := range devices {
			g := &guest.Guest{C: d}
			harness.ListenGuest(t, g)
			_, quotes[i] = quoted(t, f, g, 10*MB)
			if quotes[i].AmountMinor != 100 {
				t.Fatalf("quote %v, want 100", quotes[i])
			}
		}
		errs := race(func(i int) error {
			if i >= len(devices) {
				return nil // only one racer per device
			}
			_, err := devices[i].Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: quotes[i].Id}))
			return err
		})
		if n := tally(t, "pay", errs, connect.CodeResourceExhausted); n != 5+racers-len(devices) {
			t.Fatalf("%d of 8 payments of 100 from a wallet of 500 succeeded, want 5", n-(racers-len(devices)))
		}
		if got := harness.Balance(t, payer, currency); got != 0 {
			t.Fatalf("wallet %d after five payments of 100 from 500", got)
		}
		f.env.MustAudit(t)
	})

	t.Run("one_top_up_requested_paid_and_confirmed_at_once", func(t *testing.T) {
		f := newFlow(t, nil)
		ses, q, _ := f.buy(t, 10*MB)

		errs := race(func(int) error {
			_, err := f.guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: ses.ID, Bytes: 50 * MB}))
			return err
		})
		if n := tally(t, "top-up request", errs, connect.CodeFailedPrecondition); n != 1 {
			t.Fatalf("%d of %d top-up requests accepted, want exactly 1", n, racers)
		}
		_, fi := harness.NextIn[*sharespotv1.Envelope_FeeInfo](t, ses.Messages())
		top := fi.FeeInfo.Quote
		confirmAtOnce(t, f, ses.ID, payAtOnce(t, f, top.Id, "top-up"), "top-up")
		g, err := ses.AwaitGrant(ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, top.Id)
		if err != nil {
			t.Fatal(err)
		}
		if g.TotalGrantedBytes != 60*MB {
			t.Fatalf("granted %d in all after the top-up, want 60 MB", g.TotalGrantedBytes)
		}
		if s := sessionOf(t, f.guest, ses.ID); s.GrantedBytes != 60*MB {
			t.Fatalf("session granted %d bytes, want 60 MB", s.GrantedBytes)
		}
		if got, want := harness.Balance(t, f.guest, currency), 10_000-q.AmountMinor-top.AmountMinor; got != want {
			t.Fatalf("wallet %d, want %d: each fee taken once", got, want)
		}
		f.env.MustAudit(t)
	})

	t.Run("end_races_payment", func(t *testing.T) {
		// The guest pays each of its quotes while ending the same session
		// from another goroutine. Whichever wins, nothing was used, so the
		// wallet ends where it began and the hotspot's volume is free.
		f := newFlow(t, unpaidUpTo(8))
		const sessions = 8
		ids := make([]string, sessions)
		quotes := make([]*sharespotv1.Quote, sessions)
		for i := range sessions {
			ses, q := quoted(t, f, f.g, 10*MB)
			ids[i], quotes[i] = ses.ID, q
		}
		errs := race(func(i int) error {
			k := i % sessions
			if i < sessions {
				_, err := f.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: quotes[k].Id}))
				return err
			}
			_, err := f.guest.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ids[k], Reason: "changed my mind"}))
			return err
		})
		tally(t, "pay or end", errs, connect.CodeFailedPrecondition)
		for i, id := range ids {
			if s := sessionOf(t, f.guest, id); s.State != sharespotv1.SessionState_SESSION_STATE_ENDED {
				t.Errorf("session %d is %v after End, want ended", i, s.State)
			}
		}
		if got := harness.Balance(t, f.guest, currency); got != 10_000 {
			t.Fatalf("wallet %d after ending every session unused, want all 10000 back", got)
		}
		if got := committedBytes(t, f); got != 0 {
			t.Fatalf("hotspot still holds %d bytes for ended sessions", got)
		}
		f.env.MustAudit(t)
	})
}

// unpaidUpTo lets one account hold n unpaid requests at once.
func unpaidUpTo(n int) func(*server.Config) {
	return func(c *server.Config) {
		c.Session = sessionConfig()
		c.Session.MaxUnpaidPerAccount = n
	}
}

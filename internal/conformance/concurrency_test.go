package conformance

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/store"
)

// TestManyGuestsNeverOversold: one host serves many guests at once. 30
// guests each want 100 MB of a hotspot that shares 1 GB; the host agent
// answers them all concurrently. Exactly ten can be sold; the others are
// declined when the volume runs out. Every sold session is granted, used
// in part and settled, and the ledger balances.
func TestManyGuestsNeverOversold(t *testing.T) {
	ctx := context.Background()
	f := newFlow(t, nil)
	const guests = 30
	type result struct {
		granted bool
		ses     string
		err     error
	}
	results := make([]result, guests)
	var wg sync.WaitGroup
	for i := range guests {
		gc := f.env.Device(t, "guest")
		f.env.Fund(t, gc, currency, 10_000)
		g := &guest.Guest{C: gc, Wait: 20 * time.Second, Unverified: true} // no data path here: the host's count is the bill
		harness.ListenGuest(t, g)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			ses, err := g.BeginHotspot(ctx, f.hotspot.Id, 100*MB)
			if err != nil {
				r.err = err // refused at once: volume already reserved
				return
			}
			r.ses = ses.ID
			_, err = ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{})
			var declined *guest.Resolved
			switch {
			case err == nil:
				r.granted = true
			case errors.As(err, &declined): // the volume ran out
			default:
				r.err = err
			}
		}()
	}
	wg.Wait()
	var sold []string
	for i, r := range results {
		if r.granted {
			sold = append(sold, r.ses)
		} else if r.err != nil && harness.Code(r.err) != connect.CodeResourceExhausted {
			t.Errorf("guest %d: %v", i, r.err)
		}
	}
	if len(sold) != 10 {
		t.Fatalf("%d sessions sold 100 MB each from a 1 GB hotspot, want exactly 10", len(sold))
	}
	hs, err := store.ReadT(ctx, f.env.Srv.Store(), func(tx *store.Tx) (*registry.Hotspot, error) { return registry.Get(tx, f.hotspot.Id) })
	if err != nil {
		t.Fatal(err)
	}
	if hs.CommittedBytes != 1000*MB {
		t.Fatalf("committed %d bytes, want all 1000 MB", hs.CommittedBytes)
	}
	// The host meters 30 MB per session and ends them all; the unused
	// volume returns to the hotspot.
	for _, id := range sold {
		if _, err := f.host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: id, UsedBytes: 30 * MB, Reason: "closing"})); err != nil {
			t.Fatal(err)
		}
	}
	hs, err = store.ReadT(ctx, f.env.Srv.Store(), func(tx *store.Tx) (*registry.Hotspot, error) { return registry.Get(tx, f.hotspot.Id) })
	if err != nil {
		t.Fatal(err)
	}
	if hs.CommittedBytes != 10*30*MB {
		t.Fatalf("committed %d bytes after settlement, want the 300 MB used", hs.CommittedBytes)
	}
	// 10 sessions × 30 MB × 10 cents, less 5 %.
	if got, want := harness.Balance(t, f.host, currency), int64(10*(300-15)); got != want {
		t.Fatalf("host earned %d, want %d", got, want)
	}
	f.env.MustAudit(t)
}

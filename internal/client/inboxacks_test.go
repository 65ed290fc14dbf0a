package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/store"
)

// countAcks counts the Ack calls a client sends.
type countAcks struct {
	next http.RoundTripper
	n    atomic.Int64
}

func (c *countAcks) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, sharespotv1connect.InboxServiceAckProcedure) {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

// TestAckWithin: a host whose client acknowledges within a window handles
// every access request once, sends fewer Ack calls than it got messages,
// and leaves its inbox empty on the server: after the window while it
// goes on, and at once when it stops inside a window.
func TestAckWithin(t *testing.T) {
	env := harness.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inboxLeft := func(deviceID string) int {
		var n int
		err := env.Srv.Store().Read(ctx, func(tx *store.Tx) error {
			return tx.QueryRow(`SELECT COUNT(*) FROM inbox WHERE device_id = ?`, deviceID).Scan(&n)
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitEmpty := func(deviceID string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for inboxLeft(deviceID) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d messages still in the inbox of %s after %v", inboxLeft(deviceID), deviceID, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, tc := range []struct {
		name   string
		window time.Duration
		stop   bool // stop the host inside the window
	}{
		{"window ends", time.Second, false},
		{"host stops", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			hc := client.NewHTTPClient()
			counter := &countAcks{next: hc.Transport}
			hc.Transport = counter
			// Direct: the counter counts Ack calls as HTTP requests, which a
			// channel would carry inside its one stream.
			hostC := client.New(env.URL, key, client.Options{HTTPClient: hc, AckWithin: tc.window, Direct: true})
			if err := hostC.SignIn(ctx); err != nil {
				t.Fatal(err)
			}
			hs, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(i)}))
			if err != nil {
				t.Fatal(err)
			}
			lctx, stop := context.WithCancel(ctx)
			in := client.Listen(lctx, hostC, client.InboxOptions{All: true})
			const requests = 8
			for i := range requests {
				g := &guest.Guest{C: env.Device(t, "guest")}
				if _, err := g.RequestAccess(ctx, hs.Msg.Hotspot.Id, harness.BenchMB); err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
			}
			for range requests {
				harness.NextIn[*sharespotv1.Envelope_AccessRequested](t, in.C())
			}
			if tc.stop {
				stop()
				<-in.Done()
				waitEmpty(hostC.DeviceID(), 10*time.Second)
			} else {
				waitEmpty(hostC.DeviceID(), 10*time.Second)
				stop()
				<-in.Done()
			}
			if n := len(in.Handled()); n != requests {
				t.Errorf("the host handled %d messages, want %d", n, requests)
			}
			if n := counter.n.Load(); n >= requests || n == 0 {
				t.Errorf("%d Ack calls for %d messages, want between 1 and %d", n, requests, requests-1)
			}
			t.Logf("%d messages, %d Ack calls", requests, counter.n.Load())
		})
	}
}

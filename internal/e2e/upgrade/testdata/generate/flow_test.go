// Package upgradefixture is not part of Sharespot: generate.sh copies it
// into a checkout of an old commit and runs TestMakeFixture there, so that
// the database it leaves is the one that commit's own code wrote. It uses
// only what every released schema's code has (harness, client, seal); each
// version's extras are in the version's files (see generate.sh).
package upgradefixture

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

const (
	MB  = 1_000_000
	cur = "EUR"
)

// rig is the server and its host, with the host's hotspot: 10 cents per
// MB, top-ups 12 cents per MB, at least 10 MB, 1 GB shared, warn below 5 MB.
type rig struct {
	env     *harness.Env
	host    *client.Client
	hotspot string
}

// TestMakeFixture leaves, in $SHARESPOT_FIXTURE_OUT, a database holding a
// little of everything the flow writes: devices and accounts, a hotspot,
// wallets funded, and sessions in several states — refunded (paid, never
// granted), expired (quoted, never paid), settled after a top-up, active,
// waiting for a quote — with their quotes, receipts, ledger transfers and
// undelivered inbox messages. On SQLite (the default) the database is in
// $SHARESPOT_FIXTURE_OUT/sqlite; with $SHARESPOT_FIXTURE_DB (a postgres://
// URL) it is that database.
func TestMakeFixture(t *testing.T) {
	out := os.Getenv("SHARESPOT_FIXTURE_OUT")
	if out == "" {
		t.Skip("SHARESPOT_FIXTURE_OUT is unset: run internal/e2e/upgrade/testdata/generate.sh")
	}
	db := os.Getenv("SHARESPOT_FIXTURE_DB")
	data := filepath.Join(out, "sqlite")
	if db != "" {
		data = filepath.Join(out, "postgres")
	}
	ctx := context.Background()
	// The server keeps key files in its data directory (from schema 4 on,
	// the dashboard's admin key also with PostgreSQL).
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	r := &rig{}
	r.env = harness.StartIn(t, data, func(c *server.Config) {
		c.DB = db
		configure(t, c, out)
	})
	r.host = r.env.Device(t, "cafe-host")
	res, err := r.host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte("Cafe Sharespot"), Bssid: "02:5e:00:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: cur, PriceMinor: 10, UnitBytes: MB, MinPurchaseBytes: 10 * MB, TopupPriceMinor: 12},
		ShareableBytes: 1000 * MB,
		WarnAtBytes:    5 * MB,
	}}))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	r.hotspot = res.Msg.Hotspot.Id

	// Refunded and expired first: the clock moves past their deadlines.
	refunded := r.guest(t, "guest-refunded")
	sidR := r.request(t, refunded, 10*MB)
	q := r.quote(t, sidR, 10*MB, 100)
	r.confirm(t, refunded, sidR, r.pay(t, refunded, q))
	expired := r.guest(t, "guest-expired")
	sidX := r.request(t, expired, 20*MB)
	r.quote(t, sidX, 20*MB, 200)
	r.env.Clock.Advance(3 * time.Minute)
	r.waitEnded(t, sidR, sidX)

	// Settled: 100 MB, a top-up of 50 MB, 120 MB used.
	settled := r.guest(t, "guest-settled")
	sidS := r.request(t, settled, 100*MB)
	q = r.quote(t, sidS, 100*MB, 1000)
	r.confirm(t, settled, sidS, r.pay(t, settled, q))
	r.grant(t, settled, sidS, q, true)
	if _, err := r.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: sidS, UsedBytes: 96 * MB})); err != nil {
		t.Fatalf("prompt: %v", err)
	}
	if _, err := settled.C.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: sidS, Bytes: 50 * MB})); err != nil {
		t.Fatalf("top-up: %v", err)
	}
	q = r.quote(t, sidS, 50*MB, 600)
	r.confirm(t, settled, sidS, r.pay(t, settled, q))
	r.grant(t, settled, sidS, q, false)
	acknowledge(t, settled.C, sidS, 119*MB)
	r.report(t, sidS, 120*MB)
	if _, err := r.host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sidS, UsedBytes: 120 * MB, Reason: "closing time"})); err != nil {
		t.Fatalf("end: %v", err)
	}

	// Active: 20 MB granted, 5 MB used so far.
	active := r.guest(t, "guest-active")
	sidA := r.request(t, active, 20*MB)
	q = r.quote(t, sidA, 20*MB, 200)
	r.confirm(t, active, sidA, r.pay(t, active, q))
	r.grant(t, active, sidA, q, true)
	acknowledge(t, active.C, sidA, 5*MB)
	r.report(t, sidA, 5*MB)

	// Waiting for the host's quote.
	r.request(t, r.guest(t, "guest-waiting"), 10*MB)

	moreSessions(t, r)
	r.env.MustAudit(t)
	r.env.Stop()
}

// guest is a new signed-in device with €100 in its wallet. It offers
// the preset suite only, whose keys are 32 bytes (the post-quantum
// suite's are 1,216: they would make most of the fixture).
func (r *rig) guest(t *testing.T, name string) *client.Guest {
	t.Helper()
	c := r.env.Device(t, name)
	r.env.Fund(t, c, cur, 10_000)
	return &client.Guest{C: c, Suites: []seal.Suite{seal.Preset}}
}

func (r *rig) request(t *testing.T, g *client.Guest, bytes int64) string {
	t.Helper()
	ses, err := g.RequestAccess(context.Background(), r.hotspot, bytes)
	if err != nil {
		t.Fatalf("request access: %v", err)
	}
	return ses.Id
}

func (r *rig) quote(t *testing.T, sid string, bytes, amount int64) *sharespotv1.Quote {
	t.Helper()
	res, err := r.host.Sessions.Quote(context.Background(), connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: sid, Bytes: bytes, AmountMinor: amount, Currency: cur}))
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
	return res.Msg.Quote
}

func (r *rig) pay(t *testing.T, g *client.Guest, q *sharespotv1.Quote) *sharespotv1.Receipt {
	t.Helper()
	res, err := g.C.Payments.Pay(context.Background(), connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
	if err != nil {
		t.Fatalf("pay: %v", err)
	}
	return res.Msg.Receipt
}

func (r *rig) confirm(t *testing.T, g *client.Guest, sid string, rc *sharespotv1.Receipt) {
	t.Helper()
	if _, err := g.C.Sessions.Confirm(context.Background(), connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sid, Receipt: rc})); err != nil {
		t.Fatalf("confirm: %v", err)
	}
}

// grant grants a confirmed quote as the host does: the first with an
// access code sealed to the guest.
func (r *rig) grant(t *testing.T, g *client.Guest, sid string, q *sharespotv1.Quote, first bool) {
	t.Helper()
	req := &sharespotv1.GrantRequest{SessionId: sid, QuoteId: q.Id, GrantedBytes: q.Bytes}
	if first {
		code, err := seal.NewAccessCode()
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := seal.Seal(seal.Preset, g.PublicKey(sid, seal.Preset), seal.Binding{SessionID: sid, HostID: r.host.DeviceID(), GuestID: g.C.DeviceID()}, code)
		if err != nil {
			t.Fatal(err)
		}
		req.SealedCode = &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext}
		req.Gateway = &sharespotv1.Gateway{Kind: "proxy", Address: "192.0.2.1:1080"}
	}
	if _, err := r.host.Sessions.Grant(context.Background(), connect.NewRequest(req)); err != nil {
		t.Fatalf("grant: %v", err)
	}
}

func (r *rig) report(t *testing.T, sid string, used int64) {
	t.Helper()
	if _, err := r.host.Sessions.ReportUsage(context.Background(), connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: sid, UsedBytes: used})); err != nil {
		t.Fatalf("report usage: %v", err)
	}
}

// waitEnded waits until the server's sweeper has ended the sessions.
func (r *rig) waitEnded(t *testing.T, ids ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, id := range ids {
		for {
			state, err := store.ReadT(context.Background(), r.env.Srv.Store(), func(tx *store.Tx) (int32, error) {
				var s int32
				err := tx.QueryRow(`SELECT state FROM sessions WHERE id = ?`, id).Scan(&s)
				return s, err
			})
			if err != nil {
				t.Fatal(err)
			}
			if sharespotv1.SessionState(state) == sharespotv1.SessionState_SESSION_STATE_ENDED {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("session %s still %v", id, sharespotv1.SessionState(state))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

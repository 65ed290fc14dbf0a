package card_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/card/cardtest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

// binServer is the real sharespot binary serving on addr with card
// payments against the mock.
type binServer struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
}

func startBin(t *testing.T, bin, dir, addr, mockURL, hook string) *binServer {
	t.Helper()
	cmd := exec.Command(bin, "server", "--data", dir, "--listen", addr, "--log-level", "warn", "--rate-device", "0", "--rate-ip", "0",
		"--stripe-key", cardtest.Key, "--stripe-webhook-secret", cardtest.WebhookSecret, "--stripe-api-base", mockURL)
	cmd.Env = harness.CleanEnv()
	if hook != "" {
		cmd.Env = append(cmd.Env, "SHARESPOT_TEST_STRIPE_CRASH="+hook)
	}
	b := &binServer{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &b.out, &b.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-b.done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if res, err := http.Get("http://" + addr + "/healthz"); err == nil {
			res.Body.Close()
			return b
		}
		select {
		case <-b.done:
			t.Fatalf("server exited at start:\n%s", b.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not listening after 60 s:\n%s", b.out.String())
		}
	}
}

// stop ends the server gracefully.
func (b *binServer) stop(t *testing.T) {
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(15 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}
}

// TestCrashAfterStripeCall kills the real server binary (SIGKILL) right
// after Stripe answered an outbox call and before the server recorded it
// (and, before:capture:1, after settlement committed and before the first
// call), then restarts it on the same data. The restarted server makes the call
// again with the same idempotency key, which Stripe answers with the first
// call's result, so nothing is captured or transferred twice; and the
// capture is not lost. stripe-mock does not keep idempotency keys (it is
// stateless), so the test asserts on what the server sent: every call for
// one object carries one key and the same amount.
func TestCrashAfterStripeCall(t *testing.T) {
	bin, err := harness.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, hook := range []string{"before:capture:1", "capture:1", "capture:2", "transfer:1"} {
		t.Run(hook, func(t *testing.T) { crashAfterCall(t, bin, hook) })
	}
}

func crashAfterCall(t *testing.T, bin, hook string) {
	mock := cardtest.Start(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := startBin(t, bin, dir, addr, mock.URL, hook)
	url := "http://" + addr
	device := func(name string) *client.Client {
		_, key, _ := ed25519.GenerateKey(rand.Reader)
		c := client.New(url, key, client.Options{DeviceName: name})
		if err := c.SignIn(context.Background()); err != nil {
			t.Fatal(err)
		}
		return c
	}
	r := &rig{url: url, mock: mock, host: device("host"), guest: device("guest")}
	r.register(t)
	ctx := context.Background()
	on, err := r.host.Payments.PayoutOnboarding(ctx, connect.NewRequest(&sharespotv1.PayoutOnboardingRequest{ReturnUrl: "https://sharespot.example/back"}))
	if err != nil {
		t.Fatal(err)
	}
	r.post(t, cardtest.Event("evt_acct", "account.updated", map[string]any{"id": on.Msg.AccountId, "object": "account", "payouts_enabled": true}))
	s, pis, qs := r.session(t, 12*MB)

	// The hooked server dies of SIGKILL after the call.
	select {
	case <-srv.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not crash at %s:\n%s\nStripe calls:\n%s", hook, srv.out.String(), mock)
	}
	if ws, ok := srv.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("server ended with %v, not SIGKILL:\n%s", srv.cmd.ProcessState, srv.out.String())
	}
	before := len(mock.Requests("/v1/"))
	srv = startBin(t, bin, dir, addr, mock.URL, "")
	// Ending again is harmless: an ended session is returned as it is.
	end, err := r.host.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: s.Id, UsedBytes: 12 * MB, Reason: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	if end.Msg.Session.SettledHostMinor != 118 || end.Msg.Session.SettledFeeMinor != 6 || end.Msg.Session.RefundedMinor != 36 {
		t.Fatalf("settled %v", end.Msg.Session)
	}
	// Wait (at most 30 s) for the restarted server to finish the outbox,
	// reading its database beside it (SQLite in WAL mode).
	st, err := store.Open(ctx, server.DBPath(dir), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pending int
		if err := st.Read(ctx, func(tx *store.Tx) error {
			return tx.QueryRow(`SELECT COUNT(*) FROM stripe_ops WHERE state <> 'done'`).Scan(&pending)
		}); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart %d Stripe ops are not done; Stripe calls:\n%s\nserver:\n%s", pending, mock, srv.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	st.Close()
	if len(mock.Requests("/v1/")) == before {
		t.Fatal("the restarted server made no Stripe call")
	}
	srv.stop(t)

	// Per object: one idempotency key, one amount, however many calls.
	check := func(what string, reqs []cardtest.Request, key, field string, amount int64) int {
		t.Helper()
		if len(reqs) == 0 {
			t.Fatalf("%s: never called", what)
		}
		for _, q := range reqs {
			if q.IdempotencyKey != key || q.Form.Get(field) != strconv.FormatInt(amount, 10) {
				t.Fatalf("%s: a call with key %q %s=%s; want key %q, %d", what, q.IdempotencyKey, field, q.Form.Get(field), key, amount)
			}
		}
		return len(reqs)
	}
	c1 := check("capture of the first quote", captures(mock, pis[0]), "sharespot-capture-"+qs[0].Id, "amount_to_capture", 100)
	c2 := check("capture of the top-up", captures(mock, pis[1]), "sharespot-capture-"+qs[1].Id, "amount_to_capture", 24)
	tr := check("transfer", mock.Requests("/v1/transfers"), "sharespot-transfer-"+s.Id, "amount", 118)
	// The call the crash cut off was made again (with its key), and no
	// other twice.
	wantCaptures, wantTransfers := 2, 1
	switch hook {
	case "transfer:1":
		wantTransfers = 2
	case "capture:1", "capture:2":
		wantCaptures = 3
	}
	if c1+c2 != wantCaptures || c1 > 2 || c2 > 2 || tr != wantTransfers {
		t.Fatalf("captures %d + %d, transfers %d; want %d captures (none more than twice), %d transfers:\n%s", c1, c2, tr, wantCaptures, wantTransfers, mock)
	}
	if trs := mock.Requests("/v1/transfers"); trs[0].Form.Get("destination") != on.Msg.AccountId {
		t.Fatalf("transfer to %s, want %s", trs[0].Form.Get("destination"), on.Msg.AccountId)
	}

	// The ledger, with the server stopped: exact amounts, audit, fairness,
	// every Stripe op done.
	st, err = store.Open(ctx, server.DBPath(dir), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := harness.Audit(ctx, st); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int64{
		ledger.Card(r.guest.AccountID(), cur).ID:   -124,
		ledger.Wallet(r.host.AccountID(), cur).ID:  0,
		ledger.Payout(r.host.AccountID(), cur).ID:  118,
		ledger.Wallet(r.guest.AccountID(), cur).ID: 0,
	} {
		if got := balance(t, st, id); got != want {
			t.Errorf("%s = %d, want %d", id, got, want)
		}
	}
	if got := fees(t, st); got != 6 {
		t.Errorf("fees %d, want 6", got)
	}
}

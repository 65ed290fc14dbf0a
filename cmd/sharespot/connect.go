package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/forward"
	"github.com/sharespot/sharespot/internal/gateway/nft"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/size"
)

// ConnectCmd is the guest's whole flow.
type ConnectCmd struct {
	deviceFlags
	scanFlags
	guestStateFlags
	Target        string        `arg:"" optional:"" help:"The hotspot's SSID or BSSID (see sharespot scan); not needed to resume a live session."`
	Buy           string        `type:"size" default:"100MB" help:"How much data to buy (and, at the low-quota prompt, to buy again)."`
	Yes           bool          `short:"y" help:"Answer yes to every question: pay the fee, and at the low-quota prompt buy --buy's size again (or --auto-topup's), paying without asking."`
	AutoTopUp     string        `type:"size" name:"auto-topup" help:"At the low-quota prompt, buy this much more without asking." placeholder:"SIZE"`
	Duration      time.Duration `help:"End the session after this long (default: when interrupted)."`
	Pay           string        `default:"wallet" enum:"wallet,card" help:"How to pay: wallet, or card (Stripe: the fee is held on the card and only what is used is charged)."`
	PaymentMethod string        `name:"payment-method" help:"With --pay card: the Stripe PaymentMethod (pm_...) to charge; on a server in Stripe test mode the test card is used when empty." placeholder:"ID"`
	Forward       string        `default:"127.0.0.1:1081" help:"Where the local forwarder listens (SOCKS5 and HTTP CONNECT, no credentials) with the userspace gateway: it counts what this device receives and sends and signs it for the server, so the host can bill no more than that (plus its credit window). \"off\": no forwarder." placeholder:"ADDR"`
}

// asker asks a person yes-or-no questions on a terminal. A question ends
// when ctx does (Ctrl-C), as "no". One goroutine at a time asks.
type asker struct {
	in  *bufio.Reader
	out io.Writer
	// lines carries the line a reader goroutine read; reading is true
	// while one is reading. A read that a cancelled question left
	// behind answers the next question, so no line is read twice or lost.
	lines   chan string
	reading bool
}

func newAsker(in io.Reader, out io.Writer) *asker {
	return &asker{in: bufio.NewReader(in), out: out, lines: make(chan string, 1)}
}

// yes asks q and reports whether the answer was yes. End of input is no.
func (a *asker) yes(ctx context.Context, q string) bool {
	fmt.Fprintf(a.out, "%s [y/N] ", q)
	if !a.reading {
		a.reading = true
		go func() {
			line, _ := a.in.ReadString('\n')
			a.lines <- line
		}()
	}
	select {
	case line := <-a.lines:
		a.reading = false
		ans := strings.ToLower(strings.TrimSpace(line))
		return ans == "y" || ans == "yes"
	case <-ctx.Done():
		return false // the caller ends the line
	}
}

// Run buys data and stays online until interrupted.
func (c *ConnectCmd) Run(env *runEnv) error {
	want, err := size.Parse(c.Buy)
	if err != nil {
		return fmt.Errorf("--buy: %w", err)
	}
	if want <= 0 {
		return fmt.Errorf("--buy %s: buy more than nothing, e.g. --buy 5MB", c.Buy)
	}
	var auto int64
	if c.AutoTopUp != "" {
		if auto, err = size.Parse(c.AutoTopUp); err != nil {
			return fmt.Errorf("--auto-topup: %w", err)
		}
	}
	prog := &progress{w: env.stdout, tty: isTerminal(env.stdout)}
	ask := newAsker(os.Stdin, env.stdout)
	// The inbox stream carries the host's answers: its loss is said once
	// (the guest would otherwise wait in silence), and its return once.
	var streamDown atomic.Bool
	cl, err := c.connectWith(env.ctx, client.Options{DeviceName: "guest", StreamStatus: func(server string, err error) {
		switch {
		case err != nil && !streamDown.Swap(true) && env.ctx.Err() == nil:
			prog.printf("lost the connection to the server at %s (%s); reconnecting (to the next --server, if several are given)\n", server, errText(err))
		case err == nil && streamDown.Swap(false):
			prog.printf("connected again, to the server at %s\n", server)
		}
	}})
	if err != nil {
		return err
	}
	store := client.GuestStore{Dir: c.stateDir(c.path())}
	g := &client.Guest{C: cl}
	gs, err := c.begin(env.ctx, env.stdout, cl, g, store, want) // C1.5–C1.6, or a resumed session
	if err != nil {
		return err
	}
	want = gs.WantBytes
	ses := &sharespotv1.Session{Id: gs.SessionID, HotspotId: gs.HotspotID, HostDeviceId: gs.HostDeviceID}
	offer := &sharespotv1.Offer{HotspotId: gs.HotspotID, HostDeviceId: gs.HostDeviceID}

	ctx, cancel := context.WithCancel(env.ctx)
	defer cancel()
	inbox := make(chan *sharespotv1.Envelope, 16)
	cursor, err := store.Cursor()
	if err != nil {
		return err
	}
	go cl.Receive(ctx, cursor, func(ctx context.Context, e *sharespotv1.Envelope) error {
		if e.SessionId != ses.Id {
			return nil
		}
		// Keep the access response before it is acknowledged: a guest
		// restarted after this still opens its code.
		if ag := e.GetAccessGranted(); ag != nil && ag.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL && gs.Grant == nil {
			saved := *gs
			saved.SaveGrant(ag)
			if err := store.Save(&saved); err != nil {
				return err // not acknowledged: delivered again
			}
		}
		select {
		case inbox <- e:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, func(seq uint64) {
		if err := store.SaveCursor(seq); err != nil {
			prog.printf("warning: %s\n", errText(err))
		}
	})

	// end ends the session and waits for its settlement: once data may
	// have flowed, the host's final count settles it (or, if the host is
	// silent, its last report when the close deadline passes).
	// stopForward stops the local forwarder and sends its last
	// acknowledgment, before the session ends.
	stopForward := func() {}
	end := func(reason string) error {
		stopForward()
		ectx := context.WithoutCancel(env.ctx)
		res, err := cl.Sessions.End(ectx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.Id, Reason: reason}))
		if err != nil {
			return fmt.Errorf("end session %s: %w (it stays open: run connect again to resume or end it)", ses.Id, err)
		}
		s := res.Msg.Session
		if s.State == sharespotv1.SessionState_SESSION_STATE_ENDING {
			prog.printf("ending: waiting for the host's final count\n")
		}
		wctx, wcancel := context.WithTimeout(ectx, closeWait(s))
		defer wcancel()
		if s, err = cl.AwaitSettled(wctx, s); err != nil {
			return fmt.Errorf("%w (run connect again to see its settlement)", err)
		}
		prog.printf("session ended: %s\n", settlement(s))
		return store.Remove(ses.Id)
	}
	// fail ends the session after err; an interrupt (Ctrl-C) is no error.
	fail := func(err error, reason string) error {
		if env.ctx.Err() != nil {
			fmt.Fprintln(env.stdout)
			return end("guest stopped")
		}
		return errors.Join(err, end(reason))
	}
	cur, err := sessionState(env.ctx, cl, ses.Id)
	if err != nil {
		return err
	}
	gr := gs.AccessGranted()
	shown := gs.Tariff
	if shown == nil {
		shown = cur.Tariff // saved by an older version
	}
	switch cur.State {
	case sharespotv1.SessionState_SESSION_STATE_ENDING:
		// Ended before a restart: wait for the settlement.
		wctx, wcancel := context.WithTimeout(env.ctx, closeWait(cur))
		defer wcancel()
		s, err := cl.AwaitSettled(wctx, cur)
		if err != nil {
			return err
		}
		prog.printf("session ended: %s\n", settlement(s))
		return store.Remove(ses.Id)
	case sharespotv1.SessionState_SESSION_STATE_REQUESTED, sharespotv1.SessionState_SESSION_STATE_QUOTED, sharespotv1.SessionState_SESSION_STATE_PAID:
		// Claim 3: fee, pay, confirm.
		if ok, err := c.purchase(ctx, cl, ses.Id, shown, inbox, ask, c.Yes); err != nil || !ok {
			return fail(err, "guest declined the fee")
		}
	}
	if gr == nil {
		env1, err := client.Await(ctx, inbox, 2*time.Minute, func(e *sharespotv1.Envelope) bool { return e.GetAccessGranted() != nil })
		if err != nil {
			return fail(err, "no access response")
		}
		gr = env1.GetAccessGranted()
	}
	code, err := g.OpenCode(ses.Id, offer.HostDeviceId, gr.SealedCode) // claim 2
	if err != nil {
		return fail(fmt.Errorf("open access code: %w", err), "cannot open the access code")
	}
	addr := gr.Gateway.GetAddress()
	if gr.Gateway.GetKind() == nft.Kind {
		// The kernel gateway: present the code to its admission endpoint,
		// which binds this device's address and MAC to the session (C1.8).
		if _, err := nft.Present(ctx, nil, addr, ses.Id, code); err != nil {
			return fail(err, "the host's gateway refused the access code")
		}
		fmt.Fprintf(env.stdout, "online: %s granted (C1.7); the host's gateway admitted this device, browse as usual (C1.8)\n", size.Format(gr.GrantedBytes))
	} else {
		fmt.Fprintf(env.stdout, "online: %s granted (C1.7). Use the host's gateway (C1.8):\n", size.Format(gr.GrantedBytes))
		if fwd, err := c.forwarder(addr, ses.Id, code); err != nil {
			fmt.Fprintf(env.stdout, "  (no local forwarder: %v)\n", err)
		} else if fwd != nil {
			fctx, fcancel := context.WithCancel(ctx)
			var fwg sync.WaitGroup
			fwg.Add(2)
			go func() { defer fwg.Done(); fwd.Run(fctx) }()
			go func() {
				defer fwg.Done()
				fwd.Acknowledge(fctx, cur.GuestAckedBytes, 256<<10, time.Second, func(ctx context.Context, n int64) error {
					_, err := cl.Acknowledge(ctx, ses.Id, n)
					return err
				})
			}()
			stopForward = func() { fcancel(); fwg.Wait() }
			defer stopForward()
			fmt.Fprintf(env.stdout, "  export ALL_PROXY=socks5h://%s HTTPS_PROXY=http://%s   # this device's forwarder: what passes is counted and signed\n", fwd.Addr(), fwd.Addr())
			fmt.Fprintf(env.stdout, "  example: curl --proxy socks5h://%s https://example.org/\n", fwd.Addr())
			fmt.Fprintf(env.stdout, "  or, for programs that cannot use it (not counted by this device): socks5h://%s:%s@%s\n", ses.Id, seal.FormatCode(code), addr)
		} else {
			fmt.Fprintf(env.stdout, "  SOCKS5:  socks5h://%s:%s@%s\n", ses.Id, seal.FormatCode(code), addr)
			fmt.Fprintf(env.stdout, "  example: curl --proxy socks5h://%s:%s@%s https://example.org/\n", ses.Id, seal.FormatCode(code), addr)
		}
	}

	var timeout <-chan time.Time
	if c.Duration > 0 {
		timeout = time.After(c.Duration)
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	away := false // the server did not answer the last Get
	for {
		select {
		case <-env.ctx.Done():
			prog.printf("\n")
			return end("guest stopped")
		case <-timeout:
			return end("duration over")
		case <-tick.C:
			// Bounded: a server that went away mid-call must not hold up
			// Ctrl-C or the inbox.
			gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := cl.Sessions.Get(gctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: ses.Id}))
			gcancel()
			switch {
			case err != nil && ctx.Err() == nil && !away:
				// Said once: the gateway goes on working without the
				// server, but the bar stops moving and nothing settles.
				away = true
				prog.printf("cannot reach the server (%s); the session goes on at the host's gateway, trying again\n", errText(err))
			case err == nil:
				if away {
					away = false
					prog.printf("the server is back\n")
				}
				s := res.Msg.Session
				prog.update(s.UsedBytes, s.GrantedBytes) // C1.7: used against granted
			}
		case e := <-inbox:
			switch b := e.Body.(type) {
			case *sharespotv1.Envelope_LowQuotaPrompt: // C1.9–C1.10
				prog.printf("")
				client.ShowPrompt(env.stdout, b.LowQuotaPrompt)
				more := auto
				switch {
				case more > 0:
					fmt.Fprintf(env.stdout, "Buying %s more (--auto-topup).\n", size.Format(more))
				case c.Yes:
					more = want
					fmt.Fprintf(env.stdout, "Buying %s more (--yes).\n", size.Format(more))
				case ask.yes(env.ctx, fmt.Sprintf("Buy %s more?", size.Format(want))):
					more = want
				default:
					continue // no, or Ctrl-C: the loop then ends the session
				}
				if _, err := cl.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: ses.Id, Bytes: more})); err != nil {
					fmt.Fprintf(env.stdout, "top-up refused: %s\n", errText(err))
					continue
				}
				if ok, err := c.purchase(ctx, cl, ses.Id, shown, inbox, ask, c.Yes || auto > 0); errors.Is(err, errOverTariff) {
					return fail(err, "the host asked more than the tariff shown")
				} else if err != nil && env.ctx.Err() == nil {
					fmt.Fprintf(env.stdout, "no top-up: %s\n", errText(err))
				} else if !ok && env.ctx.Err() == nil {
					fmt.Fprintln(env.stdout, "no top-up")
				}
			case *sharespotv1.Envelope_AccessGranted: // C1.15
				prog.printf("added %s: %s in all\n", size.Format(b.AccessGranted.GrantedBytes), size.Format(b.AccessGranted.TotalGrantedBytes))
			case *sharespotv1.Envelope_SessionEnded:
				s := b.SessionEnded.Session
				prog.printf("the session ended (%s): %s\n", client.SafeText(s.EndReason), settlement(s))
				return store.Remove(ses.Id)
			case *sharespotv1.Envelope_Declined:
				fmt.Fprintf(env.stdout, "declined: %s\n", client.SafeText(b.Declined.Reason))
			}
		}
	}
}

// forwarder opens the local forwarder at --forward (nil for "off"); a busy
// port falls back to any free one on loopback.
func (c *ConnectCmd) forwarder(gateway, sid string, code []byte) (*forward.Forwarder, error) {
	if c.Forward == "off" || c.Forward == "" {
		return nil, nil
	}
	fwd, err := forward.Listen(c.Forward, gateway, sid, seal.FormatCode(code), nil)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		if ap, perr := netip.ParseAddrPort(c.Forward); perr == nil {
			fwd, err = forward.Listen(netip.AddrPortFrom(ap.Addr(), 0).String(), gateway, sid, seal.FormatCode(code), nil)
		}
	}
	return fwd, err
}

// errOverTariff: a fee above what the shown tariff gives; never paid.
var errOverTariff = errors.New("fee above the shown tariff")

// closeWait is how long to wait for a session's settlement after End.
func closeWait(s *sharespotv1.Session) time.Duration {
	return max(time.Until(time.UnixMilli(s.DeadlineUnixMs)), 0) + 30*time.Second
}

// purchase is C3.1–C3.3 (or C1.12–C1.14): show the fee, check it against
// the tariff the guest was shown, pay, confirm.
func (c *ConnectCmd) purchase(ctx context.Context, cl *client.Client, sid string, shown *sharespotv1.Tariff, inbox <-chan *sharespotv1.Envelope, ask *asker, yes bool) (bool, error) {
	// A resumed session's quote may be waiting already (its fee
	// information went to the process that stopped).
	q, err := pendingQuote(ctx, cl, sid)
	if err != nil {
		return false, err
	}
	if q == nil {
		e, err := client.Await(ctx, inbox, 2*time.Minute, func(e *sharespotv1.Envelope) bool { return e.GetFeeInfo() != nil })
		if err != nil {
			return false, err
		}
		q = e.GetFeeInfo().Quote
	}
	if q.State == sharespotv1.QuoteState_QUOTE_STATE_PAID && q.Receipt != nil {
		// Paid before a restart: the receipt is kept with the quote.
		fmt.Fprintf(ask.out, "Paid %s for %s already; sending the payment-success response.\n", client.FormatMoney(q.AmountMinor, q.Currency), size.Format(q.Bytes))
		if _, err := cl.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sid, Receipt: q.Receipt})); err != nil {
			return false, fmt.Errorf("confirm payment: %w", err)
		}
		return true, nil
	}
	if err := client.CheckFee(shown, q); err != nil {
		return false, fmt.Errorf("%w: %w", errOverTariff, err)
	}
	msg := fmt.Sprintf("The host asks %s for %s.", client.FormatMoney(q.AmountMinor, q.Currency), size.Format(q.Bytes))
	if yes {
		fmt.Fprintln(ask.out, msg, "Paying.")
	} else if !ask.yes(ctx, msg+" Pay?") {
		return false, nil // no, or Ctrl-C
	}
	method := sharespotv1.PayMethod_PAY_METHOD_WALLET
	if c.Pay == "card" {
		method = sharespotv1.PayMethod_PAY_METHOD_CARD
		fmt.Fprintln(ask.out, "Paying by card: the fee is held on the card; only what you use is charged.")
	}
	rc, err := client.PayQuote(ctx, cl, q, method, c.PaymentMethod, time.Second, func(url string) {
		fmt.Fprintf(ask.out, "Your bank asks you to confirm the payment: open %s\nWaiting for the confirmation...\n", url)
	})
	if err != nil {
		return false, fmt.Errorf("pay: %w", err)
	}
	if _, err := cl.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sid, Receipt: rc})); err != nil {
		return false, fmt.Errorf("confirm payment: %w", err)
	}
	return true, nil
}

// pick finds an offer by SSID or BSSID.
func pick(offers []*sharespotv1.Offer, target string) *sharespotv1.Offer {
	if b, err := registry.NormalizeBSSID(target); err == nil {
		for _, o := range offers {
			if o.AccessPoint.Bssid == b {
				return o
			}
		}
	}
	for _, o := range offers {
		if string(o.AccessPoint.Ssid) == target || client.SSIDText(o.AccessPoint.Ssid) == target {
			return o
		}
	}
	return nil
}

// bar draws used against granted.
func bar(used, granted int64) string {
	const width = 30
	n := 0
	if granted > 0 {
		n = int(min(used, granted) * width / granted)
	}
	return fmt.Sprintf("[%s%s] %s of %s", strings.Repeat("#", n), strings.Repeat(".", width-n), size.Format(used), size.Format(granted))
}

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/size"
)

// ConnectCmd is the guest's whole flow.
type ConnectCmd struct {
	deviceFlags
	scanFlags
	Target    string        `arg:"" help:"The hotspot's SSID or BSSID (see sharespot scan)."`
	Buy       string        `default:"100MB" help:"How much data to buy."`
	Yes       bool          `short:"y" help:"Pay without asking."`
	AutoTopUp string        `name:"auto-topup" help:"At the low-quota prompt, buy this much more without asking." placeholder:"SIZE"`
	Duration  time.Duration `help:"End the session after this long (default: when interrupted)."`
}

type asker struct {
	in  *bufio.Reader
	out io.Writer
}

func (a asker) yes(q string) bool {
	fmt.Fprintf(a.out, "%s [y/N] ", q)
	line, _ := a.in.ReadString('\n')
	ans := strings.ToLower(strings.TrimSpace(line))
	return ans == "y" || ans == "yes"
}

// Run buys data and stays online until interrupted.
func (c *ConnectCmd) Run(env *runEnv) error {
	want, err := size.Parse(c.Buy)
	if err != nil {
		return fmt.Errorf("--buy: %w", err)
	}
	var auto int64
	if c.AutoTopUp != "" {
		if auto, err = size.Parse(c.AutoTopUp); err != nil {
			return fmt.Errorf("--auto-topup: %w", err)
		}
	}
	ask := asker{in: bufio.NewReader(os.Stdin), out: env.stdout}
	cl, err := c.connect(env.ctx, "guest")
	if err != nil {
		return err
	}
	offers, err := discover(env.ctx, cl, c.scanFlags)
	if err != nil {
		return err
	}
	offer := pick(offers, c.Target)
	if offer == nil {
		return fmt.Errorf("no Sharespot hotspot %q in range; `sharespot scan` lists them", c.Target)
	}
	g := &client.Guest{C: cl}
	ses, err := g.RequestAccess(env.ctx, offer.HotspotId, want) // C1.5–C1.6
	if err != nil {
		return fmt.Errorf("request access: %w", err)
	}
	fmt.Fprintf(env.stdout, "asked %q for %s\n", client.SSIDText(offer.AccessPoint.Ssid), size.Format(want))

	ctx, cancel := context.WithCancel(env.ctx)
	defer cancel()
	inbox := make(chan *sharespotv1.Envelope, 16)
	go cl.Receive(ctx, 0, func(ctx context.Context, e *sharespotv1.Envelope) error {
		if e.SessionId != ses.Id {
			return nil
		}
		select {
		case inbox <- e:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil)

	end := func(reason string) error {
		res, err := cl.Sessions.End(context.WithoutCancel(env.ctx), connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.Id, Reason: reason}))
		if err != nil {
			return fmt.Errorf("end session %s: %w", ses.Id, err)
		}
		s := res.Msg.Session
		fmt.Fprintf(env.stdout, "session ended: used %s of %s; paid %s, refunded %s\n", size.Format(s.UsedBytes), size.Format(s.GrantedBytes),
			client.FormatMoney(s.PaidMinor, s.Currency), client.FormatMoney(s.RefundedMinor, s.Currency))
		return nil
	}
	// Claim 3: fee, pay, confirm.
	if ok, err := c.purchase(ctx, cl, ses.Id, inbox, ask, c.Yes); err != nil || !ok {
		return errors.Join(err, end("guest declined the fee"))
	}
	env1, err := client.Await(ctx, inbox, 2*time.Minute, func(e *sharespotv1.Envelope) bool { return e.GetAccessGranted() != nil })
	if err != nil {
		return errors.Join(err, end("no access response"))
	}
	gr := env1.GetAccessGranted()
	code, err := g.OpenCode(ses.Id, offer.HostDeviceId, gr.SealedCode) // claim 2
	if err != nil {
		return errors.Join(fmt.Errorf("open access code: %w", err), end("cannot open the access code"))
	}
	addr := gr.Gateway.GetAddress()
	fmt.Fprintf(env.stdout, "online: %s granted (C1.7). Use the host's gateway (C1.8):\n", size.Format(gr.GrantedBytes))
	fmt.Fprintf(env.stdout, "  SOCKS5:  socks5h://%s:%s@%s\n", ses.Id, seal.FormatCode(code), addr)
	fmt.Fprintf(env.stdout, "  example: curl --proxy socks5h://%s:%s@%s https://example.org/\n", ses.Id, seal.FormatCode(code), addr)

	var timeout <-chan time.Time
	if c.Duration > 0 {
		timeout = time.After(c.Duration)
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last := int64(-1)
	for {
		select {
		case <-env.ctx.Done():
			fmt.Fprintln(env.stdout)
			return end("guest stopped")
		case <-timeout:
			return end("duration over")
		case <-tick.C:
			res, err := cl.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: ses.Id}))
			if err == nil && res.Msg.Session.UsedBytes != last {
				s := res.Msg.Session
				last = s.UsedBytes
				fmt.Fprintf(env.stdout, "%s\n", bar(s.UsedBytes, s.GrantedBytes))
			}
		case e := <-inbox:
			switch b := e.Body.(type) {
			case *sharespotv1.Envelope_LowQuotaPrompt: // C1.9–C1.10
				client.ShowPrompt(env.stdout, b.LowQuotaPrompt)
				more := auto
				if more == 0 && ask.yes(fmt.Sprintf("Buy %s more?", size.Format(want))) {
					more = want
				}
				if more == 0 {
					continue
				}
				if _, err := cl.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: ses.Id, Bytes: more})); err != nil {
					fmt.Fprintf(env.stdout, "top-up refused: %v\n", err)
					continue
				}
				if ok, err := c.purchase(ctx, cl, ses.Id, inbox, ask, c.Yes || auto > 0); err != nil || !ok {
					fmt.Fprintf(env.stdout, "no top-up: %v\n", err)
				}
			case *sharespotv1.Envelope_AccessGranted: // C1.15
				fmt.Fprintf(env.stdout, "added %s: %s in all\n", size.Format(b.AccessGranted.GrantedBytes), size.Format(b.AccessGranted.TotalGrantedBytes))
			case *sharespotv1.Envelope_SessionEnded:
				s := b.SessionEnded.Session
				fmt.Fprintf(env.stdout, "the session ended (%s): used %s, refunded %s\n", s.EndReason, size.Format(s.UsedBytes), client.FormatMoney(s.RefundedMinor, s.Currency))
				return nil
			case *sharespotv1.Envelope_Declined:
				fmt.Fprintf(env.stdout, "declined: %s\n", b.Declined.Reason)
			}
		}
	}
}

// purchase is C3.1–C3.3 (or C1.12–C1.14): show the fee, pay, confirm.
func (c *ConnectCmd) purchase(ctx context.Context, cl *client.Client, sid string, inbox <-chan *sharespotv1.Envelope, ask asker, yes bool) (bool, error) {
	e, err := client.Await(ctx, inbox, 2*time.Minute, func(e *sharespotv1.Envelope) bool { return e.GetFeeInfo() != nil })
	if err != nil {
		return false, err
	}
	q := e.GetFeeInfo().Quote
	msg := fmt.Sprintf("The host asks %s for %s.", client.FormatMoney(q.AmountMinor, q.Currency), size.Format(q.Bytes))
	if yes {
		fmt.Fprintln(ask.out, msg, "Paying.")
	} else if !ask.yes(msg + " Pay?") {
		return false, nil
	}
	pay, err := cl.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
	if err != nil {
		return false, fmt.Errorf("pay: %w", err)
	}
	if _, err := cl.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sid, Receipt: pay.Msg.Receipt})); err != nil {
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

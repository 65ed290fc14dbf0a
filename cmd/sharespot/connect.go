package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/exitcode"
	"github.com/sharespot/sharespot/internal/forward"
	"github.com/sharespot/sharespot/internal/gateway/nft"
	"github.com/sharespot/sharespot/internal/gateway/wg"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/tunnel"
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
	MaxSpend      string        `name:"max-spend" help:"The most this session may cost in all, in the tariff's currency (e.g. 5 or 5.50): a top-up that would pass it is not bought, and the session ends once what is paid is used. Default: five times the first purchase." placeholder:"AMOUNT"`
	Pay           string        `default:"wallet" enum:"wallet,card" help:"How to pay: wallet, or card (Stripe: the fee is held on the card and only what is used is charged)."`
	PaymentMethod string        `name:"payment-method" help:"With --pay card: the Stripe PaymentMethod (pm_...) to charge; on a server in Stripe test mode the test card is used when empty." placeholder:"ID"`
	JSON          bool          `name:"json" help:"Write the session's events to stdout as JSON lines (granted, online, low, topped_up, exhausted, ended; fields in the README), and everything else, questions too, to stderr."`
	Forward       string        `default:"127.0.0.1:1081" help:"Where the local forwarder listens (SOCKS5, HTTP CONNECT and plain-HTTP proxy requests, no credentials) with the userspace gateway. The session is verified: this device counts what it receives and sends, and signs it to the host's gateway as it goes, so the host can bill no more than that plus the credit window (with the kernel gateway, this device counts its interface). \"off\": no forwarder, and an unverified session, billed on the host's count (at most what was bought)." placeholder:"ADDR"`
}

// asker asks a person yes-or-no questions on a terminal. A question ends
// when ctx does (Ctrl-C), as "no". One goroutine at a time asks.
type asker struct {
	in  *bufio.Reader
	out io.Writer
	// lines carries the line a reader goroutine read, with its newline
	// (without one at the end of input); reading is true while one is
	// reading. A read that a cancelled question left behind answers the
	// next question, so no line is read twice or lost.
	lines   chan string
	reading bool
	// closed: the input ended; nobody answers.
	closed bool
}

// line is the next line on the input, read in the background: the caller
// receives from it (and then calls took) or asks a question, which takes
// the line read meanwhile.
func (a *asker) line() <-chan string {
	if !a.reading {
		a.reading = true
		go func() {
			line, _ := a.in.ReadString('\n')
			a.lines <- line
		}()
	}
	return a.lines
}

// took says line, from line(), was received.
func (a *asker) took(line string) {
	a.reading = false
	a.closed = a.closed || !strings.HasSuffix(line, "\n")
}

func newAsker(in io.Reader, out io.Writer) *asker {
	return &asker{in: bufio.NewReader(in), out: out, lines: make(chan string, 1)}
}

// yes asks q and reports whether the answer was yes. End of input is no.
func (a *asker) yes(ctx context.Context, q string) bool {
	fmt.Fprintf(a.out, "%s [y/N] ", q)
	select {
	case line := <-a.line():
		a.took(line)
		ans := strings.ToLower(strings.TrimSpace(line))
		return ans == "y" || ans == "yes"
	case <-ctx.Done():
		return false // the caller ends the line
	}
}

// guestRun is one run of connect: the session and what it shows.
type guestRun struct {
	c    *ConnectCmd
	env  *runEnv
	ctx  context.Context // ends with the run (Ctrl-C, or an end)
	g    *guest.Guest
	ses  *guest.Session
	prog *progress
	ask  *asker
	want int64 // what --buy asks, and a top-up buys again
	auto int64 // --auto-topup
	// spent is what the session has cost so far; limit is the most it may
	// (--max-spend), in the tariff's currency; over says a top-up was not
	// bought for it: none will be, and the session ends once the data paid
	// for is used.
	spent, limit int64
	over         bool
	// granted is the session's whole volume as this run last heard it (a
	// prompt for less was answered by a top-up already); used and
	// exhausted what the gateway (in-band) or the server last said.
	granted, used int64
	gwState       atomic.Pointer[protocol.GatewayState]
	// moved hears the gateway's in-band figures change (a poke, dropped
	// while one waits).
	moved chan struct{}
	// out takes the text for a person (stderr with --json); events, the
	// JSON lines of --json (nil without).
	out    io.Writer
	events *eventLog
	// tranche is what the last purchase added; paid what it cost.
	tranche, paid int64
	// kind is the host's gateway's kind; proxy the address programs use
	// to go through it ("" with the kernel gateway: all of them do).
	kind, proxy string
	// waiting: an automatic top-up (--yes, --auto-topup) waits for half
	// of the last purchase to be used: a prompt came sooner (a host that
	// prompts at a warning level above it), and a second purchase so soon
	// would hold twice the money. offered: the person said no to a top-up
	// and may press Enter to buy one after all. usedUpAt is the volume
	// granted when its running out was said (-1: not said).
	waiting, offered bool
	usedUpAt         int64
	// stopForward stops the local forwarder and sends its last
	// acknowledgment, before the session ends.
	stopForward func()
}

// Run buys data and stays online until interrupted.
func (c *ConnectCmd) Run(env *runEnv) error {
	r, err := c.start(env)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(env.ctx)
	defer cancel()
	r.ctx = ctx
	cur, err := r.ses.Get(env.ctx)
	if err != nil {
		return err
	}
	if cur.State == sharespotv1.SessionState_SESSION_STATE_ENDING {
		// Ended before a restart: wait for the settlement.
		s, err := r.ses.Settle(env.ctx)
		if err != nil {
			return err
		}
		r.said("session ended", s, s.GetEndReason(), true)
		return nil
	}
	if err := r.spendingLimit(cur); err != nil {
		return exitcode.With(exitcode.Usage, r.fail(err, "bad --max-spend"))
	}
	gr := r.ses.Granted()
	if gr == nil {
		// Claim 3: fee, pay, confirm; then the access response (C1.7).
		if gr, err = r.ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, r.buyOptions(c.Yes, -1, 0)); err != nil {
			return r.fail(err, "guest declined the fee")
		}
	}
	r.granted, r.used = max(cur.GrantedBytes, gr.GetTotalGrantedBytes(), gr.GetGrantedBytes()), cur.UsedBytes
	r.tranche, r.kind = gr.GetGrantedBytes(), gr.GetGateway().GetKind()
	if r.paid == 0 {
		r.paid = cur.PaidMinor // bought before a restart
	}
	r.emit(evGranted, gr.GetGrantedBytes(), r.paid)
	if err := r.online(gr, cur.GuestAckedBytes); err != nil {
		return err
	}
	r.emit(evOnline, 0, 0)
	defer r.stopForward()
	return r.loop()
}

// start signs in, opens the guest's state and begins or resumes the
// session (C1.5–C1.6).
func (c *ConnectCmd) start(env *runEnv) (*guestRun, error) {
	out := env.stdout
	r := &guestRun{c: c, env: env, stopForward: func() {}, moved: make(chan struct{}, 1), usedUpAt: -1}
	if c.JSON {
		out, r.events = env.stderr, newEventLog(env.stdout)
	}
	r.out, r.prog, r.ask = out, &progress{w: out, tty: isTerminal(out)}, newAsker(os.Stdin, out)
	var err error
	if r.want, err = size.Parse(c.Buy); err != nil {
		return nil, fmt.Errorf("--buy: %w", err)
	}
	if r.want <= 0 {
		return nil, fmt.Errorf("--buy %s: buy more than nothing, e.g. --buy 5MB", c.Buy)
	}
	if c.AutoTopUp != "" {
		if r.auto, err = size.Parse(c.AutoTopUp); err != nil {
			return nil, fmt.Errorf("--auto-topup: %w", err)
		}
	}
	// The inbox stream carries the host's answers: its loss is said once
	// (the guest would otherwise wait in silence), and its return once.
	var streamDown atomic.Bool
	cl, err := c.connectWith(env, client.Options{DeviceName: "guest", StreamStatus: func(server string, err error) {
		switch {
		case err != nil && !streamDown.Swap(true) && env.ctx.Err() == nil:
			r.prog.printf("lost the connection to the server at %s (%s); reconnecting (to the next --server, if several are given)\n", server, errText(err))
		case err == nil && streamDown.Swap(false):
			r.prog.printf("connected again, to the server at %s\n", server)
		}
	}})
	if err != nil {
		return nil, err
	}
	r.g = &guest.Guest{C: cl, Store: &guest.Store{Dir: c.stateDir(c.path())}, Retry: true, Unverified: c.forwardOff()}
	if r.ses, err = c.begin(env.ctx, out, r.g); err != nil {
		return nil, err
	}
	r.want = r.ses.Want
	if _, err := r.g.Listen(env.ctx, nil); err != nil {
		return nil, err
	}
	return r, nil
}

// buyOptions are how connect pays: asking the person unless yes, or
// unless the fee is the price asked about (asked ≥ 0) for the bytes asked
// for: a fee that differs from it is said and asked about again.
func (r *guestRun) buyOptions(yes bool, asked, bytes int64) guest.BuyOptions {
	o := guest.BuyOptions{Method: sharespotv1.PayMethod_PAY_METHOD_WALLET, PaymentMethod: r.c.PaymentMethod,
		OnAction: func(url string) {
			fmt.Fprintf(r.ask.out, "Your bank asks you to confirm the payment: open %s\nWaiting for the confirmation...\n", url)
		}}
	if r.c.Pay == "card" {
		o.Method = sharespotv1.PayMethod_PAY_METHOD_CARD
	}
	o.Approve = func(ctx context.Context, q *sharespotv1.Quote) bool {
		if r.limit > 0 && r.spent+q.AmountMinor > r.limit {
			r.over = true
			fmt.Fprintf(r.ask.out, "The host asks %s for %s more, which would take this session to %s, past your limit of %s (--max-spend): not buying.\n",
				client.FormatMoney(q.AmountMinor, q.Currency), size.Format(q.Bytes), client.FormatMoney(r.spent+q.AmountMinor, q.Currency), client.FormatMoney(r.limit, q.Currency))
			return false
		}
		fee := fmt.Sprintf("%s for %s", client.FormatMoney(q.AmountMinor, q.Currency), size.Format(q.Bytes))
		ok := true
		switch {
		case asked >= 0 && q.AmountMinor == asked && q.Bytes == bytes:
			fmt.Fprintf(r.ask.out, "Paying %s.\n", fee) // the price asked about
		case yes:
			fmt.Fprintf(r.ask.out, "The host asks %s. Paying.\n", fee)
		case asked >= 0:
			ok = r.ask.yes(ctx, fmt.Sprintf("The host asks %s, not the %s for %s you said yes to. Pay?", fee,
				client.FormatMoney(asked, q.Currency), size.Format(bytes))) // no, or Ctrl-C
		default:
			ok = r.ask.yes(ctx, fmt.Sprintf("The host asks %s. Pay?", fee)) // no, or Ctrl-C
		}
		if ok && r.c.Pay == "card" {
			fmt.Fprintln(r.ask.out, "Paying by card: the fee is held on the card; only what you use is charged.")
		}
		return ok
	}
	r.ses.Observe = func(e guest.Event) {
		if e.Step == guest.StepPaid {
			r.spent += e.Quote.AmountMinor
			r.paid = e.Quote.AmountMinor
		}
		if e.Step == guest.StepFee && e.Quote.State == sharespotv1.QuoteState_QUOTE_STATE_PAID {
			// Paid before a restart: the receipt is kept with the quote.
			fmt.Fprintf(r.ask.out, "Paid %s for %s already; sending the payment-success response.\n", client.FormatMoney(e.Quote.AmountMinor, e.Quote.Currency), size.Format(e.Quote.Bytes))
			r.paid = e.Quote.AmountMinor
		}
		if e.Step == guest.StepEnding {
			r.prog.printf("ending: waiting for the host's final count\n")
		}
	}
	return o
}

// online is C1.8: present the code to the kernel gateway, or start the
// local forwarder for the userspace one, say how to use it, and, in a
// verified session, acknowledge what arrives in-band to the gateway.
func (r *guestRun) online(gr *sharespotv1.AccessGranted, acked int64) error {
	out := r.out
	code, err := r.ses.Code(gr) // claim 2
	if err != nil {
		return r.fail(err, "cannot open the access code")
	}
	addr := gr.Gateway.GetAddress()
	switch gr.Gateway.GetKind() {
	case nft.Kind:
		return r.onlineKernel(addr, code, gr, acked)
	case wg.Kind:
		return r.onlineTunnel(code, gr, acked)
	}
	fmt.Fprintf(out, "online: %s granted (C1.7). Use the host's gateway (C1.8):\n", size.Format(gr.GrantedBytes))
	fwd, err := r.c.forwarder(addr, r.ses.ID, code)
	switch {
	case err != nil && r.ses.Verified():
		return r.fail(fmt.Errorf("the local forwarder, which counts what this device receives: %w", err), "the guest cannot count")
	case err != nil || fwd == nil:
		if err != nil {
			fmt.Fprintf(out, "  (no local forwarder: %v)\n", err)
		}
		r.proxy = addr
		fmt.Fprintf(out, "  SOCKS5:  socks5h://%s:%s@%s\n", r.ses.ID, seal.FormatCode(code), addr)
		fmt.Fprintf(out, "  example: curl --proxy socks5h://%s:%s@%s https://example.org/\n", r.ses.ID, seal.FormatCode(code), addr)
		fmt.Fprintln(out, "  unverified: this device counts nothing; you pay the host's count (at most what you bought)")
	default:
		r.proxy = fwd.Addr()
		fwd.SetOnGrow(r.acknowledge(addr, code, acked, fwd.Bytes, func(ctx context.Context) { fwd.Run(ctx) }, nil).Poke)
		fmt.Fprintf(out, "  export ALL_PROXY=socks5h://%s HTTPS_PROXY=http://%s http_proxy=http://%s   # this device's forwarder: what passes is counted and signed\n", fwd.Addr(), fwd.Addr(), fwd.Addr())
		fmt.Fprintf(out, "  example: curl --proxy socks5h://%s https://example.org/\n", fwd.Addr())
		fmt.Fprintln(out, "  verified: this device acknowledges what it receives to the host's gateway; traffic that does not pass the forwarder is not counted here and soon stalls")
	}
	return nil
}

// onlineKernel presents the code to the kernel gateway's admission
// endpoint, which binds this device's address and MAC to the session
// (C1.8), and acknowledges what this device's interface to the host
// passes.
func (r *guestRun) onlineKernel(addr string, code []byte, gr *sharespotv1.AccessGranted, acked int64) error {
	out := r.out
	var count func() int64
	if r.ses.Verified() {
		// Counted from before the admission, so nothing that passes
		// after it escapes the count.
		c, err := interfaceCounter(addr)
		if err != nil {
			return r.fail(fmt.Errorf("this device cannot count its traffic to the host (%w); run connect with --forward off for an unverified session", err), "the guest cannot count")
		}
		count = c.Bytes
	}
	if _, err := nft.Present(r.ctx, nil, addr, r.ses.ID, code); err != nil {
		return r.fail(err, "the host's gateway refused the access code")
	}
	fmt.Fprintf(out, "online: %s granted (C1.7); the host's gateway admitted this device, browse as usual (C1.8)\n", size.Format(gr.GrantedBytes))
	if count != nil {
		r.acknowledge(addr, code, acked, count, nil, nil)
		fmt.Fprintln(out, "  verified: this device counts what its interface to the host passes and acknowledges it to the host's gateway")
	} else {
		fmt.Fprintln(out, "  unverified: this device counts nothing; you pay the host's count (at most what you bought)")
	}
	return nil
}

// onlineTunnel brings the session's WireGuard tunnel up in this process,
// behind the local forwarder (no root, no system configuration: the
// programs given the forwarder go through it), and in a verified session
// acknowledges what the tunnel passes, in-band to the gateway's control
// stream in the tunnel.
func (r *guestRun) onlineTunnel(code []byte, gr *sharespotv1.AccessGranted, acked int64) error {
	out := r.out
	cfg, err := tunnel.ConfigOf(gr.Gateway, code)
	if err != nil {
		return r.fail(err, "the host's gateway description is unusable")
	}
	tn, err := tunnel.Open(cfg)
	if err != nil {
		return r.fail(err, "cannot bring the tunnel up")
	}
	fwd, err := r.c.forwarderVia(tn.DialContext)
	if err != nil || fwd == nil {
		tn.Close()
		if err == nil {
			err = errors.New("--forward off: a WireGuard gateway's tunnel runs behind the local forwarder here (the guest page gives the configuration for the WireGuard app)")
		}
		return r.fail(err, "the guest cannot use the tunnel")
	}
	run := func(ctx context.Context) {
		fwd.Run(ctx)
		tn.Close()
	}
	fmt.Fprintf(out, "online: %s granted (C1.7); WireGuard tunnel to %s up in this process, address %s (C1.8):\n", size.Format(gr.GrantedBytes), cfg.Endpoint, cfg.Address)
	r.proxy = fwd.Addr()
	fmt.Fprintf(out, "  export ALL_PROXY=socks5h://%s HTTPS_PROXY=http://%s http_proxy=http://%s   # this device's forwarder, into the tunnel\n", fwd.Addr(), fwd.Addr(), fwd.Addr())
	fmt.Fprintf(out, "  example: curl --proxy socks5h://%s https://example.org/\n", fwd.Addr())
	if r.ses.Verified() {
		r.acknowledge(tn.ControlAddr(), code, acked, tn.Bytes, run, tn.DialContext)
		fmt.Fprintln(out, "  verified: this device counts what passes the tunnel (IP packets, as the gateway does) and acknowledges it to the gateway, in the tunnel")
		return nil
	}
	fctx, fcancel := context.WithCancel(r.ctx)
	done := make(chan struct{})
	go func() { defer close(done); run(fctx) }()
	r.stopForward = func() { fcancel(); <-done }
	fmt.Fprintln(out, "  unverified: you pay the host's count (at most what you bought)")
	return nil
}

// interfaceCounter counts the interface this device reaches the gateway at
// addr (host:port) by.
func interfaceCounter(addr string) (*guest.InterfaceCounter, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("gateway address %q: %w", addr, err)
	}
	name, err := guest.InterfaceTo(ap.Addr())
	if err != nil {
		return nil, err
	}
	return guest.NewInterfaceCounter(name)
}

// acknowledge runs the session's in-band acknowledgments of count (and
// run, the forwarder, if not nil) until stopForward, which sends the last.
// It returns the acknowledger, for the counter to poke.
func (r *guestRun) acknowledge(addr string, code []byte, acked int64, count func() int64, run func(context.Context),
	dial func(ctx context.Context, network, addr string) (net.Conn, error)) *guest.Acker {
	a := &guest.Acker{Session: r.ses, Gateway: addr, Code: code, Count: count, Base: acked, Dial: dial,
		OnState: func(st protocol.GatewayState) {
			r.gwState.Store(&st)
			select {
			case r.moved <- struct{}{}:
			default:
			}
		}}
	r.ses.Acknowledging(a)
	fctx, fcancel := context.WithCancel(r.ctx)
	var fwg sync.WaitGroup
	if run != nil {
		fwg.Go(func() { run(fctx) })
	}
	fwg.Go(func() { a.Run(fctx) })
	r.stopForward = func() { fcancel(); fwg.Wait() }
	return a
}

// forwardOff reports whether --forward is off: no forwarder, and so an
// unverified session.
func (c *ConnectCmd) forwardOff() bool { return c.Forward == "off" || c.Forward == "" }

// loop shows usage and answers the host until the session ends. After a
// "no" to a top-up, a line on stdin (Enter) buys one after all.
func (r *guestRun) loop() error {
	var timeout <-chan time.Time
	if r.c.Duration > 0 {
		timeout = time.After(r.c.Duration)
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	away := false // the server did not answer the last Get
	for {
		var enter <-chan string
		if r.offered {
			enter = r.ask.line()
		}
		select {
		case <-r.env.ctx.Done():
			r.prog.printf("\n")
			return r.stopped()
		case <-timeout:
			return r.end("duration over")
		case <-tick.C:
			away = r.showUsage(away)
			if err := r.watch(); err != nil {
				return err
			}
			if r.over && r.usedUp() {
				return r.spentUp()
			}
		case <-r.moved:
			if err := r.watch(); err != nil {
				return err
			}
		case line := <-enter:
			r.ask.took(line)
			r.offered = false
			if r.ask.closed {
				break // the end of the input: nobody to press Enter
			}
			if err := r.buyMore(r.want, r.price(r.want), false); err != nil {
				return err
			}
		case e := <-r.ses.Messages():
			if done, err := r.handle(e); done || err != nil {
				return err
			}
		}
	}
}

// watch acts on usage as last heard: an automatic top-up waiting for half
// of the last purchase to be used buys now, and data that ran out is said
// (once per volume granted).
func (r *guestRun) watch() error {
	if r.waiting && r.left() <= r.tranche/2 {
		r.waiting = false
		return r.buyMore(r.autoSize(), r.price(r.autoSize()), true)
	}
	if !r.usedUp() || r.usedUpAt == r.granted {
		return nil
	}
	r.usedUpAt = r.granted
	used, granted := r.usage()
	r.emit(evExhausted, 0, 0)
	hold := "the host's gateway holds your connections, stalled, for its grace period (60 s unless the host set --grace), then closes them; new ones wait for more data"
	if r.kind == nft.Kind {
		hold = "the host's gateway drops your packets until more data is bought; TCP connections resume by themselves after a top-up"
	}
	r.prog.printf("data used up: %s of %s; %s\n", size.Format(used), size.Format(granted), hold)
	switch {
	case r.over:
	case r.offered:
		r.prog.printf("%s\n", r.enterText())
	case !r.waiting && !r.c.Yes && r.auto == 0 && !r.ask.closed && r.topUpPrice(r.want) >= 0:
		// Said no before the prompt, or never prompted: offer it now.
		r.offered = true
		r.prog.printf("%s\n", r.enterText())
	}
	return nil
}

// usage is what the session used of its volume, as last heard from the
// gateway (in-band) or the server, whichever heard more.
func (r *guestRun) usage() (used, granted int64) {
	used, granted = r.used, r.granted
	if st := r.gwState.Load(); st != nil && st.Quota > 0 {
		used, granted = max(used, st.Used), max(granted, st.Quota)
	}
	return used, granted
}

// left is what is left of the session's volume, as last heard.
func (r *guestRun) left() int64 {
	used, granted := r.usage()
	return max(granted-used, 0)
}

// emit writes an event of --json with the session's figures.
func (r *guestRun) emit(event string, bytes, amount int64) {
	if r.events == nil {
		return
	}
	used, granted := r.usage()
	e := connectEvent{Event: event, SessionID: r.ses.ID, Hotspot: r.ses.SSID, Bytes: bytes, Used: used, Granted: granted,
		AmountMinor: amount, Currency: r.currency()}
	if event == evOnline {
		e.Proxy = r.proxy
	}
	r.events.emit(e)
}

// currency is the tariff's currency.
func (r *guestRun) currency() string { return r.ses.Tariff.GetCurrency() }

// showUsage draws the bar of used against granted (C1.7) from the server's
// view; a server that does not answer is said once, and its return once.
// It reports whether the server is away.
func (r *guestRun) showUsage(away bool) bool {
	// Bounded: a server that went away mid-call must not hold up Ctrl-C
	// or the inbox.
	gctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	s, err := r.ses.Get(gctx)
	switch {
	case err != nil && r.ctx.Err() == nil && !away:
		// The gateway goes on working without the server, but the bar
		// stops moving and nothing settles.
		r.prog.printf("cannot reach the server (%s); the session goes on at the host's gateway, trying again\n", errText(err))
		return true
	case err == nil:
		if away {
			r.prog.printf("the server is back\n")
		}
		r.prog.update(s.UsedBytes, s.GrantedBytes)
		r.used, r.granted = max(r.used, s.UsedBytes), max(r.granted, s.GrantedBytes)
		return false
	}
	return away
}

// handle answers one message of the session; done when the session ended.
func (r *guestRun) handle(e *sharespotv1.Envelope) (done bool, err error) {
	out := r.out
	switch b := e.Body.(type) {
	case *sharespotv1.Envelope_LowQuotaPrompt: // C1.9–C1.10
		p := b.LowQuotaPrompt
		if p.GrantedBytes < r.granted {
			return false, nil // about a volume a top-up already added to
		}
		r.used = max(r.used, p.UsedBytes)
		r.emit(evLow, p.RemainingBytes, 0)
		r.prog.printf("")
		return false, r.topUp(guest.PromptText(p))
	case *sharespotv1.Envelope_AccessGranted: // C1.15, a grant the flow did not wait for
		r.granted = max(r.granted, b.AccessGranted.TotalGrantedBytes)
		r.prog.printf("added %s: %s in all\n", size.Format(b.AccessGranted.GrantedBytes), size.Format(b.AccessGranted.TotalGrantedBytes))
	case *sharespotv1.Envelope_SessionEnded:
		s := b.SessionEnded.Session
		r.stopForward()
		r.said(fmt.Sprintf("the session ended (%s)", client.SafeText(s.EndReason)), s, s.EndReason, true)
		return true, r.ses.Close()
	case *sharespotv1.Envelope_Declined:
		fmt.Fprintf(out, "declined: %s\n", client.SafeText(b.Declined.Reason))
	}
	return false, nil
}

// topUp is C1.11–C1.15 after a prompt: buy more if the person (or --yes,
// or --auto-topup) says so. One question, with the price: the tariff's
// top-up price, which the host's fee may not pass. An automatic top-up
// waits until half of the last purchase is used: a host whose warning
// level is at or above the purchase prompts at once, and buying then
// would hold twice the money.
func (r *guestRun) topUp(low string) error {
	if r.over {
		fmt.Fprintln(r.out, low)
		return nil // said once, when the limit first stopped a top-up
	}
	if more := r.autoSize(); more > 0 {
		fmt.Fprintln(r.out, low)
		if left := r.left(); left > r.tranche/2 {
			r.waiting = true
			r.prog.printf("Buying %s more (%s) once %s is left, half of the last purchase: not sooner, so as not to hold twice the money.\n",
				size.Format(more), r.autoFlag(), size.Format(r.tranche/2))
			return nil
		}
		r.waiting = false
		return r.buyMore(more, r.price(more), true)
	}
	price := r.price(r.want)
	q := fmt.Sprintf("%s Buy %s more for %s?", low, size.Format(r.want), client.FormatMoney(price, r.currency()))
	switch {
	case r.over:
		return nil // past --max-spend: said
	case price < 0:
		q = fmt.Sprintf("%s Buy %s more?", low, size.Format(r.want)) // the host's fee is asked about
	}
	r.offered = false
	if !r.ask.yes(r.env.ctx, q) {
		if r.env.ctx.Err() == nil && !r.ask.closed {
			r.offered = true
			r.prog.printf("Not buying. %s\n", r.enterText())
		}
		return nil // Ctrl-C: the loop then ends the session
	}
	return r.buyMore(r.want, price, false)
}

// enterText offers a top-up after a "no".
func (r *guestRun) enterText() string {
	return fmt.Sprintf("Press Enter to buy %s more for %s; Ctrl-C ends the session.", size.Format(r.want),
		client.FormatMoney(r.topUpPrice(r.want), r.currency()))
}

// autoSize is what an automatic top-up buys: --auto-topup's size, or with
// --yes --buy's; 0 when top-ups are asked.
func (r *guestRun) autoSize() int64 {
	switch {
	case r.auto > 0:
		return r.auto
	case r.c.Yes:
		return r.want
	}
	return 0
}

func (r *guestRun) autoFlag() string {
	if r.auto > 0 {
		return "--auto-topup"
	}
	return "--yes"
}

// topUpPrice is what bytes more cost at the tariff shown; -1 when it
// cannot tell.
func (r *guestRun) topUpPrice(bytes int64) int64 {
	p, err := protocol.TariffPrice(r.ses.Tariff, bytes, true)
	if err != nil || r.ses.Tariff == nil {
		return -1
	}
	return p
}

// price is topUpPrice, or -1 when buying bytes more would pass the
// spending limit (--max-spend), which it says, once; then no top-up is
// bought.
func (r *guestRun) price(bytes int64) int64 {
	p := r.topUpPrice(bytes)
	if p >= 0 && r.limit > 0 && r.spent+p > r.limit {
		r.over = true
		fmt.Fprintf(r.out, "%s more costs %s, which would take this session to %s, past your limit of %s (--max-spend): not buying.\n",
			size.Format(bytes), client.FormatMoney(p, r.currency()), client.FormatMoney(r.spent+p, r.currency()), client.FormatMoney(r.limit, r.currency()))
		fmt.Fprintln(r.out, "No more top-ups this session: it goes on with what is paid, and ends when that is used.")
		return -1
	}
	return p
}

// buyMore is C1.11–C1.15: ask the host for more bytes and pay its fee if
// it is asked (the price the person said yes to; -1 when none was
// named), or if auto (--yes, --auto-topup) within the shown tariff.
func (r *guestRun) buyMore(more, asked int64, auto bool) error {
	out := r.out
	if r.over {
		return nil
	}
	if auto {
		fmt.Fprintf(out, "Buying %s more (%s).\n", size.Format(more), r.autoFlag())
	}
	if err := r.ses.RequestTopUp(r.ctx, more); err != nil {
		fmt.Fprintf(out, "top-up refused: %s\n", errText(err))
		return nil
	}
	if auto {
		asked = -1 // no question was asked: the host's fee is said as it is paid
	}
	gr, err := r.ses.Buy(r.ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, r.buyOptions(auto, asked, more))
	if r.over {
		fmt.Fprintln(out, "No more top-ups this session: it goes on with what is paid, and ends when that is used.")
		return nil
	}
	switch {
	case errors.Is(err, guest.ErrOverTariff):
		return r.fail(err, "the host asked more than the tariff shown")
	case err != nil && r.env.ctx.Err() == nil && !errors.Is(err, guest.ErrNotApproved):
		fmt.Fprintf(out, "no top-up: %s\n", errText(err))
	case err != nil && r.env.ctx.Err() == nil && (auto || r.ask.closed):
		fmt.Fprintln(out, "no top-up")
	case err != nil && r.env.ctx.Err() == nil:
		r.offered = true
		fmt.Fprintf(out, "no top-up. %s\n", r.enterText())
	case err == nil:
		r.granted, r.tranche = max(r.granted, gr.TotalGrantedBytes), gr.GrantedBytes
		r.emit(evToppedUp, gr.GrantedBytes, r.paid)
		r.prog.printf("added %s: %s in all\n", size.Format(gr.GrantedBytes), size.Format(gr.TotalGrantedBytes))
	}
	return nil
}

// usedUp reports whether the data paid for is used, by the gateway's word
// (in-band, in a verified session) or the server's: the session is at its
// whole volume (the kernel gateway may stop up to a packet short).
func (r *guestRun) usedUp() bool {
	if st := r.gwState.Load(); st != nil && st.Quota > 0 && st.Used >= st.Quota-64<<10 {
		return true
	}
	return r.granted > 0 && r.used >= r.granted-64<<10
}

// spendingLimit sets the session's spending limit: --max-spend, or five
// times the first purchase at the shown tariff; it says which.
func (r *guestRun) spendingLimit(cur *sharespotv1.Session) error {
	t := r.ses.Tariff
	if t == nil {
		t = cur.Tariff
	}
	r.spent = cur.PaidMinor
	if r.c.MaxSpend != "" {
		n, err := money.Parse(r.c.MaxSpend, t.GetCurrency())
		if err != nil {
			return fmt.Errorf("--max-spend: %w", err)
		}
		r.limit = n
		fmt.Fprintf(r.out, "spending limit for this session: %s (--max-spend)\n", client.FormatMoney(n, t.GetCurrency()))
		return nil
	}
	first, err := protocol.TariffPrice(t, r.ses.Want, false)
	if err != nil {
		return nil // no tariff to price by: no limit but the guest's own answers
	}
	r.limit = max(5*first, 1)
	fmt.Fprintf(r.out, "spending limit for this session: %s, five times the first purchase (--max-spend to change it)\n", client.FormatMoney(r.limit, t.GetCurrency()))
	return nil
}

// end ends the session and waits for its settlement.
func (r *guestRun) end(reason string) error { return r.finish(reason, true) }

// finish ends the session and waits for its settlement, which it says;
// with nothing bought, only if sayNothing (after an error, the error says
// enough).
func (r *guestRun) finish(reason string, sayNothing bool) error {
	r.stopForward()
	s, err := r.ses.End(context.WithoutCancel(r.env.ctx), reason)
	if err != nil {
		if s == nil {
			return fmt.Errorf("%w (it stays open: run connect again to resume or end it)", err)
		}
		return fmt.Errorf("%w (run connect again to see its settlement)", err)
	}
	r.said("session ended", s, reason, sayNothing)
	return nil
}

// said says, after what, how a session settled, and writes its ended
// event. A session in which nothing was bought has no settlement to speak
// of: it is said so, if sayNothing.
func (r *guestRun) said(what string, s *sharespotv1.Session, reason string, sayNothing bool) {
	if r.events != nil {
		r.events.emit(connectEvent{Event: evEnded, SessionID: s.Id, Hotspot: r.ses.SSID, Used: s.UsedBytes, Granted: s.GrantedBytes,
			AmountMinor: s.PaidMinor - s.RefundedMinor, Currency: s.Currency, PaidMinor: s.PaidMinor, RefundedMinor: s.RefundedMinor,
			Reason: client.SafeText(reason)})
	}
	switch {
	case s.GrantedBytes > 0 || s.PaidMinor > 0:
		r.prog.printf("%s: %s\n", what, settlement(s))
	case sayNothing:
		r.prog.printf("%s: nothing was bought, nothing paid\n", what)
	}
}

// fail ends the session after err. An interrupt (Ctrl-C) exits with its
// code, a fee the person, --max-spend or the host declined with
// exitcode.Declined (see exitstatus.go); another error is said alone,
// without a settlement when nothing was bought.
func (r *guestRun) fail(err error, reason string) error {
	if r.env.ctx.Err() != nil {
		fmt.Fprintln(r.out)
		return r.stopped()
	}
	if d := r.declined(err); d != nil {
		return exitcode.With(exitcode.Declined, errors.Join(d, r.end(reason)))
	}
	return errors.Join(err, r.finish(reason, false))
}

// forwarder opens the local forwarder at --forward (nil for "off"); a busy
// port falls back to any free one on loopback.
func (c *ConnectCmd) forwarder(gateway, sid string, code []byte) (*forward.Forwarder, error) {
	return c.listenForwarder(func(addr string) (*forward.Forwarder, error) {
		return forward.Listen(addr, gateway, sid, seal.FormatCode(code), nil)
	})
}

// forwarderVia is the local forwarder dialling through dial (a tunnel).
func (c *ConnectCmd) forwarderVia(dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*forward.Forwarder, error) {
	return c.listenForwarder(func(addr string) (*forward.Forwarder, error) { return forward.ListenDial(addr, dial, nil) })
}

// listenForwarder opens the forwarder on --forward, or beside it when that
// port is taken; nil with --forward off.
func (c *ConnectCmd) listenForwarder(listen func(addr string) (*forward.Forwarder, error)) (*forward.Forwarder, error) {
	if c.forwardOff() {
		return nil, nil
	}
	fwd, err := listen(c.Forward)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		if ap, perr := netip.ParseAddrPort(c.Forward); perr == nil {
			fwd, err = listen(netip.AddrPortFrom(ap.Addr(), 0).String())
		}
	}
	return fwd, err
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

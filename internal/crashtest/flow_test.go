package crashtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
)

const (
	MB       = 1_000_000
	currency = "EUR"
	funded   = int64(10_000)
	bssid    = "02:5E:00:00:00:01"
	ssid     = "Cafe Sharespot"

	// awaitTimeout bounds every wait for an inbox message: longer than
	// the server's deadlines (at most 3 s) plus a sweep and a restart.
	awaitTimeout = 10 * time.Second
)

// Outcomes of a flow.
const (
	completed = "completed" // every step, and the claimed settlement
	resolved  = "resolved"  // a deadline or a refusal ended it early
)

// handledMsg is one inbox message the application handled.
type handledMsg = client.Handled

// inbox is one device's client.Inbox (in order, each message once, its
// cursor kept in memory across server restarts, what was handled
// recorded) plus what only this test needs: whether the device is idle (no
// message being handled, every message handed to it acknowledged), which
// the flow waits for so that its commits come in the same order in every
// run.
type inbox struct {
	*client.Inbox

	mu    sync.Mutex
	busy  bool   // a message is being handled
	got   uint64 // highest sequence handed to the handler
	acked uint64 // highest sequence whose Ack the server answered
}

// handler wraps h (nil: nothing more to do) so that in knows when the
// device is busy.
func (in *inbox) handler(h client.Handler) client.Handler {
	return func(ctx context.Context, env *sharespotv1.Envelope) error {
		in.mu.Lock()
		in.busy, in.got = true, max(in.got, env.Seq)
		in.mu.Unlock()
		defer func() {
			in.mu.Lock()
			in.busy = false
			in.mu.Unlock()
		}()
		if h != nil {
			return h(ctx, env)
		}
		return nil
	}
}

// ackedTo records an answered Ack (told by the device's transport).
func (in *inbox) ackedTo(seq uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.acked = max(in.acked, seq)
}

// waitIdle waits, up to d, until the device handles nothing and has
// acknowledged everything handed to it (a message whose handler failed
// comes again, and is waited for). A message a flow step reads was handed
// to the handler before it was routed to the step, so it is covered. It
// reports whether it got there.
func (in *inbox) waitIdle(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		in.mu.Lock()
		idle := !in.busy && in.acked >= in.got
		in.mu.Unlock()
		if idle {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

func (in *inbox) sessions() []string {
	var ids []string
	for _, m := range in.Handled() {
		if m.Session != "" && !slices.Contains(ids, m.Session) {
			ids = append(ids, m.Session)
		}
	}
	return ids
}

// run is one guest buying from one host on one server.
type run struct {
	bin, dir    string
	host, guest *client.Client
	agent       *host.Agent
	gate        *gateway.CodeGate
	g           *guest.Guest

	recvCancel      context.CancelFunc
	hostIn, guestIn *inbox
	addr            func() string // the server's address now ("" while none listens)
	noGauge         atomic.Bool   // a server answered /metrics without sharespot_inbox_acks_held

	hotspotID string
	main      string // the flow's session

	mu      sync.Mutex
	notes   []string          // what the clients had to recover
	resent  map[string]bool   // notes of calls sent again
	procs   map[string]bool   // procedures sent again after a connection failure
	refused map[string]string // the guest's calls the server refused, by procedure: their code
	hcs     []*http.Client
}

func newRun(bin, dir string, addr func() string) *run {
	r := &run{bin: bin, dir: dir, addr: addr, gate: &gateway.CodeGate{Address: "192.0.2.1:1080"}, resent: map[string]bool{}, procs: map[string]bool{},
		refused: map[string]string{}, hostIn: &inbox{}, guestIn: &inbox{}}
	dev := func(name string, in *inbox) *client.Client {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		resent := func(proc string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			proc = path.Base(proc)
			r.procs[proc] = true
			if note := name + " re-sent " + proc; !r.resent[note] {
				r.resent[note] = true
				r.notes = append(r.notes, note)
			}
		}
		var refused func(proc, code string)
		if name == "guest" {
			refused = func(proc, code string) {
				r.mu.Lock()
				defer r.mu.Unlock()
				r.refused[path.Base(proc)] = code
			}
		}
		hc := newHTTPClient(addr, resent, in.ackedTo, refused)
		r.hcs = append(r.hcs, hc)
		// Direct: the resending transport watches each call's request
		// (re-sends, Acks answered, refusals), which a channel would
		// carry inside its one stream.
		return client.New("http://sharespot.invalid", key, client.Options{HTTPClient: hc, DeviceName: name, Direct: true})
	}
	r.host, r.guest = dev("host", r.hostIn), dev("guest", r.guestIn)
	r.agent = &host.Agent{C: r.host, GW: r.gate}
	// The guest rides out the restarts: a call whose answer was lost is
	// sent again, finding out what the first did (never paying twice).
	r.g = &guest.Guest{C: r.guest, Retry: true, Wait: awaitTimeout}
	return r
}

// takeRefused returns, and forgets, the code of the server's last refusal
// of the guest's call proc ("" if none since the last take).
func (r *run) takeRefused(proc string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.refused[proc]
	delete(r.refused, proc)
	return c
}

func (r *run) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *run) procsSoFar() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ps []string
	for p := range r.procs {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

func (r *run) notesSoFar() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.notes)
}

func code(err error) connect.Code { return harness.Code(err) }

// signIn signs a device in, starting over when a lost response left the
// challenge used.
func (r *run) signIn(ctx context.Context, c *client.Client) error {
	var err error
	for attempt := range 5 {
		if err = c.SignIn(ctx); err == nil {
			if attempt > 0 {
				r.note("sign-in: signed in on attempt %d", attempt+1)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return err
}

// register registers the hotspot; after a lost response the retry is
// refused as a duplicate BSSID, and the host finds its hotspot in its list.
func (r *run) register(ctx context.Context) error {
	res, err := r.host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(ssid), Bssid: bssid, Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: currency, PriceMinor: 10, UnitBytes: MB, MinPurchaseBytes: 10 * MB, TopupPriceMinor: 12},
		ShareableBytes: 1000 * MB,
		WarnAtBytes:    5 * MB,
	}}))
	if err == nil {
		r.hotspotID = res.Msg.Hotspot.Id
		return nil
	}
	if code(err) != connect.CodeAlreadyExists {
		return fmt.Errorf("register: %w", err)
	}
	list, lerr := r.host.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
	if lerr != nil {
		return fmt.Errorf("register: %v; list: %w", err, lerr)
	}
	for _, h := range list.Msg.Hotspots {
		if strings.EqualFold(h.Instruction.GetAccessPoint().GetBssid(), bssid) {
			r.hotspotID = h.Id
			r.note("register: found the hotspot in the list")
			return nil
		}
	}
	return fmt.Errorf("register: %w (and it is not in the host's list)", err)
}

// fund funds the guest's wallet with the operator command, idempotently.
func (r *run) fund(ctx context.Context) error {
	args := []string{"wallet", "fund", "--data", r.dir, "--device", r.guest.DeviceID(),
		"--amount", fmt.Sprint(funded), "--currency", currency, "--key", "crashtest-funding"}
	if db := harness.DBIn(r.dir); db != "" {
		args = append(args, "--db", db)
	}
	cmd := exec.CommandContext(ctx, r.bin, args...)
	cmd.Env = harness.CleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("wallet fund: %v: %s", err, out)
	}
	return nil
}

// setup signs both devices in, starts the host agent, registers the
// hotspot, funds the guest and starts both inboxes.
func (r *run) setup(ctx context.Context) error {
	if err := r.signIn(ctx, r.host); err != nil {
		return fmt.Errorf("host sign-in: %w", err)
	}
	if err := r.signIn(ctx, r.guest); err != nil {
		return fmt.Errorf("guest sign-in: %w", err)
	}
	if err := r.agent.Start(ctx); err != nil {
		return err
	}
	if err := r.register(ctx); err != nil {
		return err
	}
	if err := r.fund(ctx); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(context.Background())
	r.recvCancel = cancel
	r.hostIn.Inbox = client.Listen(rctx, r.host, client.InboxOptions{Handle: r.hostIn.handler(r.agent.Handle)})
	// The guest acknowledges only once the host is idle too, so that the
	// two devices' acknowledgements never race into one commit.
	in, err := r.g.Listen(rctx, r.guestIn.handler(func(context.Context, *sharespotv1.Envelope) error {
		r.hostIn.waitIdle(2 * time.Second)
		r.acksWritten(2 * time.Second)
		return nil
	}))
	if err != nil {
		return err
	}
	r.guestIn.Inbox = in
	return nil
}

// stopInboxes stops both receivers (bounded) and closes the devices' idle
// connections, so that the server's graceful stop need not wait for them.
func (r *run) stopInboxes() error {
	defer func() {
		for _, hc := range r.hcs {
			hc.CloseIdleConnections()
		}
	}()
	if r.recvCancel == nil {
		return nil
	}
	r.recvCancel()
	for _, in := range []*inbox{r.hostIn, r.guestIn} {
		if err := in.Wait(10 * time.Second); err != nil {
			return err
		}
	}
	return nil
}

// settle waits until both devices are idle: the next commit is then the
// next step's, in every run.
func (r *run) settle() {
	r.guestIn.waitIdle(2 * time.Second)
	r.hostIn.waitIdle(2 * time.Second)
	r.acksWritten(2 * time.Second)
}

// acksWritten waits, up to d, until the server holds no acknowledgment
// unwritten (sharespot_inbox_acks_held is 0): an answered Ack is held and
// written about 100 ms later by a commit no call waits for (relay.Acks),
// and unless the driver waits for it, that commit floats between the
// next step's, so which call a crash at commit N catches moves from run to
// run. A server that is down holds nothing (a crash loses what it held:
// the device's cursor covers it), so the wait ends once one answers 0.
func (r *run) acksWritten(d time.Duration) bool {
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	for deadline := time.Now().Add(d); ; {
		if a := r.addr(); a != "" {
			n, err := acksHeld(hc, a)
			if errors.Is(err, errNoGauge) {
				r.noGauge.Store(true) // the wait would be a sleep: the run fails
				return false
			}
			if err == nil && n == 0 {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// acksHeld reads sharespot_inbox_acks_held from the server's /metrics.
func acksHeld(hc *http.Client, addr string) (int, error) {
	res, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(line, "sharespot_inbox_acks_held "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errNoGauge
}

var errNoGauge = errors.New("no sharespot_inbox_acks_held in the server's /metrics")

// buy is the guest's purchase of kind through guest.Session.Buy: it waits
// for the fee, pays, confirms and waits for the grant, re-sending calls
// whose answer a crash lost. After each message it acts on (the fee, the
// grant) it lets both devices go idle first. It notes each way it
// recovered a lost answer: a re-sent Pay refused as already paid (the
// receipt then comes from the quote), a re-sent Confirm refused (the
// quote's state shows it took). It returns the grant, or nil with the
// reason the session or the top-up ended instead.
func (r *run) buy(ctx context.Context, ses *guest.Session, kind sharespotv1.QuoteKind) (*sharespotv1.AccessGranted, string, error) {
	ses.Observe = func(e guest.Event) {
		switch e.Step {
		case guest.StepFee:
			r.settle()
			r.takeRefused("Pay")
			r.takeRefused("Confirm")
		case guest.StepPaid:
			if c := r.takeRefused("Pay"); c != "" {
				r.note("pay %s: %s; receipt recovered from the quote", e.Kind, c)
			}
		case guest.StepConfirmed:
			if c := r.takeRefused("Confirm"); c != "" {
				r.note("confirm %s: %s; already confirmed", e.Kind, c)
			}
		case guest.StepGranted:
			r.settle()
		}
	}
	defer func() { ses.Observe = nil }()
	grant, err := ses.Buy(ctx, kind, guest.BuyOptions{})
	var res *guest.Resolved
	if errors.As(err, &res) {
		r.settle()
		return nil, res.Why, nil
	}
	return grant, "", err
}

// awaitPrompt waits for the guest's low-quota prompt (C1.9), or the
// session's end; false: it ended.
func (r *run) awaitPrompt(ctx context.Context, ses *guest.Session) (bool, error) {
	timer := time.NewTimer(awaitTimeout)
	defer timer.Stop()
	for {
		select {
		case env := <-ses.Messages():
			prompt, ended := env.GetLowQuotaPrompt() != nil, env.GetSessionEnded() != nil
			if prompt || ended {
				r.settle()
				return prompt, nil
			}
		case <-timer.C:
			return false, fmt.Errorf("no low-quota prompt for session %s within %v", ses.ID, awaitTimeout)
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// flow runs claims 1–3 through one session, as the guest's flow
// (guest.Session) goes through it: request 100 MB, quote, pay, confirm,
// grant, low-quota prompt, top-up of 50 MB, pay, confirm, grant, usage of
// 120 MB, end. It returns completed, or resolved with why.
func (r *run) flow(ctx context.Context) (string, error) {
	if err := r.setup(ctx); err != nil {
		return "", err
	}
	res, err := r.guest.Discovery.Discover(ctx, connect.NewRequest(&sharespotv1.DiscoverRequest{
		Candidates: []*sharespotv1.Candidate{{Bssid: bssid, Ssid: []byte(ssid), SignalDbm: -48}}}))
	if err != nil {
		return "", fmt.Errorf("discover: %w", err)
	}
	if len(res.Msg.Available) != 1 || res.Msg.Available[0].HotspotId != r.hotspotID {
		return "", fmt.Errorf("available set %v, want hotspot %s", res.Msg.Available, r.hotspotID)
	}
	// A lost response to this request (the transport re-sends a request
	// whose connection failed or whose answer was cut off) is answered,
	// sent again, with the session the first made: its guest keys say it
	// is the same request. A second session would be a stray, which the
	// end of the run refuses.
	ses, err := r.g.Begin(ctx, res.Msg.Available[0], 100*MB)
	if err != nil {
		return "", fmt.Errorf("request access: %w", err)
	}
	r.main = ses.ID

	grant, why, err := r.buy(ctx, ses, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL)
	if err != nil || grant == nil {
		return resolved + ": " + why, err
	}
	accessCode, err := ses.Code(grant)
	if err != nil {
		return "", err
	}
	if vol, err := r.gate.Check(r.main, accessCode); err != nil || vol != 100*MB || grant.TotalGrantedBytes != 100*MB {
		return "", fmt.Errorf("gate check = %d, %v; total granted %d", vol, err, grant.TotalGrantedBytes)
	}

	// C1.9: the host meters 96 MB of 100 and warns. A re-sent prompt
	// warns twice, which does no harm.
	if _, err := r.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: r.main, UsedBytes: 96 * MB})); err != nil {
		return "", fmt.Errorf("prompt: %w", err)
	}
	if prompted, err := r.awaitPrompt(ctx, ses); err != nil {
		return "", err
	} else if !prompted {
		return resolved + ": ended before the prompt", nil
	}
	// C1.11: the user goes on. A re-sent request whose first copy
	// committed is refused as already under way, which the guest takes
	// as sent.
	r.takeRefused("RequestTopUp")
	if err := ses.RequestTopUp(ctx, 50*MB); err != nil {
		return "", fmt.Errorf("request top-up: %w", err)
	}
	if c := r.takeRefused("RequestTopUp"); c != "" {
		r.note("top-up request: %s (already under way)", c)
	}
	grant, why, err = r.buy(ctx, ses, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP)
	if err != nil {
		return "", err
	}
	used := int64(100 * MB)
	if grant != nil {
		if vol, err := r.gate.AwaitVolume(r.main, accessCode, 150*MB, 5*time.Second); err != nil || vol != 150*MB || grant.TotalGrantedBytes != 150*MB {
			return "", fmt.Errorf("gate volume after the top-up = %d, %v; total granted %d", vol, err, grant.TotalGrantedBytes)
		}
		used = 120 * MB
	}
	// The guest acknowledges, signed, a little less than the host will
	// report (within the credit window): a re-sent acknowledgment whose
	// first copy committed is accepted again, changing nothing.
	if _, err := ses.Acknowledge(ctx, used-512<<10); err != nil {
		return "", fmt.Errorf("acknowledge: %w", err)
	}
	if _, err := r.host.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: r.main, UsedBytes: used})); err != nil {
		return "", fmt.Errorf("report usage: %w", err)
	}
	// The guest ends; the host agent's final count settles the session.
	s, err := ses.End(ctx, "done")
	if err != nil {
		return "", fmt.Errorf("end: %w", err)
	}
	if grant == nil {
		return resolved + ": top-up " + why, nil
	}
	// 1600 paid; 120 of 150 MB used: the first tranche whole (100 MB,
	// 1000) and 20 MB of the top-up at 12 per MB (240): 1240 charged, 62
	// of it the platform's fee, 1178 to the host, 360 back.
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.SettledHostMinor != 1178 || s.SettledFeeMinor != 62 || s.RefundedMinor != 360 {
		return "", fmt.Errorf("settlement = %v", s)
	}
	return completed, nil
}

// endAll ends every session either device heard of (the flow's, and any a
// lost RequestAccess response left behind), until no new one turns up.
func (r *run) endAll(ctx context.Context) error {
	ended := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	quiet := 0
	for quiet < 2 {
		if time.Now().After(deadline) {
			return errors.New("end all sessions: still finding new ones after 10s")
		}
		ids := append(r.hostIn.sessions(), r.guestIn.sessions()...)
		if r.main != "" {
			ids = append(ids, r.main)
		}
		fresh := false
		for _, id := range ids {
			if ended[id] {
				continue
			}
			fresh = true
			s, err := r.guest.EndAndSettle(ctx, id, "crash test over")
			if err != nil {
				return fmt.Errorf("end session %s: %w", id, err)
			}
			if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED {
				return fmt.Errorf("session %s not ended: %v", id, s)
			}
			ended[id] = true
			if id != r.main {
				return fmt.Errorf("session %s is a stray beside the flow's %s: a request sent again made a second session", id, r.main)
			}
		}
		if fresh {
			quiet = 0
		} else {
			quiet++
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Each party's last message of a session (SessionEnded) may still be
	// on its way when End has answered: wait for them (bounded), so that
	// the delivery check finds them handled rather than in flight. Any
	// still missing after that is the check's to report.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if endedHandled(r.hostIn, ended) && endedHandled(r.guestIn, ended) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.hostIn.waitIdle(2 * time.Second)
	r.guestIn.waitIdle(2 * time.Second)
	return nil
}

// endedHandled reports whether in handled a SessionEnded of every session
// in ended.
func endedHandled(in *inbox, ended map[string]bool) bool {
	seen := map[string]bool{}
	for _, m := range in.Handled() {
		if strings.HasSuffix(m.Body, "_SessionEnded") {
			seen[m.Session] = true
		}
	}
	for id := range ended {
		if !seen[id] {
			return false
		}
	}
	return true
}

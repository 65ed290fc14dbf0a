package crashtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/loadgen"
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

// inbox receives one device's inbox for the application: in order, each
// message once, keeping its cursor in memory across server restarts. It
// also knows when the device is idle (no message being handled, every
// handled one acknowledged), which the flow waits for so that its commits
// come in the same order in every run.
type inbox struct {
	mu       sync.Mutex
	msgs     []handledMsg
	cursor   uint64 // where Receive resumes
	busy     bool   // a message is being handled
	acked    uint64 // highest sequence whose Ack the server answered
	failures []string
	done     chan struct{}
}

// listen runs c's inbox into in until ctx ends. h handles each message
// first (the host agent); out, if not nil, then gets it.
func listen(ctx context.Context, c *client.Client, in *inbox, h client.Handler, out chan<- *sharespotv1.Envelope) {
	in.done = make(chan struct{})
	handle := func(ctx context.Context, env *sharespotv1.Envelope) error {
		in.mu.Lock()
		in.busy = true
		in.mu.Unlock()
		defer func() {
			in.mu.Lock()
			in.busy = false
			in.mu.Unlock()
		}()
		if h != nil {
			if err := h(ctx, env); err != nil {
				return err
			}
		}
		m := client.HandledOf(env)
		in.mu.Lock()
		in.msgs = append(in.msgs, m)
		in.mu.Unlock()
		if out != nil {
			select {
			case out <- env:
			case <-ctx.Done():
			}
		}
		return nil
	}
	go func() {
		defer close(in.done)
		for ctx.Err() == nil {
			in.mu.Lock()
			after := in.cursor
			in.mu.Unlock()
			err := c.Receive(ctx, after, handle, func(seq uint64) {
				in.mu.Lock()
				in.cursor = seq
				in.mu.Unlock()
			})
			if ctx.Err() != nil {
				return
			}
			// The handler failed: the message stays unacknowledged and
			// comes again.
			in.mu.Lock()
			in.failures = append(in.failures, err.Error())
			in.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

// ackedTo records an answered Ack (told by the device's transport).
func (in *inbox) ackedTo(seq uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.acked = max(in.acked, seq)
}

// waitIdle waits, up to d, until the device handles nothing and has
// acknowledged at least seq and everything it handled. It reports whether
// it got there.
func (in *inbox) waitIdle(seq uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		in.mu.Lock()
		last := uint64(0)
		if n := len(in.msgs); n > 0 {
			last = in.msgs[n-1].Seq
		}
		idle := !in.busy && in.acked >= max(seq, last)
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

func (in *inbox) handled() []handledMsg {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.msgs)
}

func (in *inbox) sessions() []string {
	var ids []string
	for _, m := range in.handled() {
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
	guestCh         chan *sharespotv1.Envelope

	hotspotID string
	main      string // the flow's session

	mu     sync.Mutex
	notes  []string        // what the clients had to recover
	resent map[string]bool // notes of calls sent again
	procs  map[string]bool // procedures sent again after a connection failure
	hcs    []*http.Client
}

func newRun(bin, dir string, addr func() string) *run {
	r := &run{bin: bin, dir: dir, gate: &gateway.CodeGate{Address: "192.0.2.1:1080"}, resent: map[string]bool{}, procs: map[string]bool{},
		hostIn: &inbox{}, guestIn: &inbox{}}
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
		hc := newHTTPClient(addr, resent, in.ackedTo)
		r.hcs = append(r.hcs, hc)
		return client.New("http://sharespot.invalid", key, client.Options{HTTPClient: hc, DeviceName: name})
	}
	r.host, r.guest = dev("host", r.hostIn), dev("guest", r.guestIn)
	r.agent = &host.Agent{C: r.host, GW: r.gate}
	r.g = &guest.Guest{C: r.guest}
	r.guestCh = make(chan *sharespotv1.Envelope, 1024)
	return r
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
	listen(rctx, r.host, r.hostIn, r.agent.Handle, nil)
	// The guest acknowledges only once the host is idle too, so that the
	// two devices' acknowledgements never race into one commit.
	listen(rctx, r.guest, r.guestIn, func(context.Context, *sharespotv1.Envelope) error {
		r.hostIn.waitIdle(0, 2*time.Second)
		return nil
	}, r.guestCh)
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
		select {
		case <-in.done:
		case <-time.After(10 * time.Second):
			return errors.New("an inbox receiver did not stop within 10s")
		}
	}
	return nil
}

// await waits for the guest's next message of session sid that match
// accepts, or the session's end.
func (r *run) await(ctx context.Context, sid, what string, match func(*sharespotv1.Envelope) bool) (*sharespotv1.Envelope, error) {
	timer := time.NewTimer(awaitTimeout)
	defer timer.Stop()
	for {
		select {
		case env := <-r.guestCh:
			if env.SessionId != sid {
				continue // a stray session: ended at the end of the run
			}
			if _, ended := env.Body.(*sharespotv1.Envelope_SessionEnded); ended || match(env) {
				// Act only once both devices are idle: the next commit
				// is then the next step's, in every run.
				r.guestIn.waitIdle(env.Seq, 2*time.Second)
				r.hostIn.waitIdle(0, 2*time.Second)
				return env, nil
			}
		case <-timer.C:
			return nil, fmt.Errorf("no %s for session %s within %v", what, sid, awaitTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (r *run) get(ctx context.Context, c *client.Client, sid string) (*sharespotv1.Session, error) {
	res, err := c.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
	if err != nil {
		return nil, fmt.Errorf("get session %s: %w", sid, err)
	}
	return res.Msg.Session, nil
}

func quoteOf(s *sharespotv1.Session, id string) *sharespotv1.Quote {
	for _, q := range s.Quotes {
		if q.Id == id {
			return q
		}
	}
	return nil
}

// pay is C3.2 / C1.13. When the response is lost (the re-sent call is
// refused: already paid), the receipt comes from Sessions.Get: never pay
// twice.
func (r *run) pay(ctx context.Context, sid string, q *sharespotv1.Quote) (*sharespotv1.Receipt, error) {
	res, err := r.guest.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id}))
	if err == nil {
		return res.Msg.Receipt, nil
	}
	s, gerr := r.get(ctx, r.guest, sid)
	if gerr != nil {
		return nil, fmt.Errorf("pay %s: %v; %w", q.Id, err, gerr)
	}
	if x := quoteOf(s, q.Id); x != nil && x.Receipt != nil {
		r.note("pay %s: %v; receipt recovered from Sessions.Get", q.Kind, code(err))
		return x.Receipt, nil
	}
	return nil, fmt.Errorf("pay %s: %w", q.Id, err)
}

// confirm is C3.3 / C1.14. A re-sent confirmation whose first copy
// committed is refused; the quote's state tells.
func (r *run) confirm(ctx context.Context, sid string, q *sharespotv1.Quote, rc *sharespotv1.Receipt) error {
	_, err := r.guest.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: sid, Receipt: rc}))
	if err == nil {
		return nil
	}
	s, gerr := r.get(ctx, r.guest, sid)
	if gerr != nil {
		return fmt.Errorf("confirm: %v; %w", err, gerr)
	}
	if x := quoteOf(s, q.Id); x != nil && (x.State == sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED || x.State == sharespotv1.QuoteState_QUOTE_STATE_GRANTED) {
		r.note("confirm %s: %v; already confirmed", q.Kind, code(err))
		return nil
	}
	return fmt.Errorf("confirm %s: %w", q.Id, err)
}

// buy waits for the fee information of kind, pays, confirms and waits for
// the grant. It returns the grant, or nil with the reason the session or
// the top-up ended instead.
func (r *run) buy(ctx context.Context, kind sharespotv1.QuoteKind) (*sharespotv1.AccessGranted, string, error) {
	sid := r.main
	env, err := r.await(ctx, sid, "fee information", func(env *sharespotv1.Envelope) bool {
		fi, ok := env.Body.(*sharespotv1.Envelope_FeeInfo)
		d, declined := env.Body.(*sharespotv1.Envelope_Declined)
		return ok && fi.FeeInfo.Quote.Kind == kind || declined && d.Declined.Kind == kind
	})
	if err != nil {
		return nil, "", err
	}
	fi, ok := env.Body.(*sharespotv1.Envelope_FeeInfo)
	if !ok {
		return nil, "no fee information: " + loadgen.Describe(env), nil
	}
	q := fi.FeeInfo.Quote
	rc, err := r.pay(ctx, sid, q)
	if err != nil {
		return nil, "", err
	}
	if err := r.confirm(ctx, sid, q, rc); err != nil {
		return nil, "", err
	}
	env, err = r.await(ctx, sid, "access response", func(env *sharespotv1.Envelope) bool {
		g, ok := env.Body.(*sharespotv1.Envelope_AccessGranted)
		d, declined := env.Body.(*sharespotv1.Envelope_Declined)
		return ok && g.AccessGranted.QuoteId == q.Id || declined && d.Declined.Kind == kind
	})
	if err != nil {
		return nil, "", err
	}
	g, ok := env.Body.(*sharespotv1.Envelope_AccessGranted)
	if !ok {
		return nil, "no grant: " + loadgen.Describe(env), nil
	}
	return g.AccessGranted, "", nil
}

// flow runs claims 1–3 through one session: request 100 MB, quote, pay,
// confirm, grant, low-quota prompt, top-up of 50 MB, pay, confirm, grant,
// usage of 120 MB, end. It returns completed, or resolved with why.
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
	// whose connection failed or whose answer was cut off) leaves a stray
	// session behind the one the retry creates; it is ended with the
	// others at the end.
	ses, err := r.g.RequestAccess(ctx, r.hotspotID, 100*MB)
	if err != nil {
		return "", fmt.Errorf("request access: %w", err)
	}
	r.main = ses.Id

	grant, why, err := r.buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL)
	if err != nil || grant == nil {
		return resolved + ": " + why, err
	}
	accessCode, err := r.g.OpenCode(r.main, r.host.DeviceID(), grant.SealedCode)
	if err != nil {
		return "", fmt.Errorf("open the access code: %w", err)
	}
	if vol, err := r.gate.Check(r.main, accessCode); err != nil || vol != 100*MB || grant.TotalGrantedBytes != 100*MB {
		return "", fmt.Errorf("gate check = %d, %v; total granted %d", vol, err, grant.TotalGrantedBytes)
	}

	// C1.9: the host meters 96 MB of 100 and warns. A re-sent prompt
	// warns twice, which does no harm.
	if _, err := r.host.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: r.main, UsedBytes: 96 * MB})); err != nil {
		return "", fmt.Errorf("prompt: %w", err)
	}
	env, err := r.await(ctx, r.main, "low-quota prompt", func(env *sharespotv1.Envelope) bool {
		_, ok := env.Body.(*sharespotv1.Envelope_LowQuotaPrompt)
		return ok
	})
	if err != nil {
		return "", err
	}
	if _, ok := env.Body.(*sharespotv1.Envelope_LowQuotaPrompt); !ok {
		return resolved + ": ended before the prompt", nil
	}
	// C1.11: the user goes on. A re-sent request whose first copy
	// committed is refused as already under way.
	if _, err := r.guest.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: r.main, Bytes: 50 * MB})); err != nil {
		if code(err) != connect.CodeFailedPrecondition {
			return "", fmt.Errorf("request top-up: %w", err)
		}
		r.note("top-up request: %v (already under way)", code(err))
	}
	grant, why, err = r.buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP)
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
	if _, err := r.guest.Acknowledge(ctx, r.main, used-512<<10); err != nil {
		return "", fmt.Errorf("acknowledge: %w", err)
	}
	if _, err := r.host.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: r.main, UsedBytes: used})); err != nil {
		return "", fmt.Errorf("report usage: %w", err)
	}
	// The guest ends; the host agent's final count settles the session.
	s, err := r.guest.EndAndSettle(ctx, r.main, "done")
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
				r.note("ended a stray session")
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
	r.hostIn.waitIdle(0, 2*time.Second)
	r.guestIn.waitIdle(0, 2*time.Second)
	return nil
}

// endedHandled reports whether in handled a SessionEnded of every session
// in ended.
func endedHandled(in *inbox, ended map[string]bool) bool {
	seen := map[string]bool{}
	for _, m := range in.handled() {
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

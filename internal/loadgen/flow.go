package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
)

// Steps of a flow, in order, as the report names them. Each is timed from
// the guest's (or, for the prompt, the host's) call until the guest has
// the step's result: a call's answer, or the message it waits for in its
// inbox, which crossed the relay and, for quotes and grants, the host's
// agent.
var Steps = []string{
	"request→fee", "pay", "confirm→grant", "prompt", "topup→fee", "topup pay", "topup confirm→grant", "ack", "end+settle", "flow",
}

// FlowConfig shapes each flow.
type FlowConfig struct {
	RequestBytes int64 // initial purchase (default 10 MB)
	TopUpBytes   int64 // top-up (default 5 MB)
	// StepTimeout bounds every wait for an inbox message (default 30 s).
	StepTimeout time.Duration
}

func (c *FlowConfig) defaults() {
	if c.RequestBytes == 0 {
		c.RequestBytes = 10 * mb
	}
	if c.TopUpBytes == 0 {
		c.TopUpBytes = 5 * mb
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = 30 * time.Second
	}
}

// Outcome is how one flow ended.
type Outcome int

const (
	// Completed: every step, and the settlement checked.
	Completed Outcome = iota
	// Resolved: the server moved the session on (a deadline, a decline)
	// before the flow finished; the money must still be right.
	Resolved
	// Failed: an error the flow could not ride out.
	Failed
)

// FlowResult is one flow's result.
type FlowResult struct {
	Outcome  Outcome
	Sessions []string // every session the flow opened
	Why      string   // for Resolved and Failed
	ErrKind  string   // for Failed: step and code
	Err      error
}

// Recorder collects per-step latencies and errors across flows.
type Recorder struct {
	steps map[string]*Samples
	Errs  Errors
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	r := &Recorder{steps: map[string]*Samples{}}
	for _, s := range Steps {
		r.steps[s] = &Samples{}
	}
	return r
}

func (r *Recorder) add(step string, d time.Duration) {
	if r != nil {
		r.steps[step].Add(d)
	}
}

// Summaries returns each step's distribution.
func (r *Recorder) Summaries() map[string]Summary {
	out := map[string]Summary{}
	for k, s := range r.steps {
		if sum := s.Summary(); sum.Count > 0 {
			out[k] = sum
		}
	}
	return out
}

// flowRun is one flow's state.
type flowRun struct {
	f         *Fleet
	cfg       FlowConfig
	g         *Guest
	h         *Host
	rec       *Recorder
	resilient bool
	res       FlowResult
}

// errResolved ends a flow early without failing it.
type errResolved struct{ why string }

func (e errResolved) Error() string { return e.why }

// RunFlow runs one complete paid flow with a top-up between guest g and
// host h: request → fee → pay → confirm → grant (code opened and checked
// at the host's gate) → low-quota prompt → top-up → fee → pay → confirm →
// grant → end and settle (amounts checked). The session is always ended,
// also when the flow fails.
func (f *Fleet) RunFlow(ctx context.Context, g *Guest, h *Host, cfg FlowConfig, rec *Recorder) FlowResult {
	cfg.defaults()
	g.G.Wait = cfg.StepTimeout // one flow at a time per guest
	r := &flowRun{f: f, cfg: cfg, g: g, h: h, rec: rec, resilient: f.cfg.Resilient}
	t0 := time.Now()
	err := r.run(ctx)
	var res errResolved
	switch {
	case err == nil:
		r.res.Outcome = Completed
		rec.add("flow", time.Since(t0))
	case errors.As(err, &res):
		r.res.Outcome, r.res.Why = Resolved, res.why
	default:
		r.res.Outcome, r.res.Err, r.res.Why = Failed, err, err.Error()
	}
	// Whatever happened, leave no session open (as a guest app that gives
	// up does); bounded, and a failure here only adds to the errors.
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.StepTimeout)
	defer cancel()
	for _, sid := range r.res.Sessions {
		g.In.Drop(sid)
		g.G.Forget(sid)
		if r.res.Outcome == Completed && sid == r.res.Sessions[len(r.res.Sessions)-1] {
			continue // ended and settled by the flow
		}
		if err := retry(ectx, true, func() error {
			_, err := g.C.Sessions.End(ectx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, Reason: "bench: flow over"}))
			return err
		}); err != nil {
			r.res.Outcome, r.res.ErrKind = Failed, "cleanup end: "+connect.CodeOf(err).String()
			r.res.Err = errors.Join(r.res.Err, fmt.Errorf("end session %s after the flow: %w", sid, err))
		}
	}
	return r.res
}

// fail names the step an error happened in.
func (r *flowRun) fail(step string, err error) error {
	var res errResolved
	if errors.As(err, &res) {
		return err
	}
	if r.res.ErrKind == "" {
		kind := "timeout"
		var ce *connect.Error
		if errors.As(err, &ce) {
			kind = ce.Code().String()
		} else if errors.Is(err, context.Canceled) {
			kind = "canceled"
		}
		r.res.ErrKind = step + ": " + kind
	}
	return fmt.Errorf("%s: %w", step, err)
}

func (r *flowRun) run(ctx context.Context) error {
	g, h := r.g, r.h
	// C1.5–C1.6. A lost answer leaves a stray session behind the one the
	// re-sent request opens; RunFlow ends it with the others.
	t := time.Now()
	var ses *guest.Session
	err := retry(ctx, r.resilient, func() error {
		s, err := g.G.BeginHotspot(ctx, h.Hotspot.Id, r.cfg.RequestBytes)
		if err == nil {
			ses = s
			r.res.Sessions = append(r.res.Sessions, s.ID)
		}
		return err
	})
	if err != nil {
		return r.fail("request", err)
	}
	sid := ses.ID
	grant, err := r.buy(ctx, ses, t, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, "request→fee", "pay", "confirm→grant")
	if err != nil {
		return err
	}
	// C1.8: the guest opens the sealed code; the host's gate accepts it
	// for exactly the granted volume.
	code, err := ses.Code(grant)
	if err != nil {
		return r.fail("open code", err)
	}
	if vol, err := h.Gate.Check(sid, code); err != nil || vol != r.cfg.RequestBytes {
		return r.fail("gate", fmt.Errorf("the gate admits %d bytes (%v), want %d", vol, err, r.cfg.RequestBytes))
	}

	// C1.9: the host's meter crosses the threshold and the host prompts.
	used := r.cfg.RequestBytes - min(r.f.cfg.WarnAtBytes/2, r.cfg.RequestBytes/2)
	t = time.Now()
	if err := retry(ctx, r.resilient, func() error {
		_, err := h.C.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: sid, UsedBytes: used}))
		return err
	}); err != nil {
		return r.fail("prompt", err)
	}
	if err := r.awaitPrompt(ctx, ses); err != nil {
		return r.fail("prompt", err)
	}
	r.rec.add("prompt", time.Since(t))

	// C1.11–C1.15: the guest goes on.
	t = time.Now()
	if err := ses.RequestTopUp(ctx, r.cfg.TopUpBytes); err != nil {
		return r.fail("topup", err)
	}
	grant, err = r.buy(ctx, ses, t, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, "topup→fee", "topup pay", "topup confirm→grant")
	if err != nil {
		return err
	}
	total := r.cfg.RequestBytes + r.cfg.TopUpBytes
	if grant.TotalGrantedBytes != total {
		return r.fail("topup grant", fmt.Errorf("total granted %d, want %d", grant.TotalGrantedBytes, total))
	}
	if vol, err := h.Gate.AwaitVolume(sid, code, total, 5*time.Second); err != nil || vol != total {
		return r.fail("gate", fmt.Errorf("after the top-up the gate admits %d bytes (%v), want %d", vol, err, total))
	}

	// The guest acknowledges, signed, a little less than the host will
	// count (within the credit window, so the bill is the host's count):
	// settlement and the audits check the evidence rule on every flow.
	final := total - r.cfg.TopUpBytes/2
	t = time.Now()
	if _, err := ses.Acknowledge(ctx, final-min(final, 256<<10)); err != nil {
		return r.fail("ack", err)
	}
	r.rec.add("ack", time.Since(t))
	return r.hostEnds(ctx, sid, final)
}

// hostEnds is the host's End with its final usage; the server settles,
// and the settlement is checked.
func (r *flowRun) hostEnds(ctx context.Context, sid string, final int64) error {
	t := time.Now()
	var end *sharespotv1.Session
	if err := retry(ctx, r.resilient, func() error {
		res, err := r.h.C.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, UsedBytes: final, Reason: "bench"}))
		if err == nil {
			end = res.Msg.Session
		}
		return err
	}); err != nil {
		return r.fail("end", err)
	}
	r.rec.add("end+settle", time.Since(t))
	if end.State != sharespotv1.SessionState_SESSION_STATE_ENDED {
		return r.fail("settle", fmt.Errorf("session %s is %v after End", sid, end.State))
	}
	if end.UsedBytes != final {
		// A usage the server already had could only be higher (a re-sent
		// End after a restart carries the same figure).
		return r.fail("settle", fmt.Errorf("session %s settled on %d bytes used, want %d", sid, end.UsedBytes, final))
	}
	if end.SettledHostMinor+end.SettledFeeMinor+end.RefundedMinor != end.PaidMinor {
		return r.fail("settle", fmt.Errorf("session %s: host %d + fee %d + refund %d != paid %d", sid,
			end.SettledHostMinor, end.SettledFeeMinor, end.RefundedMinor, end.PaidMinor))
	}
	return nil
}

// buy runs the guest's purchase of kind (guest.Session.Buy), timing its
// steps from t: until the fee, the payment, and the confirmation until the
// grant.
func (r *flowRun) buy(ctx context.Context, ses *guest.Session, t time.Time, kind sharespotv1.QuoteKind, feeStep, payStep, grantStep string) (*sharespotv1.AccessGranted, error) {
	step := feeStep
	ses.Observe = func(e guest.Event) {
		switch e.Step {
		case guest.StepFee:
			r.rec.add(feeStep, time.Since(t))
			t, step = time.Now(), payStep
		case guest.StepPaid:
			r.rec.add(payStep, time.Since(t))
			t, step = time.Now(), grantStep
		case guest.StepGranted:
			r.rec.add(grantStep, time.Since(t))
		}
	}
	defer func() { ses.Observe = nil }()
	gr, err := ses.Buy(ctx, kind, guest.BuyOptions{})
	var res *guest.Resolved
	if errors.As(err, &res) {
		return nil, errResolved{res.Why}
	}
	if err != nil {
		return nil, r.fail(step, err)
	}
	return gr, nil
}

// awaitPrompt waits for the guest's low-quota prompt, or the session's end
// (errResolved).
func (r *flowRun) awaitPrompt(ctx context.Context, ses *guest.Session) error {
	timer := time.NewTimer(r.cfg.StepTimeout)
	defer timer.Stop()
	for {
		select {
		case env := <-ses.Messages():
			if env.GetLowQuotaPrompt() != nil {
				return nil
			}
			if env.GetSessionEnded() != nil {
				return errResolved{Describe(env)}
			}
		case <-timer.C:
			return fmt.Errorf("no answer in the inbox within %v", r.cfg.StepTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Describe names what ended a step instead of the awaited message: the
// session's end or a declined top-up, with the reason.
func Describe(env *sharespotv1.Envelope) string {
	switch b := env.Body.(type) {
	case *sharespotv1.Envelope_SessionEnded:
		return "session ended: " + b.SessionEnded.Session.GetEndReason()
	case *sharespotv1.Envelope_Declined:
		return "declined: " + b.Declined.Reason
	}
	return fmt.Sprintf("%T", env.Body)
}

// LoadConfig is an open-loop run.
type LoadConfig struct {
	Rate     float64       // flows started per second
	Duration time.Duration // how long flows are offered
	// MaxInFlight bounds flows under way; a flow due while that many run
	// (or while no guest is free: each guest runs one flow at a time) is
	// not started and counts as dropped. Default: the number of guests.
	MaxInFlight int
	// Drain bounds the wait for flows under way after Duration.
	Drain time.Duration
	Flow  FlowConfig
	// Seed picks hosts for flows (reproducible choices).
	Seed uint64
	// ServerPID is the server's process, whose CPU the report gives per
	// completed flow (0: none to read; the bench's own CPU only).
	ServerPID int
}

// LoadReport is what an open-loop run measured.
type LoadReport struct {
	Hosts  int `json:"hosts"`
	Guests int `json:"guests"`
	// Transport is what the devices spoke ("h2c", "TLS 1.3"), as the
	// caller found out (ProbeTransport).
	Transport    string             `json:"transport,omitempty"`
	TargetRate   float64            `json:"target_flows_per_s"`
	DurationS    float64            `json:"duration_s"`
	MaxInFlight  int                `json:"max_in_flight"`
	Offered      int64              `json:"offered"`
	Started      int64              `json:"started"`
	Dropped      int64              `json:"dropped"`
	Completed    int64              `json:"completed"`
	Resolved     int64              `json:"resolved"`
	Failed       int64              `json:"failed"`
	Unfinished   int64              `json:"unfinished"`
	OfferedRate  float64            `json:"offered_flows_per_s"`
	StartedRate  float64            `json:"started_flows_per_s"`
	AcceptedRate float64            `json:"completed_flows_per_s"`
	ElapsedS     float64            `json:"elapsed_s"`
	MaxLagMS     float64            `json:"max_start_lag_ms"`
	Latency      map[string]Summary `json:"latency"`
	Errors       map[string]int     `json:"errors"`
	ErrorExample map[string]string  `json:"error_examples,omitempty"`
	Sessions     []string           `json:"-"`
	// CPU is what the server and the bench used from the first flow's
	// start until the last flow's end, per completed flow.
	CPU       *CPUReport `json:"cpu,omitempty"`
	Yardstick *Yardstick `json:"yardstick,omitempty"`
	// CallFloor is the server's CPU per bare call, measured before the
	// run: CPU.ServerPerUnitMS read in calls is CallFloor.InCalls of it.
	CallFloor *CallFloor `json:"call_floor,omitempty"`
}

// RunLoad offers flows at cfg.Rate for cfg.Duration, open loop: each flow
// starts at its scheduled time whatever earlier flows are doing, unless
// MaxInFlight are under way (then it is dropped). It waits for the flows
// under way (up to Drain) and reports. An error with a report is the
// server's CPU that could not be read (the process gone).
func (f *Fleet) RunLoad(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	if cfg.MaxInFlight <= 0 || cfg.MaxInFlight > len(f.Guests) {
		cfg.MaxInFlight = len(f.Guests)
	}
	if cfg.Drain == 0 {
		cfg.Drain = 60 * time.Second
	}
	rec := NewRecorder()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))
	free := make(chan *Guest, len(f.Guests))
	for _, g := range f.Guests {
		free <- g
	}
	var (
		inFlight                                 atomic.Int64
		started, dropped, done, resolved, failed atomic.Int64
		wg                                       sync.WaitGroup
		mu                                       sync.Mutex
		sessions                                 []string
		maxLag                                   time.Duration
	)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	meter, err := StartCPU(cfg.ServerPID)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	var offered int64
	for k := int64(0); ; k++ {
		due := start.Add(time.Duration(k) * interval)
		if due.Sub(start) >= cfg.Duration || ctx.Err() != nil {
			break
		}
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		} else if -d > maxLag {
			maxLag = -d
		}
		offered++
		h := f.Hosts[rng.IntN(len(f.Hosts))]
		if inFlight.Load() >= int64(cfg.MaxInFlight) {
			dropped.Add(1)
			continue
		}
		var g *Guest
		select {
		case g = <-free:
		default:
			dropped.Add(1)
			continue
		}
		inFlight.Add(1)
		started.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inFlight.Add(-1)
			res := f.RunFlow(fctx, g, h, cfg.Flow, rec)
			free <- g
			mu.Lock()
			sessions = append(sessions, res.Sessions...)
			mu.Unlock()
			switch res.Outcome {
			case Completed:
				done.Add(1)
			case Resolved:
				resolved.Add(1)
				rec.Errs.Add("resolved early: "+firstWords(res.Why, 4), errors.New(res.Why))
			default:
				failed.Add(1)
				rec.Errs.Add(res.ErrKind, res.Err)
			}
		}()
	}
	offerEnd := time.Since(start)
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(cfg.Drain):
		cancel()
		<-waited
	}
	elapsed := time.Since(start)
	rep := &LoadReport{Hosts: len(f.Hosts), Guests: len(f.Guests), TargetRate: cfg.Rate, DurationS: cfg.Duration.Seconds(), MaxInFlight: cfg.MaxInFlight,
		Offered: offered, Started: started.Load(), Dropped: dropped.Load(), Completed: done.Load(), Resolved: resolved.Load(), Failed: failed.Load(),
		ElapsedS: elapsed.Seconds(), MaxLagMS: ms(maxLag), Latency: rec.Summaries(), Errors: rec.Errs.Counts(), ErrorExample: rec.Errs.Examples(), Sessions: sessions}
	rep.Unfinished = rep.Started - rep.Completed - rep.Resolved - rep.Failed
	rep.OfferedRate = float64(offered) / offerEnd.Seconds()
	rep.StartedRate = float64(rep.Started) / offerEnd.Seconds()
	rep.AcceptedRate = float64(rep.Completed) / elapsed.Seconds()
	cpu, err := meter.Stop(rep.Completed, "flow")
	if err != nil {
		return rep, err // the report holds, without the server's CPU
	}
	rep.CPU = &cpu
	return rep, nil
}

func firstWords(s string, n int) string {
	words := 0
	for i, c := range s {
		if c == ' ' {
			if words++; words == n {
				return s[:i]
			}
		}
	}
	return s
}

// WriteTable writes the report for people.
func (rep *LoadReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "open loop%s: %d hosts, %d guests, target %.1f flows/s for %.0fs, at most %d in flight\n",
		over(rep.Transport), rep.Hosts, rep.Guests, rep.TargetRate, rep.DurationS, rep.MaxInFlight)
	fmt.Fprintf(w, "offered %d (%.1f/s), started %d (%.1f/s), dropped %d (max in flight or no free guest)\n",
		rep.Offered, rep.OfferedRate, rep.Started, rep.StartedRate, rep.Dropped)
	fmt.Fprintf(w, "completed %d (%.1f flows/s over %.1fs), resolved early %d, failed %d, unfinished %d; worst start lag %.1f ms\n\n",
		rep.Completed, rep.AcceptedRate, rep.ElapsedS, rep.Resolved, rep.Failed, rep.Unfinished, rep.MaxLagMS)
	writeLatencyTable(w, Steps, rep.Latency)
	writeCounts(w, "\nerrors by kind:", rep.Errors, rep.ErrorExample)
	if rep.CPU != nil {
		rep.CPU.WriteTable(w)
	}
	if rep.Yardstick != nil {
		rep.Yardstick.WriteTable(w)
	}
	rep.CallFloor.writeAgainst(w, rep.CPU)
}

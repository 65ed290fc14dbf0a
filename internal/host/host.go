// Package host is the host's side of Sharespot: the agent that answers the
// inbox (quote, verify, seal, grant, close; agent.go), the metering
// gateway it admits guests at, and the loop that runs both and turns the
// gateway's events into low-quota prompts (C1.9) and usage reports
// (host.go). `sharespot share` and `sharespot demo` run it; so do the
// suites and the bench.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/atomicfile"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
)

// Host is a running host.
type Host struct {
	C  *client.Client
	GW gateway.Gateway
	// Kind is the gateway's kind as guests are told it (default "proxy").
	Kind string
	// Threshold: the hotspot's low-quota warning level.
	Threshold int64
	// Decide may refuse requests; nil accepts all at the tariff.
	Decide func(*sharespotv1.AccessRequested) (bool, string)
	// CursorFile, if set, persists the last inbox message processed, so a
	// restarted host handles each message once.
	CursorFile string
	// CodeKey derives access codes (see Agent.CodeKey).
	CodeKey []byte
	// ReportEvery is how often usage of active sessions is reported.
	ReportEvery time.Duration
	// Notify, if set, hears what happens (for a live view).
	Notify func(what string, sessionID string, used, quota int64)
	// OnEvent, if set, hears every metering event of the gateway (metrics).
	OnEvent func(gateway.Event)
	Log     *slog.Logger

	mu       sync.Mutex
	active   map[string]bool
	prompted map[string]int64 // the volume each session was last prompted at
}

// Run serves until ctx ends.
func (h *Host) Run(ctx context.Context) error {
	if h.Log == nil {
		h.Log = slog.New(slog.DiscardHandler)
	}
	if h.ReportEvery <= 0 {
		h.ReportEvery = 5 * time.Second
	}
	if h.Notify == nil {
		h.Notify = func(string, string, int64, int64) {}
	}
	h.active = map[string]bool{}
	h.prompted = map[string]int64{}
	kind := h.Kind
	if kind == "" {
		kind = "proxy"
	}
	agent := &Agent{C: h.C, GW: h.GW, Kind: kind, Threshold: h.Threshold, Decide: h.Decide, Log: h.Log, CodeKey: h.CodeKey}
	// The server may be away as the host starts (or stop just then): keep
	// trying, so the gateway's guests are not cut off by an outage.
	for backoff := 200 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := agent.Start(ctx)
		if err == nil {
			err = h.resume(ctx, agent)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		h.Log.Warn("cannot reach the server; trying again", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.events(ctx) }()
	go func() { defer wg.Done(); h.report(ctx) }()
	after := h.loadCursor()
	err := h.C.Receive(ctx, after, func(ctx context.Context, env *sharespotv1.Envelope) error {
		if err := h.handle(ctx, agent, env); err != nil {
			return err
		}
		switch b := env.Body.(type) {
		case *sharespotv1.Envelope_AccessRequested:
			h.Notify("request", env.SessionId, 0, b.AccessRequested.Bytes)
		case *sharespotv1.Envelope_PaymentConfirmed:
			h.setActive(env.SessionId, true)
			used, quota, _ := h.GW.Usage(env.SessionId)
			h.Notify("granted", env.SessionId, used, quota)
		case *sharespotv1.Envelope_SessionEnding:
			h.Notify("ending", env.SessionId, 0, 0)
		case *sharespotv1.Envelope_SessionEnded:
			h.setActive(env.SessionId, false)
			s := b.SessionEnded.Session
			h.Notify("ended", env.SessionId, s.UsedBytes, s.SettledHostMinor)
		}
		return nil
	}, h.saveCursor)
	wg.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// handle runs the agent on one message, retrying transport failures a few
// times. A message that still fails is logged and skipped (acknowledged):
// the server's deadlines then move its session on (a paid guest is
// refunded), which beats stopping the whole host.
func (h *Host) handle(ctx context.Context, agent *Agent, env *sharespotv1.Envelope) error {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := agent.Handle(ctx, env)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt == 5 {
			h.Log.Error("giving up on an inbox message", "session", env.SessionId, "seq", env.Seq, "err", err)
			return nil
		}
		h.Log.Warn("handling an inbox message failed; retrying", "session", env.SessionId, "seq", env.Seq, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// LoadOrCreateKey reads a 32-byte secret from path, creating it (mode
// 0600) on first use.
func LoadOrCreateKey(path string) ([]byte, error) {
	b, err := atomicfile.LoadOrCreateSecret(path, 32)
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	return b, nil
}

// resume picks up the host's open sessions from the server after a
// restart: the gate gets what the server granted (a crash may have come
// between a grant and the gate), and a session the guest ended while the
// host was away gets its final count.
func (h *Host) resume(ctx context.Context, agent *Agent) error {
	res, err := h.C.Sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
	if err != nil {
		return err
	}
	for _, s := range res.Msg.Sessions {
		if s.HostDeviceId != h.C.DeviceID() {
			continue
		}
		switch s.State {
		case sharespotv1.SessionState_SESSION_STATE_ACTIVE:
			h.setActive(s.Id, true)
			if err := agent.Reconcile(s); err != nil {
				h.Log.Warn("resume: gate volume", "session", s.Id, "err", err)
			}
		case sharespotv1.SessionState_SESSION_STATE_ENDING:
			if err := agent.Close(ctx, s.Id); err != nil {
				h.Log.Warn("resume: final count", "session", s.Id, "err", err)
			}
		}
	}
	return nil
}

func (h *Host) setActive(id string, on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on {
		h.active[id] = true
	} else {
		delete(h.active, id)
		delete(h.prompted, id)
	}
}

// events turns threshold crossings into C1.9 prompts and reports usage when
// a session runs out.
func (h *Host) events(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-h.GW.Events():
			if !ok {
				return
			}
			if h.OnEvent != nil {
				h.OnEvent(ev)
			}
			switch ev.Kind {
			case gateway.ThresholdCrossed:
				h.prompt(ctx, ev)
			case gateway.Exhausted:
				h.reportOne(ctx, ev.SessionID)
				h.Notify("exhausted", ev.SessionID, ev.Used, ev.Quota)
			case gateway.FirstTraffic:
				h.Notify("online", ev.SessionID, ev.Used, ev.Quota)
			}
		}
	}
}

// prompt turns a threshold event into the C1.9 prompt, once per volume
// granted. The gateway may send one early, when at the session's rate what
// is left would last less than a top-up takes (sent only once less than
// half the volume is left), and then one at the session's prompt level. If the server takes the early one, the second prompts
// nothing more; if it refuses it (a server that prompts only below the
// warning level), the prompt goes at the warning level.
func (h *Host) prompt(ctx context.Context, ev gateway.Event) {
	h.mu.Lock()
	done := h.prompted[ev.SessionID] == ev.Quota
	h.mu.Unlock()
	if done {
		return
	}
	early := ev.Quota-ev.Used >= h.Threshold
	if left := ev.Quota - ev.Used; left >= ev.Quota/2 {
		// Early, by the rate, with half the volume left or more: a guest
		// that tops up at each prompt would hold a second purchase before
		// half of the first is used. The prompt comes at the session's
		// level (protocol.PromptLevel, at most half the purchase).
		h.Log.Debug("early prompt held back: half the volume or more is left", "session", ev.SessionID, "left", left)
		return
	}
	// The gateway sends the event once: a prompt lost to a passing
	// failure (the server busy or restarting, a rate limit) is asked
	// again, a little while (the event loop waits meanwhile). It carries
	// the gateway's count as it is when sent: a usage report sent since
	// the event (reports go on beside this loop) may be higher than the
	// event's, and the server refuses usage that goes down.
	var err error
	for wait, moved := 100*time.Millisecond, 0; ; {
		used := ev.Used
		if u, q, uerr := h.GW.Usage(ev.SessionID); uerr == nil {
			used = min(max(used, u), q)
		}
		_, err = h.C.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: ev.SessionID, UsedBytes: used, Ack: h.ack(ev.SessionID)}))
		if connect.CodeOf(err) == connect.CodeInvalidArgument && moved < 3 {
			moved++ // a report overtook this one: read the count again
			continue
		}
		if err == nil || client.Final(err) || wait > 2*time.Second {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait *= 2
	}
	switch {
	case err == nil:
		h.mu.Lock()
		h.prompted[ev.SessionID] = ev.Quota
		h.mu.Unlock()
	case early && client.Final(err):
		h.Log.Debug("early prompt refused; prompting at the warning level", "session", ev.SessionID, "err", err)
		return
	default:
		// Not said as sent: the guest was not prompted.
		h.Log.Warn("the low-quota prompt did not go through", "session", ev.SessionID, "err", err)
		return
	}
	h.Notify("low", ev.SessionID, ev.Used, ev.Quota)
}

// report sends the metered usage of active sessions every ReportEvery.
func (h *Host) report(ctx context.Context) {
	t := time.NewTicker(h.ReportEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.ReportAll(ctx)
	}
}

// Leave tells the server this host is stopping, so its hotspots show as
// offline at once rather than after a cut stream's grace (bounded: 5 s).
func (h *Host) Leave(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := h.C.Hotspots.Leave(ctx, connect.NewRequest(&sharespotv1.LeaveRequest{}))
	if connect.CodeOf(err) == connect.CodeUnimplemented {
		return nil // an older server: its --host-away marks the hotspots offline
	}
	return err
}

// ReportAll reports the final usage of every active session (on exit).
func (h *Host) ReportAll(ctx context.Context) {
	h.mu.Lock()
	ids := make([]string, 0, len(h.active))
	for id := range h.active {
		ids = append(ids, id)
	}
	h.mu.Unlock()
	for _, id := range ids {
		h.reportOne(ctx, id)
	}
}

// reportOne reports a session's metered usage, clamped to the gate's
// volume (which never exceeds what the server granted). A refused report
// is reconciled with the server's view (the granted volume, the usage
// already reported) and sent again, rather than dropped.
func (h *Host) reportOne(ctx context.Context, id string) {
	used, quota, err := h.GW.Usage(id)
	if err != nil || used == 0 {
		return
	}
	used = min(used, quota)
	_, err = h.C.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: id, UsedBytes: used, Ack: h.ack(id)}))
	if err == nil || ctx.Err() != nil {
		return
	}
	if !client.Final(err) {
		h.Log.Debug("report usage", "session", id, "err", err)
		return // the next report tries again
	}
	res, gerr := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: id}))
	if gerr != nil {
		h.Log.Debug("report usage", "session", id, "err", err)
		return
	}
	s := res.Msg.Session
	if st := s.State; st != sharespotv1.SessionState_SESSION_STATE_ACTIVE && st != sharespotv1.SessionState_SESSION_STATE_ENDING {
		h.setActive(id, false)
		return
	}
	if fixed := min(max(used, s.UsedBytes), s.GrantedBytes); fixed != s.UsedBytes {
		_, err = h.C.Sessions.ReportUsage(ctx, connect.NewRequest(&sharespotv1.ReportUsageRequest{SessionId: id, UsedBytes: fixed, Ack: h.ack(id)}))
		h.Log.Warn("usage report refused; sent the reconciled count", "session", id, "metered", used, "sent", fixed, "err", err)
	}
}

// ack is the latest acknowledgment the gateway holds of a session, which
// the host attaches to what it reports: the guest signed it, so the server
// keeps it even when the guest cannot reach it.
func (h *Host) ack(id string) *sharespotv1.UsageAck {
	ev, err := h.GW.Evidence(id)
	if err != nil {
		return nil
	}
	return AckOf(id, ev)
}

func (h *Host) loadCursor() uint64 {
	if h.CursorFile == "" {
		return 0
	}
	b, err := os.ReadFile(h.CursorFile)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// saveCursor persists the last processed sequence (atomically, 0600). A
// failure is logged: the next save tries again, and a restart that reads
// an older cursor only gets messages again that are handled once anyway.
func (h *Host) saveCursor(seq uint64) {
	if h.CursorFile == "" {
		return
	}
	if err := atomicfile.Write(h.CursorFile, []byte(strconv.FormatUint(seq, 10)+"\n"), 0o600); err != nil {
		h.Log.Warn("save inbox cursor", "err", err)
	}
}

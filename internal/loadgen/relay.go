package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
)

// RelayConfig is a relay latency run: host-originated messages (the
// low-quota prompt, C1.9) at a fixed rate to guests that hold open inbox
// streams.
type RelayConfig struct {
	Rate     float64       // messages per second
	Duration time.Duration // how long they are offered
	// Sessions is how many active sessions carry the messages; a session
	// carries one message at a time (usage only grows, so a session's
	// prompts must commit in order), so Sessions bounds the messages in
	// flight. Default: the fleet's guests.
	Sessions int
	// ServerPID is the server's process, whose CPU the report gives per
	// delivered message (0: none to read; the bench's own CPU only).
	ServerPID int
}

// RelayReport is what a relay run measured.
type RelayReport struct {
	Sessions int `json:"sessions"`
	// Transport is what the devices spoke ("h2c", "TLS 1.3"), as the
	// caller found out (ProbeTransport).
	Transport   string  `json:"transport,omitempty"`
	TargetRate  float64 `json:"target_msgs_per_s"`
	DurationS   float64 `json:"duration_s"`
	Offered     int64   `json:"offered"`
	Sent        int64   `json:"sent"`
	Dropped     int64   `json:"dropped"`
	Delivered   int64   `json:"delivered"`
	Failed      int64   `json:"failed"`
	Undelivered int64   `json:"undelivered"`
	SentRate    float64 `json:"sent_msgs_per_s"`
	// HostToGuest: from just before the host's Prompt call until the
	// guest's inbox handler has the LowQuotaPrompt (commit, wake-up,
	// inbox read, stream send, decode).
	HostToGuest Summary `json:"host_to_guest"`
	// Call: the host's Prompt call alone (until its commit is answered).
	Call   Summary           `json:"prompt_call"`
	Errors map[string]int    `json:"errors"`
	ErrEx  map[string]string `json:"error_examples,omitempty"`
	// CPU is what the server and the bench used from the first message
	// sent until the last delivered, per delivered message.
	CPU       *CPUReport `json:"cpu,omitempty"`
	Yardstick *Yardstick `json:"yardstick,omitempty"`
	// CallFloor is the server's CPU per bare call, measured before the
	// run: CPU.ServerPerUnitMS read in calls is CallFloor.InCalls of it.
	CallFloor *CallFloor `json:"call_floor,omitempty"`
}

// RunRelay opens one active session per guest (guest i buys from host
// i mod hosts), then has the hosts send low-quota prompts at cfg.Rate,
// open loop: a message due while every session has one in flight is
// dropped. Each prompt reports a usage one byte higher than the last, which
// identifies it at the guest.
func (f *Fleet) RunRelay(ctx context.Context, cfg RelayConfig) (*RelayReport, error) {
	if cfg.Sessions <= 0 || cfg.Sessions > len(f.Guests) {
		cfg.Sessions = len(f.Guests)
	}
	type sess struct {
		id   string
		g    *Guest
		h    *Host
		used int64
	}
	sessions := make([]*sess, cfg.Sessions)
	fc := FlowConfig{}
	fc.defaults()
	err := parallel(ctx, cfg.Sessions, 16, func(i int) error {
		g, h := f.Guests[i], f.Hosts[i%len(f.Hosts)]
		ses, err := g.G.BeginHotspot(ctx, h.Hotspot.Id, fc.RequestBytes)
		if err != nil {
			return fmt.Errorf("relay: open session %d: %w", i, err)
		}
		if _, err := ses.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_INITIAL, guest.BuyOptions{}); err != nil {
			return fmt.Errorf("relay: open session %d: %w", i, err)
		}
		g.In.Drop(ses.ID)
		sessions[i] = &sess{id: ses.ID, g: g, h: h}
		return nil
	})
	if err != nil {
		return nil, err
	}

	type key struct {
		sid  string
		used int64
	}
	var (
		mu      sync.Mutex
		pending = map[key]time.Time{}
		e2e     Samples
		call    Samples
		errs    Errors
		deliv   atomic.Int64
	)
	for _, g := range f.Guests[:cfg.Sessions] {
		tap := func(env *sharespotv1.Envelope) {
			p := env.GetLowQuotaPrompt()
			if p == nil {
				return
			}
			now := time.Now()
			mu.Lock()
			t, ok := pending[key{env.SessionId, p.UsedBytes}]
			delete(pending, key{env.SessionId, p.UsedBytes})
			mu.Unlock()
			if ok {
				e2e.Add(now.Sub(t))
				deliv.Add(1)
			}
		}
		g.tap.Store(&tap)
	}
	defer func() {
		for _, g := range f.Guests[:cfg.Sessions] {
			g.tap.Store(nil)
		}
	}()

	free := make(chan *sess, len(sessions))
	for _, s := range sessions {
		free <- s
	}
	var offered, dropped, sent, failed atomic.Int64
	var wg sync.WaitGroup
	meter, err := StartCPU(cfg.ServerPID)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	for k := int64(0); ; k++ {
		due := start.Add(time.Duration(k) * interval)
		if due.Sub(start) >= cfg.Duration || ctx.Err() != nil {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		offered.Add(1)
		var s *sess
		select {
		case s = <-free:
		default:
			dropped.Add(1)
			continue
		}
		s.used++
		sent.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { free <- s }()
			t0 := time.Now()
			k := key{s.id, s.used}
			mu.Lock()
			pending[k] = t0
			mu.Unlock()
			_, err := s.h.C.Sessions.Prompt(ctx, connect.NewRequest(&sharespotv1.PromptRequest{SessionId: s.id, UsedBytes: s.used}))
			if err != nil {
				mu.Lock()
				delete(pending, k)
				mu.Unlock()
				failed.Add(1)
				errs.Add("prompt: "+connect.CodeOf(err).String(), err)
				return
			}
			call.Add(time.Since(t0))
		}()
	}
	sendEnd := time.Since(start)
	wg.Wait()
	// Let the last messages arrive (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for deliv.Load() < sent.Load()-failed.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	rep := &RelayReport{Sessions: cfg.Sessions, TargetRate: cfg.Rate, DurationS: cfg.Duration.Seconds(), Offered: offered.Load(), Sent: sent.Load(),
		Dropped: dropped.Load(), Delivered: deliv.Load(), Failed: failed.Load(), SentRate: float64(sent.Load()) / sendEnd.Seconds(),
		HostToGuest: e2e.Summary(), Call: call.Summary(), Errors: errs.Counts(), ErrEx: errs.Examples()}
	rep.Undelivered = rep.Sent - rep.Failed - rep.Delivered
	if cpu, err := meter.Stop(rep.Delivered, "message"); err == nil {
		rep.CPU = &cpu
	} else {
		errs.Add("server CPU", err)
		rep.Errors, rep.ErrEx = errs.Counts(), errs.Examples()
	}

	// End the sessions (settles them; bounded).
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	var endErrs []error
	var emu sync.Mutex
	parallel(ectx, len(sessions), 16, func(i int) error {
		s := sessions[i]
		_, err := s.h.C.Sessions.End(ectx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: s.id, UsedBytes: s.used, Reason: "relay bench over"}))
		if err != nil {
			emu.Lock()
			endErrs = append(endErrs, fmt.Errorf("end session %s: %w", s.id, err))
			emu.Unlock()
		}
		return nil
	})
	return rep, errors.Join(endErrs...)
}

// WriteTable writes the report for people.
func (rep *RelayReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "relay%s: low-quota prompts (host → server → guest) over %d active sessions, target %.0f msgs/s for %.0fs\n",
		over(rep.Transport), rep.Sessions, rep.TargetRate, rep.DurationS)
	fmt.Fprintf(w, "offered %d, sent %d (%.0f msgs/s), dropped %d (every session busy), failed %d, delivered %d, undelivered %d\n\n",
		rep.Offered, rep.Sent, rep.SentRate, rep.Dropped, rep.Failed, rep.Delivered, rep.Undelivered)
	writeLatencyTable(w, []string{"host→guest", "prompt call"}, map[string]Summary{"host→guest": rep.HostToGuest, "prompt call": rep.Call})
	writeCounts(w, "\nerrors by kind:", rep.Errors, rep.ErrEx)
	if rep.CPU != nil {
		rep.CPU.WriteTable(w)
	}
	if rep.Yardstick != nil {
		rep.Yardstick.WriteTable(w)
	}
	rep.CallFloor.writeAgainst(w, rep.CPU)
}

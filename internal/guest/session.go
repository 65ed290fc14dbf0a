package guest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/protocol"
)

// Session is one of the guest's sessions as the flow goes through it. Its
// steps, in claim order, are Buy (C3.1–C3.3, then the access response of
// C1.7), Code (C2), TopUp (C1.11–C1.15) and End; Acknowledge sends the
// guest's signed count of what it received.
type Session struct {
	g *Guest
	// ID, HotspotID and HostID name the session, its hotspot and its host.
	ID, HotspotID, HostID string
	// SSID is the hotspot's as shown ("" when not known).
	SSID string
	// Want is what the guest asked for.
	Want int64
	// Tariff is the tariff the guest was shown: no fee above what it gives
	// is paid.
	Tariff *sharespotv1.Tariff
	// Observe, if set, hears each step as it happens.
	Observe func(Event)
	// Mode says who counts the session's data, as the guest's request
	// chose (verified: the guest acknowledges).
	Mode sharespotv1.UsageMode

	msgs    <-chan *sharespotv1.Envelope
	saved   *Saved // nil without a Store
	resumed bool   // picked up after a restart: a quote may be waiting

	mu      sync.Mutex
	counted int64  // the highest count the guest acknowledged
	acker   *Acker // the running acknowledgments, if any
}

// Verified reports whether the session is verified: the guest acknowledges
// what it receives.
func (s *Session) Verified() bool { return s.Mode == sharespotv1.UsageMode_USAGE_MODE_VERIFIED }

// Acknowledging makes a the session's acknowledgments: its count is the
// guest's last word at End.
func (s *Session) Acknowledging(a *Acker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acker = a
}

// lastCount is the guest's own count of what it received: the acker's, or
// the highest it acknowledged by hand.
func (s *Session) lastCount() int64 {
	s.mu.Lock()
	a, n := s.acker, s.counted
	s.mu.Unlock()
	if a != nil {
		n = max(n, a.Received())
	}
	return n
}

// Event is a step of the flow.
type Event struct {
	Step Step
	// Kind says whether the step buys the first volume or a top-up.
	Kind    sharespotv1.QuoteKind
	Quote   *sharespotv1.Quote
	Receipt *sharespotv1.Receipt
	Grant   *sharespotv1.AccessGranted
	Session *sharespotv1.Session // StepEnding, StepSettled
}

// Step names what happened.
type Step int

// The steps, in order.
const (
	StepFee       Step = iota + 1 // the host's fee arrived (C3.1 / C1.12)
	StepPaid                      // the platform's receipt (C3.2 / C1.13)
	StepConfirmed                 // the receipt went to the host (C3.3 / C1.14)
	StepGranted                   // the host's access response (C1.7 / C1.15)
	StepEnding                    // ended; the host's final count is awaited
	StepSettled                   // settled
)

// Claim is the claim step an event is, for a first purchase or a top-up.
func (e Event) Claim() string {
	topUp := e.Kind == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP
	pick := func(first, more string) string {
		if topUp {
			return more
		}
		return first
	}
	switch e.Step {
	case StepFee:
		return pick("C3.1", "C1.12")
	case StepPaid:
		return pick("C3.2", "C1.13")
	case StepConfirmed:
		return pick("C3.3", "C1.14")
	case StepGranted:
		return pick("C1.7", "C1.15")
	}
	return ""
}

func (s *Session) observe(e Event) {
	if s.Observe != nil {
		s.Observe(e)
	}
}

// Errors the flow returns (test with errors.Is / errors.As).
var (
	// ErrOverTariff: the host asked more than the tariff shown; not paid.
	ErrOverTariff = errors.New("fee above the shown tariff")
	// ErrNotApproved: the person (BuyOptions.Approve) said no.
	ErrNotApproved = errors.New("the fee was not accepted")
)

// Resolved is the error a step returns when the session moved on without
// it: the host declined, or the session ended (Session says how).
type Resolved struct {
	Why     string
	Session *sharespotv1.Session
}

func (r *Resolved) Error() string { return r.Why }

// Declined reports whether the host declined: a Declined message, or the
// end of a session whose request the host turned down.
func (r *Resolved) Declined() bool {
	return r.Session == nil || protocol.HostDeclined(r.Session.GetEndReason())
}

// BuyOptions say how a purchase is paid.
type BuyOptions struct {
	// Approve, if set, is asked before a fee that passed the tariff check
	// is paid (a person saying yes); false does not pay.
	Approve func(ctx context.Context, q *sharespotv1.Quote) bool
	// Method is the payment method (default: the wallet).
	Method sharespotv1.PayMethod
	// PaymentMethod is the Stripe PaymentMethod for a card payment (empty:
	// the test card, on a server in test mode).
	PaymentMethod string
	// OnAction hears the URL a card holder must open (3-D Secure).
	OnAction func(url string)
}

// Buy is claim 3 and C1.7 for the first volume (or C1.12–C1.15 for a
// top-up the guest asked for): it waits for the host's fee, checks it
// against the tariff shown, asks Approve, pays through the payment
// platform, sends the payment-success response to the host and waits for
// the host's access response. A session picked up after a restart goes on
// where it stood: a quote already paid is confirmed with its receipt, one
// already confirmed waits for its grant.
func (s *Session) Buy(ctx context.Context, kind sharespotv1.QuoteKind, opts BuyOptions) (*sharespotv1.AccessGranted, error) {
	q, err := s.fee(ctx, kind)
	if err != nil {
		return nil, err
	}
	if q.State == sharespotv1.QuoteState_QUOTE_STATE_OPEN {
		if err := CheckFee(s.Tariff, q); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrOverTariff, err)
		}
		if opts.Approve != nil && !opts.Approve(ctx, q) {
			return nil, ErrNotApproved
		}
		rc, err := s.Pay(ctx, q, opts)
		if err != nil {
			return nil, err
		}
		q.Receipt, q.State = rc, sharespotv1.QuoteState_QUOTE_STATE_PAID
	}
	if q.State == sharespotv1.QuoteState_QUOTE_STATE_PAID {
		if err := s.Confirm(ctx, q, q.Receipt); err != nil {
			return nil, err
		}
	}
	return s.AwaitGrant(ctx, kind, q.Id)
}

// fee is the quote to buy: after a restart, the session's quote that is
// still open, paid or confirmed; else the host's fee information from the
// inbox (C3.1 / C1.12).
func (s *Session) fee(ctx context.Context, kind sharespotv1.QuoteKind) (*sharespotv1.Quote, error) {
	if s.resumed {
		s.resumed = false
		q, err := s.pending(ctx, kind)
		if err != nil || q != nil {
			if q != nil {
				s.observe(Event{Step: StepFee, Kind: kind, Quote: q})
			}
			return q, err
		}
	}
	env, err := s.await(ctx, "the host's fee", func(e *sharespotv1.Envelope) bool {
		fi := e.GetFeeInfo()
		return fi != nil && fi.Quote.GetKind() == kind
	}, kind)
	if err != nil {
		return nil, err
	}
	q := env.GetFeeInfo().Quote
	s.observe(Event{Step: StepFee, Kind: kind, Quote: q})
	return q, nil
}

// pending is the session's quote of kind that is open (to pay), paid (to
// confirm) or confirmed (awaiting its grant), if any.
func (s *Session) pending(ctx context.Context, kind sharespotv1.QuoteKind) (*sharespotv1.Quote, error) {
	cur, err := s.Get(ctx)
	if err != nil {
		return nil, err
	}
	for _, q := range cur.Quotes {
		switch q.State {
		case sharespotv1.QuoteState_QUOTE_STATE_OPEN, sharespotv1.QuoteState_QUOTE_STATE_PAID, sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED:
			if q.Kind == kind {
				return q, nil
			}
		}
	}
	return nil, nil
}

// Pay is C3.2 / C1.13: pay the quote through the payment platform and
// return its signed payment-success response. A quote is paid once: when
// an answer is lost and the call sent again is refused, the receipt comes
// from the quote.
func (s *Session) Pay(ctx context.Context, q *sharespotv1.Quote, opts BuyOptions) (*sharespotv1.Receipt, error) {
	var rc *sharespotv1.Receipt
	err := s.g.call(ctx, func() error {
		r, err := PayQuote(ctx, s.g.C, q, opts.Method, opts.PaymentMethod, time.Second, opts.OnAction)
		if err == nil || !s.g.Retry || client.Lost(err) {
			rc = r
			return err
		}
		if x, gerr := s.quote(ctx, q.Id); gerr == nil && x != nil && x.Receipt != nil {
			rc = x.Receipt // the lost call went through
			return nil
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pay: %w", err)
	}
	s.observe(Event{Step: StepPaid, Kind: q.Kind, Quote: q, Receipt: rc})
	return rc, nil
}

// Confirm is C3.3 / C1.14: the payment-success response goes to the host
// through the server. A confirmation sent again after a lost answer is
// refused once the first went through: the quote's state tells.
func (s *Session) Confirm(ctx context.Context, q *sharespotv1.Quote, rc *sharespotv1.Receipt) error {
	err := s.g.call(ctx, func() error {
		_, err := s.g.C.Sessions.Confirm(ctx, connect.NewRequest(&sharespotv1.ConfirmRequest{SessionId: s.ID, Receipt: rc}))
		if err == nil || !s.g.Retry || client.Lost(err) {
			return err
		}
		if x, gerr := s.quote(ctx, q.Id); gerr == nil && x != nil &&
			(x.State == sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED || x.State == sharespotv1.QuoteState_QUOTE_STATE_GRANTED) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("confirm payment: %w", err)
	}
	s.observe(Event{Step: StepConfirmed, Kind: q.Kind, Quote: q, Receipt: rc})
	return nil
}

// AwaitGrant waits for the host's access response to quote (C1.7 /
// C1.15); quote "" takes the first of kind.
func (s *Session) AwaitGrant(ctx context.Context, kind sharespotv1.QuoteKind, quote string) (*sharespotv1.AccessGranted, error) {
	env, err := s.await(ctx, "the host's access response", func(e *sharespotv1.Envelope) bool {
		g := e.GetAccessGranted()
		return g != nil && g.Kind == kind && (quote == "" || g.QuoteId == quote)
	}, kind)
	if err != nil {
		return nil, err
	}
	gr := env.GetAccessGranted()
	s.observe(Event{Step: StepGranted, Kind: kind, Grant: gr})
	return gr, nil
}

// Granted is the first access response kept before a restart (nil if
// none came).
func (s *Session) Granted() *sharespotv1.AccessGranted {
	if s.saved == nil {
		return nil
	}
	return s.saved.AccessGranted()
}

// Code opens the sealed access code of the first access response (C2.1,
// or C2.2–C2.3 with the suite the server named).
func (s *Session) Code(gr *sharespotv1.AccessGranted) ([]byte, error) {
	code, err := s.g.OpenCode(s.ID, s.HostID, gr.GetSealedCode())
	if err != nil {
		return nil, fmt.Errorf("open the access code: %w", err)
	}
	return code, nil
}

// RequestTopUp is C1.11: the add-data request for bytes goes to the host.
// A request sent again after a lost answer is refused as under way once
// the first went through; the fee comes anyway.
func (s *Session) RequestTopUp(ctx context.Context, bytes int64) error {
	return s.g.call(ctx, func() error {
		_, err := s.g.C.Sessions.RequestTopUp(ctx, connect.NewRequest(&sharespotv1.RequestTopUpRequest{SessionId: s.ID, Bytes: bytes}))
		if s.g.Retry && connect.CodeOf(err) == connect.CodeFailedPrecondition && strings.Contains(err.Error(), "under way") {
			return nil
		}
		return err
	})
}

// TopUp is C1.11–C1.15: ask for bytes more, then Buy them.
func (s *Session) TopUp(ctx context.Context, bytes int64, opts BuyOptions) (*sharespotv1.AccessGranted, error) {
	if err := s.RequestTopUp(ctx, bytes); err != nil {
		return nil, fmt.Errorf("top-up: %w", err)
	}
	return s.Buy(ctx, sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, opts)
}

// Acknowledge signs, with the device's key, the guest's cumulative count
// of the bytes it received in the session, and sends it: the guest's
// evidence of usage. It returns the count the server holds.
func (s *Session) Acknowledge(ctx context.Context, received int64) (int64, error) {
	s.mu.Lock()
	s.counted = max(s.counted, received)
	s.mu.Unlock()
	var acked int64
	err := s.g.call(ctx, func() error {
		n, err := s.g.C.Acknowledge(ctx, s.ID, received)
		acked = n
		return err
	})
	return acked, err
}

// EndPatience is how long End asks a server that does not answer.
const EndPatience = 30 * time.Second

// End ends the session and waits for its settlement: once data may have
// flowed, the host's final count settles it (or, if the host is silent,
// its last report when the close deadline passes). In a verified session
// the End carries the guest's last signed count: its last word, after
// which no acknowledgment of the guest's is taken. Stop the acknowledger
// first, so that its count is the last. It then forgets the session (keys,
// saved state).
func (s *Session) End(ctx context.Context, reason string) (*sharespotv1.Session, error) {
	req := &sharespotv1.EndRequest{SessionId: s.ID, Reason: reason}
	if n := s.lastCount(); s.Verified() && n > 0 {
		req.Ack = s.g.C.SignAck(s.ID, n)
	}
	var res *connect.Response[sharespotv1.EndResponse]
	// End is idempotent: an answer lost on the way is asked for again, for
	// up to EndPatience; a server away longer leaves the session open (the
	// host's gateway still holds the guest to what was paid, and the next
	// End, or the close deadline, settles it).
	rctx, cancel := context.WithTimeout(ctx, EndPatience)
	defer cancel()
	err := client.Retry(rctx, func() error {
		var err error
		res, err = s.g.C.Sessions.End(rctx, connect.NewRequest(req))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("end session %s: %w", s.ID, err)
	}
	return s.settled(ctx, res.Msg.Session)
}

// settled waits, up to the session's close deadline and half a minute
// more, for an ended or ending session to settle, then forgets it.
func (s *Session) settled(ctx context.Context, cur *sharespotv1.Session) (*sharespotv1.Session, error) {
	if cur.State == sharespotv1.SessionState_SESSION_STATE_ENDING {
		s.observe(Event{Step: StepEnding, Session: cur})
	}
	wctx, cancel := context.WithTimeout(ctx, max(time.Until(time.UnixMilli(cur.DeadlineUnixMs)), 0)+30*time.Second)
	defer cancel()
	done, err := s.g.C.AwaitSettled(wctx, cur)
	if err != nil {
		return done, err
	}
	s.observe(Event{Step: StepSettled, Session: done})
	return done, s.Close()
}

// Close forgets the session: its keys, its saved state, its messages.
func (s *Session) Close() error {
	s.g.Forget(s.ID)
	s.g.mu.Lock()
	in := s.g.in
	s.g.mu.Unlock()
	if in != nil {
		in.Drop(s.ID)
	}
	if s.g.Store != nil {
		return s.g.Store.Remove(s.ID)
	}
	return nil
}

// Messages are the session's inbox messages the flow's steps do not take
// (prompts, top-up grants, the end): the caller's to read between steps.
// Nil while the guest does not Listen.
func (s *Session) Messages() <-chan *sharespotv1.Envelope {
	if s.msgs == nil {
		s.g.mu.Lock()
		in := s.g.in
		s.g.mu.Unlock()
		if in != nil {
			s.msgs = in.Session(s.ID)
		}
	}
	return s.msgs
}

// Get reads the session from the server.
func (s *Session) Get(ctx context.Context) (*sharespotv1.Session, error) {
	var out *sharespotv1.Session
	err := s.g.call(ctx, func() error {
		res, err := s.g.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: s.ID}))
		if err == nil {
			out = res.Msg.Session
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get session %s: %w", s.ID, err)
	}
	return out, nil
}

func (s *Session) quote(ctx context.Context, id string) (*sharespotv1.Quote, error) {
	cur, err := s.Get(ctx)
	if err != nil {
		return nil, err
	}
	for _, q := range cur.Quotes {
		if q.Id == id {
			return q, nil
		}
	}
	return nil, nil
}

// await waits for the session's next message that match accepts; the
// session's end, or a decline of kind, is a Resolved error.
func (s *Session) await(ctx context.Context, what string, match func(*sharespotv1.Envelope) bool, kind sharespotv1.QuoteKind) (*sharespotv1.Envelope, error) {
	if s.Messages() == nil {
		return nil, fmt.Errorf("guest: waiting for %s: the guest does not listen to its inbox", what)
	}
	t := time.NewTimer(s.g.wait())
	defer t.Stop()
	for {
		select {
		case e := <-s.msgs:
			if match(e) {
				return e, nil
			}
			// The reasons are the other party's text: made safe to print.
			if d := e.GetDeclined(); d != nil && d.Kind == kind {
				return nil, &Resolved{Why: "declined: " + client.SafeText(d.Reason)}
			}
			if se := e.GetSessionEnded(); se != nil {
				return nil, &Resolved{Why: "the session ended: " + client.SafeText(se.Session.GetEndReason()), Session: se.Session}
			}
		case <-t.C:
			return nil, fmt.Errorf("no answer from the host within %v (waiting for %s)", s.g.wait(), what)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// CheckFee refuses a fee above what the tariff the guest was shown gives
// for the quote's bytes (its top-up price for a top-up): a guest never pays
// more than the shown tariff, whatever the host or the server say.
func CheckFee(shown *sharespotv1.Tariff, q *sharespotv1.Quote) error {
	if shown == nil {
		return fmt.Errorf("no tariff to check the fee of quote %s against", q.GetId())
	}
	want, err := protocol.TariffPrice(shown, q.GetBytes(), q.GetKind() == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP)
	if err != nil {
		return fmt.Errorf("price %d bytes at the shown tariff: %w", q.GetBytes(), err)
	}
	if q.GetCurrency() != shown.Currency || q.GetAmountMinor() > want {
		return fmt.Errorf("the host asks %s for %d bytes, but the tariff you were shown gives %s; not paying",
			client.FormatMoney(q.GetAmountMinor(), q.GetCurrency()), q.GetBytes(), client.FormatMoney(want, shown.Currency))
	}
	return nil
}

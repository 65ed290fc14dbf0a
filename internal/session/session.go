// Package session is the server's state machine for the claimed flow: a
// guest's access request, the host's fee, the payment, its confirmation, the
// sealed grant, the low-quota prompt, top-ups, and settlement. It reads top
// to bottom in the order of spec/claims.md, and each step names its claim.
//
// Every step is one store.Write: the session's change, the ledger transfers
// and the relayed message to the other party commit together or not at all.
// A step that does not fit the session's state, or comes from the wrong
// party, is refused and changes nothing.
//
//	REQUESTED ──Quote──▶ QUOTED ──Pay──▶ PAID ──Confirm──▶ CONFIRMED ──Grant──▶ ACTIVE ──End──▶ ENDED
//	     │                  │              │                    │                  │ ▲
//	     └─ no quote ───────┴─ expired ────┴──── no grant (refund) ────────────────┘ └ top-up loop
//	                                                                                   (C1.11–C1.15)
package session

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/store"
)

// Party is an authenticated device and the account that owns it.
type Party struct {
	DeviceID  string
	AccountID string
}

// Charge asks the payment platform to take a quote's fee.
type Charge struct {
	QuoteID, SessionID string
	Payer, Payee       Party
	Amount             int64
	Currency           string
	Bytes              int64
}

// Platform is the payment platform as the session needs it. Signing and
// verifying happen outside the database transaction, so the single SQLite
// writer never waits on public-key cryptography.
type Platform interface {
	// Sign makes the signed payment-success response for a charge.
	Sign(nowMS int64, c Charge) (receiptID string, r *sharespotv1.Receipt, err error)
	// Charge moves the fee from the payer into the session's escrow and
	// records the receipt, within tx.
	Charge(tx *store.Tx, nowMS int64, c Charge, receiptID string, r *sharespotv1.Receipt) error
	// Verify checks a payment-success response's signature.
	Verify(r *sharespotv1.Receipt) (receipt.Payload, error)
}

// GuestKeys are a guest's HPKE public keys, checked by CheckGuestKeys.
type GuestKeys struct{ keys []*sharespotv1.GuestKey }

// CheckGuestKeys validates the keys of an access request (outside the
// transaction: parsing keys is work the writer should not do).
func (e *Engine) CheckGuestKeys(keys []*sharespotv1.GuestKey) (GuestKeys, error) {
	if len(keys) == 0 || len(keys) > 8 {
		return GuestKeys{}, problem.Invalidf("guest_keys must hold 1 to 8 HPKE public keys, got %d", len(keys))
	}
	for i, k := range keys {
		if err := seal.CheckPublicKey(seal.Suite(k.GetSuite()), k.GetPublicKey()); err != nil {
			return GuestKeys{}, problem.Invalidf("guest_keys[%d]: %v", i, err)
		}
	}
	if _, err := e.chooseSuite(keys); err != nil {
		return GuestKeys{}, err
	}
	return GuestKeys{keys}, nil
}

// SignedCharge is a charge with its signed receipt, made by SignCharge.
type SignedCharge struct {
	c         Charge
	receiptID string
	rc        *sharespotv1.Receipt
}

// SignCharge plans the payment of a quote in a read transaction and signs
// its payment-success response; Pay then commits it if the quote is still
// open and unchanged.
func (e *Engine) SignCharge(tx *store.Tx, guest Party, quoteID string) (SignedCharge, error) {
	now := e.nowMS()
	c, _, _, err := e.payable(tx, guest, quoteID, now)
	if err != nil {
		return SignedCharge{}, err
	}
	id, rc, err := e.pay.Sign(now, c)
	if err != nil {
		return SignedCharge{}, fmt.Errorf("session: sign receipt: %w", err)
	}
	return SignedCharge{c: c, receiptID: id, rc: rc}, nil
}

// VerifiedReceipt is a receipt whose signature VerifyReceipt checked.
type VerifiedReceipt struct {
	rc *sharespotv1.Receipt
	p  receipt.Payload
}

// VerifyReceipt checks a payment-success response's signature (outside the
// transaction); Confirm then checks what it binds.
func (e *Engine) VerifyReceipt(rc *sharespotv1.Receipt) (VerifiedReceipt, error) {
	if rc == nil {
		return VerifiedReceipt{}, problem.Invalidf("receipt is missing")
	}
	p, err := e.pay.Verify(rc)
	if err != nil {
		return VerifiedReceipt{}, problem.Deniedf("receipt refused: %v", err)
	}
	return VerifiedReceipt{rc: rc, p: p}, nil
}

// Config holds the flow's deadlines, fee and sealing policy.
type Config struct {
	// QuoteTimeout: how long a host has to answer a request or top-up.
	QuoteTimeout time.Duration
	// QuoteTTL: how long a guest has to pay a quote.
	QuoteTTL time.Duration
	// GrantTimeout: how long a host has to grant after payment; then the
	// guest is refunded.
	GrantTimeout time.Duration
	// FeeBPS is the platform's fee, in basis points of the host's share.
	FeeBPS int64
	// Suites the server accepts for sealing, in preference order.
	Suites []seal.Suite
	// Announce: send the guest an encryption message naming the suite
	// (C2.2). When false the preset suite is used silently (C2.1).
	Announce bool
	// MaxOpenPerGuest caps a guest's unfinished sessions.
	MaxOpenPerGuest int
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		QuoteTimeout:    30 * time.Second,
		QuoteTTL:        2 * time.Minute,
		GrantTimeout:    30 * time.Second,
		FeeBPS:          500,
		Suites:          []seal.Suite{seal.Preset},
		Announce:        false,
		MaxOpenPerGuest: 8,
	}
}

// Engine runs the state machine.
type Engine struct {
	st   *store.Store
	wake relay.Waker
	pay  Platform
	now  func() time.Time
	cfg  Config
	log  *slog.Logger
}

// New returns an engine.
func New(st *store.Store, wake relay.Waker, pay Platform, now func() time.Time, cfg Config, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Suites) == 0 {
		cfg.Suites = []seal.Suite{seal.Preset}
	}
	return &Engine{st: st, wake: wake, pay: pay, now: now, cfg: cfg, log: log}
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// ---------------------------------------------------------------- C1.5–C1.6

// RequestAccess is C1.5–C1.6: the guest asks, through the server, the host
// of an available hotspot for access. The host receives AccessRequested.
func (e *Engine) RequestAccess(tx *store.Tx, guest Party, hotspotID string, bytes int64, gk GuestKeys) (*sharespotv1.Session, error) {
	now := e.nowMS()
	if bytes <= 0 {
		return nil, problem.Invalidf("bytes must be positive, got %d", bytes)
	}
	keys := gk.keys
	if len(keys) == 0 {
		return nil, problem.Invalidf("guest_keys are missing")
	}
	h, err := registry.Get(tx, hotspotID)
	if err != nil {
		return nil, err
	}
	switch {
	case !h.Active:
		return nil, problem.WrongStatef("hotspot %s is no longer offered", hotspotID)
	case h.HostDeviceID == guest.DeviceID:
		return nil, problem.Deniedf("a device cannot buy from its own hotspot")
	case bytes < h.Tariff.MinPurchase:
		return nil, problem.Invalidf("the smallest purchase at this hotspot is %d bytes; asked for %d", h.Tariff.MinPurchase, bytes)
	case bytes > h.Available():
		return nil, problem.Exhaustedf("the hotspot has %d bytes left to share; asked for %d", h.Available(), bytes)
	}
	// Lock the guest's device row so that two concurrent requests count
	// each other's sessions (PostgreSQL; a no-op on SQLite).
	if err := lockDevice(tx, guest.DeviceID); err != nil {
		return nil, err
	}
	var open int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM sessions WHERE guest_device_id = ? AND state < ?`,
		guest.DeviceID, int32(sharespotv1.SessionState_SESSION_STATE_ENDED)).Scan(&open); err != nil {
		return nil, fmt.Errorf("session: count open sessions: %w", err)
	}
	if open >= e.cfg.MaxOpenPerGuest {
		return nil, problem.Exhaustedf("you have %d unfinished sessions; end one first", open)
	}
	keyBlob, err := proto.Marshal(&sharespotv1.AccessRequested{GuestKeys: keys})
	if err != nil {
		return nil, err
	}
	s := &row{
		ID: relay.NewID("ses"), HotspotID: h.ID, Host: h.HostDeviceID, Guest: guest.DeviceID,
		State: sharespotv1.SessionState_SESSION_STATE_REQUESTED, Requested: bytes, Currency: h.Tariff.Currency,
		GuestKeys: keyBlob, DeadlineMS: now + e.cfg.QuoteTimeout.Milliseconds(), CreatedMS: now, UpdatedMS: now,
	}
	if err := s.insert(tx); err != nil {
		return nil, err
	}
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_AccessRequested{AccessRequested: &sharespotv1.AccessRequested{
		HotspotId: h.ID, GuestDeviceId: guest.DeviceID, Bytes: bytes, GuestKeys: keys,
	}}}); err != nil {
		return nil, err
	}
	return e.render(tx, s, guest)
}

// ---------------------------------------------------------------- C3.1 / C1.12

// Quote is C3.1 (fee information, after a request) and C1.12 (additional-fee
// information, after a top-up request): the host prices the data; the server
// holds the host to its registered tariff, reserves the volume so it is
// never oversold, and relays the quote to the guest.
func (e *Engine) Quote(tx *store.Tx, host Party, sessionID string, bytes, amount int64, currency string) (*sharespotv1.Quote, error) {
	now := e.nowMS()
	s, err := e.load(tx, sessionID, host, roleHost)
	if err != nil {
		return nil, err
	}
	var kind sharespotv1.QuoteKind
	switch {
	case s.State == sharespotv1.SessionState_SESSION_STATE_REQUESTED:
		kind = sharespotv1.QuoteKind_QUOTE_KIND_INITIAL
		if bytes != s.Requested {
			return nil, problem.Invalidf("quote is for %d bytes but the guest asked for %d", bytes, s.Requested)
		}
	case s.State == sharespotv1.SessionState_SESSION_STATE_ACTIVE && s.PendingTopUp > 0:
		if q, err := e.pendingQuote(tx, s.ID); err != nil {
			return nil, err
		} else if q != nil {
			return nil, problem.WrongStatef("the top-up is already quoted (%s)", q.ID)
		}
		kind = sharespotv1.QuoteKind_QUOTE_KIND_TOPUP
		if bytes != s.PendingTopUp {
			return nil, problem.Invalidf("quote is for %d bytes but the guest asked for %d more", bytes, s.PendingTopUp)
		}
	default:
		return nil, problem.WrongStatef("session %s is %s: nothing to quote", s.ID, stateName(s.State))
	}
	h, err := registry.Get(tx, s.HotspotID)
	if err != nil {
		return nil, err
	}
	unitPrice := h.Tariff.PriceMinor
	if kind == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP {
		unitPrice = h.Tariff.TopUpPriceMinor
	}
	want, err := registry.Price(bytes, unitPrice, h.Tariff.UnitBytes)
	if err != nil {
		return nil, problem.Invalidf("cannot price %d bytes: %v", bytes, err)
	}
	if currency != s.Currency {
		return nil, problem.Invalidf("quote currency %q differs from the tariff's %s", currency, s.Currency)
	}
	if amount != want {
		return nil, problem.Invalidf("quote of %d does not match the registered tariff, which gives %d for %d bytes", amount, want, bytes)
	}
	n, err := tx.ExecN(`UPDATE hotspots SET committed_bytes = committed_bytes + ? WHERE id = ? AND committed_bytes + ? <= shareable_bytes`,
		bytes, h.ID, bytes)
	if err != nil {
		return nil, fmt.Errorf("session: reserve volume: %w", err)
	}
	if n != 1 {
		return nil, problem.Exhaustedf("the hotspot has %d bytes left to share; cannot quote %d", h.Available(), bytes)
	}
	q := &quote{ID: relay.NewID("q"), SessionID: s.ID, Kind: kind, Bytes: bytes, Amount: amount, Currency: currency,
		State: sharespotv1.QuoteState_QUOTE_STATE_OPEN, ExpiresMS: now + e.cfg.QuoteTTL.Milliseconds(), CreatedMS: now}
	if err := q.insert(tx); err != nil {
		return nil, err
	}
	s.Reserved += bytes
	if kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
		s.State = sharespotv1.SessionState_SESSION_STATE_QUOTED
	}
	s.DeadlineMS = q.ExpiresMS
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	if err := e.send(tx, s.Guest, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_FeeInfo{FeeInfo: &sharespotv1.FeeInfo{Quote: q.proto(nil)}}}); err != nil {
		return nil, err
	}
	return q.proto(nil), nil
}

// Decline lets the host turn down a request (ending the session) or a
// pending top-up (the session goes on).
func (e *Engine) Decline(tx *store.Tx, host Party, sessionID, reason string) (*sharespotv1.Session, error) {
	s, err := e.load(tx, sessionID, host, roleHost)
	if err != nil {
		return nil, err
	}
	reason = clip(reason, 200)
	switch {
	case s.State == sharespotv1.SessionState_SESSION_STATE_REQUESTED:
		if err := e.finish(tx, s, 0, "declined by host: "+reason); err != nil {
			return nil, err
		}
	case s.State == sharespotv1.SessionState_SESSION_STATE_ACTIVE && s.PendingTopUp > 0:
		if q, err := e.pendingQuote(tx, s.ID); err != nil {
			return nil, err
		} else if q != nil {
			return nil, problem.WrongStatef("the top-up is already quoted; it can only expire or be paid")
		}
		s.PendingTopUp, s.DeadlineMS = 0, 0
		if err := s.save(tx, e.nowMS()); err != nil {
			return nil, err
		}
		if err := e.send(tx, s.Guest, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_Declined{Declined: &sharespotv1.Declined{
			Reason: "top-up declined by host: " + reason, Kind: sharespotv1.QuoteKind_QUOTE_KIND_TOPUP}}}); err != nil {
			return nil, err
		}
	default:
		return nil, problem.WrongStatef("session %s is %s: nothing to decline", s.ID, stateName(s.State))
	}
	return e.render(tx, s, host)
}

// ---------------------------------------------------------------- C3.2 / C1.13

// Pay is C3.2 (and C1.13 for a top-up): the guest pays the quoted fee
// through the payment platform, which holds it in escrow and answers with
// the signed payment-success response. A quote is paid at most once.
func (e *Engine) Pay(tx *store.Tx, guest Party, sc SignedCharge) (*sharespotv1.Receipt, error) {
	now := e.nowMS()
	c, q, s, err := e.payable(tx, guest, sc.c.QuoteID, now)
	if err != nil {
		return nil, err
	}
	if c != sc.c {
		return nil, problem.WrongStatef("quote %s changed while it was being paid; pay again", q.ID)
	}
	if err := e.pay.Charge(tx, now, c, sc.receiptID, sc.rc); err != nil {
		return nil, err
	}
	q.State = sharespotv1.QuoteState_QUOTE_STATE_PAID
	if err := q.save(tx); err != nil {
		return nil, err
	}
	if q.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
		s.State = sharespotv1.SessionState_SESSION_STATE_PAID
	}
	s.DeadlineMS = now + e.cfg.GrantTimeout.Milliseconds()
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	return sc.rc, nil
}

// payable checks that guest may pay quoteID now and returns the charge.
func (e *Engine) payable(tx *store.Tx, guest Party, quoteID string, now int64) (Charge, *quote, *row, error) {
	q, err := loadQuote(tx, quoteID)
	if err != nil {
		return Charge{}, nil, nil, err
	}
	s, err := e.load(tx, q.SessionID, guest, roleGuest)
	if problem.KindOf(err) == problem.NotFound {
		// Not a party of the session: the quote does not exist for them.
		return Charge{}, nil, nil, problem.NotFoundf("quote %s not found", quoteID)
	}
	if err != nil {
		return Charge{}, nil, nil, err // e.g. a party in the wrong role: say so
	}
	if tx.Engine() == store.Postgres {
		// A quote changes only under its session's lock, which is held
		// from here on; read it again in case a concurrent write (an
		// expiry, another payment) changed it between the two reads.
		// SQLite's single writer runs this write alone.
		if q, err = loadQuote(tx, quoteID); err != nil {
			return Charge{}, nil, nil, err
		}
	}
	switch {
	case q.State == sharespotv1.QuoteState_QUOTE_STATE_EXPIRED || (q.State == sharespotv1.QuoteState_QUOTE_STATE_OPEN && now >= q.ExpiresMS):
		return Charge{}, nil, nil, problem.WrongStatef("quote %s expired; ask for a new one", q.ID)
	case q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN:
		return Charge{}, nil, nil, problem.AlreadyExistsf("quote %s is already paid", q.ID)
	case s.State == sharespotv1.SessionState_SESSION_STATE_ENDED:
		return Charge{}, nil, nil, problem.WrongStatef("session %s has ended", s.ID)
	}
	hostParty, err := partyOf(tx, s.Host)
	if err != nil {
		return Charge{}, nil, nil, err
	}
	return Charge{QuoteID: q.ID, SessionID: s.ID, Payer: guest, Payee: hostParty,
		Amount: q.Amount, Currency: q.Currency, Bytes: q.Bytes}, q, s, nil
}

// ---------------------------------------------------------------- C3.3 / C1.14 / C2

// Confirm is C3.3 (and C1.14): the guest sends the payment-success response
// to the host through the server. The server verifies the platform's
// signature and that the receipt is for this quote, payer and amount, and
// accepts each receipt once. With the confirmation the host learns the
// suite to seal with; if the server announces suites, the guest gets the
// encryption message naming it (C2.2), otherwise both use the preset (C2.1).
func (e *Engine) Confirm(tx *store.Tx, guest Party, sessionID string, vr VerifiedReceipt) (*sharespotv1.Session, error) {
	now := e.nowMS()
	s, err := e.load(tx, sessionID, guest, roleGuest)
	if err != nil {
		return nil, err
	}
	rc, p := vr.rc, vr.p
	if rc == nil {
		return nil, problem.Invalidf("receipt is missing")
	}
	q, err := loadQuote(tx, p.QuoteID)
	if err != nil || q.SessionID != s.ID {
		return nil, problem.Deniedf("receipt refused: it is not for a quote of session %s", s.ID)
	}
	want := receipt.Payload{SessionID: s.ID, QuoteID: q.ID, Amount: q.Amount, Currency: q.Currency, Payer: guest.DeviceID, Payee: s.Host, Bytes: q.Bytes}
	if err := p.Matches(want); err != nil {
		return nil, problem.Deniedf("receipt refused: %v", err)
	}
	if q.State != sharespotv1.QuoteState_QUOTE_STATE_PAID {
		return nil, problem.WrongStatef("receipt refused: quote %s is %s, not awaiting confirmation (a receipt is accepted once)", q.ID, quoteStateName(q.State))
	}
	n, err := tx.ExecN(`UPDATE receipts SET confirmed = 1 WHERE id = ? AND quote_id = ? AND confirmed = 0`, p.ReceiptID, q.ID)
	if err != nil {
		return nil, fmt.Errorf("session: mark receipt: %w", err)
	}
	if n != 1 {
		return nil, problem.WrongStatef("receipt refused: already used or unknown")
	}
	q.State = sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED
	if err := q.save(tx); err != nil {
		return nil, err
	}
	msg := &sharespotv1.PaymentConfirmed{QuoteId: q.ID, Kind: q.Kind, Receipt: rc}
	if q.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
		var req sharespotv1.AccessRequested
		if err := proto.Unmarshal(s.GuestKeys, &req); err != nil {
			return nil, fmt.Errorf("session: decode guest keys: %w", err)
		}
		k, err := e.chooseSuite(req.GuestKeys)
		if err != nil {
			return nil, err
		}
		s.Suite = k.Suite
		msg.Suite, msg.GuestPublicKey = k.Suite, k.PublicKey
		s.State = sharespotv1.SessionState_SESSION_STATE_CONFIRMED
		if e.cfg.Announce {
			if err := e.send(tx, s.Guest, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_EncryptionMessage{
				EncryptionMessage: &sharespotv1.EncryptionMessage{Suite: k.Suite}}}); err != nil {
				return nil, err
			}
		}
	}
	s.DeadlineMS = now + e.cfg.GrantTimeout.Milliseconds()
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_PaymentConfirmed{PaymentConfirmed: msg}}); err != nil {
		return nil, err
	}
	return e.render(tx, s, guest)
}

// ---------------------------------------------------------------- C1.7 / C1.15

// Grant is C1.7 (the access response: sealed access code, gateway and
// available data volume) and C1.15 (the add-data response with the
// additional volume), relayed to the guest. The host may grant only a
// confirmed payment, and exactly the volume paid for.
func (e *Engine) Grant(tx *store.Tx, host Party, sessionID, quoteID string, granted int64, sealed *sharespotv1.SealedCode, gw *sharespotv1.Gateway) (*sharespotv1.Session, error) {
	now := e.nowMS()
	s, err := e.load(tx, sessionID, host, roleHost)
	if err != nil {
		return nil, err
	}
	q, err := loadQuote(tx, quoteID)
	if err != nil || q.SessionID != s.ID {
		return nil, problem.NotFoundf("quote %s not found in session %s", quoteID, s.ID)
	}
	if q.State != sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED {
		return nil, problem.WrongStatef("quote %s is %s: grant only after the payment is confirmed", q.ID, quoteStateName(q.State))
	}
	if granted != q.Bytes {
		return nil, problem.Invalidf("granted_bytes %d differs from the %d bytes paid for", granted, q.Bytes)
	}
	msg := &sharespotv1.AccessGranted{QuoteId: q.ID, Kind: q.Kind, GrantedBytes: granted}
	if q.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
		if err := checkSealed(sealed, s.Suite); err != nil {
			return nil, err
		}
		if err := checkGateway(gw); err != nil {
			return nil, err
		}
		msg.SealedCode, msg.Gateway = sealed, gw
		s.State = sharespotv1.SessionState_SESSION_STATE_ACTIVE
	} else {
		if sealed != nil {
			return nil, problem.Invalidf("a top-up grant carries no access code")
		}
		s.PendingTopUp = 0
	}
	s.Granted += granted
	msg.TotalGrantedBytes = s.Granted
	s.DeadlineMS = 0
	q.State = sharespotv1.QuoteState_QUOTE_STATE_GRANTED
	if err := q.save(tx); err != nil {
		return nil, err
	}
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	if err := e.send(tx, s.Guest, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_AccessGranted{AccessGranted: msg}}); err != nil {
		return nil, err
	}
	return e.render(tx, s, host)
}

// ---------------------------------------------------------------- C1.9

// Prompt is C1.9: the host tells the guest, through the server, that the
// remaining volume fell below the host's preset threshold. The server
// checks that it really did.
func (e *Engine) Prompt(tx *store.Tx, host Party, sessionID string, used int64) error {
	s, err := e.load(tx, sessionID, host, roleHost)
	if err != nil {
		return err
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return problem.WrongStatef("session %s is %s: no prompt", s.ID, stateName(s.State))
	}
	if err := e.recordUsage(s, used); err != nil {
		return err
	}
	h, err := registry.Get(tx, s.HotspotID)
	if err != nil {
		return err
	}
	remaining := s.Granted - s.Used
	if remaining >= h.WarnAtBytes {
		return problem.WrongStatef("remaining %d bytes is not below the threshold of %d", remaining, h.WarnAtBytes)
	}
	if err := s.save(tx, e.nowMS()); err != nil {
		return err
	}
	return e.send(tx, s.Guest, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_LowQuotaPrompt{LowQuotaPrompt: &sharespotv1.LowQuotaPrompt{
		UsedBytes: s.Used, GrantedBytes: s.Granted, RemainingBytes: remaining}}})
}

// ---------------------------------------------------------------- C1.11

// RequestTopUp is C1.11: the guest, having chosen to go on, asks the host
// for more data through the server. One top-up at a time.
func (e *Engine) RequestTopUp(tx *store.Tx, guest Party, sessionID string, bytes int64) (*sharespotv1.Session, error) {
	now := e.nowMS()
	s, err := e.load(tx, sessionID, guest, roleGuest)
	if err != nil {
		return nil, err
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return nil, problem.WrongStatef("session %s is %s: top-ups need an active session", s.ID, stateName(s.State))
	}
	if s.PendingTopUp > 0 {
		return nil, problem.WrongStatef("a top-up of %d bytes is already under way", s.PendingTopUp)
	}
	if bytes <= 0 {
		return nil, problem.Invalidf("bytes must be positive, got %d", bytes)
	}
	h, err := registry.Get(tx, s.HotspotID)
	if err != nil {
		return nil, err
	}
	if bytes > h.Available() {
		return nil, problem.Exhaustedf("the hotspot has %d bytes left to share; asked for %d", h.Available(), bytes)
	}
	s.PendingTopUp = bytes
	s.DeadlineMS = now + e.cfg.QuoteTimeout.Milliseconds()
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_TopUpRequested{TopUpRequested: &sharespotv1.TopUpRequested{Bytes: bytes}}}); err != nil {
		return nil, err
	}
	return e.render(tx, s, guest)
}

// ---------------------------------------------------------------- usage and end

// ReportUsage records the host's metered usage of an active session.
func (e *Engine) ReportUsage(tx *store.Tx, host Party, sessionID string, used int64) (*sharespotv1.Session, error) {
	s, err := e.load(tx, sessionID, host, roleHost)
	if err != nil {
		return nil, err
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return nil, problem.WrongStatef("session %s is %s: no usage to report", s.ID, stateName(s.State))
	}
	if err := e.recordUsage(s, used); err != nil {
		return nil, err
	}
	if err := s.save(tx, e.nowMS()); err != nil {
		return nil, err
	}
	return e.render(tx, s, host)
}

func (e *Engine) recordUsage(s *row, used int64) error {
	switch {
	case used < 0 || used > s.Granted:
		return problem.Invalidf("used_bytes %d must be between 0 and the %d bytes granted", used, s.Granted)
	case used < s.Used:
		return problem.Invalidf("used_bytes %d is below the %d already reported; usage only grows", used, s.Used)
	}
	s.Used = used
	return nil
}

// End ends a session from either side and settles it: the used share of the
// granted purchases goes to the host (less the platform fee), everything
// else in escrow goes back to the guest. Ending an ended session returns it.
func (e *Engine) End(tx *store.Tx, p Party, sessionID string, used int64, reason string) (*sharespotv1.Session, error) {
	s, err := e.load(tx, sessionID, p, roleEither)
	if err != nil {
		return nil, err
	}
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDED {
		return e.render(tx, s, p)
	}
	who := "guest"
	final := s.Used
	if p.DeviceID == s.Host {
		who = "host"
		if used != 0 || s.Used == 0 {
			if err := e.recordUsage(s, used); err != nil {
				return nil, err
			}
			final = s.Used
		}
	}
	if reason = clip(reason, 200); reason == "" {
		reason = "ended"
	}
	if err := e.finish(tx, s, final, "ended by "+who+": "+reason); err != nil {
		return nil, err
	}
	return e.render(tx, s, p)
}

// Get returns a session to one of its parties.
func (e *Engine) Get(tx *store.Tx, p Party, sessionID string) (*sharespotv1.Session, error) {
	s, err := e.load(tx, sessionID, p, roleEither)
	if err != nil {
		return nil, err
	}
	return e.render(tx, s, p)
}

// List returns p's sessions as host or guest, newest first.
func (e *Engine) List(tx *store.Tx, p Party, openOnly bool, limit int) ([]*sharespotv1.Session, error) {
	if limit <= 0 || limit > 200 {
		limit = 200
	}
	maxState := int32(sharespotv1.SessionState_SESSION_STATE_ENDED) + 1
	if openOnly {
		maxState--
	}
	var ids []string
	for _, col := range []string{"host_device_id", "guest_device_id"} {
		rows, err := tx.Query(`SELECT id FROM sessions WHERE `+col+` = ? AND state < ? ORDER BY created_ms DESC LIMIT ?`, p.DeviceID, maxState, limit)
		if err != nil {
			return nil, fmt.Errorf("session: list: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var out []*sharespotv1.Session
	for _, id := range ids {
		s, err := loadRow(tx, id)
		if err != nil {
			return nil, err
		}
		v, err := e.render(tx, s, p)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedUnixMs > out[j].CreatedUnixMs })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// finish settles and ends s with used bytes consumed.
func (e *Engine) finish(tx *store.Tx, s *row, used int64, reason string) error {
	now := e.nowMS()
	escrow := ledger.Escrow(s.ID, s.Currency)
	held, err := ledger.Balance(tx, escrow.ID)
	if err != nil {
		return err
	}
	var grantedAmount, grantedBytes int64
	if err := tx.QueryRow(`SELECT COALESCE(SUM(amount_minor), 0), COALESCE(SUM(bytes), 0) FROM quotes WHERE session_id = ? AND state = ?`,
		s.ID, int32(sharespotv1.QuoteState_QUOTE_STATE_GRANTED)).Scan(&grantedAmount, &grantedBytes); err != nil {
		return fmt.Errorf("session: sum granted quotes: %w", err)
	}
	var hostShare int64
	if grantedBytes > 0 && used > 0 {
		if hostShare, err = registry.MulDiv(grantedAmount, min(used, grantedBytes), grantedBytes, false); err != nil {
			return fmt.Errorf("session: settle %s: %w", s.ID, err)
		}
	}
	hostShare = min(hostShare, held)
	fee, err := registry.MulDiv(hostShare, e.cfg.FeeBPS, 10000, false)
	if err != nil {
		return fmt.Errorf("session: settle %s fee: %w", s.ID, err)
	}
	hostParty, err := partyOf(tx, s.Host)
	if err != nil {
		return err
	}
	guestParty, err := partyOf(tx, s.Guest)
	if err != nil {
		return err
	}
	refund := held - hostShare
	moves := []ledger.Transfer{
		{ID: "settle:host:" + s.ID, Debit: escrow, Credit: ledger.Wallet(hostParty.AccountID, s.Currency), Amount: hostShare - fee, Memo: "session " + s.ID + ": data used"},
		{ID: "settle:fee:" + s.ID, Debit: escrow, Credit: ledger.FeeShard(s.Currency, s.ID), Amount: fee, Memo: "session " + s.ID + ": platform fee"},
		{ID: "settle:refund:" + s.ID, Debit: escrow, Credit: ledger.Wallet(guestParty.AccountID, s.Currency), Amount: refund, Memo: "session " + s.ID + ": unused, refunded"},
	}
	for _, t := range moves {
		if t.Amount == 0 {
			continue
		}
		t.Currency = s.Currency
		if _, err := ledger.Apply(tx, now, t); err != nil {
			return fmt.Errorf("session: settle %s: %w", s.ID, err)
		}
	}
	// Give back the volume reserved but not used.
	if release := s.Reserved - used; release > 0 {
		if _, err := tx.Exec(`UPDATE hotspots SET committed_bytes = committed_bytes - ? WHERE id = ?`, release, s.HotspotID); err != nil {
			return fmt.Errorf("session: release volume: %w", err)
		}
		s.Reserved = used
	}
	if _, err := tx.Exec(`UPDATE quotes SET state = CASE WHEN state = ? THEN ? WHEN state IN (?, ?) THEN ? ELSE state END WHERE session_id = ?`,
		int32(sharespotv1.QuoteState_QUOTE_STATE_OPEN), int32(sharespotv1.QuoteState_QUOTE_STATE_EXPIRED),
		int32(sharespotv1.QuoteState_QUOTE_STATE_PAID), int32(sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED), int32(sharespotv1.QuoteState_QUOTE_STATE_REFUNDED),
		s.ID); err != nil {
		return fmt.Errorf("session: close quotes: %w", err)
	}
	s.State = sharespotv1.SessionState_SESSION_STATE_ENDED
	s.Used, s.PendingTopUp, s.DeadlineMS, s.EndReason = used, 0, 0, reason
	s.SettledHost, s.SettledFee, s.Refunded = hostShare-fee, fee, refund
	if err := s.save(tx, now); err != nil {
		return err
	}
	for _, to := range []string{s.Guest, s.Host} {
		view, err := e.render(tx, s, Party{DeviceID: to})
		if err != nil {
			return err
		}
		if err := e.send(tx, to, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_SessionEnded{SessionEnded: &sharespotv1.SessionEnded{Session: view}}}); err != nil {
			return err
		}
	}
	e.log.Info("session settled", "session", s.ID, "used", used, "host", hostShare-fee, "fee", fee, "refund", refund, "reason", reason)
	return nil
}

// ---------------------------------------------------------------- deadlines

// Expire moves one overdue session on: a host that never quoted, a quote
// the guest let expire, a host that never granted after payment (the guest
// is refunded). It does nothing if the session is no longer overdue.
func (e *Engine) Expire(tx *store.Tx, sessionID string) error {
	now := e.nowMS()
	s, err := loadRow(tx, sessionID)
	if err != nil {
		return err
	}
	if s.DeadlineMS == 0 || s.DeadlineMS > now {
		return nil
	}
	switch s.State {
	case sharespotv1.SessionState_SESSION_STATE_REQUESTED:
		return e.finish(tx, s, 0, "host did not answer in time")
	case sharespotv1.SessionState_SESSION_STATE_QUOTED:
		return e.finish(tx, s, 0, "quote expired unpaid")
	case sharespotv1.SessionState_SESSION_STATE_PAID, sharespotv1.SessionState_SESSION_STATE_CONFIRMED:
		return e.finish(tx, s, 0, "host did not grant in time; payment refunded")
	case sharespotv1.SessionState_SESSION_STATE_ACTIVE:
		return e.expireTopUp(tx, s, now)
	}
	s.DeadlineMS = 0
	return s.save(tx, now)
}

func (e *Engine) expireTopUp(tx *store.Tx, s *row, now int64) error {
	q, err := e.pendingQuote(tx, s.ID)
	if err != nil {
		return err
	}
	reason := "host did not answer the top-up in time"
	if q != nil {
		switch q.State {
		case sharespotv1.QuoteState_QUOTE_STATE_OPEN:
			reason = "top-up quote expired unpaid"
			q.State = sharespotv1.QuoteState_QUOTE_STATE_EXPIRED
		default: // paid or confirmed, never granted
			reason = "host did not grant the top-up in time; payment refunded"
			g, err := partyOf(tx, s.Guest)
			if err != nil {
				return err
			}
			if q.Amount > 0 {
				if _, err := ledger.Apply(tx, now, ledger.Transfer{ID: "refund:" + q.ID, Debit: ledger.Escrow(s.ID, s.Currency),
					Credit: ledger.Wallet(g.AccountID, s.Currency), Amount: q.Amount, Currency: s.Currency, Memo: "top-up " + q.ID + " not granted, refunded"}); err != nil {
					return fmt.Errorf("session: refund top-up %s: %w", q.ID, err)
				}
			}
			q.State = sharespotv1.QuoteState_QUOTE_STATE_REFUNDED
		}
		if err := q.save(tx); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE hotspots SET committed_bytes = committed_bytes - ? WHERE id = ?`, q.Bytes, s.HotspotID); err != nil {
			return fmt.Errorf("session: release top-up volume: %w", err)
		}
		s.Reserved -= q.Bytes
	}
	s.PendingTopUp, s.DeadlineMS = 0, 0
	if err := s.save(tx, now); err != nil {
		return err
	}
	for _, to := range []string{s.Guest, s.Host} {
		if err := e.send(tx, to, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_Declined{Declined: &sharespotv1.Declined{
			Reason: reason, Kind: sharespotv1.QuoteKind_QUOTE_KIND_TOPUP}}}); err != nil {
			return err
		}
	}
	return nil
}

// Overdue lists up to limit sessions whose deadline has passed.
func (e *Engine) Overdue(tx *store.Tx, limit int) ([]string, error) {
	rows, err := tx.Query(`SELECT id FROM sessions WHERE deadline_ms > 0 AND deadline_ms <= ? ORDER BY deadline_ms LIMIT ?`, e.nowMS(), limit)
	if err != nil {
		return nil, fmt.Errorf("session: overdue sessions: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// ---------------------------------------------------------------- helpers

func (e *Engine) nowMS() int64 { return e.now().UnixMilli() }

func (e *Engine) send(tx *store.Tx, to, sessionID string, env *sharespotv1.Envelope) error {
	return relay.Append(tx, e.wake, e.nowMS(), to, sessionID, env)
}

// chooseSuite picks the server's most preferred suite the guest offered.
func (e *Engine) chooseSuite(keys []*sharespotv1.GuestKey) (*sharespotv1.GuestKey, error) {
	for _, want := range e.cfg.Suites {
		for _, k := range keys {
			if k.GetSuite() == string(want) {
				return k, nil
			}
		}
	}
	return nil, problem.Invalidf("none of the guest's suites is accepted by this server (accepted: %v)", e.cfg.Suites)
}

func checkSealed(sc *sharespotv1.SealedCode, suite string) error {
	switch {
	case sc == nil:
		return problem.Invalidf("sealed_code is missing: the access response must carry the sealed access code")
	case sc.Suite != suite:
		return problem.Invalidf("sealed_code uses suite %q; this session's suite is %q", sc.Suite, suite)
	case len(sc.Enc) == 0 || len(sc.Enc) > 2048:
		return problem.Invalidf("sealed_code enc must be 1 to 2048 bytes, got %d", len(sc.Enc))
	case len(sc.Ciphertext) < 17 || len(sc.Ciphertext) > 2048:
		return problem.Invalidf("sealed_code ciphertext must be 17 to 2048 bytes, got %d", len(sc.Ciphertext))
	}
	return nil
}

func checkGateway(gw *sharespotv1.Gateway) error {
	switch {
	case gw == nil:
		return problem.Invalidf("gateway is missing: tell the guest how to get online")
	case gw.Kind != "proxy" && gw.Kind != "nftables":
		return problem.Invalidf("gateway kind %q must be proxy or nftables", gw.Kind)
	case len(gw.Address) == 0 || len(gw.Address) > 256:
		return problem.Invalidf("gateway address must be 1 to 256 bytes")
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// partyOf finds the account of a device.
func partyOf(tx *store.Tx, deviceID string) (Party, error) {
	p := Party{DeviceID: deviceID}
	if err := tx.QueryRow(`SELECT account_id FROM devices WHERE id = ?`, deviceID).Scan(&p.AccountID); err != nil {
		return p, fmt.Errorf("session: account of device %s: %w", deviceID, err)
	}
	return p, nil
}

// pendingQuote returns the session's top-up quote that is open, paid or
// confirmed, if any.
func (e *Engine) pendingQuote(tx *store.Tx, sessionID string) (*quote, error) {
	q, err := scanQuote(tx.QueryRow(`SELECT `+quoteCols+` FROM quotes WHERE session_id = ? AND kind = ? AND state IN (?, ?, ?)`,
		sessionID, int32(sharespotv1.QuoteKind_QUOTE_KIND_TOPUP), int32(sharespotv1.QuoteState_QUOTE_STATE_OPEN),
		int32(sharespotv1.QuoteState_QUOTE_STATE_PAID), int32(sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED)))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("session: pending top-up of %s: %w", sessionID, err)
	}
	return q, nil
}

func stateName(s sharespotv1.SessionState) string {
	n := s.String()
	if len(n) > len("SESSION_STATE_") {
		n = n[len("SESSION_STATE_"):]
	}
	return lower(n)
}

func quoteStateName(s sharespotv1.QuoteState) string {
	n := s.String()
	if len(n) > len("QUOTE_STATE_") {
		n = n[len("QUOTE_STATE_"):]
	}
	return lower(n)
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// lockDevice locks a device's row until the write ends (PostgreSQL; on
// SQLite the single writer already runs the write alone).
func lockDevice(tx *store.Tx, deviceID string) error {
	if tx.ForUpdate() == "" {
		return nil
	}
	var one int
	if err := tx.QueryRow(`SELECT 1 FROM devices WHERE id = ?`+tx.ForUpdate(), deviceID).Scan(&one); err != nil {
		return fmt.Errorf("session: lock device %s: %w", deviceID, err)
	}
	return nil
}

// Package session is the server's state machine for the claimed flow: a
// guest's access request, the host's fee, the payment, its confirmation, the
// sealed grant, the low-quota prompt, top-ups, and the two-party close. This
// file reads top to bottom in the order of docs/claims.md, and each step
// names its claim; settlement (settle.go), deadlines (deadlines.go) and the
// read views (views.go) have files of their own.
//
// Every step is one store.Write: the session's change, the ledger transfers
// and the relayed message to the other party commit together or not at all.
// A step that does not fit the session's state, or comes from the wrong
// party, is refused and changes nothing.
//
//	REQUESTED ──Quote──▶ QUOTED ──Pay──▶ PAID ──Confirm──▶ CONFIRMED ──Grant──▶ ACTIVE ──guest End──▶ ENDING ──host End──▶ ENDED
//	     │                  │              │                    │               │ ▲  │                   │
//	     └─ no quote ───────┴─ expired ────┴──── no grant (refund) ─────────────┼─┼──┴── host End ──────┴─ close deadline ─▶ ENDED
//	                                                                            └─┘ top-up loop (C1.11–C1.15)
//
// The rules that keep either party from cheating the other:
//   - the tariff the guest was shown is copied into the session at the
//     request, and every quote of the session is priced from the copy;
//   - volume is reserved when a quote is paid, not when it is quoted;
//   - each granted quote is a tranche, billed at its own price (settle.go);
//   - a guest's End of an active session waits for the host's final count
//     (ENDING), which the host's gateway takes after revoking the guest;
//     a host silent past the close deadline is settled on its last report.
package session

import (
	"bytes"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

// Party is an authenticated device, the account that owns it and its
// device key (Ed25519).
type Party struct {
	DeviceID  string
	AccountID string
	PublicKey []byte
}

// same reports whether c and d charge the same: the same quote, parties,
// amount, bytes and method.
func (c Charge) same(d Charge) bool {
	party := func(a, b Party) bool { return a.DeviceID == b.DeviceID && a.AccountID == b.AccountID }
	return c.QuoteID == d.QuoteID && c.SessionID == d.SessionID && party(c.Payer, d.Payer) && party(c.Payee, d.Payee) &&
		c.Amount == d.Amount && c.Currency == d.Currency && c.Bytes == d.Bytes && c.Method == d.Method
}

// Charge asks the payment platform to take a quote's fee. (same compares
// every field: a new one goes there too.)
type Charge struct {
	QuoteID, SessionID string
	Payer, Payee       Party
	Amount             int64
	Currency           string
	Bytes              int64
	// Method is MethodWallet or MethodCard: where the money comes from.
	Method string
}

// Payment methods (Charge.Method), also the platform named in receipts.
const (
	MethodWallet = "wallet"
	MethodCard   = "card"
)

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
	// Redeem marks the recorded receipt of a quote as used by its
	// confirmation; false if it is unknown or was used before.
	Redeem(tx *store.Tx, receiptID, quoteID string) (bool, error)
	// Stored returns the recorded receipt of a quote, nil if none.
	Stored(tx *store.Tx, quoteID string) (*sharespotv1.Receipt, error)
	// ReadingReceipts reads the recorded receipts of a session's quotes
	// (none for a quote not paid), to send with the session's own reads
	// (store.Tx.Together): Stored then takes them without reading again in
	// this write. For a write that holds the session's lock, under which
	// its receipts are recorded.
	ReadingReceipts(tx *store.Tx, sessionID string) store.Reading
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
	// CloseTimeout: how long a host has to send its final count after the
	// guest ended; then the session is settled on the host's last report.
	CloseTimeout time.Duration
	// FeeBPS is the platform's fee, in basis points of what the guest is
	// charged.
	FeeBPS int64
	// Suites the server accepts for sealing, in preference order.
	Suites []seal.Suite
	// Announce: send the guest an encryption message naming the suite
	// (C2.2). When false the preset suite is used silently (C2.1).
	Announce bool
	// MaxOpenPerGuest caps a guest device's unfinished sessions.
	MaxOpenPerGuest int
	// MaxUnpaidPerAccount caps an account's requests not yet paid for
	// (requested or quoted), across its devices.
	MaxUnpaidPerAccount int
	// HostAway: a request for a hotspot whose host has not been there
	// this long (registry.Hotspot.Present) is refused at once, rather
	// than left to time out. 0: not asked.
	HostAway time.Duration
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		QuoteTimeout:        30 * time.Second,
		QuoteTTL:            2 * time.Minute,
		GrantTimeout:        30 * time.Second,
		CloseTimeout:        15 * time.Second,
		FeeBPS:              500,
		Suites:              []seal.Suite{seal.Preset},
		Announce:            false,
		MaxOpenPerGuest:     8,
		MaxUnpaidPerAccount: 4,
		HostAway:            90 * time.Second,
	}
}

// Engine runs the state machine.
type Engine struct {
	st    *store.Store
	wake  relay.Waker
	pay   Platform
	cards Cards
	now   func() time.Time
	cfg   Config
	log   *slog.Logger
	// parties remembers sessions' parties for VerifyKnownAck.
	parties partiesMemo
}

// New returns an engine. cards settles the card payments (package card);
// nil means there are none.
func New(st *store.Store, wake relay.Waker, pay Platform, cards Cards, now func() time.Time, cfg Config, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cards == nil {
		cards = noCards{}
	}
	if len(cfg.Suites) == 0 {
		cfg.Suites = []seal.Suite{seal.Preset}
	}
	if cfg.MaxUnpaidPerAccount <= 0 {
		cfg.MaxUnpaidPerAccount = DefaultConfig().MaxUnpaidPerAccount
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultConfig().CloseTimeout
	}
	return &Engine{st: st, wake: wake, pay: pay, cards: cards, now: now, cfg: cfg, log: log}
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// ---------------------------------------------------------------- C1.5–C1.6

// RequestAccess is C1.5–C1.6: the guest asks, through the server, the host
// of an available hotspot for access. The hotspot's tariff is copied into
// the session: it is the tariff of every quote of the session. If shown is
// set (the tariff the guest was shown, C1.4) and the hotspot's tariff is no
// longer that, the request is refused. mode says who counts the session's
// data (evidence.go): verified, or unverified (also when unspecified); it
// never changes. The host receives AccessRequested.
func (e *Engine) RequestAccess(tx *store.Tx, guest Party, hotspotID string, bytes int64, gk GuestKeys, shown *sharespotv1.Tariff, mode sharespotv1.UsageMode) (*sharespotv1.Session, error) {
	now := e.nowMS()
	if bytes <= 0 {
		return nil, problem.Invalidf("bytes must be positive, got %d", bytes)
	}
	switch mode {
	case sharespotv1.UsageMode_USAGE_MODE_VERIFIED, sharespotv1.UsageMode_USAGE_MODE_UNVERIFIED:
	case sharespotv1.UsageMode_USAGE_MODE_UNSPECIFIED:
		mode = sharespotv1.UsageMode_USAGE_MODE_UNVERIFIED
	default:
		return nil, problem.Invalidf("usage_mode %d is not a mode (verified 1, unverified 2)", mode)
	}
	if mode == sharespotv1.UsageMode_USAGE_MODE_VERIFIED && len(guest.PublicKey) == 0 {
		return nil, fmt.Errorf("session: the guest's device key is not known")
	}
	keys := gk.keys
	if len(keys) == 0 {
		return nil, problem.Invalidf("guest_keys are missing")
	}
	// The hotspot; the guest's device row locked, so that two concurrent
	// requests count each other's sessions; and the caps' counts, read
	// after the lock: one round trip on PostgreSQL.
	var h *registry.Hotspot
	caps, reads := e.readingCaps(tx, guest, keys)
	if err := tx.Together(append([]store.Reading{registry.Reading(hotspotID, &h)}, reads...)...); err != nil {
		return nil, err
	}
	h, err := registry.Got(h, hotspotID)
	if err != nil {
		return nil, err
	}
	switch {
	case !h.Active:
		return nil, problem.WrongStatef("hotspot %s is no longer offered", hotspotID)
	case h.HostDeviceID == guest.DeviceID:
		return nil, problem.Deniedf("a device cannot buy from its own hotspot")
	case !h.Present(now, e.cfg.HostAway):
		return nil, problem.WrongStatef("the host of %q is offline (last there %s ago): it cannot answer; choose another hotspot",
			h.SSID, time.Duration(now-h.SeenMS)*time.Millisecond/time.Second*time.Second)
	case shown != nil && !h.Tariff.Equal(shown):
		return nil, problem.WrongStatef("the hotspot's tariff changed since it was shown to you (now %s per %s, top-ups %s); scan again",
			money.Format(h.Tariff.PriceMinor, h.Tariff.Currency), size.Format(h.Tariff.UnitBytes), money.Format(h.Tariff.TopUpPriceMinor, h.Tariff.Currency))
	case bytes < h.Tariff.MinPurchase:
		least, asked := size.FormatPair(h.Tariff.MinPurchase, bytes)
		return nil, problem.Invalidf("the smallest purchase here is %s; you asked for %s", least, asked)
	case bytes > h.Available():
		left, asked := size.FormatPair(h.Available(), bytes)
		return nil, problem.Exhaustedf("the hotspot has %s left to share; you asked for %s", left, asked)
	}
	again, err := e.checkCaps(tx, caps)
	if err != nil {
		return nil, err
	}
	if again != nil {
		// The same request sent again, its first answer lost (a replica
		// died, a connection or channel broke): its guest keys, fresh for
		// every request, say so. It gets the session the first made;
		// nothing more is made or sent to the host.
		if again.HotspotID != hotspotID || again.Requested != bytes || again.Mode != mode {
			return nil, problem.AlreadyExistsf("these guest keys were sent for session %s, of another hotspot or volume; make fresh keys for each request", again.ID)
		}
		return e.render(tx, again, guest)
	}
	keyBlob, err := proto.Marshal(&sharespotv1.AccessRequested{GuestKeys: keys})
	if err != nil {
		return nil, err
	}
	s := &row{
		ID: protocol.NewID("ses"), HotspotID: h.ID, Host: h.HostDeviceID, Guest: guest.DeviceID, GuestAccount: guest.AccountID,
		State: sharespotv1.SessionState_SESSION_STATE_REQUESTED, Requested: bytes, Currency: h.Tariff.Currency, Tariff: h.Tariff,
		GuestKeys: keyBlob, DeadlineMS: now + e.cfg.QuoteTimeout.Milliseconds(), CreatedMS: now, UpdatedMS: now,
		Mode: mode, GuestKey: guest.PublicKey, Verified: mode == sharespotv1.UsageMode_USAGE_MODE_VERIFIED, Window: protocol.Window(0),
	}
	if err := s.insert(tx); err != nil {
		return nil, err
	}
	// Its acknowledgments are checked without a read (VerifyKnownAck),
	// once it exists.
	tx.AfterCommit(func() { e.parties.put(s) })
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_AccessRequested{AccessRequested: &sharespotv1.AccessRequested{
		HotspotId: h.ID, GuestDeviceId: guest.DeviceID, Bytes: bytes, GuestKeys: keys, Tariff: s.Tariff.Proto(),
		UsageMode: s.Mode, GuestDeviceKey: s.GuestKey,
	}}}); err != nil {
		return nil, err
	}
	return e.render(tx, s, guest)
}

// The caps' counts, on the partial indexes of migration 0009. Conditions
// are written into the text, not bound, so that both engines' planners
// see that an index covers the query. countOpen keeps the state's test
// too: a replica of an earlier release, during a rolling upgrade, ends
// sessions without ended_ms (the next start of this release repairs it,
// RepairEnded), and such a session must not count as unfinished.
var (
	openOf = fmt.Sprintf(`SELECT id, guest_keys FROM sessions WHERE guest_device_id = ? AND ended_ms = 0 AND state <> %d`,
		sharespotv1.SessionState_SESSION_STATE_ENDED)
	countUnpaid = fmt.Sprintf(`SELECT COUNT(*) FROM sessions WHERE guest_account_id = ? AND ended_ms = 0 AND state IN (%d, %d)`,
		sharespotv1.SessionState_SESSION_STATE_REQUESTED, sharespotv1.SessionState_SESSION_STATE_QUOTED)
)

// caps is what the caps on a guest's requests rest on (readingCaps).
type caps struct {
	lock         *account.Locking
	open, unpaid int
	againID      string
}

// readingCaps returns the reads that the caps on a guest's requests rest
// on, to send together (store.Tx.Together): the lock on the guest's
// device row first, so that two concurrent requests count each other's
// sessions, then its unfinished sessions and its account's unpaid
// requests. checkCaps then applies them.
func (e *Engine) readingCaps(tx *store.Tx, guest Party, keys []*sharespotv1.GuestKey) (*caps, []store.Reading) {
	c := &caps{lock: account.LockingDevice(tx, guest.DeviceID)}
	return c, []store.Reading{c.lock.Reading,
		{Query: openOf, Args: []any{guest.DeviceID}, Row: func(sc store.Scanner) error {
			var id string
			var blob []byte
			if err := sc.Scan(&id, &blob); err != nil {
				return fmt.Errorf("session: open sessions: %w", err)
			}
			c.open++
			var req sharespotv1.AccessRequested
			if proto.Unmarshal(blob, &req) == nil && sameKeys(req.GuestKeys, keys) {
				c.againID = id
			}
			return nil
		}},
		{Query: countUnpaid, Args: []any{guest.AccountID}, Row: func(sc store.Scanner) error {
			if err := sc.Scan(&c.unpaid); err != nil {
				return fmt.Errorf("session: count unpaid requests: %w", err)
			}
			return nil
		}}}
}

// checkCaps caps a guest's unfinished sessions per device, and its unpaid
// requests per account: a request reserves nothing, but each costs the host
// a quote. It returns the unfinished session a request with keys made
// before, if any: the same request sent again.
func (e *Engine) checkCaps(tx *store.Tx, c *caps) (*row, error) {
	if err := c.lock.Err(); err != nil {
		return nil, err
	}
	if c.againID != "" {
		return loadRow(tx, c.againID)
	}
	if c.open >= e.cfg.MaxOpenPerGuest {
		return nil, problem.Exhaustedf("you have %d unfinished sessions; end one first", c.open)
	}
	if c.unpaid >= e.cfg.MaxUnpaidPerAccount {
		return nil, problem.Exhaustedf("your account has %d requests not yet paid for; pay or end one first", c.unpaid)
	}
	return nil, nil
}

// sameKeys reports whether a and b are the same guest keys (suite and
// public key, in order).
func sameKeys(a, b []*sharespotv1.GuestKey) bool {
	if len(a) != len(b) || len(a) == 0 {
		return false
	}
	for i := range a {
		if a[i].GetSuite() != b[i].GetSuite() || !bytes.Equal(a[i].GetPublicKey(), b[i].GetPublicKey()) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- C3.1 / C1.12

// Quote is C3.1 (fee information, after a request) and C1.12 (additional-fee
// information, after a top-up request): the host prices the data; the server
// holds the host to the session's copy of the tariff and relays the quote to
// the guest. A quote reserves no volume: payment does.
func (e *Engine) Quote(tx *store.Tx, host Party, sessionID string, bytes, amount int64, currency string) (*sharespotv1.Quote, error) {
	now := e.nowMS()
	var h *registry.Hotspot
	s, err := e.loadWith(tx, sessionID, host, roleHost, registry.ReadingOfSession(sessionID, &h))
	if err != nil {
		return nil, err
	}
	var kind sharespotv1.QuoteKind
	unitPrice := s.Tariff.PriceMinor
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
		kind, unitPrice = sharespotv1.QuoteKind_QUOTE_KIND_TOPUP, s.Tariff.TopUpPriceMinor
		if bytes != s.PendingTopUp {
			return nil, problem.Invalidf("quote is for %d bytes but the guest asked for %d more", bytes, s.PendingTopUp)
		}
	default:
		return nil, problem.WrongStatef("session %s is %s: nothing to quote", s.ID, stateName(s.State))
	}
	want, err := protocol.Price(bytes, unitPrice, s.Tariff.UnitBytes)
	if err != nil {
		return nil, problem.Invalidf("cannot price %d bytes: %v", bytes, err)
	}
	if currency != s.Currency {
		return nil, problem.Invalidf("quote currency %q differs from the tariff's %s", currency, s.Currency)
	}
	if amount != want {
		return nil, problem.Invalidf("quote of %d does not match the session's tariff, which gives %d for %d bytes", amount, want, bytes)
	}
	if h, err = registry.Got(h, s.HotspotID); err != nil {
		return nil, err
	}
	if bytes > h.Available() {
		left, asked := size.FormatPair(h.Available(), bytes)
		return nil, problem.Exhaustedf("the hotspot has %s left to share; cannot quote %s", left, asked)
	}
	q := &quote{ID: protocol.NewID("q"), SessionID: s.ID, Kind: kind, Bytes: bytes, Amount: amount, Currency: currency,
		State: sharespotv1.QuoteState_QUOTE_STATE_OPEN, ExpiresMS: now + e.cfg.QuoteTTL.Milliseconds(), CreatedMS: now}
	if err := q.insert(tx); err != nil {
		return nil, err
	}
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
	s, err := e.loadQuoted(tx, sessionID, host, roleHost, false)
	if err != nil {
		return nil, err
	}
	reason = clip(reason, 200)
	switch {
	case s.State == sharespotv1.SessionState_SESSION_STATE_REQUESTED:
		if err := e.finish(tx, s, 0, protocol.DeclinedByHost+reason); err != nil {
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

// SignedCharge is a charge with its signed receipt, made by SignCharge.
type SignedCharge struct {
	c         Charge
	receiptID string
	rc        *sharespotv1.Receipt
}

// Charge is what the signed charge takes.
func (sc SignedCharge) Charge() Charge { return sc.c }

// SignCharge plans the payment of a quote in a read transaction and signs
// its payment-success response; Pay then commits it if the quote is still
// open and unchanged.
func (e *Engine) SignCharge(tx *store.Tx, guest Party, quoteID string) (SignedCharge, error) {
	return e.SignChargeBy(tx, guest, quoteID, MethodWallet)
}

// SignChargeBy is SignCharge for a payment method: the card platform
// (internal/card) signs once Stripe reports the amount authorised.
func (e *Engine) SignChargeBy(tx *store.Tx, guest Party, quoteID, method string) (SignedCharge, error) {
	now := e.nowMS()
	c, _, _, err := e.payable(tx, guest, quoteID, now)
	if err != nil {
		return SignedCharge{}, err
	}
	c.Method = method
	id, rc, err := e.pay.Sign(now, c)
	if err != nil {
		return SignedCharge{}, fmt.Errorf("session: sign receipt: %w", err)
	}
	return SignedCharge{c: c, receiptID: id, rc: rc}, nil
}

// Pay is C3.2 (and C1.13 for a top-up): the guest pays the quoted fee
// through the payment platform, which holds it in escrow and answers with
// the signed payment-success response. A quote is paid at most once, and
// only while the hotspot still has its volume, which the payment reserves.
// Pay commits a charge SignChargeBy signed before (a card's, once Stripe
// authorised it) if the quote is still open and unchanged.
func (e *Engine) Pay(tx *store.Tx, guest Party, sc SignedCharge) (*sharespotv1.Receipt, error) {
	now := e.nowMS()
	c, q, s, err := e.payable(tx, guest, sc.c.QuoteID, now)
	if err != nil {
		return nil, err
	}
	c.Method = sc.c.Method
	if !c.same(sc.c) {
		return nil, problem.WrongStatef("quote %s changed while it was being paid; pay again", q.ID)
	}
	return e.charge(tx, now, c, q, s, sc.receiptID, sc.rc)
}

// PayWallet is Pay from the guest's wallet in one write: the charge is
// planned, its payment-success response signed and the payment committed
// together. Signing here costs the writer one Ed25519 signature; planning
// in a read of its own first (SignCharge, then Pay) would read the quote,
// the session and the host's account twice.
func (e *Engine) PayWallet(tx *store.Tx, guest Party, quoteID string) (*sharespotv1.Receipt, error) {
	now := e.nowMS()
	c, q, s, err := e.payable(tx, guest, quoteID, now)
	if err != nil {
		return nil, err
	}
	id, rc, err := e.pay.Sign(now, c)
	if err != nil {
		return nil, fmt.Errorf("session: sign receipt: %w", err)
	}
	return e.charge(tx, now, c, q, s, id, rc)
}

// charge reserves the quote's volume on the hotspot, moves the fee into
// escrow with its receipt and marks the quote paid.
func (e *Engine) charge(tx *store.Tx, now int64, c Charge, q *quote, s *row, receiptID string, rc *sharespotv1.Receipt) (*sharespotv1.Receipt, error) {
	if err := registry.Reserve(tx, s.HotspotID, q.Bytes); err != nil {
		return nil, err
	}
	s.Reserved += q.Bytes
	if err := e.pay.Charge(tx, now, c, receiptID, rc); err != nil {
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
	return rc, nil
}

// payable checks that guest may pay quoteID now and returns the charge.
func (e *Engine) payable(tx *store.Tx, guest Party, quoteID string, now int64) (Charge, *quote, *row, error) {
	var s *row
	var err error
	if tx.Engine() == store.Postgres {
		// A quote changes only under its session's lock: the session is
		// found by the quote, locked and read with its quotes at once, so
		// no concurrent write (an expiry, another payment) changes the
		// quote after it was read. SQLite's single writer runs this write
		// alone, from its memory.
		s, err = loadByQuote(tx, quoteID)
	} else {
		var q *quote
		if q, err = loadQuote(tx, quoteID); err == nil {
			s, err = loadRow(tx, q.SessionID)
		}
	}
	if err == nil {
		s, err = checkParty(s, guest, s.ID, roleGuest)
	}
	if problem.KindOf(err) == problem.NotFound {
		// No such quote, or not a party of its session: the quote does
		// not exist for them.
		return Charge{}, nil, nil, problem.NotFoundf("quote %s not found", quoteID)
	}
	if err != nil {
		return Charge{}, nil, nil, err // e.g. a party in the wrong role: say so
	}
	q, err := quoteOf(tx, s.ID, quoteID)
	if err != nil {
		return Charge{}, nil, nil, err
	}
	switch {
	case q.State == sharespotv1.QuoteState_QUOTE_STATE_EXPIRED || (q.State == sharespotv1.QuoteState_QUOTE_STATE_OPEN && now >= q.ExpiresMS):
		return Charge{}, nil, nil, problem.WrongStatef("quote %s expired; ask for a new one", q.ID)
	case q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN:
		return Charge{}, nil, nil, problem.AlreadyExistsf("quote %s is already paid", q.ID)
	case s.State == sharespotv1.SessionState_SESSION_STATE_ENDED || s.State == sharespotv1.SessionState_SESSION_STATE_ENDING:
		return Charge{}, nil, nil, problem.WrongStatef("session %s has ended", s.ID)
	}
	hostAccount, err := account.Of(tx, s.Host)
	if err != nil {
		return Charge{}, nil, nil, err
	}
	return Charge{QuoteID: q.ID, SessionID: s.ID, Payer: guest, Payee: Party{DeviceID: s.Host, AccountID: hostAccount},
		Amount: q.Amount, Currency: q.Currency, Bytes: q.Bytes, Method: MethodWallet}, q, s, nil
}

// ---------------------------------------------------------------- C3.3 / C1.14 / C2

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

// Confirm is C3.3 (and C1.14): the guest sends the payment-success response
// to the host through the server. The server verifies the platform's
// signature and that the receipt is for this quote, payer and amount, and
// accepts each receipt once. With the confirmation the host learns the
// suite to seal with; if the server announces suites, the guest gets the
// encryption message naming it (C2.2), otherwise both use the preset (C2.1).
func (e *Engine) Confirm(tx *store.Tx, guest Party, sessionID string, vr VerifiedReceipt) (*sharespotv1.Session, error) {
	now := e.nowMS()
	s, err := e.loadQuoted(tx, sessionID, guest, roleGuest, true)
	if err != nil {
		return nil, err
	}
	rc, p := vr.rc, vr.p
	if rc == nil {
		return nil, problem.Invalidf("receipt is missing")
	}
	q, err := quoteOf(tx, s.ID, p.QuoteID)
	if err != nil {
		return nil, problem.Deniedf("receipt refused: it is not for a quote of session %s", s.ID)
	}
	want := receipt.Payload{SessionID: s.ID, QuoteID: q.ID, Amount: q.Amount, Currency: q.Currency, Payer: guest.DeviceID, Payee: s.Host, Bytes: q.Bytes}
	if err := p.Matches(want); err != nil {
		return nil, problem.Deniedf("receipt refused: %v", err)
	}
	if q.State != sharespotv1.QuoteState_QUOTE_STATE_PAID {
		return nil, problem.WrongStatef("receipt refused: quote %s is %s, not awaiting confirmation (a receipt is accepted once)", q.ID, quoteStateName(q.State))
	}
	if ok, err := e.pay.Redeem(tx, p.ReceiptID, q.ID); err != nil {
		return nil, fmt.Errorf("session: redeem receipt: %w", err)
	} else if !ok {
		return nil, problem.WrongStatef("receipt refused: already used or unknown")
	}
	q.State = sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED
	if err := q.save(tx); err != nil {
		return nil, err
	}
	msg := &sharespotv1.PaymentConfirmed{QuoteId: q.ID, Kind: q.Kind, Receipt: rc, Quote: q.proto(nil), GuestDeviceId: s.Guest,
		UsageMode: s.Mode, GuestDeviceKey: s.GuestKey}
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
// confirmed payment of a session still running, and exactly the volume
// paid for; the granted quote becomes the session's next tranche, and the
// credit window (evidence.go) grows with what was granted.
func (e *Engine) Grant(tx *store.Tx, host Party, sessionID, quoteID string, granted int64, sealed *sharespotv1.SealedCode, gw *sharespotv1.Gateway) (*sharespotv1.Session, error) {
	now := e.nowMS()
	s, err := e.loadQuoted(tx, sessionID, host, roleHost, false)
	if err != nil {
		return nil, err
	}
	q, err := quoteOf(tx, s.ID, quoteID)
	if err != nil {
		return nil, problem.NotFoundf("quote %s not found in session %s", quoteID, s.ID)
	}
	if q.State != sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED {
		return nil, problem.WrongStatef("quote %s is %s: grant only after the payment is confirmed", q.ID, quoteStateName(q.State))
	}
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDING {
		return nil, problem.WrongStatef("session %s is ending: nothing more is granted", s.ID)
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
		s.GatewayKind, s.GatewayAddress = gw.Kind, gw.Address
		s.State = sharespotv1.SessionState_SESSION_STATE_ACTIVE
	} else {
		if sealed != nil {
			return nil, problem.Invalidf("a top-up grant carries no access code")
		}
		s.PendingTopUp = 0
	}
	if q.Tranche, err = nextTranche(tx, s.ID); err != nil {
		return nil, err
	}
	s.Granted += granted
	s.Window = protocol.Window(s.Granted)
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

// atGateway counts the running sessions granted at a gateway: its address
// and the two running states.
const atGateway = `SELECT COUNT(*) FROM sessions WHERE gateway_address = ? AND ended_ms = 0 AND state IN (?, ?)`

// KnownGateway reports whether a running session was granted at the
// gateway reached at address (host:port).
func KnownGateway(tx *store.Tx, address string) (bool, error) {
	var n int
	err := tx.QueryRow(atGateway, address,
		int32(sharespotv1.SessionState_SESSION_STATE_ACTIVE), int32(sharespotv1.SessionState_SESSION_STATE_ENDING)).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("session: sessions at gateway %s: %w", address, err)
	}
	return n > 0, nil
}

// ---------------------------------------------------------------- C1.9

// Prompt is C1.9: the host tells the guest, through the server, that the
// remaining volume fell below the host's preset threshold (its warning
// level, or the level its gateway's rate measure sets). The server checks
// that it really did. va, if not nil, is the latest acknowledgment the
// host's gateway holds.
func (e *Engine) Prompt(tx *store.Tx, host Party, sessionID string, used int64, va *VerifiedAck) error {
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
	if _, err := e.takeAck(s, va); err != nil {
		return err
	}
	h, err := registry.Get(tx, s.HotspotID)
	if err != nil {
		return err
	}
	// The host's gateway prompts at its warning level, or earlier when the
	// guest's rate would use up what is left before a top-up could arrive;
	// the server accepts a prompt once less than the warning level or half
	// of what was granted is left, whichever is more.
	remaining := s.Granted - s.Used
	if limit := max(h.WarnAtBytes, s.Granted/2); remaining >= limit {
		left, at := size.FormatPair(remaining, limit)
		return problem.WrongStatef("%s remaining is not below the warning level of %s", left, at)
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
	s, err := e.loadQuoted(tx, sessionID, guest, roleGuest, true)
	if err != nil {
		return nil, err
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return nil, problem.WrongStatef("session %s is %s: top-ups need an active session", s.ID, stateName(s.State))
	}
	if s.PendingTopUp > 0 {
		return nil, problem.WrongStatef("a top-up of %s is already under way", size.Format(s.PendingTopUp))
	}
	if bytes <= 0 {
		return nil, problem.Invalidf("bytes must be positive, got %d", bytes)
	}
	h, err := registry.Get(tx, s.HotspotID)
	if err != nil {
		return nil, err
	}
	if bytes > h.Available() {
		left, asked := size.FormatPair(h.Available(), bytes)
		return nil, problem.Exhaustedf("the hotspot has %s left to share; you asked for %s more", left, asked)
	}
	s.PendingTopUp = bytes
	s.DeadlineMS = now + e.cfg.QuoteTimeout.Milliseconds()
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_TopUpRequested{TopUpRequested: &sharespotv1.TopUpRequested{
		Bytes: bytes, Tariff: s.Tariff.Proto()}}}); err != nil {
		return nil, err
	}
	return e.render(tx, s, guest)
}

// ---------------------------------------------------------------- usage and end

// ReportUsage records the host's metered usage of a running (or ending)
// session, and va (if not nil), the latest acknowledgment its gateway
// holds.
func (e *Engine) ReportUsage(tx *store.Tx, host Party, sessionID string, used int64, va *VerifiedAck) (*sharespotv1.Session, error) {
	s, err := e.loadQuoted(tx, sessionID, host, roleHost, false)
	if err != nil {
		return nil, err
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE && s.State != sharespotv1.SessionState_SESSION_STATE_ENDING {
		return nil, problem.WrongStatef("session %s is %s: no usage to report", s.ID, stateName(s.State))
	}
	if err := e.recordUsage(s, used); err != nil {
		return nil, err
	}
	if _, err := e.takeAck(s, va); err != nil {
		return nil, err
	}
	now := e.nowMS()
	if err := s.save(tx, now); err != nil {
		return nil, err
	}
	if err := sampleUsage(tx, s.ID, now, s.Used); err != nil {
		return nil, err
	}
	return e.render(tx, s, host)
}

// sampleUsage keeps a usage report's count at its time, for the
// dashboard's rate and chart (two reports in one millisecond: the later).
func sampleUsage(tx *store.Tx, sessionID string, atMS, used int64) error {
	return tx.ExecLater("session: sample usage of "+sessionID, `INSERT INTO usage_samples (session_id, at_ms, used_bytes) VALUES (?, ?, ?)
		ON CONFLICT (session_id, at_ms) DO UPDATE SET used_bytes = excluded.used_bytes`, sessionID, atMS, used)
}

// PruneUsageSamples deletes the usage samples taken before beforeMS, and
// every sample of a session that has ended or is not known: the
// dashboard draws only live sessions' recent ones (dashboard.Sweep).
func PruneUsageSamples(tx *store.Tx, beforeMS int64) error {
	if _, err := tx.Exec(`DELETE FROM usage_samples WHERE at_ms < ?`, beforeMS); err != nil {
		return fmt.Errorf("session: prune old usage samples: %w", err)
	}
	_, err := tx.Exec(`DELETE FROM usage_samples WHERE session_id IN (
		SELECT u.session_id FROM usage_samples u LEFT JOIN sessions s ON s.id = u.session_id
		WHERE s.id IS NULL OR s.state = ?)`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED))
	if err != nil {
		return fmt.Errorf("session: prune usage samples of ended sessions: %w", err)
	}
	return nil
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

// End ends a session. Ending takes both parties once data may have flowed:
// the guest's End of an active session moves it to ENDING and tells the
// host, whose gateway revokes the guest and whose End then brings the final
// count (or, past the close deadline, the last report stands). The host's
// End, and either party's End before the grant, settles at once (settle.go).
// Ending an ended session returns it. In a verified session va (if not nil)
// is the host's latest acknowledgment from its gateway, or the guest's last
// word; held is the host's word that its gateway held a guest that stopped
// acknowledging.
func (e *Engine) End(tx *store.Tx, p Party, sessionID string, used int64, reason string, va *VerifiedAck, held bool) (*sharespotv1.Session, error) {
	now := e.nowMS()
	// What the bill rests on is read with the session's lock too, and
	// kept for it (billInputs).
	in := &billInputs{holds: map[string]CardHold{}}
	s, read, err := loadWithQuotesRead(tx, sessionID, e.pay.ReadingReceipts(tx, sessionID),
		ledger.ReadingBalance(ledger.Escrow(sessionID, "").ID, &in.held), e.cards.ReadingHolds(sessionID, in.holds))
	if err == nil {
		s, err = checkParty(s, p, sessionID, roleEither)
	}
	if err != nil {
		return nil, err
	}
	if read {
		tx.Remember(billKey(sessionID), in)
	}
	if reason = clip(reason, 200); reason == "" {
		reason = "ended"
	}
	switch {
	case s.State == sharespotv1.SessionState_SESSION_STATE_ENDED:
		return e.render(tx, s, p)
	case p.DeviceID == s.Host:
		if used != 0 || s.Used == 0 {
			if err := e.recordUsage(s, used); err != nil {
				return nil, err
			}
		}
		if _, err := e.takeAck(s, va); err != nil {
			return nil, err
		}
		s.GuestHeld = held && s.verified()
		why := "ended by host: " + reason
		if s.State == sharespotv1.SessionState_SESSION_STATE_ENDING {
			why = s.EndReason + "; the host's final count"
		}
		if err := e.finish(tx, s, s.Used, why); err != nil {
			return nil, err
		}
	case s.State == sharespotv1.SessionState_SESSION_STATE_ENDING:
		return e.render(tx, s, p) // the guest asked already
	case s.State == sharespotv1.SessionState_SESSION_STATE_ACTIVE:
		if _, err := e.takeAck(s, va); err != nil { // its last word
			return nil, err
		}
		s.State, s.EndReason = sharespotv1.SessionState_SESSION_STATE_ENDING, "ended by guest: "+reason
		s.DeadlineMS = now + e.cfg.CloseTimeout.Milliseconds()
		if err := s.save(tx, now); err != nil {
			return nil, err
		}
		if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_SessionEnding{SessionEnding: &sharespotv1.SessionEnding{
			Reason: reason, DeadlineUnixMs: s.DeadlineMS}}}); err != nil {
			return nil, err
		}
	default: // before the grant: no byte can have flowed
		if err := e.finish(tx, s, 0, "ended by guest: "+reason); err != nil {
			return nil, err
		}
	}
	return e.render(tx, s, p)
}

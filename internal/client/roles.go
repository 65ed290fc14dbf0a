package client

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/seal"
)

// Gate is the host-side check a guest presents its access code to. The
// metering gateways implement it; CodeGate is the plain check.
type Gate interface {
	// Admit registers a granted session's code and volume.
	Admit(sessionID string, code []byte, bytes int64) error
	// Extend adds volume to an admitted session.
	Extend(sessionID string, bytes int64) error
	// Revoke ends a session's access.
	Revoke(sessionID string)
	// Acknowledge records the guest's signed count of the bytes it
	// received (acked) and the session's credit window: the gate may hold
	// the guest to at most window bytes beyond it. An error means the
	// message should be handled again.
	Acknowledge(sessionID string, acked, window int64) error
	// Usage returns the bytes a session used and its volume at the gate
	// (still readable after Revoke).
	Usage(sessionID string) (used, quota int64, err error)
	// Gateway tells guests how to reach the gate.
	Gateway() *sharespotv1.Gateway
}

// Host answers a host device's inbox: it quotes requests and top-ups at
// the session's tariff, verifies payment-success responses offline with
// the platform's keys (each receipt once), seals access codes to the guest,
// grants, and gives at the gate only what the server granted. When the
// guest ends, it revokes the guest at the gate and sends its final count.
type Host struct {
	C    *Client
	Gate Gate
	// Decide may turn a request down; nil accepts every request.
	Decide func(*sharespotv1.AccessRequested) (ok bool, reason string)
	Log    *slog.Logger
	// CodeKey derives each session's access code (HMAC-SHA256 of the
	// session ID), so a grant retried after a lost response, or after a
	// restart, seals the same code the gate already holds. Keep it secret
	// and persistent; nil: a random key for this process only.
	CodeKey []byte

	verifier *receipt.Verifier
	mu       sync.Mutex
	seen     map[string]bool  // receipt IDs whose grant succeeded
	windows  map[string]int64 // each running session's credit window, as granted
}

// Start fetches the platform's receipt keys.
func (h *Host) Start(ctx context.Context) error {
	res, err := h.C.Payments.PlatformKeys(ctx, connect.NewRequest(&sharespotv1.PlatformKeysRequest{}))
	if err != nil {
		return fmt.Errorf("client: fetch platform keys: %w", err)
	}
	var keys []ed25519.PublicKey
	for _, k := range res.Msg.Keys {
		if len(k.PublicKey) != ed25519.PublicKeySize || receipt.KeyIDOf(k.PublicKey) != k.KeyId {
			return fmt.Errorf("client: platform key %q is malformed", k.KeyId)
		}
		keys = append(keys, ed25519.PublicKey(k.PublicKey))
	}
	if len(h.CodeKey) == 0 {
		h.CodeKey = make([]byte, 32)
		rand.Read(h.CodeKey)
	}
	h.verifier = receipt.NewVerifier(keys...)
	h.seen = map[string]bool{}
	h.windows = map[string]int64{}
	if h.Log == nil {
		h.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Handle processes one inbox message. An error means the message should be
// handled again (a transport failure, or a refusal that says to retry); the
// server's refusals that are final are logged and dropped.
func (h *Host) Handle(ctx context.Context, env *sharespotv1.Envelope) error {
	sid := env.SessionId
	switch b := env.Body.(type) {
	case *sharespotv1.Envelope_AccessRequested: // C1.6 arrives
		if h.Decide != nil {
			if ok, why := h.Decide(b.AccessRequested); !ok {
				_, err := h.C.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: sid, Reason: why}))
				return ignoreRefusal(err)
			}
		}
		return h.quote(ctx, sid, b.AccessRequested.Tariff, b.AccessRequested.Bytes, false)
	case *sharespotv1.Envelope_TopUpRequested: // C1.11 arrives
		return h.quote(ctx, sid, b.TopUpRequested.Tariff, b.TopUpRequested.Bytes, true)
	case *sharespotv1.Envelope_PaymentConfirmed: // C3.3 / C1.14 arrive
		return h.grant(ctx, sid, b.PaymentConfirmed)
	case *sharespotv1.Envelope_UsageAcknowledged:
		return h.acknowledged(ctx, sid, b.UsageAcknowledged.GetAck())
	case *sharespotv1.Envelope_SessionEnding:
		return h.Close(ctx, sid)
	case *sharespotv1.Envelope_SessionEnded:
		h.forgetWindow(sid)
		if h.Gate != nil {
			h.Gate.Revoke(sid)
		}
	}
	return nil
}

// acknowledged passes the guest's acknowledgment, which the server
// verified and relays, to the gate with the session's credit window: the
// one its last grant set, as the Grant response (or, after a restart, the
// session read once) gives it.
func (h *Host) acknowledged(ctx context.Context, sid string, ack *sharespotv1.UsageAck) error {
	if h.Gate == nil || ack == nil {
		return nil
	}
	if ack.SessionId != sid {
		h.Log.Warn("acknowledgment for another session", "session", sid, "ack_session", ack.SessionId)
		return nil
	}
	h.mu.Lock()
	window := h.windows[sid]
	h.mu.Unlock()
	if window <= 0 {
		ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			return ignoreRefusal(err)
		}
		if window = ses.Msg.Session.GetCreditWindowBytes(); window <= 0 {
			h.Log.Warn("acknowledgment for a session without a credit window", "session", sid)
			return nil
		}
		h.setWindow(ses.Msg.Session)
	}
	if err := h.Gate.Acknowledge(sid, ack.ReceivedBytes, window); err != nil {
		return fmt.Errorf("client: acknowledgment of %s at the gate: %w", sid, err)
	}
	return nil
}

// setWindow remembers a running session's credit window.
func (h *Host) setWindow(s *sharespotv1.Session) {
	if s.GetCreditWindowBytes() <= 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.windows == nil {
		h.windows = map[string]int64{}
	}
	h.windows[s.Id] = s.CreditWindowBytes
}

func (h *Host) forgetWindow(sid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.windows, sid)
}

// quote is C3.1 / C1.12 on the host's side, at the session's tariff (the
// copy the server made when the guest asked).
func (h *Host) quote(ctx context.Context, sid string, t *sharespotv1.Tariff, bytes int64, topUp bool) error {
	if t == nil { // a server older than protocol 2: read the session's
		ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			return ignoreRefusal(err)
		}
		if t = ses.Msg.Session.Tariff; t == nil {
			return fmt.Errorf("client: session %s carries no tariff", sid)
		}
	}
	amount, err := TariffPrice(t, bytes, topUp)
	if err != nil {
		return err
	}
	_, err = h.C.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: sid, Bytes: bytes, AmountMinor: amount, Currency: t.Currency}))
	if err != nil {
		if ignoreRefusal(err) != nil {
			return err // not a refusal: the message will be handled again
		}
		h.Log.Warn("quote refused", "session", sid, "err", err)
		_, derr := h.C.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: sid, Reason: "cannot quote"}))
		return ignoreRefusal(derr)
	}
	return nil
}

// TariffPrice is what bytes cost at t: its first-purchase price, or its
// top-up price.
func TariffPrice(t *sharespotv1.Tariff, bytes int64, topUp bool) (int64, error) {
	unit := t.GetPriceMinor()
	if topUp {
		unit = t.GetTopupPriceMinor()
	}
	return protocol.Price(bytes, unit, t.GetUnitBytes())
}

// grant verifies the payment-success response and is C1.7 / C1.15 on the
// host's side. Nothing is given before the server accepts the grant: a
// first grant admits the code at the gate before Grant (the guest cannot
// learn the code before the server relays it) and revokes it if the grant
// is refused; a top-up raises the gate's volume only after Grant succeeds.
func (h *Host) grant(ctx context.Context, sid string, pc *sharespotv1.PaymentConfirmed) error {
	// The confirmation carries the quote and the guest (servers since
	// 2026-11-30); an older server's is completed by reading the session.
	q, guest, host := pc.Quote, pc.GuestDeviceId, h.C.DeviceID()
	var s *sharespotv1.Session
	if q == nil || q.Id != pc.QuoteId || guest == "" {
		ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			return ignoreRefusal(err)
		}
		s, q = ses.Msg.Session, nil
		for _, x := range s.Quotes {
			if x.Id == pc.QuoteId {
				q = x
			}
		}
		guest, host = s.GuestDeviceId, s.HostDeviceId
	}
	if q == nil {
		h.Log.Warn("confirmation for an unknown quote", "session", sid, "quote", pc.QuoteId)
		return nil
	}
	receiptID, err := h.checkReceipt(pc.Receipt, receipt.Payload{SessionID: sid, QuoteID: q.Id, Amount: q.AmountMinor, Currency: q.Currency,
		Payer: guest, Payee: host, Bytes: q.Bytes})
	if err != nil {
		h.Log.Warn("payment-success response refused", "session", sid, "err", err)
		return nil
	}
	switch q.State {
	case sharespotv1.QuoteState_QUOTE_STATE_GRANTED:
		// Granted already (a redelivered confirmation, perhaps after a
		// crash between the grant and the gate): give what was granted.
		h.remember(receiptID)
		if s == nil { // the quote came in the message: read what was granted
			ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
			if err != nil {
				return ignoreRefusal(err)
			}
			s = ses.Msg.Session
		}
		return h.Reconcile(s)
	case sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED:
	default:
		h.Log.Warn("confirmation for a quote that cannot be granted", "session", sid, "quote", q.Id, "state", q.State)
		return nil // refunded or expired: nothing to give
	}
	req := &sharespotv1.GrantRequest{SessionId: sid, QuoteId: q.Id, GrantedBytes: q.Bytes}
	initial := pc.Kind == sharespotv1.QuoteKind_QUOTE_KIND_INITIAL
	if initial {
		code := h.accessCode(sid)
		sealed, err := seal.Seal(seal.Suite(pc.Suite), pc.GuestPublicKey, seal.Binding{SessionID: sid, HostID: host, GuestID: guest}, code)
		if err != nil {
			h.Log.Warn("cannot seal to the guest's key", "session", sid, "err", err)
			return nil
		}
		if h.Gate != nil {
			// Admit replaces any earlier admission of this session, so a
			// retried grant admits the new code.
			if err := h.Gate.Admit(sid, code, q.Bytes); err != nil {
				return fmt.Errorf("client: admit %s at the gate: %w", sid, err)
			}
			req.Gateway = h.Gate.Gateway()
		}
		req.SealedCode = &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext}
	}
	res, err := h.C.Sessions.Grant(ctx, connect.NewRequest(req))
	if err != nil {
		if ignoreRefusal(err) != nil {
			return err // not final: handled again (the admission stays pending)
		}
		// Refused: perhaps because an earlier try went through and its
		// answer was lost. Ask the server which.
		ses, gerr := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if gerr != nil {
			return ignoreRefusal(gerr)
		}
		if !granted(ses.Msg.Session, q.Id) {
			h.Log.Warn("grant refused; nothing given", "session", sid, "quote", q.Id, "err", err)
			if initial && h.Gate != nil {
				h.Gate.Revoke(sid)
			}
			return nil
		}
		res = connect.NewResponse(&sharespotv1.GrantResponse{Session: ses.Msg.Session})
	}
	h.remember(receiptID)
	h.setWindow(res.Msg.Session)
	if initial {
		return nil
	}
	return h.Reconcile(res.Msg.Session)
}

// granted reports whether quote q of s is granted.
func granted(s *sharespotv1.Session, q string) bool {
	for _, x := range s.GetQuotes() {
		if x.Id == q {
			return x.State == sharespotv1.QuoteState_QUOTE_STATE_GRANTED
		}
	}
	return false
}

// Reconcile raises the gate's volume for a running session to what the
// server granted (the top-ups granted since the gate last grew).
func (h *Host) Reconcile(s *sharespotv1.Session) error {
	if h.Gate == nil || s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return nil
	}
	h.setWindow(s)
	_, quota, err := h.Gate.Usage(s.Id)
	if err != nil {
		return nil // not admitted here (its code went with a lost gateway)
	}
	if more := s.GrantedBytes - quota; more > 0 {
		if err := h.Gate.Extend(s.Id, more); err != nil {
			return fmt.Errorf("client: extend %s at the gate: %w", s.Id, err)
		}
	}
	return nil
}

// Close is the host's half of a guest's End: revoke the guest at the gate,
// then End with the gate's final count (clamped to what was granted, and
// never below what was reported), which settles the session.
func (h *Host) Close(ctx context.Context, sid string) error {
	var used int64
	if h.Gate != nil {
		h.Gate.Revoke(sid)
		used, _, _ = h.Gate.Usage(sid)
	}
	ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
	if err != nil {
		return ignoreRefusal(err)
	}
	s := ses.Msg.Session
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDED {
		return nil
	}
	used = min(max(used, s.UsedBytes), s.GrantedBytes)
	_, err = h.C.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, UsedBytes: used, Reason: "final count"}))
	if ignoreRefusal(err) != nil {
		return err
	}
	if err != nil {
		h.Log.Warn("final count refused", "session", sid, "used", used, "err", err)
	}
	return nil
}

// accessCode is the session's access code: HMAC-SHA256(CodeKey, label ||
// session ID), seal.AccessCodeSize bytes.
func (h *Host) accessCode(sessionID string) []byte {
	m := hmac.New(sha256.New, h.CodeKey)
	m.Write([]byte("sharespot/access-code/v1\x00"))
	m.Write([]byte(sessionID))
	return m.Sum(nil)[:seal.AccessCodeSize]
}

func (h *Host) remember(receiptID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[receiptID] = true
}

// VerifyReceipt checks a payment-success response offline: the platform's
// signature, that it pays for exactly want, and that it was not used
// before; it then remembers it as used.
func (h *Host) VerifyReceipt(rc *sharespotv1.Receipt, want receipt.Payload) error {
	id, err := h.checkReceipt(rc, want)
	if err != nil {
		return err
	}
	h.remember(id)
	return nil
}

// checkReceipt is VerifyReceipt without remembering: a receipt counts as
// used only once its grant went through.
func (h *Host) checkReceipt(rc *sharespotv1.Receipt, want receipt.Payload) (string, error) {
	if rc == nil {
		return "", errors.New("client: no receipt")
	}
	p, err := h.verifier.Verify(receipt.Receipt{KeyID: rc.KeyId, Payload: rc.Payload, Signature: rc.Signature})
	if err != nil {
		return "", err
	}
	if err := p.Matches(want); err != nil {
		return "", err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[p.ReceiptID] {
		return "", fmt.Errorf("client: receipt %s replayed", p.ReceiptID)
	}
	return p.ReceiptID, nil
}

// ignoreRefusal drops the server's final refusals (the flow moved on: the
// session ended or timed out), keeping transport failures and refusals
// that say to try again (a rate limit).
func ignoreRefusal(err error) error {
	if Final(err) {
		return nil
	}
	return err
}

// Final reports whether err is the server's final word on a call: a
// refusal that asking again will not change. Transport failures,
// unavailable, deadline exceeded and rate limits (resource exhausted with a
// Retry-After) are not final.
func Final(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return false
	}
	switch ce.Code() {
	case connect.CodeResourceExhausted:
		return ce.Meta().Get("Retry-After") == ""
	case connect.CodeFailedPrecondition, connect.CodeNotFound, connect.CodeInvalidArgument,
		connect.CodePermissionDenied, connect.CodeAlreadyExists:
		return true
	}
	return false
}

// CodeGate is the plain host-side check of access codes, without metering:
// it remembers a hash of each granted code and its volume.
type CodeGate struct {
	Kind, Address string

	mu   sync.Mutex
	sess map[string]*gateEntry
}

type gateEntry struct {
	hash          [32]byte
	bytes         int64
	acked, window int64
}

var _ Gate = (*CodeGate)(nil)

// Admit implements Gate.
func (g *CodeGate) Admit(sessionID string, code []byte, bytes int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sess == nil {
		g.sess = map[string]*gateEntry{}
	}
	g.sess[sessionID] = &gateEntry{hash: sha256.Sum256(code), bytes: bytes}
	return nil
}

// Extend implements Gate.
func (g *CodeGate) Extend(sessionID string, bytes int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sess[sessionID]
	if e == nil {
		return fmt.Errorf("client: session %s is not admitted", sessionID)
	}
	e.bytes += bytes
	return nil
}

// Revoke implements Gate.
func (g *CodeGate) Revoke(sessionID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.sess, sessionID)
}

// Acknowledge implements Gate: it records the highest acknowledgment and
// the latest window (see Acknowledged); it holds nothing back.
func (g *CodeGate) Acknowledge(sessionID string, acked, window int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.sess[sessionID]; e != nil {
		e.acked, e.window = max(e.acked, acked), window
	}
	return nil
}

// Acknowledged returns the acknowledgment and window the gate recorded for
// a session.
func (g *CodeGate) Acknowledged(sessionID string) (acked, window int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.sess[sessionID]; e != nil {
		return e.acked, e.window
	}
	return 0, 0
}

// Usage implements Gate: a CodeGate meters nothing.
func (g *CodeGate) Usage(sessionID string) (used, quota int64, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sess[sessionID]
	if e == nil {
		return 0, 0, fmt.Errorf("client: session %s is not admitted", sessionID)
	}
	return 0, e.bytes, nil
}

// Gateway implements Gate.
func (g *CodeGate) Gateway() *sharespotv1.Gateway {
	return &sharespotv1.Gateway{Kind: g.Kind, Address: g.Address}
}

// Check is what a guest's presented code meets: it returns the volume
// granted to the session if code is the session's code.
func (g *CodeGate) Check(sessionID string, code []byte) (int64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sess[sessionID]
	h := sha256.Sum256(code)
	if e == nil || subtle.ConstantTimeCompare(e.hash[:], h[:]) != 1 {
		return 0, errors.New("client: access code refused")
	}
	return e.bytes, nil
}

// Guest holds a guest device's per-session HPKE keys.
type Guest struct {
	C *Client
	// Suites to offer, most preferred first (default: all known).
	Suites []seal.Suite

	mu   sync.Mutex
	keys map[string]map[seal.Suite]*seal.PrivateKey
}

// RequestAccess is C1.5–C1.6 on the guest's side: fresh keys for this
// session, then the request through the server.
func (g *Guest) RequestAccess(ctx context.Context, hotspotID string, bytes int64) (*sharespotv1.Session, error) {
	return g.request(ctx, hotspotID, bytes, nil)
}

// RequestOffer is RequestAccess for an offer of the available set, bound to
// the tariff the offer showed (C1.4): the server refuses the request if the
// hotspot's tariff has changed since, and the session's tariff is the shown
// one.
func (g *Guest) RequestOffer(ctx context.Context, o *sharespotv1.Offer, bytes int64) (*sharespotv1.Session, error) {
	return g.request(ctx, o.GetHotspotId(), bytes, o.GetTariff())
}

func (g *Guest) request(ctx context.Context, hotspotID string, bytes int64, shown *sharespotv1.Tariff) (*sharespotv1.Session, error) {
	suites := g.Suites
	if len(suites) == 0 {
		suites = seal.Suites()
	}
	privs := map[seal.Suite]*seal.PrivateKey{}
	var keys []*sharespotv1.GuestKey
	for _, s := range suites {
		k, err := seal.GenerateKey(s)
		if err != nil {
			return nil, err
		}
		privs[s] = k
		keys = append(keys, &sharespotv1.GuestKey{Suite: string(s), PublicKey: k.PublicKey()})
	}
	res, err := g.C.Sessions.RequestAccess(ctx, connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: hotspotID, Bytes: bytes, GuestKeys: keys, ShownTariff: shown}))
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	if g.keys == nil {
		g.keys = map[string]map[seal.Suite]*seal.PrivateKey{}
	}
	g.keys[res.Msg.Session.Id] = privs
	g.mu.Unlock()
	return res.Msg.Session, nil
}

// OpenCode is C2.1 / C2.3: open the sealed access code with the suite the
// session uses (the preset, or the one the encryption message named).
func (g *Guest) OpenCode(sessionID, hostID string, sc *sharespotv1.SealedCode) ([]byte, error) {
	if sc == nil {
		return nil, errors.New("client: no sealed code")
	}
	g.mu.Lock()
	k := g.keys[sessionID][seal.Suite(sc.Suite)]
	g.mu.Unlock()
	if k == nil {
		return nil, fmt.Errorf("client: no key for suite %q in session %s", sc.Suite, sessionID)
	}
	return seal.Open(k, seal.Binding{SessionID: sessionID, HostID: hostID, GuestID: g.C.DeviceID()},
		seal.Sealed{Suite: seal.Suite(sc.Suite), Enc: sc.Enc, Ciphertext: sc.Ciphertext})
}

// PublicKey returns the guest's public key for suite in a session (nil if
// none).
func (g *Guest) PublicKey(sessionID string, s seal.Suite) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	if k := g.keys[sessionID][s]; k != nil {
		return k.PublicKey()
	}
	return nil
}

// Forget drops a finished session's keys.
func (g *Guest) Forget(sessionID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.keys, sessionID)
}

// AwaitVolume waits (up to within) until the gate admits code for the
// session with want bytes, and returns the volume it last saw. A host
// raises the gate's volume only after the server accepted its top-up grant,
// so the guest may hear of the grant a moment before the gate has it.
func (g *CodeGate) AwaitVolume(sessionID string, code []byte, want int64, within time.Duration) (int64, error) {
	deadline := time.Now().Add(within)
	for {
		vol, err := g.Check(sessionID, code)
		if (err == nil && vol == want) || time.Now().After(deadline) {
			return vol, err
		}
		time.Sleep(time.Millisecond)
	}
}

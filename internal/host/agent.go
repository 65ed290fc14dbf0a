package host

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/deviceid"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/seal"
)

// Agent answers a host device's inbox: it quotes requests and top-ups at
// the session's tariff, verifies payment-success responses offline with
// the platform's keys (each receipt once), seals access codes to the guest,
// grants, and gives at the gateway only what the server granted. When the
// guest ends, it revokes the guest at the gateway and sends its final
// count.
type Agent struct {
	C *client.Client
	// GW is the metering gateway guests are admitted at (nil: none, the
	// agent only answers the server).
	GW gateway.Gateway
	// Kind is the gateway's kind as guests are told it (default "proxy").
	Kind string
	// Threshold is the hotspot's warning level (its warn-at volume); a
	// session is prompted at it or at half its first purchase, whichever
	// is less (protocol.PromptLevel).
	Threshold int64
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
	seen     map[string]bool // receipt IDs whose grant succeeded
}

// Start fetches the platform's receipt keys.
func (h *Agent) Start(ctx context.Context) error {
	res, err := h.C.Payments.PlatformKeys(ctx, connect.NewRequest(&sharespotv1.PlatformKeysRequest{}))
	if err != nil {
		return fmt.Errorf("host: fetch platform keys: %w", err)
	}
	var keys []ed25519.PublicKey
	for _, k := range res.Msg.Keys {
		if len(k.PublicKey) != ed25519.PublicKeySize || receipt.KeyIDOf(k.PublicKey) != k.KeyId {
			return fmt.Errorf("host: platform key %q is malformed", k.KeyId)
		}
		keys = append(keys, ed25519.PublicKey(k.PublicKey))
	}
	if len(h.CodeKey) == 0 {
		h.CodeKey = make([]byte, 32)
		rand.Read(h.CodeKey)
	}
	h.verifier = receipt.NewVerifier(keys...)
	h.seen = map[string]bool{}
	if h.Log == nil {
		h.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Handle processes one inbox message. An error means the message should be
// handled again (a transport failure, or a refusal that says to retry); the
// server's refusals that are final are logged and dropped.
func (h *Agent) Handle(ctx context.Context, env *sharespotv1.Envelope) error {
	sid := env.SessionId
	switch b := env.Body.(type) {
	case *sharespotv1.Envelope_AccessRequested: // C1.6 arrives
		if h.Decide != nil {
			if ok, why := h.Decide(b.AccessRequested); !ok {
				_, err := h.C.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: sid, Reason: why}))
				return client.IgnoreRefusal(err)
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
		if h.GW != nil {
			h.revoke(sid)
		}
	}
	return nil
}

// acknowledged passes the guest's acknowledgment, which the server
// verified and relays, to the gateway, which checks its signature again and
// holds the guest to it plus the credit window. The guest's control stream
// brings the same in-band; this path covers a guest that reaches the server
// but not the gateway's control stream.
func (h *Agent) acknowledged(ctx context.Context, sid string, ack *sharespotv1.UsageAck) error {
	if h.GW == nil || ack == nil {
		return nil
	}
	if ack.SessionId != sid {
		h.Log.Warn("acknowledgment for another session", "session", sid, "ack_session", ack.SessionId)
		return nil
	}
	if err := h.acknowledgeAt(sid, ack.ReceivedBytes, ack.Signature); err != nil {
		return fmt.Errorf("host: acknowledgment of %s at the gateway: %w", sid, err)
	}
	return nil
}

// quote is C3.1 / C1.12 on the host's side, at the session's tariff (the
// copy the server made when the guest asked).
func (h *Agent) quote(ctx context.Context, sid string, t *sharespotv1.Tariff, bytes int64, topUp bool) error {
	if t == nil { // a server older than protocol 2: read the session's
		ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			return client.IgnoreRefusal(err)
		}
		if t = ses.Msg.Session.Tariff; t == nil {
			return fmt.Errorf("host: session %s carries no tariff", sid)
		}
	}
	amount, err := protocol.TariffPrice(t, bytes, topUp)
	if err != nil {
		return err
	}
	_, err = h.C.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: sid, Bytes: bytes, AmountMinor: amount, Currency: t.Currency}))
	if err != nil {
		if client.IgnoreRefusal(err) != nil {
			return err // not a refusal: the message will be handled again
		}
		h.Log.Warn("quote refused", "session", sid, "err", err)
		_, derr := h.C.Sessions.Decline(ctx, connect.NewRequest(&sharespotv1.DeclineRequest{SessionId: sid, Reason: "cannot quote"}))
		return client.IgnoreRefusal(derr)
	}
	return nil
}

// grant verifies the payment-success response and is C1.7 / C1.15 on the
// host's side. Nothing is given before the server accepts the grant: a
// first grant admits the code at the gate before Grant (the guest cannot
// learn the code before the server relays it) and revokes it if the grant
// is refused; a top-up raises the gate's volume only after Grant succeeds.
func (h *Agent) grant(ctx context.Context, sid string, pc *sharespotv1.PaymentConfirmed) error {
	// The confirmation carries the quote and the guest (servers since
	// 2026-11-30); an older server's is completed by reading the session.
	q, guest, host := pc.Quote, pc.GuestDeviceId, h.C.DeviceID()
	mode, guestKey := pc.UsageMode, pc.GuestDeviceKey
	var s *sharespotv1.Session
	if q == nil || q.Id != pc.QuoteId || guest == "" {
		ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			return client.IgnoreRefusal(err)
		}
		s, q = ses.Msg.Session, nil
		for _, x := range s.Quotes {
			if x.Id == pc.QuoteId {
				q = x
			}
		}
		guest, host = s.GuestDeviceId, s.HostDeviceId
		mode, guestKey = s.UsageMode, s.GuestDeviceKey
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
				return client.IgnoreRefusal(err)
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
		if h.GW != nil {
			verified := mode == sharespotv1.UsageMode_USAGE_MODE_VERIFIED
			if verified && !keyOf(guestKey, guest) {
				// The server relays the guest's key; its ID derives from it.
				h.Log.Warn("the guest's device key does not match its ID; nothing given", "session", sid, "guest", guest)
				return nil
			}
			// Admitting again with the same code changes nothing, so a
			// retried grant is safe.
			if err := h.admit(sid, code, q.Bytes, verified, guestKey); err != nil {
				return fmt.Errorf("host: admit %s at the gate: %w", sid, err)
			}
			if req.Gateway, err = h.gateway(sid); err != nil {
				return fmt.Errorf("host: describe the gateway for %s: %w", sid, err)
			}
		}
		req.SealedCode = &sharespotv1.SealedCode{Suite: string(sealed.Suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext}
	}
	res, err := h.C.Sessions.Grant(ctx, connect.NewRequest(req))
	if err != nil {
		if client.IgnoreRefusal(err) != nil {
			return err // not final: handled again (the admission stays pending)
		}
		// Refused: perhaps because an earlier try went through and its
		// answer was lost. Ask the server which.
		ses, gerr := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if gerr != nil {
			return client.IgnoreRefusal(gerr)
		}
		if !granted(ses.Msg.Session, q.Id) {
			h.Log.Warn("grant refused; nothing given", "session", sid, "quote", q.Id, "err", err)
			if initial && h.GW != nil {
				h.revoke(sid)
			}
			return nil
		}
		res = connect.NewResponse(&sharespotv1.GrantResponse{Session: ses.Msg.Session})
	}
	h.remember(receiptID)
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
func (h *Agent) Reconcile(s *sharespotv1.Session) error {
	if h.GW == nil || s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return nil
	}
	_, quota, err := h.GW.Usage(s.Id)
	if err != nil {
		return nil // not admitted here (its code went with a lost gateway)
	}
	if more := s.GrantedBytes - quota; more > 0 {
		if err := h.extend(s.Id, more); err != nil {
			return fmt.Errorf("host: extend %s at the gate: %w", s.Id, err)
		}
	}
	return nil
}

// Close is the host's half of a guest's End: revoke the guest at the
// gateway, then End with the gateway's final count (clamped to what was
// granted, and never below what was reported) and, for a verified session,
// the latest acknowledgment it holds and whether it held the guest at the
// credit window; the End settles the session.
func (h *Agent) Close(ctx context.Context, sid string) error {
	var used int64
	var ev gateway.Evidence
	if h.GW != nil {
		ev, _ = h.GW.Evidence(sid) // before the revoke: whether the guest stood at its window
		h.revoke(sid)
		used, _, _ = h.GW.Usage(sid)
	}
	ses, err := h.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
	if err != nil {
		return client.IgnoreRefusal(err)
	}
	s := ses.Msg.Session
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDED {
		return nil
	}
	used = min(max(used, s.UsedBytes), s.GrantedBytes)
	_, err = h.C.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: sid, UsedBytes: used, Reason: "final count",
		Ack: AckOf(sid, ev), GuestHeld: ev.Held}))
	if client.IgnoreRefusal(err) != nil {
		return err
	}
	if err != nil {
		h.Log.Warn("final count refused", "session", sid, "used", used, "err", err)
	}
	return nil
}

// accessCode is the session's access code: HMAC-SHA256(CodeKey, label ||
// session ID), seal.AccessCodeSize bytes.
func (h *Agent) accessCode(sessionID string) []byte {
	m := hmac.New(sha256.New, h.CodeKey)
	m.Write([]byte("sharespot/access-code/v1\x00"))
	m.Write([]byte(sessionID))
	return m.Sum(nil)[:seal.AccessCodeSize]
}

func (h *Agent) remember(receiptID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[receiptID] = true
}

// VerifyReceipt checks a payment-success response offline: the platform's
// signature, that it pays for exactly want, and that it was not used
// before; it then remembers it as used.
func (h *Agent) VerifyReceipt(rc *sharespotv1.Receipt, want receipt.Payload) error {
	id, err := h.checkReceipt(rc, want)
	if err != nil {
		return err
	}
	h.remember(id)
	return nil
}

// checkReceipt is VerifyReceipt without remembering: a receipt counts as
// used only once its grant went through.
func (h *Agent) checkReceipt(rc *sharespotv1.Receipt, want receipt.Payload) (string, error) {
	if rc == nil {
		return "", errors.New("host: no receipt")
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
		return "", fmt.Errorf("host: receipt %s replayed", p.ReceiptID)
	}
	return p.ReceiptID, nil
}

// gatewayTimeout bounds one gateway call (its store's save).
const gatewayTimeout = 30 * time.Second

// admit lets a granted session in at the gateway with its code, volume and
// its prompt level: the hotspot's warning level, or half of the purchase if
// that is less (protocol.PromptLevel), so that a small purchase is not
// prompted at once. Admit replaces any earlier admission of the
// session, so a retried grant admits the new code.
func (h *Agent) admit(sid string, code []byte, bytes int64, verified bool, guestKey []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), gatewayTimeout)
	defer cancel()
	g := gateway.Grant{SessionID: sid, Credential: code, Quota: bytes, Threshold: protocol.PromptLevel(h.Threshold, bytes)}
	if verified {
		g.Verified, g.GuestKey = true, guestKey
	}
	return h.GW.Admit(ctx, g)
}

// keyOf reports whether key is the device key of device ID id.
func keyOf(key []byte, id string) bool {
	return len(key) == ed25519.PublicKeySize && deviceid.FromPublicKey(key).String() == id
}

// AckOf is the acknowledgment the gateway holds of a session, as the host
// attaches it to its reports and final count (nil: none).
func AckOf(sid string, ev gateway.Evidence) *sharespotv1.UsageAck {
	if !ev.Verified || ev.Acked <= 0 || len(ev.Signature) == 0 {
		return nil
	}
	return &sharespotv1.UsageAck{SessionId: sid, ReceivedBytes: ev.Acked, Signature: ev.Signature}
}

// extend adds volume to a session at the gateway, in place.
func (h *Agent) extend(sid string, bytes int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), gatewayTimeout)
	defer cancel()
	return h.GW.Extend(ctx, sid, bytes)
}

// revoke ends a session's access at the gateway and cuts its connections.
func (h *Agent) revoke(sid string) {
	ctx, cancel := context.WithTimeout(context.Background(), gatewayTimeout)
	defer cancel()
	if err := h.GW.Revoke(ctx, sid); err != nil && !errors.Is(err, gateway.ErrUnknownSession) {
		h.Log.Error("cannot revoke session at the gateway", "session", sid, "err", err)
	}
}

// acknowledgeAt records the guest's signed acknowledgment at the gateway,
// once it is durable. A session the gateway no longer holds (revoked, or
// lost with its state) has nothing to hold back, and one that is
// unverified or badly signed cannot take it: none is an error to retry.
func (h *Agent) acknowledgeAt(sid string, received int64, sig []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), gatewayTimeout)
	defer cancel()
	err := h.GW.Acknowledge(ctx, sid, received, sig)
	switch {
	case errors.Is(err, gateway.ErrUnknownSession), errors.Is(err, gateway.ErrRevoked):
		h.Log.Debug("acknowledgment for a session the gateway does not hold", "session", sid, "err", err)
		return nil
	case errors.Is(err, gateway.ErrUnverified), errors.Is(err, gateway.ErrInvalid):
		h.Log.Warn("acknowledgment refused at the gateway", "session", sid, "err", err)
		return nil
	}
	return err
}

// gateway tells the guest of sid how to reach the gateway (and, for a
// tunnel, its peer).
func (h *Agent) gateway(sid string) (*sharespotv1.Gateway, error) {
	kind := h.Kind
	if kind == "" {
		kind = "proxy"
	}
	gw := &sharespotv1.Gateway{Kind: kind, Address: h.GW.Addr()}
	if t, ok := h.GW.(gateway.Tunnel); ok {
		p, err := t.TunnelPeer(sid)
		if err != nil {
			return nil, err
		}
		gw.Address, gw.WireguardPublicKey = p.Endpoint, p.PublicKey[:]
		gw.TunnelAddress, gw.TunnelGateway = p.Address.String(), p.Gateway.String()
	}
	return gw, nil
}

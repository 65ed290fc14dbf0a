package session

import (
	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/store"
)

// Evidence of usage, in a mode fixed at the request. A verified session's
// guest counts what it receives and signs cumulative counts with its
// device key (protocol.AckMessage). It sends them in-band to the host's
// gateway, which holds it to its last count plus the credit window from
// the first byte, and to the server when it can (Acknowledge); the host
// attaches the latest its gateway holds to its usage reports, prompts and
// final count. The server keeps the highest it has seen from either, and
// settlement bills at most it plus the window (bill.go): a host that
// reports more than it delivered gains at most the window, and a guest
// cannot take more than the window without acknowledging it. What the
// guest signs at its End is its last word: no acknowledgment of the
// guest's is taken after it. An unverified session (a guest that cannot
// count) takes none at all and is billed on the host's count.

// VerifiedAck is a usage acknowledgment whose signature VerifyAck checked.
type VerifiedAck struct{ ack *sharespotv1.UsageAck }

// Received is the acknowledged count.
func (va VerifiedAck) Received() int64 { return va.ack.GetReceivedBytes() }

// VerifyAck checks, in a read transaction, that an acknowledgment is signed
// by the guest of its session with the device key the session holds; p is
// the party presenting it (the guest, or the host attaching what its
// gateway holds). Recording it is the write's part (takeAck). The engine
// then remembers the session's parties (VerifyKnownAck).
func (e *Engine) VerifyAck(tx *store.Tx, p Party, ack *sharespotv1.UsageAck) (VerifiedAck, error) {
	if ack == nil {
		return VerifiedAck{}, problem.Invalidf("ack is missing")
	}
	s, err := e.load(tx, ack.SessionId, p, roleEither)
	if err != nil {
		return VerifiedAck{}, err
	}
	e.parties.put(s)
	return checkAck(s.ID, s.Mode, s.GuestKey, ack)
}

// VerifyKnownAck is VerifyAck without a read, for a session whose parties
// the engine remembers (they never change); known is false when it does
// not, and VerifyAck must read them.
func (e *Engine) VerifyKnownAck(p Party, ack *sharespotv1.UsageAck) (va VerifiedAck, known bool, err error) {
	if ack == nil {
		return VerifiedAck{}, true, problem.Invalidf("ack is missing")
	}
	ps, ok := e.parties.get(ack.SessionId)
	if !ok {
		return VerifiedAck{}, false, nil
	}
	if p.DeviceID != ps.host && p.DeviceID != ps.guest {
		return VerifiedAck{}, true, problem.NotFoundf("session %s not found", ack.SessionId) // as load says
	}
	va, err = checkAck(ack.SessionId, ps.mode, ps.guestKey, ack)
	return va, true, err
}

// checkAck checks an acknowledgment of a session in mode against its
// guest's device key.
func checkAck(sessionID string, mode sharespotv1.UsageMode, guestKey []byte, ack *sharespotv1.UsageAck) (VerifiedAck, error) {
	if mode != sharespotv1.UsageMode_USAGE_MODE_VERIFIED {
		return VerifiedAck{}, problem.WrongStatef("session %s is unverified: the guest chose not to acknowledge, and the host's count is the bill", sessionID)
	}
	if err := protocol.VerifyAck(guestKey, ack.SessionId, ack.ReceivedBytes, ack.Signature); err != nil {
		return VerifiedAck{}, problem.Deniedf("acknowledgment refused: %v", err)
	}
	return VerifiedAck{ack: ack}, nil
}

// verified reports whether the session is verified: its guest chose, at
// its request, to acknowledge what it receives.
func (s *row) verified() bool { return s.Mode == sharespotv1.UsageMode_USAGE_MODE_VERIFIED }

// Acknowledge records the guest's own signed count of the bytes it received
// in a running session, if it is higher than the last, and relays it to
// the host. A guest that ended has said its last word (its End carries
// it). It returns the count the server holds.
func (e *Engine) Acknowledge(tx *store.Tx, guest Party, va VerifiedAck) (int64, error) {
	if va.ack == nil {
		return 0, problem.Invalidf("ack is missing")
	}
	s, err := e.load(tx, va.ack.SessionId, guest, roleGuest)
	if err != nil {
		return 0, err
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE {
		return 0, problem.WrongStatef("session %s is %s: acknowledgments are taken while it runs (the guest's End carries its last)", s.ID, stateName(s.State))
	}
	if va.ack.ReceivedBytes < s.GuestAcked {
		return 0, problem.Invalidf("received_bytes %d is below the %d already acknowledged; counts only grow", va.ack.ReceivedBytes, s.GuestAcked)
	}
	raised, err := e.takeAck(s, &va)
	if err != nil || !raised {
		return s.GuestAcked, err
	}
	if err := s.save(tx, e.nowMS()); err != nil {
		return 0, err
	}
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_UsageAcknowledged{
		UsageAcknowledged: &sharespotv1.UsageAcknowledged{Ack: va.ack}}}); err != nil {
		return 0, err
	}
	return s.GuestAcked, nil
}

// takeAck raises the session's acknowledged count to va's (nil: nothing to
// take), held to what was granted; a lower or equal count changes nothing.
// It reports whether the count rose. The caller saves.
func (e *Engine) takeAck(s *row, va *VerifiedAck) (bool, error) {
	if va == nil || va.ack == nil {
		return false, nil
	}
	switch {
	case va.ack.SessionId != s.ID:
		return false, problem.Invalidf("the acknowledgment is for session %s, not %s", va.ack.SessionId, s.ID)
	case !s.verified():
		return false, problem.WrongStatef("session %s is unverified: acknowledgments are refused", s.ID)
	}
	// The guest may count what the host does not (its own headers, say):
	// what was granted is the most it can have had.
	n := min(va.ack.ReceivedBytes, s.Granted)
	if n <= s.GuestAcked {
		return false, nil
	}
	s.GuestAcked = n
	return true, nil
}

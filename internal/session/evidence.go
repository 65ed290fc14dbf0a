package session

import (
	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/store"
)

// Evidence of usage. The guest's client signs cumulative counts of the
// bytes it received (package evidence); the server keeps the highest and
// relays it to the host. Settlement then bills at most that count plus the
// host's credit window (settle.go): a host that reports more than it
// delivered gains at most the window, and a guest that stops acknowledging
// pays for at most the window more than it acknowledged.

// VerifiedAck is a usage acknowledgment whose signature VerifyAck checked.
type VerifiedAck struct{ ack *sharespotv1.UsageAck }

// VerifyAck checks, in a read transaction, that an acknowledgment is signed
// by the guest of its session; Acknowledge then records it.
func (e *Engine) VerifyAck(tx *store.Tx, guest Party, ack *sharespotv1.UsageAck) (VerifiedAck, error) {
	if ack == nil {
		return VerifiedAck{}, problem.Invalidf("ack is missing")
	}
	if _, err := e.load(tx, ack.SessionId, guest, roleGuest); err != nil {
		return VerifiedAck{}, err
	}
	pub, err := account.PublicKey(tx, guest.DeviceID)
	if err != nil {
		return VerifiedAck{}, err
	}
	if err := protocol.VerifyAck(pub, ack.SessionId, ack.ReceivedBytes, ack.Signature); err != nil {
		return VerifiedAck{}, problem.Deniedf("acknowledgment refused: %v", err)
	}
	return VerifiedAck{ack: ack}, nil
}

// Acknowledge records the guest's signed count of the bytes it received,
// if it is higher than the last, and relays it to the host. Counts only
// grow and never exceed what was granted; the same count again changes
// nothing. It returns the count the server holds.
func (e *Engine) Acknowledge(tx *store.Tx, guest Party, va VerifiedAck) (int64, error) {
	ack := va.ack
	if ack == nil {
		return 0, problem.Invalidf("ack is missing")
	}
	s, err := e.load(tx, ack.SessionId, guest, roleGuest)
	if err != nil {
		return 0, err
	}
	switch {
	case s.State != sharespotv1.SessionState_SESSION_STATE_ACTIVE && s.State != sharespotv1.SessionState_SESSION_STATE_ENDING:
		return 0, problem.WrongStatef("session %s is %s: nothing to acknowledge", s.ID, stateName(s.State))
	case ack.ReceivedBytes > s.Granted:
		return 0, problem.Invalidf("received_bytes %d is above the %d bytes granted", ack.ReceivedBytes, s.Granted)
	case ack.ReceivedBytes < s.GuestAcked:
		return 0, problem.Invalidf("received_bytes %d is below the %d already acknowledged; counts only grow", ack.ReceivedBytes, s.GuestAcked)
	case ack.ReceivedBytes == s.GuestAcked:
		return s.GuestAcked, nil
	}
	s.GuestAcked = ack.ReceivedBytes
	if err := s.save(tx, e.nowMS()); err != nil {
		return 0, err
	}
	if err := e.send(tx, s.Host, s.ID, &sharespotv1.Envelope{Body: &sharespotv1.Envelope_UsageAcknowledged{
		UsageAcknowledged: &sharespotv1.UsageAcknowledged{Ack: ack}}}); err != nil {
		return 0, err
	}
	return s.GuestAcked, nil
}

// creditWindow checks the window a host sets for a tranche (0: the
// default).
func creditWindow(asked, tranche int64) (int64, error) {
	if asked == 0 {
		return protocol.Window(tranche), nil
	}
	lo, hi := protocol.WindowBounds(tranche)
	if asked < lo || asked > hi {
		return 0, problem.Invalidf("credit_window_bytes %d must be between %d and %d for a tranche of %d bytes", asked, lo, hi, tranche)
	}
	return asked, nil
}

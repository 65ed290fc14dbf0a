package gateway

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"math"
	"time"

	"github.com/sharespot/sharespot/internal/protocol"
)

// MeterConfig is what every meter of one gateway shares.
type MeterConfig struct {
	// Persist: the gateway saves usage in a Store, so a byte may pass only
	// below a usage bound already saved (see Meter). Without a store the
	// whole quota is usable at once.
	Persist bool
	// PersistAhead is the lead a meter starts with: how far ahead of use
	// the saved bound is pushed.
	PersistAhead int64
	// MaxLead bounds the lead as it grows (at least PersistAhead).
	MaxLead int64
	// LeadTime, if set, keeps the lead at least this long's worth of the
	// session's current rate: the saved bound stays ahead of a transfer
	// without the transfer first having to wait for the store.
	LeadTime time.Duration
	// TopUpTime is how long a top-up takes, from the prompt to the new
	// volume at the gateway: ThresholdCrossed comes when what is left would
	// last less than that at the session's current rate, if that is
	// before the threshold. 0: at the threshold only.
	TopUpTime time.Duration
	// Sampling is how long the gateway may take to see bytes that moved
	// (the kernel gateway's poll interval; 0 for the proxy, which sees
	// each copy step as it ends). The rate is measured with it in mind.
	Sampling time.Duration
}

// DefaultTopUpTime is the time a top-up takes unless a gateway is told
// otherwise: the guest answers the prompt (or its client does), pays, the
// host grants, the gateway raises the quota.
const DefaultTopUpTime = 5 * time.Second

// The session's rate is the bytes of about the last rateWindow, from
// samples of its usage kept rateSpacing apart. A pause of ratePause
// starts the measure afresh, so a transfer after a pause is not taken
// for a slow one.
const (
	rateWindow  = time.Second
	rateSpacing = rateWindow / 8
	ratePause   = rateWindow / 2
	rateSamples = int(rateWindow/rateSpacing) + 1
)

type usageSample struct {
	at   time.Time
	used int64
}

// Meter is one session's metering state, the part both gateways share: the
// quota and the bytes used, the warning threshold and whether it was
// crossed, the usage bound saved ahead of use and its lead, the events the
// usage calls for, and the record a save writes.
//
// A Meter does no locking and no I/O: each gateway guards its meters with
// its own lock, counts bytes its own way (the proxy as copy steps commit,
// the kernel gateway from polled counters) and calls the meter with the
// new usage; the meter says what to send and what to save.
//
// Save-ahead invariant: a gateway lets bytes pass only below Bound(),
// which is never above Durable(), the usage bound the store last held
// when a save returned. So after a crash the store's bound covers every
// byte that passed.
//
// Credit window: a verified session (SetVerified, from its grant) is held,
// from its first byte, to at most the credit window beyond the guest's last
// acknowledged count: Limit() ≤ acked + protocol.Window(quota), the rule
// settlement bills by. A guest that does not acknowledge gets one window.
// A meter restored after a crash counts the saved bound as used although
// the guest may never have received all of it; the window is measured from
// what is known delivered (the guest's acknowledgment), so the meter keeps
// the unknown part as slack: the lead saved ahead of what it had counted,
// less what the guest acknowledged, lowered by every later acknowledgment
// (delivered ≥ acknowledged). An exact count (the kernel's) has none. Without it a guest whose
// host crashed with its bound saved ahead would be stalled for bytes it
// never had, and so could never acknowledge its way out. The slack over-
// states what was never delivered by at most the guest's unacknowledged
// bytes, so the guest runs at most about twice the window ahead once per
// crash; settlement bills at most acked + window whatever the meter says.
type Meter struct {
	cfg       MeterConfig
	id        string
	hash      [32]byte
	threshold int64

	quota     int64
	used      int64
	durable   int64 // the usage bound saved (math.MaxInt64 without a store)
	lead      int64 // how far ahead of use the saved bound is pushed
	warned    bool  // ThresholdCrossed sent at the threshold, not re-armed
	early     bool  // ThresholdCrossed sent before the threshold, by the rate
	seen      bool  // FirstTraffic sent
	exhausted bool  // Exhausted sent, not re-armed by Extend
	revoked   bool
	inStore   bool   // a record of this session is in the store
	saved     Record // what the store holds, when inStore
	last      time.Time
	idleSent  bool              // no byte since the last Idle (or since admission)
	verified  bool              // the guest acknowledges: held to acked + window
	guestKey  ed25519.PublicKey // verifies the guest's acknowledgments
	acked     int64             // the guest's highest acknowledged count
	ackSig    []byte            // the guest's signature of acked
	slack     int64             // counted as used at a restore, not known delivered (0 unless restored)
	samples   []usageSample     // oldest first, at most rateSamples
	rate      float64           // bytes per second, as of the last movement
	peer      string            // Record.Peer
}

// NewMeter is the meter of a session admitted at now.
func NewMeter(cfg MeterConfig, id string, hash [32]byte, quota, threshold int64, now time.Time) *Meter {
	m := &Meter{cfg: cfg, id: id, hash: hash, quota: quota, threshold: threshold,
		lead: cfg.PersistAhead, last: now, idleSent: true}
	if !cfg.Persist {
		m.durable = math.MaxInt64
	}
	return m
}

// RestoreMeter is the meter of a session read back from the store at now. used is
// what the session counts as used from now on: r.Used (the bound saved
// ahead of use, all of which must count as used), or, with exact, a count
// the gateway still has (the kernel's counter), at most r.Quota.
func RestoreMeter(cfg MeterConfig, r Record, used int64, exact bool, now time.Time) *Meter {
	m := NewMeter(cfg, r.SessionID, r.CredentialHash, r.Quota, r.Threshold, now)
	used = min(used, r.Quota)
	m.used, m.durable = used, max(r.Used, used)
	m.warned = r.Warned
	m.verified, m.guestKey = r.Verified, r.GuestKey
	m.acked, m.ackSig = r.Acked, r.AckSig
	m.peer = r.Peer
	if !exact {
		m.slack = max(0, used-max(r.Counted, m.acked))
	}
	m.seen = used > 0
	m.exhausted = used >= r.Quota
	m.inStore, m.saved = true, r
	return m
}

// ID is the session's ID.
func (m *Meter) ID() string { return m.id }

// Hash is the SHA-256 of the session's access code.
func (m *Meter) Hash() [32]byte { return m.hash }

// Quota is the volume granted.
func (m *Meter) Quota() int64 { return m.quota }

// Used is the bytes counted as used.
func (m *Meter) Used() int64 { return m.used }

// Durable is the usage bound the store holds (math.MaxInt64 without one).
func (m *Meter) Durable() int64 { return m.durable }

// Lead is how far ahead of use the next save pushes the bound.
func (m *Meter) Lead() int64 { return m.lead }

// Revoked reports whether the session was revoked.
func (m *Meter) Revoked() bool { return m.revoked }

// Exhausted reports whether the session ran out (Exhausted was sent and
// no Extend has re-armed it since).
func (m *Meter) Exhausted() bool { return m.exhausted }

// Last is when the session's usage last grew (or when it was admitted or
// restored, before that).
func (m *Meter) Last() time.Time { return m.last }

// Bound is the usage the session may reach by what was granted and what
// the store holds: min(quota, the saved bound).
func (m *Meter) Bound() int64 { return min(m.quota, m.durable) }

// SetVerified makes a newly admitted session verified: its guest
// acknowledges what it receives, signed with key, and is held to its last
// acknowledgment plus the credit window from the first byte.
func (m *Meter) SetVerified(key ed25519.PublicKey) {
	m.verified, m.guestKey = true, key
}

// SetPeer sets what the gateway saves to let the session in again after a
// restart (Record.Peer).
func (m *Meter) SetPeer(peer string) { m.peer = peer }

// Peer is what SetPeer set, or the restored record held.
func (m *Meter) Peer() string { return m.peer }

// Verified reports whether the session is verified.
func (m *Meter) Verified() bool { return m.verified }

// Window is the session's credit window: protocol.Window of its quota
// (everything granted), the rule settlement bills by.
func (m *Meter) Window() int64 { return protocol.Window(m.quota) }

// Limit is the usage the gateway may let the session reach now: Bound,
// and, for a verified session, at most the credit window beyond its last
// acknowledgment.
func (m *Meter) Limit() int64 {
	b := m.Bound()
	if m.verified {
		base := m.acked + min(m.slack, math.MaxInt64-m.acked)
		b = min(b, base+min(m.Window(), math.MaxInt64-base))
	}
	return b
}

// Held reports whether a verified session stands at its credit window
// below its quota: the guest has stopped acknowledging what it received.
// At the window means within 64 KiB of it: the kernel gateway drops the
// packet that would pass it, so its count stops a little short.
func (m *Meter) Held() bool {
	return m.verified && m.Limit() < m.Bound() && m.used >= m.Limit()-64<<10
}

// Acked returns the guest's highest acknowledged count and its signature
// (0, nil before the first acknowledgment).
func (m *Meter) Acked() (acked int64, sig []byte) { return m.acked, m.ackSig }

// Acknowledge records the guest's signed acknowledgment of received bytes:
// it must be the session's guest's signature (ErrInvalid otherwise), in a
// verified session (ErrUnverified); a count at or below the last changes
// nothing. It reports whether Limit rose. The caller saves before it
// reports the acknowledgment recorded.
func (m *Meter) Acknowledge(received int64, sig []byte) (raised bool, err error) {
	switch {
	case m.revoked:
		return false, ErrRevoked
	case !m.verified:
		return false, ErrUnverified
	}
	if err := protocol.VerifyAck(m.guestKey, m.id, received, sig); err != nil {
		return false, fmt.Errorf("%v: %w", err, ErrInvalid)
	}
	if received <= m.acked {
		return false, nil
	}
	before := m.Limit()
	base := m.acked + m.slack // where the window runs from; never moves back
	m.acked, m.ackSig = received, append([]byte(nil), sig...)
	if m.slack > 0 {
		m.slack = max(min(m.slack, max(0, m.used-m.acked)), base-m.acked)
	}
	return m.Limit() > before, nil
}

// State is the session as the guest's control stream tells it: Limit is
// what the guest may reach by what was granted and what it acknowledged
// (the saved bound, which a gateway raises as traffic needs, is not the
// guest's concern).
func (m *Meter) State() protocol.GatewayState {
	limit := m.quota
	if m.verified {
		base := m.acked + min(m.slack, math.MaxInt64-m.acked)
		limit = min(limit, base+min(m.Window(), math.MaxInt64-base))
	}
	return protocol.GatewayState{Used: m.used, Quota: m.quota, Acked: m.acked, Limit: limit}
}

// CheckAdmit says whether admitting the session again with a code whose
// hash is hash is a no-op (nil), or refused: ErrRevoked, ErrSessionExists.
func (m *Meter) CheckAdmit(hash [32]byte) error {
	switch {
	case m.revoked:
		return ErrRevoked
	case !hashEqual(m.hash, hash):
		return ErrSessionExists
	}
	return nil
}

// Extend raises the quota by bytes and re-arms the Exhausted and
// ThresholdCrossed events the new remaining volume no longer calls for.
// The caller saves, and calls UndoExtend if the save fails.
func (m *Meter) Extend(bytes int64) error {
	switch {
	case m.revoked:
		return ErrRevoked
	case bytes <= 0 || m.quota > math.MaxInt64-bytes:
		return fmt.Errorf("by %d bytes: %w", bytes, ErrInvalid)
	}
	m.quota += bytes
	if m.used < m.quota {
		m.exhausted = false
	}
	if m.quota-m.used >= m.threshold {
		m.warned, m.early = false, false
	}
	return nil
}

// UndoExtend takes back an Extend whose save failed, unless a save in
// between made it durable (so that a retry does not extend twice). No byte
// can have used the undone volume: Limit stays below what the store holds.
func (m *Meter) UndoExtend(bytes int64) {
	if !m.inStore || m.saved.Quota+bytes <= m.quota {
		m.quota -= bytes
		m.exhausted = m.used >= m.quota
	}
}

// Revoke marks the session revoked: the next save deletes its record.
func (m *Meter) Revoke() { m.revoked = true }

// Advance raises the usage to used (it never goes down) at now and returns
// by how much it grew. It measures the session's rate and grows the lead
// with it (LeadTime). It sends nothing; Events does.
func (m *Meter) Advance(used int64, now time.Time) (moved int64) {
	if used <= m.used {
		return 0
	}
	moved = used - m.used
	m.measure(m.used, used, now)
	m.used = used
	m.last, m.idleSent = now, false
	if m.cfg.LeadTime > 0 {
		m.GrowLead(m.leadForRate())
	}
	return moved
}

// measure updates the rate with usage going from prev to used at now.
func (m *Meter) measure(prev, used int64, now time.Time) {
	if len(m.samples) == 0 || now.Sub(m.last) > ratePause {
		// Moving again (or for the first time). A gateway that polls saw
		// these bytes within one sampling interval, and not before the
		// last movement: the measure starts there. One that sees every
		// step as it ends cannot tell how long this one took: the measure
		// starts after it.
		base := usageSample{now, used}
		if m.cfg.Sampling > 0 {
			base = usageSample{now.Add(-m.cfg.Sampling), prev}
			if base.at.Before(m.last) {
				base.at = m.last
			}
		}
		m.samples = append(m.samples[:0], base)
	}
	if now.Sub(m.samples[len(m.samples)-1].at) >= rateSpacing {
		if len(m.samples) == rateSamples {
			m.samples = append(m.samples[:0], m.samples[1:]...)
		}
		m.samples = append(m.samples, usageSample{now, used})
	}
	base := m.samples[0]
	span := max(now.Sub(base.at), rateSpacing)
	m.rate = float64(used-base.used) / span.Seconds()
}

// Rate is the session's rate in bytes per second (both directions), as
// measured over about the last second when its usage last grew.
func (m *Meter) Rate() float64 { return m.rate }

// leadForRate is LeadTime's worth of the current rate.
func (m *Meter) leadForRate() int64 {
	return int64(min(m.rate*m.cfg.LeadTime.Seconds(), math.MaxInt64/2))
}

// Events returns the events the usage calls for: FirstTraffic on the
// first byte; ThresholdCrossed when the remaining volume falls below the
// threshold, and once before that if at the current rate it would last
// less than a top-up takes (TopUpTime) — never with a threshold of 0;
// Exhausted when used reaches the quota. Each once until Extend re-arms
// it.
func (m *Meter) Events() []Event {
	var evs []Event
	if m.used > 0 && !m.seen {
		m.seen = true
		evs = append(evs, m.event(FirstTraffic))
	}
	if left := m.quota - m.used; m.threshold > 0 && !m.warned {
		switch {
		case left < m.threshold:
			m.warned = true
			evs = append(evs, m.event(ThresholdCrossed))
		case !m.early && float64(left) < m.rate*m.cfg.TopUpTime.Seconds():
			m.early = true
			evs = append(evs, m.event(ThresholdCrossed))
		}
	}
	if m.used >= m.quota {
		evs = append(evs, m.Exhaust()...)
	}
	return evs
}

// Exhaust marks the session exhausted before used reaches the quota (the
// kernel gateway: what is left is too small for a packet), and returns
// Exhausted if it was not sent since the last Extend.
func (m *Meter) Exhaust() []Event {
	if m.exhausted {
		return nil
	}
	m.exhausted = true
	return []Event{m.event(Exhausted)}
}

// IdleEvent returns Idle (ok) once the session has gone after without a
// byte since its last byte, once per idle period. Otherwise wait is how
// much longer it must stay idle (0: it has not moved since the last Idle).
func (m *Meter) IdleEvent(now time.Time, after time.Duration) (ev Event, ok bool, wait time.Duration) {
	if m.idleSent || m.revoked {
		return Event{}, false, 0
	}
	if since := now.Sub(m.last); since < after {
		return Event{}, false, after - since
	}
	m.idleSent = true
	return m.event(Idle), true, 0
}

func (m *Meter) event(k EventKind) Event {
	return Event{Kind: k, SessionID: m.id, Used: m.used, Quota: m.quota}
}

// SaveDue reports whether the bound should be pushed further ahead: use
// (inflight: used plus what the gateway has let start) is within half a
// lead of it, and it is below the quota.
func (m *Meter) SaveDue(inflight int64) bool {
	return m.durable < m.quota && inflight+m.lead/2 >= m.durable
}

// GrowLead raises the lead to at least to, within MaxLead.
func (m *Meter) GrowLead(to int64) {
	m.lead = min(max(m.lead, to), max(m.cfg.MaxLead, m.cfg.PersistAhead))
}

// ResetLead brings the lead back to PersistAhead, or to what the current
// rate needs (LeadTime), if more.
func (m *Meter) ResetLead() {
	m.lead = m.cfg.PersistAhead
	if m.cfg.LeadTime > 0 {
		m.GrowLead(m.leadForRate())
	}
}

// Lower brings the saved bound down to bound, which the gateway has made
// sure no byte can pass (the kernel gateway lowers its limit first); the
// next save writes it.
func (m *Meter) Lower(bound int64) {
	if bound < m.durable {
		m.durable = max(bound, m.used)
	}
}

// record is what the store should hold now: with ahead, the bound pushed
// a lead beyond inflight (never below what is saved); without, inflight
// exactly.
func (m *Meter) record(inflight int64, ahead bool) Record {
	bound := inflight
	if ahead {
		bound = max(m.durable, min(m.quota, inflight+m.lead))
	}
	return Record{SessionID: m.id, CredentialHash: m.hash, Quota: m.quota, Used: bound, Counted: min(inflight, bound),
		Threshold: m.threshold, Warned: m.warned, Verified: m.verified, GuestKey: m.guestKey, Acked: m.acked, AckSig: m.ackSig, Peer: m.peer}
}

// SaveBatch is one save of a gateway's meters: Add each meter (under the
// lock guarding it), Write, then Done for each added one (under its lock
// again). Between Add and Done the gateway must let no byte pass beyond
// the meter's Limit: Add lowers nothing a byte could rely on, and Done
// raises Durable only to what was written.
type SaveBatch struct {
	items []saveItem
	put   []Record
	del   []string
}

type saveItem struct {
	m   *Meter
	rec Record
	del bool
}

// Add adds m's change, if it has one: its record (inflight and ahead as
// in record), or its deletion once revoked. It reports whether it added
// one. A record below the saved bound lowers the bound at once: that is
// safe before the save, since the store holds more.
func (b *SaveBatch) Add(m *Meter, inflight int64, ahead bool) bool {
	if m.revoked {
		if !m.inStore {
			return false
		}
		b.items = append(b.items, saveItem{m: m, del: true})
		b.del = append(b.del, m.id)
		return true
	}
	rec := m.record(inflight, ahead)
	if rec.Used < m.durable {
		m.durable = rec.Used
	}
	if m.inStore && rec.sameSave(m.saved) {
		return false // a count alone is not worth a save
	}
	b.items = append(b.items, saveItem{m: m, rec: rec})
	b.put = append(b.put, rec)
	return true
}

// Len is how many changes the batch holds.
func (b *SaveBatch) Len() int { return len(b.items) }

// Write saves the batch in st.
func (b *SaveBatch) Write(st Store) error {
	if len(b.items) == 0 {
		return nil
	}
	return st.Save(b.put, b.del)
}

// Done records that change i was written, and reports whether its meter's
// saved bound grew (more bytes may pass now).
func (b *SaveBatch) Done(i int) (grew bool) {
	it := b.items[i]
	m := it.m
	if it.del {
		m.inStore = false
		return false
	}
	m.inStore, m.saved = true, it.rec
	if it.rec.Used > m.durable {
		m.durable = it.rec.Used
		return true
	}
	return false
}

// sameSave reports whether r holds what saved holds, but for the count.
func (r Record) sameSave(saved Record) bool {
	return r.SessionID == saved.SessionID && r.CredentialHash == saved.CredentialHash && r.Quota == saved.Quota &&
		r.Used == saved.Used && r.Threshold == saved.Threshold && r.Warned == saved.Warned &&
		r.Verified == saved.Verified && bytes.Equal(r.GuestKey, saved.GuestKey) && r.Acked == saved.Acked && bytes.Equal(r.AckSig, saved.AckSig) &&
		r.Peer == saved.Peer
}

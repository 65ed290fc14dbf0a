package gateway

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sharespot/sharespot/internal/protocol"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// memStore is a Store in memory that can fail.
type memStore struct {
	recs map[string]Record
	fail bool
}

func (s *memStore) Load() ([]Record, error) {
	var out []Record
	for _, r := range s.recs {
		out = append(out, r)
	}
	return out, nil
}

func (s *memStore) Save(put []Record, del []string) error {
	if s.fail {
		return errors.New("disk full")
	}
	if s.recs == nil {
		s.recs = map[string]Record{}
	}
	for _, id := range del {
		delete(s.recs, id)
	}
	for _, r := range put {
		s.recs[r.SessionID] = r
	}
	return nil
}

// save runs one save of the meters, as a gateway does.
func save(t *testing.T, st Store, inflight int64, ahead bool, ms ...*Meter) error {
	t.Helper()
	var b SaveBatch
	for _, m := range ms {
		b.Add(m, inflight, ahead)
	}
	if err := b.Write(st); err != nil {
		return err
	}
	for i := range b.Len() {
		b.Done(i)
	}
	return nil
}

func kinds(evs []Event) []EventKind {
	var ks []EventKind
	for _, e := range evs {
		ks = append(ks, e.Kind)
	}
	return ks
}

// TestMeterEvents: each event once per crossing; Extend re-arms the
// threshold only when the remaining volume is back at or above it, and
// exhaustion once per Extend.
func TestMeterEvents(t *testing.T) {
	type step struct {
		advance int64 // new usage (0: none)
		extend  int64
		want    []EventKind
	}
	const (
		first  = FirstTraffic
		warn   = ThresholdCrossed
		exhaus = Exhausted
	)
	for _, tc := range []struct {
		name             string
		quota, threshold int64
		steps            []step
	}{
		{"threshold once", 1000, 300, []step{
			{advance: 600, want: []EventKind{first}},
			{advance: 701, want: []EventKind{warn}},
			{advance: 800},
			{advance: 999},
		}},
		{"re-armed after extend", 1000, 300, []step{
			{advance: 800, want: []EventKind{first, warn}},
			{extend: 500}, // 700 left ≥ 300: re-armed
			{advance: 1199},
			{advance: 1201, want: []EventKind{warn}},
		}},
		{"extend too small keeps it disarmed", 1000, 300, []step{
			{advance: 800, want: []EventKind{first, warn}},
			{extend: 50}, // 250 left < 300
			{advance: 1000},
		}},
		{"threshold 0 never warns", 1000, 0, []step{
			{advance: 999, want: []EventKind{first}},
			{advance: 1000, want: []EventKind{exhaus}},
		}},
		{"exhaustion once, again after extend", 1000, 100, []step{
			{advance: 1000, want: []EventKind{first, warn, exhaus}},
			{advance: 1000},
			{extend: 100}, // 100 left: threshold re-armed, exhaustion re-armed
			{advance: 1100, want: []EventKind{warn, exhaus}},
		}},
		{"one step across everything", 10, 5, []step{
			{advance: 10, want: []EventKind{first, warn, exhaus}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMeter(MeterConfig{}, "s", [32]byte{}, tc.quota, tc.threshold, t0)
			for i, st := range tc.steps {
				if st.extend > 0 {
					if err := m.Extend(st.extend); err != nil {
						t.Fatal(err)
					}
				}
				if st.advance > 0 {
					m.Advance(st.advance, t0.Add(time.Duration(i)*time.Second))
				}
				evs := m.Events()
				if diff := cmp.Diff(st.want, kinds(evs)); diff != "" {
					t.Errorf("step %d (-want +got):\n%s", i, diff)
				}
				for _, e := range evs {
					if e.SessionID != "s" || e.Used != m.Used() || e.Quota != m.Quota() {
						t.Errorf("step %d: event %+v", i, e)
					}
				}
			}
		})
	}
}

func TestMeterExtendRefusals(t *testing.T) {
	m := NewMeter(MeterConfig{}, "s", [32]byte{}, 10, 0, t0)
	if err := m.Extend(0); !errors.Is(err, ErrInvalid) {
		t.Errorf("Extend(0) = %v", err)
	}
	if err := m.Extend(math.MaxInt64); !errors.Is(err, ErrInvalid) {
		t.Errorf("Extend(MaxInt64) = %v", err)
	}
	m.Revoke()
	if err := m.Extend(1); !errors.Is(err, ErrRevoked) {
		t.Errorf("Extend after Revoke = %v", err)
	}
	if err := m.CheckAdmit([32]byte{}); !errors.Is(err, ErrRevoked) {
		t.Errorf("CheckAdmit after Revoke = %v", err)
	}
	if err := NewMeter(MeterConfig{}, "s", [32]byte{1}, 10, 0, t0).CheckAdmit([32]byte{2}); !errors.Is(err, ErrSessionExists) {
		t.Errorf("CheckAdmit with another code = %v", err)
	}
}

// TestMeterUndoExtend: a failed save takes the extension back, unless a
// save in between made it durable.
func TestMeterUndoExtend(t *testing.T) {
	st := &memStore{}
	cfg := MeterConfig{Persist: true, PersistAhead: 10}
	m := NewMeter(cfg, "s", [32]byte{}, 100, 0, t0)
	if err := save(t, st, 0, false, m); err != nil {
		t.Fatal(err)
	}
	m.Advance(100, t0)
	m.Events()
	if err := m.Extend(50); err != nil {
		t.Fatal(err)
	}
	m.UndoExtend(50) // its save failed
	if m.Quota() != 100 || !m.Exhausted() {
		t.Errorf("after undo: quota %d, exhausted %v", m.Quota(), m.Exhausted())
	}
	if err := m.Extend(50); err != nil {
		t.Fatal(err)
	}
	if err := save(t, st, 100, false, m); err != nil { // another save wrote it
		t.Fatal(err)
	}
	m.UndoExtend(50) // this caller's save failed after that
	if m.Quota() != 150 || m.Exhausted() {
		t.Errorf("after a durable extension: quota %d, exhausted %v", m.Quota(), m.Exhausted())
	}
}

// TestMeterSaveAheadNeverUnsaved drives meters the way both gateways do —
// let bytes pass up to Limit, save in the background with a store that
// sometimes fails, crash at any moment — and checks that no byte ever
// passed that the store did not already hold as used, and that a meter
// restored after a crash never has less used than truly passed.
func TestMeterSaveAheadNeverUnsaved(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ahead int64
		grow  bool // grow the lead as the proxy does when it waits
	}{
		{"small lead", 1 << 10, false},
		{"growing lead", 1 << 10, true},
		{"large lead", 1 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.ahead)))
			cfg := MeterConfig{Persist: true, PersistAhead: tc.ahead, MaxLead: 64 * tc.ahead}
			st := &memStore{}
			m := NewMeter(cfg, "s", [32]byte{}, 10<<20, 1<<20, t0)
			if err := save(t, st, 0, false, m); err != nil {
				t.Fatal(err)
			}
			now := t0
			truth := int64(0) // bytes that really passed
			for step := 0; truth < m.Quota(); step++ {
				now = now.Add(time.Millisecond)
				switch rng.IntN(4) {
				case 0, 1: // bytes pass, up to the limit
					if avail := m.Limit() - m.Used(); avail > 0 {
						truth = m.Used() + 1 + rng.Int64N(min(avail, 64<<10))
						m.Advance(truth, now)
						m.Events()
						if saved := st.recs["s"].Used; truth > saved {
							t.Fatalf("step %d: %d bytes passed, the store holds %d", step, truth, saved)
						}
					} else if tc.grow {
						m.GrowLead(2 * m.Lead())
					}
				case 2: // a background save, which may fail
					st.fail = rng.IntN(5) == 0
					if m.SaveDue(m.Used()) || rng.IntN(3) == 0 {
						save(t, st, m.Used(), true, m)
					}
				case 3: // a crash: restore from the store
					rec := st.recs["s"]
					r := RestoreMeter(cfg, rec, rec.Used, false, now)
					if r.Used() < truth || r.Quota() != m.Quota() {
						t.Fatalf("step %d: restored used %d quota %d, truly used %d quota %d", step, r.Used(), r.Quota(), truth, m.Quota())
					}
					m, truth = r, r.Used()
				}
			}
		})
	}
}

// TestMeterRestore: a restored meter counts its saved bound (or the
// exact count the gateway still has) as used, and does not repeat the
// events already sent.
func TestMeterRestore(t *testing.T) {
	cfg := MeterConfig{Persist: true, PersistAhead: 100}
	for _, tc := range []struct {
		name          string
		rec           Record
		used          int64 // what the gateway passes as used
		wantUsed      int64
		wantDurable   int64
		wantExhausted bool
		next          int64 // advance to, then Events
		wantEvents    []EventKind
	}{
		{"bound counts as used", Record{Quota: 1000, Used: 300, Threshold: 100}, 300, 300, 300, false, 400, nil},
		{"exact count below bound", Record{Quota: 1000, Used: 300, Threshold: 100}, 120, 120, 300, false, 200, nil},
		{"warned stays warned", Record{Quota: 1000, Used: 950, Threshold: 100, Warned: true}, 950, 950, 950, false, 960, nil},
		{"not yet warned warns", Record{Quota: 1000, Used: 850, Threshold: 100}, 850, 850, 850, false, 950, []EventKind{ThresholdCrossed}},
		{"nothing used yet", Record{Quota: 1000, Threshold: 100}, 0, 0, 0, false, 10, []EventKind{FirstTraffic}},
		{"used up", Record{Quota: 1000, Used: 1000, Threshold: 100, Warned: true}, 1000, 1000, 1000, true, 1000, nil},
		{"exact count clamped to quota", Record{Quota: 1000, Used: 1000}, 1200, 1000, 1000, true, 1000, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.rec.SessionID = "s"
			m := RestoreMeter(cfg, tc.rec, tc.used, tc.used != tc.rec.Used, t0)
			if m.Used() != tc.wantUsed || m.Durable() != tc.wantDurable || m.Exhausted() != tc.wantExhausted {
				t.Errorf("used %d durable %d exhausted %v, want %d %d %v", m.Used(), m.Durable(), m.Exhausted(), tc.wantUsed, tc.wantDurable, tc.wantExhausted)
			}
			m.Advance(tc.next, t0.Add(time.Second))
			if diff := cmp.Diff(tc.wantEvents, kinds(m.Events())); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			// Nothing changed since the restore: a save writes nothing new
			// unless use moved.
			var b SaveBatch
			b.Add(RestoreMeter(cfg, tc.rec, tc.rec.Used, false, t0), tc.rec.Used, false)
			if b.Len() != 0 {
				t.Errorf("a restored meter saves again")
			}
		})
	}
}

// TestSaveBatch: exact usage without connections (lowering the bound), a
// lead ahead with them, nothing for an unchanged record, a deletion once
// revoked.
func TestSaveBatch(t *testing.T) {
	st := &memStore{}
	cfg := MeterConfig{Persist: true, PersistAhead: 100}
	m := NewMeter(cfg, "s", [32]byte{}, 1000, 0, t0)
	steps := []struct {
		inflight    int64
		ahead       bool
		wantSaved   int64
		wantDurable int64
		wantChange  bool
	}{
		{0, false, 0, 0, true},
		{0, false, 0, 0, false},
		{50, true, 150, 150, true},
		{60, true, 160, 160, true},
		{60, false, 60, 60, true},     // lowered before the save
		{950, true, 1000, 1000, true}, // never above the quota
	}
	for i, s := range steps {
		var b SaveBatch
		if got := b.Add(m, s.inflight, s.ahead); got != s.wantChange {
			t.Errorf("step %d: change %v", i, got)
		}
		if err := b.Write(st); err != nil {
			t.Fatal(err)
		}
		for j := range b.Len() {
			b.Done(j)
		}
		if st.recs["s"].Used != s.wantSaved || m.Durable() != s.wantDurable {
			t.Errorf("step %d: saved %d durable %d, want %d %d", i, st.recs["s"].Used, m.Durable(), s.wantSaved, s.wantDurable)
		}
	}
	m.Revoke()
	if err := save(t, st, 0, false, m); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.recs["s"]; ok {
		t.Error("revoked session still stored")
	}
	var b SaveBatch
	if b.Add(m, 0, false) {
		t.Error("a deleted session saves again")
	}
}

func TestMeterIdle(t *testing.T) {
	m := NewMeter(MeterConfig{}, "s", [32]byte{}, 1000, 0, t0)
	if _, ok, wait := m.IdleEvent(t0.Add(time.Hour), time.Minute); ok || wait != 0 {
		t.Errorf("idle before any traffic: %v %v", ok, wait)
	}
	m.Advance(10, t0)
	if _, ok, wait := m.IdleEvent(t0.Add(20*time.Second), time.Minute); ok || wait != 40*time.Second {
		t.Errorf("20 s after traffic: %v %v", ok, wait)
	}
	if ev, ok, _ := m.IdleEvent(t0.Add(time.Minute), time.Minute); !ok || ev.Kind != Idle {
		t.Errorf("a minute after traffic: %v %v", ev, ok)
	}
	if _, ok, _ := m.IdleEvent(t0.Add(time.Hour), time.Minute); ok {
		t.Error("Idle twice for one idle period")
	}
}

// signer signs acknowledgments of session s as its guest.
type signer struct {
	pub ed25519.PublicKey
	key ed25519.PrivateKey
}

func newSigner(t testing.TB) signer {
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer{pub, key}
}

func (g signer) ack(m *Meter, n int64) (bool, error) {
	return m.Acknowledge(n, protocol.SignAck(g.key, m.ID(), n))
}

// TestMeterCreditWindow: a verified session is held from its first byte
// to its last acknowledgment plus the window, max(1 MB, 2 % of the quota),
// within the quota and the saved bound; an unverified one is not held and
// takes no acknowledgment.
func TestMeterCreditWindow(t *testing.T) {
	const q = 100_000_000 // window 2 MB
	const w = 2_000_000
	cfg := MeterConfig{Persist: true, PersistAhead: 1000}
	g := newSigner(t)
	for _, tc := range []struct {
		name       string
		durable    int64 // the saved bound
		acks       []int64
		wantLimit  int64
		wantRaised []bool
		wantAcked  int64
	}{
		{"none: one window from the first byte", 50e6, nil, w, nil, 0},
		{"one", 50e6, []int64{10e6}, 10e6 + w, []bool{true}, 10e6},
		{"higher raises", 50e6, []int64{10e6, 20e6}, 20e6 + w, []bool{true, true}, 20e6},
		{"lower changes nothing", 50e6, []int64{20e6, 10e6}, 20e6 + w, []bool{true, false}, 20e6},
		{"the same changes nothing", 50e6, []int64{20e6, 20e6}, 20e6 + w, []bool{true, false}, 20e6},
		{"saved bound first", 21e6, []int64{20e6}, 21e6, []bool{true}, 20e6},
		{"quota first", 1e12, []int64{99e6}, q, []bool{true}, 99e6},
		{"no overflow", 50e6, []int64{math.MaxInt64 - 10}, 50e6, []bool{true}, math.MaxInt64 - 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := RestoreMeter(cfg, Record{SessionID: "s", Quota: q, Used: tc.durable, Verified: true, GuestKey: g.pub}, 0, true, t0)
			for i, a := range tc.acks {
				raised, err := g.ack(m, a)
				if err != nil {
					t.Fatal(err)
				}
				if raised != tc.wantRaised[i] {
					t.Errorf("ack %d: raised %v", i, raised)
				}
			}
			if got := m.Limit(); got != tc.wantLimit {
				t.Errorf("Limit = %d, want %d", got, tc.wantLimit)
			}
			if acked, sig := m.Acked(); acked != tc.wantAcked || (acked > 0 && protocol.VerifyAck(g.pub, "s", acked, sig) != nil) {
				t.Errorf("Acked = %d (signature ok: %v), want %d", acked, sig != nil, tc.wantAcked)
			}
			if m.Bound() != min(tc.durable, q) {
				t.Errorf("Bound = %d: the window is not part of it", m.Bound())
			}
			// The record carries it, and a restored meter holds the same.
			var b SaveBatch
			b.Add(m, m.Used(), false)
			if b.Len() == 1 {
				r := RestoreMeter(cfg, b.items[0].rec, 0, true, t0)
				ra, rs := r.Acked()
				ma, ms := m.Acked()
				if r.Limit() != min(m.Limit(), r.Bound()) || ra != ma || !bytes.Equal(rs, ms) || !r.Verified() {
					t.Errorf("restored: limit %d acked %d verified %v", r.Limit(), ra, r.Verified())
				}
			}
		})
	}
	// The window grows with what is granted: 2 % of 200 MB.
	m := NewMeter(cfg, "s", [32]byte{}, q, 0, t0)
	m.SetVerified(g.pub)
	if err := m.Extend(q); err != nil {
		t.Fatal(err)
	}
	m.durable = math.MaxInt64
	if m.Window() != 4_000_000 || m.Limit() != 4_000_000 {
		t.Errorf("after a top-up to 200 MB: window %d, limit %d, want 4 MB", m.Window(), m.Limit())
	}
	// Held: at its window, below the quota.
	if m.Held() {
		t.Error("held before any byte")
	}
	m.Advance(4_000_000, t0)
	if !m.Held() {
		t.Error("not held at acked + window")
	}
	if _, err := g.ack(m, 3_000_000); err != nil || m.Held() {
		t.Errorf("held after acknowledging (%v)", err)
	}
	// Refused: another key, another session, an unverified session.
	other := newSigner(t)
	if _, err := other.ack(m, 5_000_000); !errors.Is(err, ErrInvalid) {
		t.Errorf("another key's acknowledgment: %v", err)
	}
	if _, err := m.Acknowledge(5_000_000, protocol.SignAck(g.key, "another", 5_000_000)); !errors.Is(err, ErrInvalid) {
		t.Errorf("another session's acknowledgment: %v", err)
	}
	if _, err := m.Acknowledge(5_000_000, []byte("short")); !errors.Is(err, ErrInvalid) {
		t.Errorf("a malformed signature: %v", err)
	}
	if acked, _ := m.Acked(); acked != 3_000_000 {
		t.Errorf("a refused acknowledgment counted: %d", acked)
	}
	u := NewMeter(cfg, "u", [32]byte{}, q, 0, t0)
	u.durable = math.MaxInt64
	if _, err := g.ack(u, 10); !errors.Is(err, ErrUnverified) {
		t.Errorf("an unverified session took an acknowledgment: %v", err)
	}
	if u.Limit() != q || u.Held() {
		t.Errorf("an unverified session is held: limit %d", u.Limit())
	}
	m.Revoke()
	if _, err := g.ack(m, 9_000_000); !errors.Is(err, ErrRevoked) {
		t.Errorf("after Revoke: %v", err)
	}
}

// TestMeterCreditWindowAfterACrash: a host that crashed counts its saved
// bound as used, though its guest may never have received all of it; the
// window runs from what the guest acknowledged plus that slack, or the
// guest, receiving nothing, could never acknowledge its way out.
func TestMeterCreditWindowAfterACrash(t *testing.T) {
	const q, w = 100_000_000, 2_000_000
	g := newSigner(t)
	big := MeterConfig{Persist: true, PersistAhead: 5 * w}
	restored := func(used, counted, acked int64) *Meter {
		rec := Record{SessionID: "s", Quota: q, Used: used, Counted: counted, Verified: true, GuestKey: g.pub}
		if acked > 0 {
			rec.Acked, rec.AckSig = acked, protocol.SignAck(g.key, "s", acked)
		}
		r := RestoreMeter(big, rec, used, false, t0)
		var b SaveBatch
		b.Add(r, r.Used(), true)
		if err := b.Write(&memStore{}); err != nil {
			t.Fatal(err)
		}
		b.Done(0)
		return r
	}
	// Saved 5.2 MB ahead of a count of 2 MB the guest acknowledged 2 MB
	// of: the window runs from 5.2 MB.
	r := restored(5_200_000, 2_000_000, 2_000_000)
	if r.Used() != 5_200_000 || r.Limit() != 5_200_000+w {
		t.Errorf("restored past the window: used %d, limit %d, want %d", r.Used(), r.Limit(), 5_200_000+w)
	}
	r.Advance(6_200_000, t0) // 1 MB more delivered, then acknowledged
	if raised, err := g.ack(r, 3_000_000); err != nil || !raised || r.Limit() != 6_200_000+w {
		t.Errorf("then an acknowledgment: raised %v, %v, limit %d, want %d", raised, err, r.Limit(), 6_200_000+w)
	}
	// A crash before the guest's first acknowledgment was saved: held
	// until the guest acknowledges what it had (it sends its count again
	// on every new control stream); then the window runs from the count at
	// the restore.
	r = restored(5_200_000, 2_000_000, 0)
	if r.Limit() != 5_200_000 {
		t.Errorf("restored with no acknowledgment: limit %d, want %d", r.Limit(), 5_200_000)
	}
	if raised, err := g.ack(r, 2_000_000); err != nil || !raised || r.Limit() != 5_200_000+w {
		t.Errorf("then the guest's count: raised %v, %v, limit %d, want %d", raised, err, r.Limit(), 5_200_000+w)
	}
	// A bound saved with nothing ahead (Counted = Used), or the kernel's
	// exact count: every byte counted was delivered, so a guest a window
	// beyond its acknowledgment stays held.
	for _, exact := range []bool{false, true} {
		rec := Record{SessionID: "s", Quota: q, Used: 4_000_000, Counted: 4_000_000, Verified: true, GuestKey: g.pub,
			Acked: 2_000_000, AckSig: protocol.SignAck(g.key, "s", 2_000_000)}
		if exact {
			rec.Used, rec.Counted = 5_200_000, 2_000_000
		}
		r := RestoreMeter(big, rec, 4_000_000, exact, t0)
		var b SaveBatch
		b.Add(r, r.Used(), true)
		b.Done(0)
		if r.Limit() != 4_000_000 || !r.Held() {
			t.Errorf("restored from an exact count (exact %v): limit %d, held %v, want 4000000 held", exact, r.Limit(), r.Held())
		}
	}
}

// flow drives a meter with a steady transfer on a fake clock: every dt,
// rate×dt bytes (as far as Limit lets them), until stop says so.
type flow struct {
	m    *Meter
	now  time.Time
	rate int64 // bytes per second
	dt   time.Duration
}

// run moves bytes until stop returns true or d has passed, and returns the
// first ThresholdCrossed event seen (Kind 0: none).
func (f *flow) run(d time.Duration, stop func(Event) bool) Event {
	end := f.now.Add(d)
	for f.now.Before(end) {
		f.now = f.now.Add(f.dt)
		step := f.rate * int64(f.dt) / int64(time.Second)
		f.m.Advance(min(f.m.Used()+step, f.m.Limit()), f.now)
		for _, e := range f.m.Events() {
			if e.Kind == ThresholdCrossed && stop(e) {
				return e
			}
		}
	}
	return Event{}
}

func anyEvent(Event) bool { return true }

// TestMeterEarlyPrompt: ThresholdCrossed comes when what is left would last
// less than a top-up takes at the session's current rate, or at the
// threshold, whichever is first.
func TestMeterEarlyPrompt(t *testing.T) {
	const (
		MB   = 1_000_000
		T    = 5 * time.Second
		warn = 1 * MB
	)
	for _, tc := range []struct {
		name      string
		cfg       MeterConfig
		quota     int64
		rate      int64
		dt        time.Duration
		pause     time.Duration // after 2 s of traffic, then the same rate again
		wantLeft  int64         // the prompt comes once less than this is left...
		tolerance int64         // ...within this many bytes
	}{
		{"fast: five seconds of traffic before the end", MeterConfig{TopUpTime: T}, 200 * MB, 10 * MB, 10 * time.Millisecond, 0, 50 * MB, 100_000},
		{"slow: at the threshold", MeterConfig{TopUpTime: T}, 10 * MB, 100_000, 10 * time.Millisecond, 0, warn, 1000},
		{"no top-up time: at the threshold", MeterConfig{}, 200 * MB, 10 * MB, 10 * time.Millisecond, 0, warn, 100_000},
		{"polled every 100 ms", MeterConfig{TopUpTime: T, Sampling: 100 * time.Millisecond}, 200 * MB, 10 * MB, 100 * time.Millisecond, 0, 50 * MB, MB},
		// 20 MB before the pause leave 55 MB; 5 MB after it, what is left
		// lasts less than five seconds at 10 MB/s: the prompt comes then,
		// with the rate measured since the pause, not over a second that
		// holds most of the pause (that prompt would come 0.6 s late).
		{"after a pause, measured afresh", MeterConfig{TopUpTime: T}, 75 * MB, 10 * MB, 10 * time.Millisecond, 10 * time.Second, 50 * MB, 100_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMeter(tc.cfg, "s", [32]byte{}, tc.quota, warn, t0)
			f := &flow{m: m, now: t0, rate: tc.rate, dt: tc.dt}
			if tc.pause > 0 {
				if e := f.run(2*time.Second, anyEvent); e.Kind != 0 {
					t.Fatalf("prompt before the pause: %+v", e)
				}
				f.now = f.now.Add(tc.pause)
			}
			e := f.run(time.Hour, anyEvent)
			if e.Kind == 0 {
				t.Fatal("no prompt")
			}
			if left := e.Quota - e.Used; left >= tc.wantLeft || left < tc.wantLeft-tc.tolerance {
				t.Errorf("prompt with %d left, want just under %d (rate %.0f B/s)", left, tc.wantLeft, m.Rate())
			}
		})
	}
	t.Run("threshold 0: never", func(t *testing.T) {
		m := NewMeter(MeterConfig{TopUpTime: T}, "s", [32]byte{}, 100*MB, 0, t0)
		if e := (&flow{m: m, now: t0, rate: 10 * MB, dt: 10 * time.Millisecond}).run(time.Minute, anyEvent); e.Kind != 0 {
			t.Errorf("prompt %+v", e)
		}
	})
	t.Run("early, then at the threshold, once each", func(t *testing.T) {
		m := NewMeter(MeterConfig{TopUpTime: T}, "s", [32]byte{}, 100*MB, warn, t0)
		f := &flow{m: m, now: t0, rate: 10 * MB, dt: 10 * time.Millisecond}
		var got []int64
		f.run(time.Hour, func(e Event) bool { got = append(got, e.Quota-e.Used); return false })
		if len(got) != 2 || got[0] >= 50*MB || got[0] < 49*MB || got[1] >= warn {
			t.Errorf("prompts with %v left, want one just under 50 MB and one under 1 MB", got)
		}
	})
	t.Run("a top-up that does not last a top-up time prompts again", func(t *testing.T) {
		m := NewMeter(MeterConfig{TopUpTime: T}, "s", [32]byte{}, 100*MB, warn, t0)
		f := &flow{m: m, now: t0, rate: 10 * MB, dt: 10 * time.Millisecond}
		if e := f.run(time.Hour, anyEvent); e.Quota-e.Used >= 50*MB {
			t.Fatalf("first prompt %+v", e)
		}
		if err := m.Extend(5 * MB); err != nil { // ~55 MB left: re-armed, and lasting 5.5 s
			t.Fatal(err)
		}
		if evs := m.Events(); len(evs) != 0 {
			t.Fatalf("events right after the top-up: %v", evs)
		}
		e := f.run(time.Hour, anyEvent)
		if left := e.Quota - e.Used; e.Quota != 105*MB || left >= 50*MB || left < 49*MB {
			t.Errorf("second prompt %+v", e)
		}
	})
}

// TestMeterLeadKeepsAhead: with LeadTime the saved bound stays ahead of a
// steady transfer — through connections that come and go, each bringing
// the lead back to PersistAhead in the proxy — so the transfer never waits
// for the store on its way to the threshold. Growing the lead only when a
// transfer already waits (no LeadTime, as the proxy did) makes it wait
// after every new connection.
func TestMeterLeadKeepsAhead(t *testing.T) {
	const (
		MB      = 1_000_000
		rate    = 40 * MB // bytes per second
		dt      = time.Millisecond
		saveLag = 50 * time.Millisecond // a slow disk
		churn   = 200 * time.Millisecond
		warmUp  = rateWindow // the rate is measured by then
	)
	for _, tc := range []struct {
		name       string
		leadTime   time.Duration
		wantPauses bool
	}{
		{"lead follows the rate", 250 * time.Millisecond, false},
		{"lead grows only when waiting", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := MeterConfig{Persist: true, PersistAhead: 256 << 10, MaxLead: 64 << 20, LeadTime: tc.leadTime, TopUpTime: 5 * time.Second}
			st := &memStore{}
			m := NewMeter(cfg, "s", [32]byte{}, 1000*MB, MB, t0)
			if err := save(t, st, 0, false, m); err != nil {
				t.Fatal(err)
			}
			var (
				now      = t0
				saving   *SaveBatch
				savedAt  time.Time
				grewLead bool
				pauses   int
				prompt   Event
			)
			step := 0
			for ; prompt.Kind == 0; step++ {
				now = now.Add(dt)
				if saving != nil && !now.Before(savedAt) {
					if err := saving.Write(st); err != nil {
						t.Fatal(err)
					}
					saving.Done(0)
					saving, grewLead = nil, false
				}
				if now.Sub(t0)%churn == 0 {
					m.ResetLead() // the last connection closed, a new one opens
				}
				want := m.Used() + rate*int64(dt)/int64(time.Second)
				if m.SaveDue(m.Used()) && saving == nil {
					saving = &SaveBatch{}
					saving.Add(m, m.Used(), true)
					savedAt = now.Add(saveLag)
				}
				got := min(want, m.Limit())
				if got < want {
					if now.Sub(t0) > warmUp {
						if pauses++; pauses <= 3 && !tc.wantPauses {
							t.Logf("waited at %v: used %d, saved %d, lead %d, rate %.0f B/s", now.Sub(t0), m.Used(), m.Durable(), m.Lead(), m.Rate())
						}
					}
					if m.Durable() <= got && !grewLead {
						m.GrowLead(2 * m.Lead())
						grewLead = true
					}
				}
				m.Advance(got, now)
				for _, e := range m.Events() {
					if e.Kind == ThresholdCrossed {
						prompt = e
					}
				}
				if step > 100_000 {
					t.Fatal("no prompt")
				}
			}
			if (pauses > 0) != tc.wantPauses {
				t.Errorf("%d steps waited for the store after the first %v", pauses, warmUp)
			}
			if left := prompt.Quota - prompt.Used; !tc.wantPauses && (left >= 200*MB || left < 199*MB) {
				t.Errorf("prompt with %d left, want just under 200 MB (5 s at 40 MB/s)", left)
			}
			t.Logf("%d of %d steps waited; lead %d; prompt with %d left", pauses, step, m.Lead(), prompt.Quota-prompt.Used)
		})
	}
}

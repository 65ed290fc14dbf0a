package relay

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/store"
)

// TestAcksHeldThenWritten: an acknowledgment of what a stream here sent is
// held, not written, and then written with the others by the flusher; one
// beyond what was sent, or for a device no stream here serves, is not
// taken (it takes the write path, which refuses the future); a cursor never
// moves back; a flush that fails holds them again.
func TestAcksHeldThenWritten(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	for i := int64(1); i <= 5; i++ {
		if err := st.Write(ctx, func(tx *store.Tx) error { return Append(tx, nil, i, "d", "s", prompt(i)) }); err != nil {
			t.Fatal(err)
		}
	}
	state := func() (acked uint64, left int) {
		t.Helper()
		if err := st.Read(ctx, func(tx *store.Tx) error {
			var err error
			if acked, err = AckedSeq(tx, "d"); err != nil {
				return err
			}
			return tx.QueryRow(`SELECT COUNT(*) FROM inbox WHERE device_id = 'd'`).Scan(&left)
		}); err != nil {
			t.Fatal(err)
		}
		return acked, left
	}
	a := NewAcks(st, time.Hour, nil) // the test flushes
	if a.Take("d", 1) {
		t.Fatal("an acknowledgment taken with no stream to the device here")
	}
	sent, done := a.Streaming("d")
	sent(3)
	if a.Take("d", 4) {
		t.Fatal("an acknowledgment of 4 taken when the stream sent up to 3")
	}
	if !a.Take("d", 2) || !a.Take("d", 3) || !a.Take("d", 1) {
		t.Fatal("an acknowledgment of what the stream sent was not taken")
	}
	if acked, left := state(); acked != 0 || left != 5 || a.Held() != 1 {
		t.Fatalf("before the flush: acked %d, %d messages stored, %d held; want 0, 5, 1", acked, left, a.Held())
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if acked, left := state(); acked != 3 || left != 2 || a.Held() != 0 {
		t.Fatalf("after the flush: acked %d, %d messages stored, %d held; want 3, 2, 0", acked, left, a.Held())
	}
	// Never back: an older acknowledgment written after a newer one.
	if err := st.Write(ctx, func(tx *store.Tx) error { return AckDelivered(tx, "d", 2) }); err != nil {
		t.Fatal(err)
	}
	if acked, _ := state(); acked != 3 {
		t.Fatalf("the cursor moved back to %d", acked)
	}
	done()
	if a.Take("d", 3) {
		t.Fatal("an acknowledgment taken after the device's last stream here ended")
	}

	// The flusher writes on its own within the delay.
	b := NewAcks(st, 10*time.Millisecond, nil)
	sent, done = b.Streaming("d")
	defer done()
	sent(5)
	if !b.Take("d", 5) {
		t.Fatal("not taken")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if acked, left := state(); acked == 5 && left == 0 && b.Held() == 0 {
			break
		}
		if time.Now().After(deadline) {
			acked, left := state()
			t.Fatalf("the flusher left acked %d, %d messages stored, %d held", acked, left, b.Held())
		}
	}

	// A flush that fails holds them again.
	c := NewAcks(st, time.Hour, nil)
	sent, done = c.Streaming("d")
	defer done()
	sent(5)
	c.Take("d", 5)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Flush(cctx); err == nil {
		t.Fatal("a flush with a cancelled context succeeded")
	}
	if c.Held() != 1 {
		t.Fatalf("%d held after a failed flush, want 1", c.Held())
	}
}

// TestAcksFlusherLogsOnce: while the held acknowledgments cannot be written
// (here the inbox table is away; in life the database), the flusher tries
// again and again, but warns once, and says once when a write succeeds
// again, with how many failed.
func TestAcksFlusherLogsOnce(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	for i := int64(1); i <= 3; i++ {
		if err := st.Write(ctx, func(tx *store.Tx) error { return Append(tx, nil, i, "d", "s", prompt(i)) }); err != nil {
			t.Fatal(err)
		}
	}
	rename := func(from, to string) {
		t.Helper()
		if err := st.Write(ctx, func(tx *store.Tx) error {
			_, err := tx.Exec(`ALTER TABLE ` + from + ` RENAME TO ` + to)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	logs := &recorded{}
	a := NewAcks(st, 5*time.Millisecond, slog.New(logs))
	sent, done := a.Streaming("d")
	defer done()
	sent(3)
	rename("inbox", "inbox_away")
	if !a.Take("d", 3) {
		t.Fatal("not taken")
	}
	// Wait for three failed writes (they back off 5, 10, 20 ms…).
	for deadline := time.Now().Add(10 * time.Second); a.failures() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d failed writes in 10 s, want 3", a.failures())
		}
	}
	rename("inbox_away", "inbox")
	for deadline := time.Now().Add(10 * time.Second); a.Held() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still %d held after the table came back", a.Held())
		}
	}
	// The flusher logs the recovery just after the write that emptied
	// what was held (CI once counted the logs in between): give it a
	// moment, then count exactly.
	for deadline := time.Now().Add(10 * time.Second); logs.count(slog.LevelInfo) == 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
	}
	if w, i := logs.count(slog.LevelWarn), logs.count(slog.LevelInfo); w != 1 || i != 1 {
		t.Fatalf("%d warnings and %d recoveries logged, want 1 and 1: %v", w, i, logs.all())
	}
	if n := logs.attr(slog.LevelInfo, "failed_writes"); n < 3 {
		t.Fatalf("the recovery counted %d failed writes, want at least 3", n)
	}
}

func (a *Acks) failures() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed
}

// recorded is a slog.Handler that keeps the records.
type recorded struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recorded) Enabled(context.Context, slog.Level) bool { return true }
func (h *recorded) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recorded) WithGroup(string) slog.Handler            { return h }
func (h *recorded) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

func (h *recorded) count(l slog.Level) (n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Level == l {
			n++
		}
	}
	return n
}

func (h *recorded) attr(l slog.Level, key string) (v int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Level == l {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == key {
					v = a.Value.Int64()
				}
				return true
			})
		}
	}
	return v
}

func (h *recorded) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		out = append(out, r.Level.String()+" "+r.Message)
	}
	return out
}

package relay

import (
	"context"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
	"google.golang.org/protobuf/proto"
)

// TestHubHandsCommittedMessages: what a commit appends is handed to the
// device's watches, decoded, in order, so a stream sends it without a
// read; a wake-up without its message, a gap, or more than a watch holds
// has the stream read instead; what was already read is not handed again.
func TestHubHandsCommittedMessages(t *testing.T) {
	engines(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		hub := NewHub()
		w, cancel := hub.Watch("d")
		defer cancel()
		// Committed out of order of their hand-offs is fine: two writes.
		for i := int64(1); i <= 3; i++ {
			if err := st.Write(ctx, func(tx *store.Tx) error { return Append(tx, hub, i, "d", "s", prompt(i)) }); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-w.C:
		default:
			t.Fatal("no wake-up")
		}
		envs, read := w.Take(0)
		if read || len(envs) != 3 {
			t.Fatalf("took %d messages, read %v; want the 3 committed, no read", len(envs), read)
		}
		for i, e := range envs {
			if e.Seq != uint64(i+1) || e.GetLowQuotaPrompt().GetUsedBytes() != int64(i+1) || e.MessageId == "" || e.SessionId != "s" {
				t.Fatalf("message %d handed as %v", i+1, e)
			}
		}
		// Nothing new: no read either.
		if envs, read := w.Take(3); read || len(envs) != 0 {
			t.Fatalf("an empty take gave %d messages, read %v", len(envs), read)
		}
		body := func(seq uint64) []byte {
			b, err := proto.Marshal(&sharespotv1.Envelope{Seq: seq})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		// Already read (the stream's cursor is past it): dropped.
		hub.Hand("d", 2, body(2))
		if envs, read := w.Take(3); read || len(envs) != 0 {
			t.Fatalf("a message below the cursor gave %d messages, read %v", len(envs), read)
		}
		// A gap: 5 handed before 4.
		hub.Hand("d", 5, body(5))
		if _, read := w.Take(3); !read {
			t.Fatal("a gap did not make the stream read")
		}
		// Handed out of order, without a gap: in order.
		hub.Hand("d", 5, body(5))
		hub.Hand("d", 4, body(4))
		if envs, read := w.Take(3); read || len(envs) != 2 || envs[0].Seq != 4 || envs[1].Seq != 5 {
			t.Fatalf("took %v, read %v; want 4 then 5", envs, read)
		}
		// A wake-up without its message (another replica's commit).
		hub.Hand("d", 6, body(6))
		hub.Wake("d")
		hub.Hand("d", 7, body(7))
		if envs, read := w.Take(5); !read || envs != nil {
			t.Fatalf("after a bare wake-up: %d messages, read %v; want a read", len(envs), read)
		}
		// More than a watch holds.
		for seq := uint64(8); seq < 8+handBuf+1; seq++ {
			hub.Hand("d", seq, body(seq))
		}
		if _, read := w.Take(7); !read {
			t.Fatal("an overflowing watch did not make the stream read")
		}
		// Another device's watch hears nothing of d's.
		o, ocancel := hub.Watch("o")
		defer ocancel()
		hub.Hand("d", 100, body(100))
		select {
		case <-o.C:
			t.Fatal("another device's watch was woken")
		default:
		}
	})
}

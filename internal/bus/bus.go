// Package bus carries inbox wake-ups between server replicas over NATS.
//
// A message is stored in the receiver's inbox in the database, in the same
// transaction as the change that caused it (package relay); the database is
// the only copy. A wake-up only tells the replica that holds the receiver's
// inbox stream to read the inbox now rather than at its next poll. So a
// wake-up may be lost, late or duplicated without harm: a lost one delays
// delivery until the stream's fallback poll (server.Config.PollInterval,
// 1 s by default when a bus is configured), nothing more.
//
// After a commit, NATS.Wake wakes the local hub at once (a stream on this
// replica needs no round trip) and queues a publish of an empty message on
// sharespot.wake.<deviceID>. A single goroutine publishes from that queue,
// so a commit never waits for NATS: when the queue is full, or NATS is
// down, the wake-up is dropped and counted. The connection is made with
// NoEcho, so a replica does not hear its own wake-ups back.
//
// Each replica subscribes once to sharespot.wake.* and forwards every
// wake-up to its hub; a hub with no stream for the device ignores it. Every
// replica thus sees every wake-up, which costs one small message per commit
// per replica: fine for a handful of replicas. Past that, the per-device
// alternative is to subscribe to sharespot.wake.<deviceID> when a device's
// first stream on the replica starts and unsubscribe when its last one
// ends, so each wake-up reaches only the replica that needs it, at the cost
// of a SUB and an UNSUB per stream and a window, while the SUB travels,
// in which a wake-up is missed (the stream reads the inbox after
// subscribing anyway, so only a message committed in that window waits for
// the poll).
//
// The connection retries forever, with a backoff from 100 ms doubling to
// 5 s plus jitter, from the first attempt on: a replica starts and serves
// without NATS, and picks the bus up when it comes.
package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sharespot/sharespot/internal/relay"
)

// SubjectPrefix starts every wake-up subject; the device ID follows.
const SubjectPrefix = "sharespot.wake."

// Subject is the subject deviceID's wake-ups are published on.
func Subject(deviceID string) string { return SubjectPrefix + deviceID }

// validToken reports whether s can be one token of a subject.
func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

// IsURL reports whether s names a NATS server (nats:// or tls://; several
// separated by commas).
func IsURL(s string) bool {
	for u := range strings.SplitSeq(s, ",") {
		u = strings.TrimSpace(u)
		if !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
			return false
		}
	}
	return s != ""
}

// Options tune a bus connection.
type Options struct {
	// Name identifies the connection in the NATS server's monitoring.
	Name string
	// Logger receives connection changes and dropped wake-ups.
	Logger *slog.Logger
	// QueueLen caps wake-ups waiting to be published (default 4096).
	QueueLen int

	observe func(deviceID string) // tests: told of each wake-up received
}

// Backoff is the delay before reconnect attempt n (from 1): 100 ms
// doubling up to 5 s. NATS adds up to 100 ms of jitter.
func Backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < attempt && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// NATS publishes this replica's wake-ups and forwards the other replicas'
// to the local hub.
type NATS struct {
	nc  *nats.Conn
	sub *nats.Subscription
	hub *relay.Hub
	log *slog.Logger

	observe func(string)
	queue   chan string
	stop    chan struct{}
	done    chan struct{}
	closing sync.Once

	published atomic.Int64
	dropped   atomic.Int64
	received  atomic.Int64
	lastWarn  atomic.Int64 // unix nanoseconds of the last dropped-wake-up warning
}

var _ relay.Hander = (*NATS)(nil)

// Dial connects to the NATS server(s) at url, subscribes to every replica's
// wake-ups for hub and starts publishing. It fails only on a malformed URL:
// an unreachable server is retried in the background, forever.
func Dial(url string, hub *relay.Hub, opts Options) (*NATS, error) {
	if !IsURL(url) {
		return nil, errors.New("bus: not a NATS URL: want nats://host:port (or tls://), several separated by commas")
	}
	if hub == nil {
		return nil, errors.New("bus: no hub to wake")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.QueueLen <= 0 {
		opts.QueueLen = 4096
	}
	if opts.Name == "" {
		opts.Name = "sharespot"
	}
	b := &NATS{hub: hub, log: opts.Logger, observe: opts.observe, queue: make(chan string, opts.QueueLen), stop: make(chan struct{}), done: make(chan struct{})}
	log := opts.Logger
	nc, err := nats.Connect(url,
		nats.Name(opts.Name),
		nats.NoEcho(),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(Backoff),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(2*time.Second),
		nats.PingInterval(10*time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ReconnectBufSize(64<<10), // a wake-up is ~60 bytes; older ones are worth little
		nats.NoCallbacksAfterClientClose(),
		nats.ConnectHandler(func(c *nats.Conn) { log.Info("bus: connected", "server", c.ConnectedUrlRedacted()) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("bus: connected", "server", c.ConnectedUrlRedacted()) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("bus: disconnected; wake-ups wait for the inbox poll until it is back", "err", err)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("bus: error", "err", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("bus: connect to %s: %w", redact(url), err)
	}
	b.nc = nc
	if b.sub, err = nc.Subscribe(SubjectPrefix+"*", b.deliver); err != nil {
		nc.Close()
		return nil, fmt.Errorf("bus: subscribe to wake-ups: %w", err)
	}
	// A slow replica drops wake-ups (and the poll covers them) rather
	// than buffering without bound.
	if err := b.sub.SetPendingLimits(64<<10, 8<<20); err != nil {
		nc.Close()
		return nil, fmt.Errorf("bus: limit pending wake-ups: %w", err)
	}
	if nc.IsConnected() {
		// Make sure the server has the subscription before the replica
		// serves, so the first streams hear the first wake-ups.
		if err := nc.FlushTimeout(2 * time.Second); err != nil {
			log.Warn("bus: subscription not confirmed", "err", err)
		}
	} else {
		log.Warn("bus: NATS not reachable yet; retrying in the background", "server", redact(url))
	}
	go b.publish()
	return b, nil
}

// Wake wakes deviceID's streams on this replica and queues a wake-up for
// the others. It never blocks.
func (b *NATS) Wake(deviceID string) {
	b.hub.Wake(deviceID)
	b.others(deviceID)
}

// Hand hands the committed message to deviceID's streams on this replica
// (relay.Hub.Hand) and queues a wake-up for the others, whose streams read
// it. It never blocks.
func (b *NATS) Hand(deviceID string, seq uint64, body []byte) {
	b.hub.Hand(deviceID, seq, body)
	b.others(deviceID)
}

// others queues a wake-up of deviceID for the other replicas.
func (b *NATS) others(deviceID string) {
	if !validToken(deviceID) {
		b.drop("device ID is not a subject token", deviceID)
		return
	}
	select {
	case <-b.stop:
		return
	default:
	}
	select {
	case b.queue <- deviceID:
	default:
		b.drop("publish queue full", deviceID)
	}
}

// publish sends queued wake-ups until Close.
func (b *NATS) publish() {
	defer close(b.done)
	for {
		select {
		case id := <-b.queue:
			b.send(id)
		case <-b.stop:
			// Send what the last commits queued, then stop.
			for {
				select {
				case id := <-b.queue:
					b.send(id)
				default:
					return
				}
			}
		}
	}
}

func (b *NATS) send(deviceID string) {
	if err := b.nc.Publish(Subject(deviceID), nil); err != nil {
		b.drop(err.Error(), deviceID)
		return
	}
	b.published.Add(1)
}

// drop counts a wake-up that was not published and warns at most every
// 10 s.
func (b *NATS) drop(why, deviceID string) {
	n := b.dropped.Add(1)
	now := time.Now().UnixNano()
	last := b.lastWarn.Load()
	if now-last < int64(10*time.Second) || !b.lastWarn.CompareAndSwap(last, now) {
		return
	}
	b.log.Warn("bus: wake-up not published; the receiver's stream finds the message at its next poll",
		"why", why, "device", deviceID, "dropped_total", n)
}

// deliver forwards a wake-up from another replica to the local hub.
func (b *NATS) deliver(m *nats.Msg) {
	id, ok := strings.CutPrefix(m.Subject, SubjectPrefix)
	if !ok || !validToken(id) {
		return
	}
	b.received.Add(1)
	if b.observe != nil {
		b.observe(id)
	}
	b.hub.Wake(id)
}

// Connected reports whether the bus is connected to a NATS server now.
func (b *NATS) Connected() bool { return b != nil && b.nc != nil && b.nc.IsConnected() }

// Stats counts wake-ups published, dropped (not published) and received
// from other replicas since Dial.
type Stats struct {
	Published, Dropped, Received int64
}

// Stats returns the counters.
func (b *NATS) Stats() Stats {
	return Stats{Published: b.published.Load(), Dropped: b.dropped.Load(), Received: b.received.Load()}
}

// Close publishes what is queued (waiting at most 2 s for NATS to take it)
// and closes the connection. Wake after Close only wakes the local hub.
// Safe on nil and more than once.
func (b *NATS) Close() error {
	if b == nil || b.nc == nil {
		return nil
	}
	b.closing.Do(func() {
		close(b.stop)
		<-b.done
		if b.nc.IsConnected() {
			b.nc.FlushTimeout(2 * time.Second)
		}
		b.nc.Close()
	})
	return nil
}

// redact hides credentials in a NATS URL list.
func redact(url string) string {
	var out []string
	for u := range strings.SplitSeq(url, ",") {
		u = strings.TrimSpace(u)
		if scheme, rest, ok := strings.Cut(u, "://"); ok {
			if at := strings.LastIndex(rest, "@"); at >= 0 {
				u = scheme + "://xxxxx@" + rest[at+1:]
			}
		}
		out = append(out, u)
	}
	return strings.Join(out, ",")
}

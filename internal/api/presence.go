package api

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/store"
)

// presence keeps the hotspots of the hosts whose agent holds an inbox
// stream on this replica marked there (registry.Seen): a device at once
// when a stream of its opens, then every device with a stream open
// together, every third of HostAway, by one goroutine that runs while any
// stream is open. A stream holds no goroutine, timer or read of its own
// for it: an idle stream costs the map entry below, and the periodic mark
// is one read for every open stream (which devices host) and one write
// for the hosts among them, not a read per stream. A device with no
// active hotspot (a guest) is only in the read.
//
// When a device's last stream here ends, the hotspots are marked gone
// after HostGoneGrace unless a mark touched them since (here or on
// another replica).
type presence struct {
	s *services

	mu      sync.Mutex
	devices map[string]*presentDevice
	running bool // the marking goroutine runs
	soon    bool // a mark failed: the next is within a second
	wake    chan struct{}
}

type presentDevice struct {
	streams int
	last    int64 // the last mark written for it (ms); 0: none
}

// presenceRetry is how soon a mark that failed (the database away) is
// tried again. A stream opened, or kept, through a database outage must
// mark its host there as soon as the database is back: the grace of the
// stream it replaced runs out meanwhile, and its mark would make the host
// offline while it is connected.
const presenceRetry = time.Second

// every is how often the open streams' devices are marked.
func (pr *presence) every() time.Duration { return max(pr.s.d.HostAway/3, time.Second) }

// open notes a stream of device and marks its hotspots there before it
// returns; the returned close notes the stream's end.
func (pr *presence) open(ctx context.Context, device string) (close func()) {
	if pr.s.d.HostAway <= 0 {
		return func() {}
	}
	pr.mu.Lock()
	if pr.devices == nil {
		pr.devices = map[string]*presentDevice{}
		pr.wake = make(chan struct{}, 1)
	}
	d := pr.devices[device]
	if d == nil {
		d = &presentDevice{}
		pr.devices[device] = d
	}
	d.streams++
	if !pr.running {
		pr.running = true
		go pr.run()
	}
	pr.mu.Unlock()
	if !pr.markOne(ctx, device, d) {
		pr.mu.Lock()
		pr.soon = true
		pr.mu.Unlock()
		select {
		case pr.wake <- struct{}{}:
		default:
		}
	}
	return func() { pr.close(device, d) }
}

// markOne marks device's hotspots there now; false when it could not
// find out or write.
func (pr *presence) markOne(ctx context.Context, device string, d *presentDevice) bool {
	s := pr.s
	hosting, err := store.ReadT(ctx, s.d.Store, func(tx *store.Tx) (bool, error) { return registry.Hosting(tx, device) })
	if err != nil {
		s.sawDBAway(err)
		return false
	}
	if !hosting {
		return true
	}
	now := s.nowMS()
	n, err := store.WriteT(ctx, s.d.Store, func(tx *store.Tx) (int64, error) { return registry.Seen(tx, device, now) })
	if err != nil {
		s.sawDBAway(err)
		if ctx.Err() == nil && !errors.Is(err, store.ErrUnavailable) {
			s.d.Log.Warn("cannot mark a host present", "device", device, "err", err)
		}
		return false
	}
	if n > 0 {
		pr.mu.Lock()
		d.last = now
		pr.mu.Unlock()
	}
	return true
}

// markAll marks the hotspots of every device with a stream open here; it
// reports false when it could not, and the loop ends (false, true) when
// no stream is open.
func (pr *presence) markAll() (ok, idle bool) {
	pr.mu.Lock()
	if len(pr.devices) == 0 {
		pr.running = false
		pr.mu.Unlock()
		return true, true
	}
	ids := make([]string, 0, len(pr.devices))
	for id := range pr.devices {
		ids = append(ids, id)
	}
	pr.soon = false
	pr.mu.Unlock()

	s := pr.s
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hosts, err := store.ReadT(ctx, s.d.Store, func(tx *store.Tx) ([]string, error) { return registry.HostingAmong(tx, ids) })
	if err == nil && len(hosts) > 0 {
		now := s.nowMS()
		err = s.d.Store.Write(ctx, func(tx *store.Tx) error { return registry.SeenAll(tx, hosts, now) })
		if err == nil {
			var left []string
			pr.mu.Lock()
			for _, id := range hosts {
				if d := pr.devices[id]; d != nil {
					d.last = now
				} else {
					left = append(left, id)
				}
			}
			pr.mu.Unlock()
			// A device whose last stream ended while this mark was under
			// way was marked after its end: the grace its end started
			// checks the earlier mark and would leave it online until
			// HostAway. Start one for this mark.
			for _, id := range left {
				pr.goneAfterGrace(id, now)
			}
		}
	}
	if err != nil {
		s.sawDBAway(err)
		if !errors.Is(err, store.ErrUnavailable) && !errors.Is(err, store.ErrClosed) {
			s.d.Log.Warn("cannot mark hosts present", "streams", len(ids), "err", err)
		}
		return false, false
	}
	return true, false
}

// run marks every open stream's device every third of HostAway (within a
// second after a failed mark) until no stream is open.
func (pr *presence) run() {
	every := pr.every()
	due := time.Now().Add(every)
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ok, idle := pr.markAll()
			if idle {
				return
			}
			wait := every
			if !ok {
				wait = presenceRetry
			}
			due = time.Now().Add(wait)
			t.Reset(wait)
		case <-pr.wake:
			pr.mu.Lock()
			soon := pr.soon
			pr.mu.Unlock()
			if soon && time.Until(due) > presenceRetry {
				due = time.Now().Add(presenceRetry)
				t.Reset(presenceRetry)
			}
		}
	}
}

// close notes the end of a stream of device; when it was the device's last
// here and a mark was written for it, its hotspots are marked gone after
// the grace unless a later mark touched them.
func (pr *presence) close(device string, d *presentDevice) {
	pr.mu.Lock()
	d.streams--
	if d.streams > 0 {
		pr.mu.Unlock()
		return
	}
	delete(pr.devices, device)
	last := d.last
	pr.mu.Unlock()
	if last == 0 {
		return
	}
	// A stream that ends is not yet a host gone: a load balancer's reload
	// or a replica's restart cuts every stream, and the host is back on
	// another within moments, its new stream marking it again. So the
	// mark is undone only after HostGoneGrace, and only if no later mark
	// touched it. A host that stops says so at once
	// (HotspotService.Leave). A grace in which the database was away
	// starts over from its return: the host's new stream could not mark it
	// meanwhile (it tries again every second), and the old stream's mark,
	// still the last, would take the host offline while it is connected.
	pr.goneAfterGrace(device, last)
}

// goneAfterGrace marks device's hotspots offline after the grace unless a
// mark later than last touched them.
func (pr *presence) goneAfterGrace(device string, last int64) {
	s := pr.s
	go func() {
		grace := s.d.HostGoneGrace
		for wait := grace; ; {
			time.Sleep(wait)
			if since := time.Since(time.Unix(0, s.dbAway.Load())); since < grace {
				wait = grace - since
				continue
			}
			gctx, gcancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := s.d.Store.Write(gctx, func(tx *store.Tx) error { return registry.Gone(tx, device, last) })
			gcancel()
			if errors.Is(err, store.ErrUnavailable) {
				s.sawDBAway(err)
				wait = grace
				continue
			}
			if err != nil && !errors.Is(err, store.ErrClosed) {
				s.d.Log.Warn("cannot mark a host gone", "device", device, "err", err)
			}
			return
		}
	}()
}

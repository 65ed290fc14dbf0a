package nft

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/netns"
	"github.com/sharespot/sharespot/internal/protocol"
)

const (
	kB = 1000
	mB = 1000 * kB
	// maxLeak is the most unpaid traffic a bypass attempt may get through.
	maxLeak = 10 * kB
	// wait bounds every wait for an event or a transfer.
	wait = 60 * time.Second
)

// usage reads a session's usage or fails.
func usage(t testing.TB, gw *Gateway, id string) (used, quota int64) {
	t.Helper()
	used, quota, err := gw.Usage(id)
	if err != nil {
		t.Fatalf("usage %s: %v", id, err)
	}
	return used, quota
}

// quietUsage is usage once the session's traffic has stopped: the same
// count a second apart (a finished download's last ACKs and FINs may still
// be on their way when the fetch returns), within ten seconds.
func quietUsage(t testing.TB, gw *Gateway, id string) (used, quota int64) {
	t.Helper()
	used, quota = usage(t, gw, id)
	for range 10 {
		time.Sleep(time.Second)
		again, q := usage(t, gw, id)
		if again == used && q == quota {
			return used, quota
		}
		used, quota = again, q
	}
	t.Fatalf("usage of %s still moving after 10 s: %d", id, used)
	return
}

// startFetch starts a background download that ends with the (sub)test,
// so that a cut-off transfer does not resume under a later session bound
// to the same guest.
func startFetch(t testing.TB, hc *http.Client, base string, n int64) *netns.Reader {
	ctx, cancel := context.WithCancel(context.Background())
	r := netns.StartFetch(ctx, hc, base, n)
	t.Cleanup(func() {
		cancel()
		r.Wait()
	})
	return r
}

// stalled reports whether a transfer stops moving: no new byte for a whole
// second (long past the kernel's 200 ms minimum retransmission timeout)
// within ten.
func stalled(r *netns.Reader) bool {
	// What was already queued towards the guest when the kernel started
	// dropping may still arrive first, later on a loaded machine: wait
	// (within a bound) for a whole second without a byte. How much got
	// through is checked by the callers at the origin.
	for range 10 {
		before := r.N()
		select {
		case <-r.Done():
			return false
		case <-time.After(time.Second):
		}
		if r.N() == before {
			return true
		}
	}
	return false
}

// TestNamespaceSuite runs the kernel gateway between guest namespaces and
// an internet namespace: metering, cut-off, extension, revocation,
// restart, and the bypass attempts. The subtests share one topology and
// run in order.
func TestNamespaceSuite(t *testing.T) {
	f := newFixture(t, 7)
	f.start()
	g := f.tp.Guests
	ctx := context.Background()

	t.Run("wrong_code_refused", func(t *testing.T) {
		code := f.grant("s-wrong", 1*mB, 0)
		bad := bytes.Clone(code)
		bad[0] ^= 1
		if err := f.present(g[5], "s-wrong", bad); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("present with a wrong code: %v, want 403", err)
		}
		if err := f.present(g[5], "no-such-session", code); err == nil {
			t.Fatal("present for an unknown session succeeded")
		}
		if bs, _ := f.gw.Bindings("s-wrong"); len(bs) != 0 {
			t.Fatalf("bindings after refused presentations: %v", bs)
		}
	})

	t.Run("bypass_before_admission", func(t *testing.T) {
		// g5 never presented a code: HTTP, UDP and TCP to the origin's
		// port 53 (a DNS tunnel to an outside resolver), and the host's own
		// port 53, all get nowhere.
		before, beforeDNS := f.origin.Received(), f.origin.DNSReceived()
		hc := guestClient(g[5], 2*time.Second)
		if n, err := netns.Fetch(ctx, hc, f.base, 1*mB); err == nil || n > 0 {
			t.Fatalf("un-admitted fetch got %d bytes, err %v", n, err)
		}
		sent := dnsTunnel(t, g[5], net.JoinHostPort(f.tp.Net4.String(), "53"), 200*kB)
		dnsTunnel(t, g[5], net.JoinHostPort(f.tp.HostLAN4.String(), "53"), 20*kB)
		settle(f.origin)
		leak := f.origin.Received() - before
		t.Logf("pre-admission: %d bytes offered to the outside resolver, %d bytes reached the internet (DNS sink %d)",
			sent, leak, f.origin.DNSReceived()-beforeDNS)
		if leak > maxLeak {
			t.Fatalf("%d bytes leaked before admission, want ≤ %d", leak, maxLeak)
		}
	})

	t.Run("cut_at_quota", func(t *testing.T) {
		const quota = 2 * mB
		code := f.grant("s1", quota, 500*kB)
		if err := f.present(g[0], "s1", code); err != nil {
			t.Fatal(err)
		}
		r := startFetch(t, guestClient(g[0], 2*wait), f.base, 4*mB)
		f.ev.wait(t, gateway.FirstTraffic, "s1", wait)
		// The one at the threshold (an early one may come first: at this
		// rate what is left lasts less than a top-up takes).
		th := f.ev.waitFor(t, gateway.ThresholdCrossed, "s1", wait, func(e gateway.Event) bool { return e.Quota-e.Used < 500*kB })
		ex := f.ev.wait(t, gateway.Exhausted, "s1", wait)
		if n := f.ev.count(gateway.ThresholdCrossed, "s1"); n > 2 {
			t.Errorf("%d ThresholdCrossed events for one crossing", n)
		}
		if th.Quota-th.Used >= 500*kB || ex.Used > quota {
			t.Fatalf("events: threshold at %d/%d, exhausted at %d/%d", th.Used, th.Quota, ex.Used, ex.Quota)
		}
		if !stalled(r) {
			t.Fatalf("the transfer goes on after the quota (%d bytes)", r.N())
		}
		used, _ := usage(t, f.gw, "s1")
		t.Logf("cut at %d IP bytes of %d; the guest read %d body bytes", used, quota, r.N())
		if used > quota || used < quota-128<<10 || r.N() > quota {
			t.Fatalf("used %d, body %d; want used in [quota−128 KiB, quota=%d]", used, r.N(), quota)
		}
		// Extension resumes the same transfer: no new connection, no
		// reset of what was used.
		before, extended := r.N(), time.Now()
		if err := f.gw.Extend(ctx, "s1", 3*mB); err != nil {
			t.Fatal(err)
		}
		// How long the held transfer takes to move again: the kernel
		// dropped its packets at the quota, so TCP resumes at its next
		// retransmission (its backoff grows with the time held).
		for r.N() == before && time.Since(extended) < wait {
			time.Sleep(time.Millisecond)
		}
		t.Logf("the same connection moved again %v after the extension", time.Since(extended).Round(time.Millisecond))
		if err := r.Wait(); err != nil {
			t.Fatalf("the transfer did not resume to its end after the extension: %v (%d bytes)", err, r.N())
		}
		after, quota2 := usage(t, f.gw, "s1")
		if quota2 != 5*mB || after < used+2*mB || after > quota2 {
			t.Fatalf("after the extension used %d of %d (was %d)", after, quota2, used)
		}
	})

	t.Run("verified_held_at_window_acks_in_band", func(t *testing.T) {
		// A verified session: the kernel quota holds the guest to its
		// last acknowledgment plus the window, max(1 MB, 2 % of 20 MB),
		// from the first byte; acknowledgments over the control stream on
		// the admission endpoint raise it as they come (no server
		// anywhere); a guest that stops acknowledging is held again.
		const quota = 20 * mB
		window := protocol.Window(quota)
		pub, key, _ := ed25519.GenerateKey(nil)
		code := bytes.Repeat([]byte{0x5a}, 32)
		if err := f.gw.Admit(ctx, gateway.Grant{SessionID: "sv", Credential: code, Quota: quota, Verified: true, GuestKey: pub}); err != nil {
			t.Fatal(err)
		}
		// The guest counts its interface to the host from before it is
		// admitted, as connect does.
		var ifc *guest.InterfaceCounter
		if err := g[6].Do(func() error {
			name, err := guest.InterfaceTo(f.tp.HostLAN4)
			if err == nil {
				ifc, err = guest.NewInterfaceCounter(name)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		count := func() int64 {
			var n int64
			g[6].Do(func() error { n = ifc.Bytes(); return nil })
			return n
		}
		if err := f.present(g[6], "sv", code); err != nil {
			t.Fatal(err)
		}
		r := startFetch(t, guestClient(g[6], 2*wait), f.base, 8*mB)
		if !stalled(r) {
			t.Fatalf("a guest that acknowledges nothing was not held (%d bytes)", r.N())
		}
		used, _ := usage(t, f.gw, "sv")
		t.Logf("held with no acknowledgment at %d IP bytes (window %d); the guest read %d body bytes", used, window, r.N())
		if used > window || r.N() > window {
			t.Fatalf("held at %d bytes used, %d read: more than the window %d", used, r.N(), window)
		}
		// Acknowledging in-band from the guest's namespace, what its
		// interface passed: the download runs to its end.
		ackCtx, stopAcks := context.WithCancel(ctx)
		cl := client.New("http://127.0.0.1:9", key, client.Options{}) // no server: nothing listens there
		a := &guest.Acker{Session: guest.SessionFor(&guest.Guest{C: cl}, "sv"), Gateway: f.admit, Code: code, Count: count,
			Every: 50 * time.Millisecond, Dial: g[6].DialContext}
		acks := make(chan struct{})
		go func() { defer close(acks); a.Run(ackCtx) }()
		if err := r.Wait(); err != nil {
			t.Fatalf("acknowledging in-band, the download did not finish: %v (%d bytes)", err, r.N())
		}
		settled, _ := quietUsage(t, f.gw, "sv")
		stopAcks()
		<-acks
		ev, err := f.gw.Evidence("sv")
		if err != nil || protocol.VerifyAck(pub, "sv", ev.Acked, ev.Signature) != nil {
			t.Fatalf("evidence %+v, %v", ev, err)
		}
		// The counting basis: the guest's interface counts link-layer
		// frames, the kernel gateway IP packet lengths, so an honest
		// guest acknowledges at least what the gateway counted.
		t.Logf("8 MB downloaded: the gateway counted %d IP bytes, the guest's interface %d (%+.2f %%)",
			settled, ev.Acked, 100*float64(ev.Acked-settled)/float64(settled))
		if ev.Acked < settled {
			t.Errorf("the guest acknowledged %d, below the gateway's %d: an honest guest would be held", ev.Acked, settled)
		}
		// It stops acknowledging: another download is held a window on.
		r2 := startFetch(t, guestClient(g[6], 2*wait), f.base, 8*mB)
		if !stalled(r2) {
			t.Fatalf("a guest that stopped acknowledging was not held (%d bytes)", r2.N())
		}
		if used, _ := usage(t, f.gw, "sv"); used > ev.Acked+window {
			t.Fatalf("held at %d, beyond the acknowledged %d + window %d", used, ev.Acked, window)
		}
		if ev, _ := f.gw.Evidence("sv"); !ev.Held {
			t.Error("the gateway does not say it holds the guest")
		}
		if err := f.gw.Revoke(ctx, "sv"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("extend_while_flowing_no_gap", func(t *testing.T) {
		// The extension lands long before the first quota runs out (at
		// 1 GB/s, 100 ms ahead), so any stop would be the extension's.
		code := f.grant("s2", 100*mB, 0)
		if err := f.present(g[1], "s2", code); err != nil {
			t.Fatal(err)
		}
		r := startFetch(t, guestClient(g[1], 2*wait), f.base, 150*mB)
		for r.N() < 200*kB {
			select {
			case <-r.Done():
				t.Fatalf("fetch ended early: %v", r.Wait())
			case <-time.After(5 * time.Millisecond):
			}
		}
		mid, _ := usage(t, f.gw, "s2")
		if err := f.gw.Extend(ctx, "s2", 100*mB); err != nil {
			t.Fatal(err)
		}
		if err := r.Wait(); err != nil {
			t.Fatalf("transfer across the extension: %v", err)
		}
		end, q := usage(t, f.gw, "s2")
		if n := f.ev.count(gateway.Exhausted, "s2"); n != 0 || end < 150*mB || end < mid || q != 200*mB {
			t.Fatalf("exhausted %d times, used %d (at the extension %d) of %d", n, end, mid, q)
		}
	})

	t.Run("revoke_cuts_running_download", func(t *testing.T) {
		r := startFetch(t, guestClient(g[1], 2*wait), f.base, 90*mB)
		for r.N() < 1*mB {
			select {
			case <-r.Done():
				t.Fatalf("fetch ended early: %v", r.Wait())
			case <-time.After(5 * time.Millisecond):
			}
		}
		if err := f.gw.Revoke(ctx, "s2"); err != nil {
			t.Fatal(err)
		}
		sent := f.origin.Sent()
		if !stalled(r) {
			t.Fatalf("the download goes on after the revocation (%d bytes)", r.N())
		}
		settle(f.origin)
		// The origin's kernel takes its writes until the socket's send
		// buffer is full, none of it delivered once the guest's packets
		// are dropped (CI saw 63 of its 64 KiB writes, 4,128,768 bytes):
		// more than that buffer and one write means traffic still flowed.
		if d, most := f.origin.Sent()-sent, f.tp.Internet.SendBufferMax(t)+64<<10; d > most {
			t.Fatalf("the origin kept sending after the revocation: %d bytes, more than its send buffer and one write (%d)", d, most)
		}
		if n, err := netns.Fetch(ctx, guestClient(g[1], 2*time.Second), f.base, 100*kB); err == nil {
			t.Fatalf("a new fetch after the revocation got %d bytes", n)
		}
		if err := f.present(g[1], "s2", nil); err == nil {
			t.Fatal("a revoked session presented again")
		}
	})

	t.Run("prompt_early_on_a_fast_link", func(t *testing.T) {
		// Issue 11: with a warn level of 2 MB of 5 MB on a fast link the
		// prompt used to come with 861 kB left, together with the cut.
		// Now the first prompt comes at the warn level at the latest (and
		// at this rate earlier, when what is left lasts less than a top-up
		// takes), and the save-ahead does not hold the transfer on its
		// way there. The guest's link is shaped to 20 Mbit/s (tbf on the
		// host's LAN side, towards the guests): fast enough that the old
		// prompt came too late, slow enough that a poll delayed by a busy
		// machine (it would take over a second) cannot pass the warn level.
		if out, err := f.tp.Host.Exec("tc", "qdisc", "replace", "dev", f.tp.LAN, "root", "tbf", "rate", "20mbit",
			"burst", "64kb", "latency", "400ms").CombinedOutput(); err != nil {
			t.Fatalf("tc: %v: %s", err, out)
		}
		defer f.tp.Host.Exec("tc", "qdisc", "del", "dev", f.tp.LAN, "root").Run()
		const quota, warn = 5 * mB, 2 * mB
		code := f.grant("s-early", quota, warn)
		if err := f.present(g[4], "s-early", code); err != nil {
			t.Fatal(err)
		}
		r := startFetch(t, guestClient(g[4], 2*wait), f.base, 4*mB)
		// Sample the transfer until the first prompt: the longest time
		// it moved nothing is logged (a measure, not a verdict).
		var longest time.Duration
		last, lastAt := int64(0), time.Now()
		var th gateway.Event
		for deadline := time.Now().Add(wait); ; {
			if e, ok := f.ev.first(gateway.ThresholdCrossed, "s-early"); ok {
				th = e
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no prompt within %v; the guest read %d bytes", wait, r.N())
			}
			if n := r.N(); n != last {
				last, lastAt = n, time.Now()
			} else if d := time.Since(lastAt); d > longest {
				longest = d
			}
			time.Sleep(2 * time.Millisecond)
		}
		if err := r.Wait(); err != nil {
			t.Fatalf("the transfer under the quota did not complete: %v (%d bytes)", err, r.N())
		}
		left := th.Quota - th.Used
		t.Logf("first prompt with %d of %d bytes left (warn level %d); the longest pause before it %v",
			left, th.Quota, warn, longest.Round(time.Millisecond))
		if left < warn {
			t.Fatalf("the first prompt came with %d bytes left, below the warn level %d", left, warn)
		}
	})

	t.Run("restart_keeps_exact_remaining_quota", func(t *testing.T) {
		const quota = 3 * mB
		code := f.grant("s3", quota, 0)
		if err := f.present(g[2], "s3", code); err != nil {
			t.Fatal(err)
		}
		if _, err := netns.Fetch(ctx, guestClient(g[2], wait), f.base, 1*mB); err != nil {
			t.Fatal(err)
		}
		before, _ := quietUsage(t, f.gw, "s3")
		f.stop()
		f.start() // a new Gateway over the same store and the table left behind
		after, q := usage(t, f.gw, "s3")
		if after != before || q != quota {
			t.Fatalf("after restart used %d of %d, before %d of %d", after, q, before, quota)
		}
		// The binding survived: no new presentation needed.
		r := startFetch(t, guestClient(g[2], 2*wait), f.base, 5*mB)
		f.ev.wait(t, gateway.Exhausted, "s3", wait)
		if !stalled(r) {
			t.Fatalf("transfer goes on past the quota after restart (%d bytes)", r.N())
		}
		used, _ := usage(t, f.gw, "s3")
		if used > quota || used < quota-128<<10 {
			t.Fatalf("after restart cut at %d, want in [quota−128 KiB, %d]", used, quota)
		}
	})

	t.Run("restart_after_table_lost_gives_nothing_unpaid", func(t *testing.T) {
		// A reboot loses the table: the saved bound counts as used, the
		// guest presents its code again, and in all it never gets more
		// than its quota.
		const quota = 3 * mB
		code := f.grant("s6", quota, 0)
		if err := f.present(g[2], "s6", code); err == nil {
			t.Fatal("an address bound to s3 was bound to s6 as well")
		}
		if err := f.gw.Revoke(ctx, "s3"); err != nil {
			t.Fatal(err)
		}
		if err := f.present(g[2], "s6", code); err != nil {
			t.Fatal(err)
		}
		n1, err := netns.Fetch(ctx, guestClient(g[2], wait), f.base, 1*mB)
		if err != nil {
			t.Fatal(err)
		}
		// Idle, the session's saved bound comes back to PersistAhead above
		// its use (the fetch above grew it with the traffic).
		var exact int64
		for i := 0; ; i++ {
			recs, err := f.store.Load()
			if err != nil {
				t.Fatal(err)
			}
			exact, _ = usage(t, f.gw, "s6")
			if rec := find(recs, "s6"); rec.Used <= exact+f.persistAhead {
				break
			} else if i == 100 {
				t.Fatalf("idle for 10 s, the saved bound is %d for %d used", rec.Used, exact)
			}
			time.Sleep(100 * time.Millisecond)
		}
		f.stop()
		if err := Teardown(f.tp.Host.FD(), ""); err != nil {
			t.Fatal(err)
		}
		f.start()
		saved, _ := usage(t, f.gw, "s6")
		if saved < exact || saved > exact+f.persistAhead {
			t.Fatalf("after the table was lost used %d, want in [%d, %d]", saved, exact, exact+f.persistAhead)
		}
		if n, err := netns.Fetch(ctx, guestClient(g[2], 2*time.Second), f.base, 10*kB); err == nil {
			t.Fatalf("fetched %d bytes without presenting again", n)
		}
		if err := f.present(g[2], "s6", code); err != nil {
			t.Fatal(err)
		}
		r := startFetch(t, guestClient(g[2], 2*wait), f.base, 5*mB)
		if saved < quota {
			f.ev.wait(t, gateway.Exhausted, "s6", wait)
		} // else the whole saved bound is the quota: nothing more passes
		stalled(r) // bounded: the totals below decide
		more, _ := usage(t, f.gw, "s6")
		t.Logf("exact %d before the loss, %d counted as used after it; body bytes %d then %d", exact, saved, n1, r.N())
		if more > quota || n1+r.N() > quota {
			t.Fatalf("in all %d body bytes, kernel count %d, for a quota of %d", n1+r.N(), more, quota)
		}
	})

	t.Run("bypass_ipv6", func(t *testing.T) {
		// A router advertisement would give the guests a global address
		// and a default route via the host; give them exactly that. g5 is
		// not admitted; g0 is admitted over IPv4 only.
		before := f.origin.Received()
		for _, gu := range []*netns.Guest{g[5], g[0]} {
			gu.AddIPv6(t, f.tp)
			if n, err := netns.Fetch(ctx, guestClient(gu, 2*time.Second), f.base6, 1*mB); err == nil || n > 0 {
				t.Fatalf("%s fetched %d bytes over IPv6 (err %v)", gu.Name, n, err)
			}
			dnsTunnel(t, gu, net.JoinHostPort(f.tp.Net6.String(), "53"), 100*kB)
		}
		settle(f.origin)
		if leak := f.origin.Received() - before; leak > maxLeak {
			t.Fatalf("%d bytes leaked over IPv6, want ≤ %d", leak, maxLeak)
		}
		// The control: an IPv6 address admitted with the code gets through
		// (so the measurement above can see traffic when there is some).
		code := f.grant("s7", 5*mB, 0)
		hc := g[5].HTTPClient()
		hc.Timeout = 10 * time.Second
		admit6 := net.JoinHostPort(f.tp.HostLAN6.String(), admitPort)
		if _, err := Present(ctx, hc, admit6, "s7", code); err != nil {
			t.Fatal(err)
		}
		if _, err := netns.Fetch(ctx, guestClient(g[5], wait), f.base6, 1*mB); err != nil {
			t.Fatalf("admitted IPv6 fetch: %v", err)
		}
		if used, _ := usage(t, f.gw, "s7"); used < 1*mB {
			t.Fatalf("IPv6 traffic not metered: %d", used)
		}
	})

	t.Run("bypass_clone_ip_and_mac", func(t *testing.T) {
		// g4 clones paid guest g3's IPv4 address and MAC on the shared
		// bridge. It cannot be told apart from g3 at layer 2/3, so it gets
		// through — but every byte it gets is counted against g3's
		// session and stops at that quota: nothing passes unpaid for the
		// host. The residual risk (g3 pays for g4) is in docs/gateways.md.
		const quota = 2 * mB
		code := f.grant("s4", quota, 0)
		if err := f.present(g[3], "s4", code); err != nil {
			t.Fatal(err)
		}
		g[4].Clone(t, g[3])
		r := startFetch(t, guestClient(g[4], wait), f.base, 5*mB)
		f.ev.wait(t, gateway.Exhausted, "s4", wait)
		stalled(r)
		used, _ := usage(t, f.gw, "s4")
		t.Logf("the clone received %d body bytes, all on the victim's meter (%d of %d)", r.N(), used, quota)
		if r.N() > used || used > quota {
			t.Fatalf("the clone got %d bytes, the victim's meter shows %d of %d", r.N(), used, quota)
		}
		// Once the victim's session ends, the clone is cut too.
		if err := f.gw.Revoke(ctx, "s4"); err != nil {
			t.Fatal(err)
		}
		before := f.origin.Received()
		if n, err := netns.Fetch(ctx, guestClient(g[4], 2*time.Second), f.base, 100*kB); err == nil || n > 0 {
			t.Fatalf("the clone fetched %d bytes after the revocation", n)
		}
		settle(f.origin)
		if leak := f.origin.Received() - before; leak > maxLeak {
			t.Fatalf("%d bytes leaked from the clone after revocation", leak)
		}
	})
}

// TestReconcileConvergesOnTheStore starts a gateway over a store that no
// longer knows a session the table still holds: the session's chain,
// objects and bindings go, and its guest is cut.
func TestReconcileConvergesOnTheStore(t *testing.T) {
	f := newFixture(t, 1)
	f.start()
	ctx := context.Background()
	code := f.grant("gone", 10*mB, 0)
	if err := f.present(f.tp.Guests[0], "gone", code); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Fetch(ctx, guestClient(f.tp.Guests[0], wait), f.base, 100*kB); err != nil {
		t.Fatal(err)
	}
	f.stop()
	st, err := gateway.OpenFileStore(filepath.Join(t.TempDir(), "empty.json"))
	if err != nil {
		t.Fatal(err)
	}
	f.store = st
	for range 2 { // twice: starting again changes nothing
		f.start()
		if _, _, err := f.gw.Usage("gone"); !errors.Is(err, gateway.ErrUnknownSession) {
			t.Fatalf("usage of a session the store forgot: %v", err)
		}
		if n, err := netns.Fetch(ctx, guestClient(f.tp.Guests[0], 2*time.Second), f.base, 100*kB); err == nil || n > 0 {
			t.Fatalf("the forgotten session's guest fetched %d bytes", n)
		}
		f.stop()
	}
	c, err := nftables.New(nftables.WithNetNSFd(f.tp.Host.FD()))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := c.GetObjects(&nftables.Table{Name: DefaultTable, Family: nftables.TableFamilyINet})
	if err != nil || len(objs) != 0 {
		t.Fatalf("objects left in the table: %d (%v)", len(objs), err)
	}
}

func find(recs []gateway.Record, id string) gateway.Record {
	for _, r := range recs {
		if r.SessionID == id {
			return r
		}
	}
	return gateway.Record{}
}

// dnsTunnel plays a DNS tunnel from inside g: UDP datagrams of 200 bytes
// to addr until total bytes went out (or 2 s), then a TCP connection to
// the same port with another tenth of it. It returns the bytes offered.
func dnsTunnel(t testing.TB, g *netns.Guest, addr string, total int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var sent int64
	c, err := g.DialContext(ctx, "udp", addr)
	if err != nil {
		t.Fatalf("udp to %s: %v", addr, err)
	}
	q := bytes.Repeat([]byte("x"), 200)
	for sent < total && ctx.Err() == nil {
		n, err := c.Write(q)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			time.Sleep(time.Millisecond) // ICMP unreachable or full buffers
		}
		sent += int64(n)
	}
	c.Close()
	tctx, tcancel := context.WithTimeout(context.Background(), time.Second)
	defer tcancel()
	if tc, err := g.DialContext(tctx, "tcp", addr); err == nil {
		tc.SetWriteDeadline(time.Now().Add(time.Second))
		n, _ := tc.Write(bytes.Repeat([]byte("y"), int(total/10)))
		sent += int64(n)
		tc.Close()
	}
	return sent
}

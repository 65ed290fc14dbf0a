package chaostest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/loadgen"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

const (
	currency = "EUR"
	funded   = int64(1_000_000) // per guest
	hosts    = 10
	// maxExtraLoad bounds how long a round's load goes on past its set
	// length while no flow has completed yet.
	maxExtraLoad = 60 * time.Second
)

// serverFlags: deadlines short enough that the sweeper moves a session a
// crash left waiting on within seconds, long enough that a flow on a busy
// machine (two CPU-bound loops beside the suite, as CI runs it) does not
// see its quote expire; and no rate limits or per-address caps (every
// simulated device comes from 127.0.0.1).
var serverFlags = []string{
	"--quote-timeout", "10s", "--quote-ttl", "20s", "--grant-timeout", "10s", "--close-timeout", "5s",
	"--rate-device", "0", "--rate-ip", "0", "--max-inflight-ip", "0", "--max-streams-ip", "0", "--max-conns-ip", "0",
	"--log-level", "warn",
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func TestChaos(t *testing.T) {
	seed := rand.Uint64()
	if v := os.Getenv("SHARESPOT_CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SHARESPOT_CHAOS_SEED=%q: want an unsigned integer", v)
		}
		seed = s
	}
	t.Logf("chaos seed %d (repeat with SHARESPOT_CHAOS_SEED=%d)", seed, seed)
	rounds := envInt(t, "SHARESPOT_CHAOS_ROUNDS", 2)
	cfg := roundConfig{
		flows: envInt(t, "SHARESPOT_CHAOS_FLOWS", 200),
		kills: envInt(t, "SHARESPOT_CHAOS_KILLS", 3),
		load:  time.Duration(envInt(t, "SHARESPOT_CHAOS_LOAD_MS", 6000)) * time.Millisecond,
	}
	bin, err := harness.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed^0xc4a05))
	for r := range rounds {
		rs := rng.Uint64()
		ok := t.Run(fmt.Sprintf("round_%02d", r), func(t *testing.T) {
			t.Logf("round seed %d", rs)
			chaosRound(t, bin, rs, cfg)
		})
		if !ok {
			t.Logf("round %d failed: seed %d", r, seed)
			break
		}
	}
}

type roundConfig struct {
	flows, kills int
	load         time.Duration
}

// killer kills the server at seeded moments during the load and restarts
// it after a seeded pause.
type killer struct {
	proc  *loadgen.Proc
	rng   *rand.Rand
	kills int
	load  time.Duration

	mu   sync.Mutex
	log  []string
	errs []error
}

func (k *killer) run(ctx context.Context) {
	// Spread the kills over the load: each waits a random share of its
	// slot, so two can come close together.
	slot := k.load / time.Duration(k.kills+1)
	for i := range k.kills {
		wait := slot/4 + time.Duration(k.rng.Int64N(int64(slot)))
		down := time.Duration(k.rng.Int64N(int64(400 * time.Millisecond)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		t0 := time.Now()
		died, err := k.proc.Kill()
		k.mu.Lock()
		if err != nil {
			k.errs = append(k.errs, err)
		} else if !died {
			k.errs = append(k.errs, fmt.Errorf("kill %d: the server was not killed by SIGKILL: %v\n%s", i, k.proc.ExitState(), k.proc.Output()))
		}
		k.mu.Unlock()
		time.Sleep(down)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
		err = k.proc.Restart(rctx)
		cancel()
		k.mu.Lock()
		if err != nil {
			k.errs = append(k.errs, fmt.Errorf("restart after kill %d: %w", i, err))
		}
		k.log = append(k.log, fmt.Sprintf("kill %d after %v, down %v, back in %v", i, wait.Round(time.Millisecond), down.Round(time.Millisecond),
			time.Since(t0).Round(time.Millisecond)))
		k.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func chaosRound(t *testing.T, bin string, seed uint64, cfg roundConfig) {
	ctx := t.Context()
	dir := t.TempDir()
	db := harness.DBFor(t, dir) // PostgreSQL when SHARESPOT_TEST_DB=postgres
	proc, err := loadgen.Spawn{Bin: bin, Dir: dir, DB: db, Flags: serverFlags, Env: harness.CleanEnv()}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			proc.Stop(10 * time.Second)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, seed^0x10ad))

	fleet, err := loadgen.NewFleet(ctx, loadgen.FleetConfig{URL: proc.URL(), Hosts: hosts, Guests: cfg.flows, Currency: currency,
		Fund: loadgen.DBFunder(dir, db), FundMinor: funded, WarnAtBytes: 5_000_000, Resilient: true})
	if err != nil {
		t.Fatalf("set up: %v\n%s", err, proc.Output())
	}
	fleetClosed := false
	defer func() {
		if !fleetClosed {
			fleet.Close()
		}
	}()

	// The load: every guest runs flows until the load time is up, while
	// the killer works.
	//
	// That at least one flow completed is a coverage condition, not a
	// verdict on speed: on a busy machine every flow of the load can
	// meet a kill or a deadline. So when none completed by the end of the
	// load, the guests keep running flows (the killer done) until one
	// completes, for at most maxExtraLoad more.
	k := &killer{proc: proc, rng: rand.New(rand.NewPCG(rng.Uint64(), 1)), kills: cfg.kills, load: cfg.load}
	lctx, cancel := context.WithTimeout(ctx, cfg.load+maxExtraLoad+90*time.Second) // bounds flows stuck past the load
	defer cancel()
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		k.run(lctx)
	}()
	var completed, resolved, failed atomic.Int64
	var fmu sync.Mutex
	failures := map[string]int{}
	start := time.Now()
	end, limit := start.Add(cfg.load), start.Add(cfg.load+maxExtraLoad)
	more := func() bool {
		now := time.Now()
		return lctx.Err() == nil && (now.Before(end) || completed.Load() == 0 && now.Before(limit))
	}
	var wg sync.WaitGroup
	for i, g := range fleet.Guests {
		grng := rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more() {
				h := fleet.Hosts[grng.IntN(len(fleet.Hosts))]
				res := fleet.RunFlow(lctx, g, h, loadgen.FlowConfig{StepTimeout: 20 * time.Second}, nil)
				switch res.Outcome {
				case loadgen.Completed:
					completed.Add(1)
				case loadgen.Resolved:
					resolved.Add(1)
				default:
					failed.Add(1)
					fmu.Lock()
					if failures[res.ErrKind]++; failures[res.ErrKind] == 1 {
						t.Logf("a flow failed (%s): %v", res.ErrKind, res.Err)
					}
					fmu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	<-killed
	k.mu.Lock()
	for _, l := range k.log {
		t.Log(l)
	}
	for _, err := range k.errs {
		t.Error(err)
	}
	k.mu.Unlock()
	t.Logf("flows: %d completed, %d resolved early (a deadline or a refusal after a crash), %d failed %v; server started %d times; load ran %v",
		completed.Load(), resolved.Load(), failed.Load(), failures, proc.Starts(), time.Since(start).Round(time.Millisecond))
	if proc.Starts() < 2 {
		t.Errorf("the server was never killed and restarted (%d starts)", proc.Starts())
	}
	if completed.Load() == 0 {
		t.Errorf("no flow completed in the load of %v nor in up to %v more without kills", cfg.load, maxExtraLoad)
	}

	// Deadlines: the sweeper ends every session a crash left waiting.
	if open := waitAllEnded(ctx, fleet, 60*time.Second); open > 0 {
		t.Errorf("%d sessions still open 60s after the load: the deadlines did not move them on", open)
	}
	waitQuiet(fleet, 1500*time.Millisecond, 20*time.Second)
	fleetClosed = true
	if err := fleet.Close(); err != nil {
		t.Error(err)
	}
	stopped = true
	if err := proc.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	check(t, dir, db, fleet)
	if t.Failed() {
		t.Logf("server output:\n%s", proc.Output())
	}
}

// waitAllEnded waits until no host has an open session, up to d; it
// returns how many remain open.
func waitAllEnded(ctx context.Context, f *loadgen.Fleet, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		open := 0
		for _, h := range f.Hosts {
			res, err := h.C.Sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
			if err != nil {
				open++ // cannot tell yet
				continue
			}
			open += len(res.Msg.Sessions)
		}
		if open == 0 || time.Now().After(deadline) {
			return open
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitQuiet waits until no device has handled a new message for quiet
// (the last SessionEnded messages of expired sessions delivered), up to d.
func waitQuiet(f *loadgen.Fleet, quiet, d time.Duration) {
	count := func() int {
		n := 0
		for _, h := range f.Hosts {
			n += len(h.In.Handled())
		}
		for _, g := range f.Guests {
			n += len(g.In.Handled())
		}
		return n
	}
	deadline := time.Now().Add(d)
	last, since := count(), time.Now()
	for time.Since(since) < quiet && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if n := count(); n != last {
			last, since = n, time.Now()
		}
	}
}

// check opens the stopped server's database and checks the invariants.
func check(t *testing.T, dir, db string, f *loadgen.Fleet) {
	t.Helper()
	ctx := context.Background()
	target, err := server.DBTarget(dir, db)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, target, store.Options{})
	if err != nil {
		t.Fatalf("open the database: %v", err)
	}
	defer st.Close()
	if err := harness.Audit(ctx, st); err != nil {
		t.Errorf("audit: %v", err)
	}
	err = st.Read(ctx, func(tx *store.Tx) error {
		for _, err := range harness.CheckSessions(tx) {
			t.Errorf("sessions: %v", err)
		}
		var accounts []string
		for _, h := range f.Hosts {
			accounts = append(accounts, h.C.AccountID())
		}
		for _, g := range f.Guests {
			accounts = append(accounts, g.C.AccountID())
		}
		if err := harness.CheckMoney(tx, accounts, currency, funded*int64(len(f.Guests))); err != nil {
			t.Errorf("money: %v", err)
		}
		devices := 0
		for i, h := range f.Hosts {
			for _, err := range harness.CheckDelivery(tx, h.C.DeviceID(), h.In.Handled()) {
				t.Errorf("host %d inbox: %v", i, err)
			}
			devices++
		}
		grants := map[string]int{}
		for i, g := range f.Guests {
			msgs := g.In.Handled()
			for _, err := range harness.CheckDelivery(tx, g.C.DeviceID(), msgs) {
				t.Errorf("guest %d inbox: %v", i, err)
			}
			for _, m := range msgs {
				if m.QuoteID != "" {
					if grants[m.QuoteID]++; grants[m.QuoteID] == 2 {
						t.Errorf("guest %d: quote %s granted twice", i, m.QuoteID)
					}
				}
			}
			devices++
		}
		var sessions, ended, granted int
		if err := tx.QueryRow(`SELECT COUNT(*), COALESCE(SUM(CASE WHEN state = ? THEN 1 ELSE 0 END), 0) FROM sessions`,
			int32(sharespotv1.SessionState_SESSION_STATE_ENDED)).Scan(&sessions, &ended); err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT COUNT(*) FROM quotes WHERE state = ?`, int32(sharespotv1.QuoteState_QUOTE_STATE_GRANTED)).Scan(&granted); err != nil {
			return err
		}
		t.Logf("checked %d sessions (%d ended), %d granted quotes, %d devices' inboxes (%d grants seen by guests)", sessions, ended, granted, devices, len(grants))
		return nil
	})
	if err != nil {
		t.Errorf("read the database: %v", err)
	}
}

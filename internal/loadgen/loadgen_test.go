package loadgen

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99.9, 7 * time.Millisecond},
		{"median of 1..100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p99.9 of 1..100 is the max", ms(hundred...), 99.9, 100 * time.Millisecond},
		{"p0 is the min", ms(3, 4, 5), 0, 3 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestGCTraceParsesSplitLines(t *testing.T) {
	g := NewGCTrace()
	// The runtime writes a trace line in pieces.
	for _, piece := range []string{"gc ", "14 @2.5s 1%: 0.05+2.1+0.01 ms clock, 0.1+0.2/1.0/0+0.02 ms cpu, 61->63->", "42 MB, 70 MB goal, 9 MB stacks, 0 MB globals, 2 P\n",
		"unrelated line\n", "gc 15 @3.0s 1%: 0.05+2.1+0.01 ms clock, 0.1 ms cpu, 50->51->44 MB, 80 MB goal, 10 MB stacks, 0 MB globals, 2 P (forced)\n"} {
		g.Write([]byte(piece))
	}
	last, n := g.Last()
	if n != 2 || last != (GCStat{Seq: 15, LiveMB: 44, StacksMB: 10, GoalMB: 80, ForcedRun: true}) {
		t.Fatalf("Last() = %+v after %d collections", last, n)
	}
}

// fleetOn starts an in-process server without rate limits and a fleet
// against it.
func fleetOn(t *testing.T, hosts, guests int, warn int64) (*harness.Env, *Fleet) {
	t.Helper()
	env := harness.Start(t, func(c *server.Config) { c.Limits = api.Limits{} })
	ctx := t.Context()
	f, err := NewFleet(ctx, FleetConfig{URL: env.URL, Hosts: hosts, Guests: guests, WarnAtBytes: warn, FundMinor: 1 << 40,
		Fund: func(ctx context.Context, accounts []string, currency string, amount int64) error {
			return DBFunderStore(env.Srv.Store())(ctx, accounts, currency, amount)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	})
	return env, f
}

// TestRunLoad runs a short open-loop load of complete flows with top-ups
// and checks that every flow started completed and settled, that the
// counts add up, and that the server's money invariants hold.
func TestRunLoad(t *testing.T) {
	env, f := fleetOn(t, 2, 6, 5*mb)
	rep, err := f.RunLoad(t.Context(), LoadConfig{Rate: 20, Duration: time.Second, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Started+rep.Dropped != rep.Offered || rep.Offered == 0 {
		t.Errorf("offered %d, started %d, dropped %d: they do not add up", rep.Offered, rep.Started, rep.Dropped)
	}
	if rep.Completed != rep.Started || rep.Failed != 0 || rep.Resolved != 0 || rep.Unfinished != 0 {
		t.Errorf("report %+v: want every started flow completed; errors %v", rep, rep.ErrorExample)
	}
	for _, step := range Steps {
		if got := rep.Latency[step].Count; int64(got) != rep.Completed {
			t.Errorf("step %s has %d samples, want one per completed flow (%d)", step, got, rep.Completed)
		}
	}
	env.MustAudit(t)
	// Every flow's session ended (and settled: the audit found no escrow
	// left in an ended session).
	n, err := store.ReadT(t.Context(), env.Srv.Store(), func(tx *store.Tx) (int, error) {
		var open int
		err := tx.QueryRow(`SELECT COUNT(*) FROM sessions WHERE state <> ?`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED)).Scan(&open)
		return open, err
	})
	if err != nil || n != 0 {
		t.Errorf("%d sessions not ended (%v)", n, err)
	}
}

// TestRunRelay sends prompts at a low rate and checks each one sent
// arrived exactly once at its guest.
func TestRunRelay(t *testing.T) {
	env, f := fleetOn(t, 2, 4, 1<<49)
	rep, err := f.RunRelay(t.Context(), RelayConfig{Rate: 50, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent == 0 || rep.Failed != 0 || rep.Delivered != rep.Sent || rep.HostToGuest.Count != int(rep.Sent) {
		t.Errorf("report %+v; errors %v", rep, rep.ErrEx)
	}
	env.MustAudit(t)
}

// TestRunIdle holds a few idle streams open against an in-process
// server. SHARESPOT_IDLE_STREAMS makes it hold more, and
// SHARESPOT_IDLE_HEAPPROFILE=FILE writes a heap profile while they are
// open (server and clients share the process: read it by function).
// SHARESPOT_IDLE_MUX=1 multiplexes the streams over shared connections.
func TestRunIdle(t *testing.T) {
	k := 20
	if v, err := strconv.Atoi(os.Getenv("SHARESPOT_IDLE_STREAMS")); err == nil && v > 0 {
		k = v
	}
	if os.Getenv("SHARESPOT_IDLE_HEAPPROFILE") != "" {
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 64 // every stream's allocations, not a sample
	}
	env := harness.Start(t, func(c *server.Config) { c.Limits = api.Limits{} })
	phases := 0
	rep, err := RunIdle(t.Context(), IdleConfig{URL: env.URL, Streams: k, Sources: 2, Mux: os.Getenv("SHARESPOT_IDLE_MUX") == "1", Hold: 50 * time.Millisecond, Measure: func(string) (IdleMem, error) {
		phases++
		if path := os.Getenv("SHARESPOT_IDLE_HEAPPROFILE"); path != "" && phases == 2 {
			runtime.GC()
			f, err := os.Create(path)
			if err != nil {
				return IdleMem{}, err
			}
			defer f.Close()
			if err := pprof.WriteHeapProfile(f); err != nil {
				return IdleMem{}, err
			}
		}
		m, err := ReadProcMem(os.Getpid())
		return IdleMem{Proc: m}, err
	}}, IdleMem{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Opened != k || phases != 3 || rep.Held == nil || rep.HeldSeconds < 0.05 {
		t.Errorf("opened %d of %d streams, measured %d times (want 3: signed in, open, held), held %v for %.3f s", rep.Opened, k, phases, rep.Held, rep.HeldSeconds)
	}
}

// TestReadGoMem reads the figures bench idle reports from a /metrics page.
func TestReadGoMem(t *testing.T) {
	page := `# HELP go_gc_duration_seconds A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.
go_gc_duration_seconds{quantile="0"} 1.2e-05
go_gc_duration_seconds_sum 0.5
go_gc_duration_seconds_count 42
go_memstats_sys_bytes 3.145728e+07
go_memstats_heap_released_bytes 1.048576e+07
go_memstats_heap_inuse_bytes 8.388608e+06
go_memstats_stack_inuse_bytes 2.097152e+06
go_memstats_next_gc_bytes 1.2582912e+07
process_cpu_seconds_total 7.25
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, page)
	}))
	defer srv.Close()
	m, err := ReadGoMem(t.Context(), srv.Client(), srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	want := GoMem{HeldMiB: 20, HeapInuseMiB: 8, StacksMiB: 2, NextGCMiB: 12, GCs: 42, CPUSeconds: 7.25}
	if *m != want {
		t.Errorf("read %+v, want %+v", *m, want)
	}
}

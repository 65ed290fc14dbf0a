package harness

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/url"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/loadgen"
	"github.com/sharespot/sharespot/internal/netdelay"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkFlow runs complete paid flows against a real server on SQLite
// (WAL, synchronous=FULL) over HTTP/2 on loopback: discover → request →
// quote → pay → confirm → grant (HPKE-sealed code) → end and settle. Each
// worker plays a guest and calls the host's steps itself, without waiting
// for the host's inbox (relay latency is measured separately). Workers:
// SHARESPOT_BENCH_WORKERS (default 64). The server runs in the benchmark's
// process, so its CPU and the clients' are one figure; BenchmarkFlowProcess
// measures the server alone.
func BenchmarkFlow(b *testing.B) {
	env := Start(b, func(c *server.Config) { c.Limits = api.Limits{}; c.Logger = nil })
	device := func(name string) *client.Client { return env.Device(b, name) }
	fund := func(c *client.Client) { env.Fund(b, c, "EUR", 1<<50) }
	commits0 := env.Srv.Store().Stats()
	n, elapsed := runFlows(b, device, fund, nil)
	st := env.Srv.Store().Stats()
	b.ReportMetric(float64(st.Writes-commits0.Writes)/float64(max(1, st.Commits-commits0.Commits)), "writes/commit")
	b.ReportMetric(float64(st.Statements-commits0.Statements)/float64(n), "stmts/flow")
	b.ReportMetric(float64(st.Retries-commits0.Retries)/float64(n), "retries/flow")
	b.ReportMetric(100*float64(st.Busy-commits0.Busy)/float64(elapsed), "writer-busy-%")
	if err := Audit(context.Background(), env.Srv.Store()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkFlowProcess is BenchmarkFlow with the server in a process of
// its own (the real binary, rate limits off), so that the server's CPU per
// flow is read from its own accounting (/proc/PID/stat), apart from the
// clients': server-cpu-ms/flow (goal ≤ 0.5 ms). Beside it, the machine's
// yardstick measured in the same run (SQLite rows/s in transactions of
// 100, single-row commits/s) and the flows' rate against it
// (flows-per-batched-row, goal ≥ 0.018), and the server's CPU per bare
// call (loadgen.MeasureCallFloor, before the flows, over as many
// connections as workers) with the flow's CPU read in such calls
// (flow-in-bare-calls: seven calls make a short flow), measured for
// SHARESPOT_BENCH_CALL_FLOOR (default 2s; 0 skips it).
// SHARESPOT_TEST_DB=postgres runs the server on PostgreSQL (and reports
// the CPU per flow of this machine's postgres processes, db-cpu-ms/flow,
// and what its server wrote to its log per flow, db-wal-kib/flow);
// SHARESPOT_BENCH_SERVER_CPUPROFILE=FILE has the server write a CPU profile
// of itself alone (its whole run: the bare calls too, unless skipped);
// SHARESPOT_BENCH_BIN=PATH runs that binary as the server instead of this
// tree's (a before/after pair); SHARESPOT_BENCH_DIRECT=1 has the devices
// make each call by itself instead of on their channel (to compare the
// two).
func BenchmarkFlowProcess(b *testing.B) {
	ctx := context.Background()
	bin := os.Getenv("SHARESPOT_BENCH_BIN") // another build's binary, to compare
	if bin == "" {
		bin = benchBinary(b)
	}
	dir := b.TempDir()
	db := DBFor(b, dir)
	flags := []string{"--rate-device", "0", "--rate-ip", "0", "--max-inflight-ip", "0", "--max-streams-ip", "0", "--max-conns-ip", "0", "--log-level", "warn"}
	if f := os.Getenv("SHARESPOT_BENCH_SERVER_CPUPROFILE"); f != "" {
		flags = append(flags, "--cpuprofile", f) // the server alone, written when it stops
	}
	proc, err := loadgen.Spawn{Bin: bin, Dir: dir, DB: delayedDB(b, db), Env: CleanEnv(), Flags: flags}.Start(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(30 * time.Second) })
	var accounts []string
	device := func(name string) *client.Client {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		c := client.New(proc.URL(), key, client.Options{DeviceName: name, Direct: os.Getenv("SHARESPOT_BENCH_DIRECT") == "1"})
		if err := c.SignIn(ctx); err != nil {
			b.Fatalf("sign in %s: %v", name, err)
		}
		return c
	}
	fund := func(c *client.Client) { accounts = append(accounts, c.AccountID()) }
	yard, err := loadgen.MeasureYardstick(ctx, dir, 2*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	var meter *loadgen.CPUMeter
	var floor loadgen.CallFloor
	var dbCPU time.Duration
	var dbProcs int
	var wal int64 // the PostgreSQL server's log position before the flows
	n, elapsed := runFlows(b, device, fund, func() {
		if err := loadgen.DBFunder(dir, db)(ctx, accounts, "EUR", 1<<50); err != nil {
			b.Fatal(err)
		}
		if d := floorDuration(b); d > 0 {
			if floor, err = loadgen.MeasureCallFloor(ctx, proc.URL(), nil, proc.PID(), envInt("SHARESPOT_BENCH_WORKERS", 64), d); err != nil {
				b.Fatal(err)
			}
		}
		if meter, err = loadgen.StartCPU(proc.PID()); err != nil {
			b.Fatal(err)
		}
		if db != "" {
			dbCPU, dbProcs, err = loadgen.ReadCommandCPU("postgres")
			if err != nil {
				b.Fatal(err)
			}
			if wal, err = pgtest.WALBytes(ctx, db); err != nil {
				b.Fatal(err)
			}
		}
	})
	cpu, err := meter.Stop(int64(n), "flow")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(cpu.ServerPerUnitMS, "server-cpu-ms/flow")
	// A PostgreSQL on this machine (as here and in CI): its processes'
	// CPU per flow, beside the server's (0 processes: not this machine's).
	if dbProcs > 0 {
		after, _, err := loadgen.ReadCommandCPU("postgres")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric((after-dbCPU).Seconds()*1e3/float64(n), "db-cpu-ms/flow")
	}
	if db != "" {
		end, err := pgtest.WALBytes(ctx, db)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(end-wal)/1024/float64(n), "db-wal-kib/flow")
	}
	if floor.Calls > 0 {
		b.ReportMetric(floor.ServerCPUPerCallUS, "bare-call-server-cpu-us")
		b.ReportMetric(floor.Against(&cpu).RunPerUnitInCalls, "flow-in-bare-calls")
	}
	b.ReportMetric(cpu.BenchPerUnitMS, "client-cpu-ms/flow")
	if cpu.ServerDiskKBPerUnit > 0 {
		b.ReportMetric(cpu.ServerDiskKBPerUnit, "server-disk-kib/flow")
	}
	b.ReportMetric(cpu.ServerCores, "server-cores")
	b.ReportMetric(yard.BatchedRowsPerS, "yard-batched-rows/s")
	b.ReportMetric(yard.SingleCommitsPerS, "yard-commits/s")
	b.ReportMetric(float64(n)/elapsed.Seconds()/yard.BatchedRowsPerS, "flows-per-batched-row")
	target, err := server.DBTarget(dir, db)
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(ctx, target, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if os.Getenv("SHARESPOT_BENCH_BIN") != "" {
		// A binary before schema 8 settles without keeping the hosts'
		// records (this test's store migrated the database when it funded
		// the guests): rebuild them, as that binary's successor does at
		// its start, so that the audit checks the money.
		if err := st.Write(ctx, session.RebuildHostRecords); err != nil {
			b.Fatal(err)
		}
	}
	if err := Audit(ctx, st); err != nil {
		b.Fatal(err)
	}
}

// floorDuration is how long BenchmarkFlowProcess measures the bare call:
// SHARESPOT_BENCH_CALL_FLOOR, 2s by default, 0 for not at all.
func floorDuration(b *testing.B) time.Duration {
	v := os.Getenv("SHARESPOT_BENCH_CALL_FLOOR")
	if v == "" {
		return 2 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		b.Fatalf("SHARESPOT_BENCH_CALL_FLOOR=%q: want a duration such as 2s, or 0", v)
	}
	return d
}

// delayedDB returns db's URL through a netdelay proxy holding each chunk
// SHARESPOT_BENCH_DB_DELAY (a one-way duration) each way, as a database on
// another machine would; db itself when that is unset or db is SQLite.
func delayedDB(b *testing.B, db string) string {
	v := os.Getenv("SHARESPOT_BENCH_DB_DELAY")
	if v == "" {
		return db
	}
	if db == "" {
		b.Fatal("SHARESPOT_BENCH_DB_DELAY needs SHARESPOT_TEST_DB=postgres")
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		b.Fatalf("SHARESPOT_BENCH_DB_DELAY: %v", err)
	}
	u, err := url.Parse(db)
	if err != nil {
		b.Fatal(err)
	}
	p, err := netdelay.Listen(u.Host, d)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	u.Host = p.Addr()
	b.Logf("the server reaches PostgreSQL through a proxy holding each chunk %v each way", d)
	return u.String()
}

var benchBin struct {
	once sync.Once
	path string
	err  error
}

// benchBinary builds the real binary once per test process, in a
// directory removed when the process's tests end (TestMain).
func benchBinary(b *testing.B) string {
	benchBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "sharespot-bench-bin-")
		if err != nil {
			benchBin.err = err
			return
		}
		benchBinDir = dir
		benchBin.path, benchBin.err = BuildBinary(dir)
	})
	if benchBin.err != nil {
		b.Fatal(benchBin.err)
	}
	return benchBin.path
}

var benchBinDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if benchBinDir != "" {
		os.RemoveAll(benchBinDir)
	}
	os.Exit(code)
}

// runFlows registers the hosts and guests (device makes one, fund funds a
// guest), calls ready (if set) just before the timed part, then runs b.N
// flows on the workers and reports flows/s and the latencies. It returns
// the flows done and the time they took.
func runFlows(b *testing.B, device func(name string) *client.Client, fund func(*client.Client), ready func()) (int, time.Duration) {
	ctx := context.Background()
	workers := envInt("SHARESPOT_BENCH_WORKERS", 64)
	nHosts := min(workers, 16)
	type hostT struct {
		c  *client.Client
		hs *sharespotv1.Hotspot
	}
	hosts := make([]hostT, nHosts)
	for i := range hosts {
		c := device("host")
		res, err := c.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: BenchInstruction(i)}))
		if err != nil {
			b.Fatal(err)
		}
		hosts[i] = hostT{c, res.Msg.Hotspot}
	}
	gs := make([]*guest.Guest, workers)
	for i := range gs {
		c := device("guest")
		fund(c)
		gs[i] = &guest.Guest{C: c, Suites: []seal.Suite{seal.Preset}}
	}
	if ready != nil {
		ready()
	}
	lat := make([][]time.Duration, workers)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr sync.Once
	var errv error
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			h := hosts[w%nHosts]
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := PaidFlow(ctx, h.c, h.hs, gs[w]); err != nil {
					failed.Add(1)
					firstErr.Do(func() { errv = err })
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if errv != nil {
		b.Fatalf("%d flows failed; first: %v", failed.Load(), errv)
	}
	all := make([]time.Duration, 0, b.N)
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "flows/s")
	b.ReportMetric(float64(pct(all, 50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(all, 99).Microseconds())/1000, "p99-ms")
	return len(all), elapsed
}

func pct(s []time.Duration, p int) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, len(s)*p/100)]
}

//go:build !device

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	gwproxy "github.com/sharespot/sharespot/internal/gateway/proxy"
	"github.com/sharespot/sharespot/internal/loadgen"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/size"
)

// BenchCmd groups the load benchmarks.
type BenchCmd struct {
	Flow  BenchFlowCmd  `cmd:"" default:"withargs" help:"Complete paid flows with top-ups, open loop at a target rate (the default)."`
	Idle  BenchIdleCmd  `cmd:"" help:"Hold idle inbox streams open and report the server's memory per stream."`
	Relay BenchRelayCmd `cmd:"" help:"Relay latency: host-originated messages to guests at a target rate."`
	Abuse BenchAbuseCmd `cmd:"" help:"Paid flows and paying gateway guests, first alone, then while attackers hold slow connections, send malformed and compressed bodies and flood the gateway's handshake."`
}

// benchTarget is where a bench runs: a running server, a server process
// it starts itself, or (for profiles) a server inside the bench.
type benchTarget struct {
	Server           string        `default:"http://127.0.0.1:8474" env:"SHARESPOT_SERVER" help:"Server URL (ignored with --spawn)."`
	Spawn            bool          `help:"Start a server process of its own on a temporary database (rate limits off, short deadlines), and stop it after."`
	InProcess        bool          `name:"in-process" help:"Run the server inside the bench (for --cpuprofile/--memprofile: its goroutines carry the pprof label side=server)."`
	Bin              string        `help:"The sharespot binary --spawn starts (default: this one)." placeholder:"PATH"`
	Data             string        `help:"The server's data directory, to fund guest wallets on its database as 'wallet fund' does (a running server, or where --spawn keeps its database; default: a temporary directory)." placeholder:"DIR"`
	DB               string        `name:"db" help:"The server's PostgreSQL database (postgres:// URL), to fund wallets on it, or for --spawn to run on." placeholder:"URL"`
	PID              int           `name:"pid" help:"The running server's process ID, to read its memory (set by --spawn)."`
	JSON             bool          `name:"json" help:"Print the report as JSON."`
	LogLevel         string        `default:"warn" enum:"debug,info,warn,error" help:"Log level of a spawned or in-process server and of the bench."`
	TLS              bool          `name:"tls" help:"With --spawn or --in-process: serve TLS with a throwaway self-signed certificate for 127.0.0.1 (written to the data directory) that the bench's clients, and only they, trust. Without it that server speaks cleartext HTTP/2 (h2c)."`
	CAFile           string        `name:"ca-file" type:"existingfile" help:"PEM certificates to trust, beside the system's roots, for a running server's https:// --server URL (its private CA)." placeholder:"FILE"`
	ServerCPUProfile string        `name:"server-cpuprofile" help:"With --spawn: the spawned server writes a CPU profile of its whole run (the server alone) to FILE when it stops." placeholder:"FILE"`
	Yardstick        time.Duration `default:"2s" help:"Before the run, measure this machine for this long without Sharespot (SQLite rows/s in transactions of 100, single-row commits/s, in the data directory) and report it beside the figures; 0 skips it."`
	CallFloor        time.Duration `name:"call-floor" default:"2s" help:"Before the run, when the server is a process whose CPU the bench reads (--spawn, --pid): call its public PlatformKeys in closed loops for this long and report the server's CPU per bare call, and each figure's server CPU in bare calls; 0 skips it."`
	Direct           bool          `name:"direct" help:"The bench's devices make each unary call by itself instead of on their channel (ChannelService, protocol 7; the default): to compare the two."`
	Deployment       bool          `name:"deployment" help:"The server is a real deployment (required for a server the bench did not start): the bench's hosts and guests trade in the test currency XTS (ISO 4217's code for tests), so no real account's money moves, and after the run their hotspots are withdrawn and their wallets emptied."`

	// limits: a spawned server keeps its default rate limits (the abuse
	// bench); otherwise they are turned off.
	limits bool
}

// running is a server the bench uses.
type running struct {
	url  string
	pid  int
	data string
	db   string
	gc   *loadgen.GCTrace
	stop func() error
	// tls is what the bench's clients trust of an https:// server (nil:
	// the system's roots); transport names what they speak to it ("h2c",
	// "TLS 1.3"), for the report.
	tls       *tls.Config
	transport string
	// currency is what the bench's tariffs and wallets are in: XTS on a
	// deployment. cleanUp: withdraw the hotspots and empty the wallets
	// after the run.
	currency string
	cleanUp  bool
}

// benchCurrency is the bench tenant's currency on a deployment: XTS, the
// ISO 4217 code reserved for tests, so no real account's balance moves.
const benchCurrency = "XTS"

// finish cleans up after a run on a deployment: the fleet's hotspots are
// withdrawn and its wallets emptied back to the funding account, and it
// says so on w. Fees the platform took in XTS stay in its XTS fee account.
func (r *running) finish(ctx context.Context, w io.Writer, fleet *loadgen.Fleet) error {
	if !r.cleanUp {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	n, werr := fleet.Withdraw(ctx)
	sum, derr := loadgen.DBDefunder(r.data, r.db)(ctx, fleet.Accounts(), r.currency, "bench:"+protocol.NewID("run"))
	fmt.Fprintf(w, "bench: cleaned up: %d hotspots withdrawn, %s emptied from %d wallets of the bench tenant\n", n, client.FormatMoney(sum, r.currency), len(fleet.Accounts()))
	return errors.Join(werr, derr)
}

// start finds or starts the server and finds out the transport its
// clients get. env adds to a spawned server's environment; gc, if set, is
// fed the spawned server's stderr.
func (t *benchTarget) start(ctx context.Context, env *runEnv, extraEnv []string, gc *loadgen.GCTrace) (*running, error) {
	if t.Spawn && t.InProcess {
		return nil, errors.New("--spawn and --in-process exclude each other")
	}
	own := t.Spawn || t.InProcess
	if t.TLS && !own {
		return nil, errors.New("--tls makes a throwaway certificate for a server the bench starts (--spawn or --in-process); to measure a running server over TLS, give its https:// URL as --server (and --ca-file FILE if a private CA signed its certificate)")
	}
	if t.CAFile != "" && own {
		return nil, errors.New("--ca-file is for a running server's https:// --server URL; a server the bench starts serves TLS with --tls, with a certificate the bench trusts by itself")
	}
	if t.ServerCPUProfile != "" && !t.Spawn {
		return nil, errors.New("--server-cpuprofile profiles a server the bench spawns: add --spawn (or profile the whole bench with --in-process --cpuprofile)")
	}
	r, err := t.launch(ctx, env, extraEnv, gc)
	if err != nil {
		return nil, err
	}
	if r.transport, err = loadgen.ProbeTransport(ctx, r.url, r.tls); err != nil {
		r.stop()
		return nil, err
	}
	calls := "their unary calls on one channel each"
	if t.Direct {
		calls = "each unary call by itself (--direct)"
	}
	fmt.Fprintf(env.stderr, "bench: the clients speak %s to %s, %s\n", r.transport, r.url, calls)
	return r, nil
}

// launch finds or starts the server.
func (t *benchTarget) launch(ctx context.Context, env *runEnv, extraEnv []string, gc *loadgen.GCTrace) (*running, error) {
	r := &running{url: t.Server, pid: t.PID, data: t.Data, db: t.DB, gc: gc, stop: func() error { return nil }, currency: "EUR"}
	if t.Deployment && (t.Spawn || t.InProcess) {
		return nil, errors.New("--deployment is for a running server; a server the bench starts is its own")
	}
	if !t.Spawn && !t.InProcess {
		if !t.Deployment {
			return nil, fmt.Errorf("%s is not a server the bench started: a bench signs in devices, registers hotspots and moves money there. Add --deployment to run it as the bench tenant (test currency XTS, hotspots withdrawn and wallets emptied after), or use --spawn", t.Server)
		}
		r.currency, r.cleanUp = benchCurrency, true
		if t.Data == "" && t.DB == "" {
			return nil, errors.New("the bench funds its guests' wallets on the server's database: give --data DIR (or --db URL) of the running server, or use --spawn")
		}
		if t.CAFile != "" {
			roots, err := client.LoadCAFile(t.CAFile)
			if err != nil {
				return nil, fmt.Errorf("--ca-file: %w", err)
			}
			r.tls = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
		}
		return r, nil
	}
	var cleanup []func()
	if r.data == "" {
		dir, err := os.MkdirTemp("", "sharespot-bench-")
		if err != nil {
			return nil, err
		}
		r.data = dir
		cleanup = append(cleanup, func() { os.RemoveAll(dir) })
	}
	done := func() {
		for _, f := range cleanup {
			f()
		}
	}
	var certFile, keyFile string
	if t.TLS {
		var err error
		if certFile, keyFile, r.tls, err = loadgen.SelfSignedTLS(r.data); err != nil {
			done()
			return nil, err
		}
		cleanup = append(cleanup, func() { os.Remove(certFile); os.Remove(keyFile) })
	}
	if t.InProcess {
		return r, t.startInProcess(ctx, r, certFile, keyFile, done)
	}
	bin := t.Bin
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			done()
			return nil, fmt.Errorf("find this binary for --spawn: %w (give --bin)", err)
		}
		bin = exe
	}
	var log io.Writer = env.stderr
	if gc != nil {
		log = gc // the server's other output stays in the process's log
	}
	sp := loadgen.Spawn{Bin: bin, Dir: r.data, DB: t.DB, Env: append(os.Environ(), extraEnv...), Log: log, TLSCert: certFile, TLSKey: keyFile,
		Flags: []string{"--rate-device", "0", "--rate-ip", "0", "--max-inflight-ip", "0", "--max-streams-ip", "0", "--max-conns-ip", "0",
			"--log-level", t.LogLevel}}
	if t.limits {
		sp.Flags = []string{"--log-level", t.LogLevel} // the server's own defaults: what is being measured
	}
	if t.ServerCPUProfile != "" {
		sp.Flags = append(sp.Flags, "--cpuprofile", t.ServerCPUProfile)
	}
	proc, err := sp.Start(ctx)
	if err != nil {
		done()
		return nil, err
	}
	r.url, r.pid = proc.URL(), proc.PID()
	r.stop = func() error {
		defer done()
		return proc.Stop(30 * time.Second)
	}
	fmt.Fprintf(env.stderr, "bench: started sharespot server (pid %d) on %s, data in %s\n", r.pid, r.url, r.data)
	return r, nil
}

func (t *benchTarget) startInProcess(ctx context.Context, r *running, certFile, keyFile string, done func()) error {
	sc := session.DefaultConfig()
	var srv *server.Server
	var err error
	labels := pprof.Labels("side", "server")
	pprof.Do(ctx, labels, func(ctx context.Context) {
		srv, err = server.Open(ctx, server.Config{DataDir: r.data, DB: t.DB, Session: sc, Limits: api.Limits{},
			TLSCert: certFile, TLSKey: keyFile, Logger: newLogger(os.Stderr, t.LogLevel, false)})
	})
	if err != nil {
		done()
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		done()
		return err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go pprof.Do(sctx, labels, func(ctx context.Context) { served <- srv.Serve(ctx, ln) })
	scheme := "http://"
	if certFile != "" {
		scheme = "https://"
	}
	r.url, r.pid = scheme+ln.Addr().String(), os.Getpid()
	r.stop = func() error {
		defer done()
		cancel()
		err := <-served
		return errors.Join(err, srv.Close())
	}
	return nil
}

// BenchFlowCmd is `sharespot bench`: complete paid flows, open loop.
type BenchFlowCmd struct {
	benchTarget
	Hosts       int           `default:"16" help:"Simulated hosts (one hotspot each; each answers its inbox with the real host agent)."`
	Guests      int           `default:"200" help:"Simulated guests (one flow at a time each)."`
	Rate        float64       `default:"50" help:"Target flows started per second (open loop)."`
	Duration    time.Duration `default:"20s" help:"How long flows are offered."`
	MaxInFlight int           `name:"max-inflight" help:"Most flows under way at once; a flow due beyond it is dropped (default: --guests)."`
	Buy         string        `default:"10MB" help:"Initial purchase per flow."`
	TopUp       string        `name:"topup" default:"5MB" help:"Top-up per flow."`
	StepTimeout time.Duration `default:"30s" help:"Longest wait for a message in a guest's inbox."`
	Drain       time.Duration `default:"60s" help:"Longest wait for flows under way after --duration."`
	Seed        uint64        `default:"1" help:"Seed for the choice of hosts."`
	CPUProfile  string        `name:"cpuprofile" help:"With --in-process: write a CPU profile of the run (filter the server with -tagfocus side=server)." placeholder:"FILE"`
	MemProfile  string        `name:"memprofile" help:"With --in-process: write a heap profile at the end of the run." placeholder:"FILE"`
}

// Run runs the flows.
func (c *BenchFlowCmd) Run(env *runEnv) error {
	if (c.CPUProfile != "" || c.MemProfile != "") && !c.InProcess {
		return errors.New("--cpuprofile and --memprofile profile a server inside the bench: add --in-process")
	}
	if c.Rate <= 0 || c.Duration <= 0 || c.Hosts <= 0 || c.Guests <= 0 {
		return errors.New("--rate, --duration, --hosts and --guests must be positive")
	}
	fc := loadgen.FlowConfig{StepTimeout: c.StepTimeout}
	var err error
	if fc.RequestBytes, err = size.Parse(c.Buy); err != nil {
		return fmt.Errorf("--buy: %w", err)
	}
	if fc.TopUpBytes, err = size.Parse(c.TopUp); err != nil {
		return fmt.Errorf("--topup: %w", err)
	}
	ctx := env.ctx
	r, err := c.start(ctx, env, nil, nil)
	if err != nil {
		return err
	}
	defer r.stop()
	log := newLogger(env.stderr, c.LogLevel, false)
	t0 := time.Now()
	fleet, err := loadgen.NewFleet(ctx, loadgen.FleetConfig{URL: r.url, Hosts: c.Hosts, Guests: c.Guests, Fund: loadgen.DBFunder(r.data, r.db),
		FundMinor: 1 << 40, WarnAtBytes: fc.RequestBytes / 2, TLS: r.tls, Log: log, Currency: r.currency, Direct: c.Direct})
	if err != nil {
		return fmt.Errorf("set up hosts and guests: %w", err)
	}
	defer fleet.Close()
	fmt.Fprintf(env.stderr, "bench: %d hosts and %d guests signed in, funded and listening in %v\n", c.Hosts, c.Guests, time.Since(t0).Round(time.Millisecond))
	yard, err := c.yardstick(ctx, env, r)
	if err != nil {
		return err
	}
	floor := c.callFloor(ctx, env, r)
	stopProfile := func() {}
	if c.CPUProfile != "" {
		if stopProfile, err = startCPUProfile(c.CPUProfile); err != nil {
			return err
		}
	}
	rep, err := fleet.RunLoad(ctx, loadgen.LoadConfig{Rate: c.Rate, Duration: c.Duration, MaxInFlight: c.MaxInFlight, Drain: c.Drain, Flow: fc, Seed: c.Seed, ServerPID: r.pid})
	stopProfile()
	if rep == nil {
		return err
	}
	if err != nil {
		fmt.Fprintln(env.stderr, "bench:", err)
	}
	rep.Transport, rep.Yardstick, rep.CallFloor = r.transport, yard, floor.Against(rep.CPU)
	if err := r.finish(ctx, env.stderr, fleet); err != nil {
		fmt.Fprintln(env.stderr, "bench: cleaning up:", err)
	}
	if c.MemProfile != "" {
		if err := writeHeapProfile(c.MemProfile); err != nil {
			return err
		}
	}
	if c.JSON {
		return loadgen.WriteJSON(env.stdout, rep)
	}
	rep.WriteTable(env.stdout)
	return nil
}

// startCPUProfile profiles this process's CPU into path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

// yardstick measures the machine beside the run (nil when skipped), in
// the server's data directory when the bench knows it.
func (t *benchTarget) yardstick(ctx context.Context, env *runEnv, r *running) (*loadgen.Yardstick, error) {
	if t.Yardstick <= 0 {
		return nil, nil
	}
	dir := r.data
	if dir == "" || r.cleanUp {
		dir = os.TempDir() // a deployment's data directory is not the bench's to write in
	}
	y, err := loadgen.MeasureYardstick(ctx, dir, t.Yardstick)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(env.stderr, "bench: ")
	y.WriteTable(env.stderr)
	return &y, nil
}

// callFloorConns is how many connections measure the bare call: as many
// as BenchmarkFlowProcess's workers, each a device of its own.
const callFloorConns = 64

// callFloor measures what a bare call costs the server (nil when skipped,
// or when the server's CPU is not the bench's to read apart: a running
// server without --pid, or one inside the bench). A failure is reported
// and leaves the run without it: a deployment may limit the calls.
func (t *benchTarget) callFloor(ctx context.Context, env *runEnv, r *running) *loadgen.CallFloor {
	if t.CallFloor <= 0 || r.pid <= 0 || r.pid == os.Getpid() {
		return nil
	}
	f, err := loadgen.MeasureCallFloor(ctx, r.url, r.tls, r.pid, callFloorConns, t.CallFloor)
	if err != nil {
		fmt.Fprintf(env.stderr, "bench: no bare-call yardstick: %v\n", err)
		return nil
	}
	fmt.Fprintf(env.stderr, "bench: ")
	f.WriteTable(env.stderr)
	return &f
}

// BenchRelayCmd is `sharespot bench relay`.
type BenchRelayCmd struct {
	benchTarget
	Rate     float64       `default:"5000" help:"Target messages per second."`
	Duration time.Duration `default:"10s" help:"How long messages are offered."`
	Sessions int           `default:"200" help:"Active sessions (guests) carrying the messages; each carries one at a time."`
	Hosts    int           `default:"20" help:"Hosts sending them."`
}

// Run measures the relay.
func (c *BenchRelayCmd) Run(env *runEnv) error {
	if c.Rate <= 0 || c.Duration <= 0 || c.Sessions <= 0 || c.Hosts <= 0 {
		return errors.New("--rate, --duration, --sessions and --hosts must be positive")
	}
	ctx := env.ctx
	r, err := c.start(ctx, env, nil, nil)
	if err != nil {
		return err
	}
	defer r.stop()
	fleet, err := loadgen.NewFleet(ctx, loadgen.FleetConfig{URL: r.url, Hosts: c.Hosts, Guests: c.Sessions, Fund: loadgen.DBFunder(r.data, r.db),
		FundMinor: 1 << 40, WarnAtBytes: 1 << 49, TLS: r.tls, Log: newLogger(env.stderr, c.LogLevel, false), Currency: r.currency, Direct: c.Direct})
	if err != nil {
		return fmt.Errorf("set up hosts and guests: %w", err)
	}
	defer fleet.Close()
	yard, err := c.yardstick(ctx, env, r)
	if err != nil {
		return err
	}
	floor := c.callFloor(ctx, env, r)
	rep, err := fleet.RunRelay(ctx, loadgen.RelayConfig{Rate: c.Rate, Duration: c.Duration, Sessions: c.Sessions, ServerPID: r.pid})
	if ferr := r.finish(ctx, env.stderr, fleet); ferr != nil {
		fmt.Fprintln(env.stderr, "bench: cleaning up:", ferr)
	}
	if rep == nil {
		return err
	}
	rep.Transport, rep.Yardstick, rep.CallFloor = r.transport, yard, floor.Against(rep.CPU)
	if err != nil {
		fmt.Fprintln(env.stderr, "bench:", err)
	}
	if c.JSON {
		return loadgen.WriteJSON(env.stdout, rep)
	}
	rep.WriteTable(env.stdout)
	return nil
}

// BenchIdleCmd is `sharespot bench idle`.
type BenchIdleCmd struct {
	benchTarget
	Streams  int           `default:"1000" help:"Inbox streams to hold open (one signed-in device each)."`
	Sources  int           `help:"Loopback source addresses to connect from (127.0.0.1, .2, …; default: one per 20,000 streams)."`
	Mux      bool          `help:"Multiplex every device's stream over one shared HTTP/2 client instead of one TCP connection per device."`
	Channels bool          `help:"Hold each device's channel (the stream its unary calls ride, ChannelService.Carry) open instead of its inbox stream: what a device in a session holds beside it."`
	Wait     time.Duration `default:"150s" help:"With --spawn: longest wait for the server's next garbage collection (it runs one at least every 2 minutes) to read its live heap."`
	Hold     time.Duration `default:"30s" help:"After measuring, hold the streams open this much longer and report what that cost the server: collections and CPU (0: no hold)."`
}

// Run holds the streams.
func (c *BenchIdleCmd) Run(env *runEnv) error {
	if c.Streams <= 0 {
		return errors.New("--streams must be positive")
	}
	if c.InProcess {
		return errors.New("bench idle measures a server process of its own: use --spawn, or --server with --pid")
	}
	if c.Sources <= 0 {
		c.Sources = 1 + c.Streams/20000
	}
	limit := raiseFileLimit(uint64(2*c.Streams + 4096))
	fmt.Fprintf(env.stderr, "bench: open files limit %d\n", limit)
	ctx := env.ctx
	var gc *loadgen.GCTrace
	if c.Spawn {
		gc = loadgen.NewGCTrace()
	}
	r, err := c.start(ctx, env, []string{"GODEBUG=gctrace=1"}, gc)
	if err != nil {
		return err
	}
	defer r.stop()
	metricsClient := loadgen.HTTPClientTLS(nil, r.tls)
	defer metricsClient.CloseIdleConnections()
	measure := func(phase string) (loadgen.IdleMem, error) {
		var m loadgen.IdleMem
		if r.pid == 0 {
			return m, nil
		}
		var err error
		if m.Proc, err = loadgen.ReadProcMem(r.pid); err != nil {
			return m, err
		}
		if r.gc != nil {
			_, n := r.gc.Last()
			fmt.Fprintf(env.stderr, "bench: %s; waiting up to %v for the server's next garbage collection\n", phase, c.Wait)
			if st, ok := r.gc.Next(ctx, n, c.Wait); ok {
				m.GC = &st
				m.Proc, err = loadgen.ReadProcMem(r.pid)
			}
		}
		if err == nil {
			var gerr error
			if m.Go, gerr = loadgen.ReadGoMem(ctx, metricsClient, r.url); gerr != nil {
				fmt.Fprintln(env.stderr, "bench:", gerr)
			}
		}
		return m, err
	}
	empty, err := measure("no devices")
	if err != nil {
		return err
	}
	rep, err := loadgen.RunIdle(ctx, loadgen.IdleConfig{URL: r.url, Streams: c.Streams, Sources: c.Sources, Mux: c.Mux, TLS: r.tls, Measure: measure, Hold: c.Hold, Channels: c.Channels}, empty)
	if rep == nil || rep.Opened == 0 {
		return err
	}
	rep.Transport = r.transport
	if err != nil {
		fmt.Fprintln(env.stderr, "bench:", err)
	}
	if c.JSON {
		return loadgen.WriteJSON(env.stdout, rep)
	}
	rep.WriteTable(env.stdout)
	return nil
}

// BenchAbuseCmd is `sharespot bench abuse`.
type BenchAbuseCmd struct {
	benchTarget
	Hosts        int           `default:"32" help:"Simulated hosts (honest; the server's per-device rate limit applies to each)."`
	Guests       int           `default:"100" help:"Simulated guests (honest)."`
	Rate         float64       `default:"20" help:"Target paid flows started per second (open loop)."`
	Duration     time.Duration `default:"20s" help:"How long each phase (alone, then attacked) lasts."`
	SlowConns    int           `name:"slow-conns" default:"10000" help:"Connections held open with a request's headers and one byte of its body."`
	Malformed    float64       `default:"1000" help:"Malformed requests per second."`
	Compressed   float64       `default:"20" help:"Compressed requests per second (64 KiB of gzip inflating to 64 MiB)."`
	Handshakes   float64       `default:"200" help:"New silent connections per second to the gateway."`
	PayingGuests int           `name:"paying-guests" default:"8" help:"Paying guests at the gateway, each holding a download open and opening a short one every 0.5 s."`
	Sources      int           `default:"8" help:"Attacker addresses (127.0.0.2 on)."`
	StepTimeout  time.Duration `default:"30s" help:"Longest wait for a message in a guest's inbox."`
}

// abuseReport is both phases side by side.
type abuseReport struct {
	Transport    string                       `json:"transport"`
	Alone        *loadgen.LoadReport          `json:"alone"`
	Attacked     *loadgen.LoadReport          `json:"attacked"`
	Kept         float64                      `json:"flows_kept_ratio"`
	Attack       *loadgen.AbuseReport         `json:"attack"`
	GatewayAlone *loadgen.GatewayGuestsReport `json:"gateway_alone"`
	GatewayUnder *loadgen.GatewayGuestsReport `json:"gateway_attacked"`
}

// Run runs both phases.
func (c *BenchAbuseCmd) Run(env *runEnv) error {
	if c.Rate <= 0 || c.Duration <= 0 || c.Hosts <= 0 || c.Guests <= 0 || c.SlowConns < 0 || c.PayingGuests < 0 {
		return errors.New("--rate, --duration, --hosts and --guests must be positive")
	}
	if c.Deployment {
		return errors.New("bench abuse attacks the server it measures: it runs only on a server it starts (--spawn), never on a deployment")
	}
	if c.TLS {
		return errors.New("bench abuse attacks the server in cleartext (its slow connections are raw HTTP/1.1): run it without --tls")
	}
	limit := raiseFileLimit(uint64(2*c.SlowConns + 8192))
	fmt.Fprintf(env.stderr, "bench: open files limit %d\n", limit)
	ctx := env.ctx
	c.limits = true
	r, err := c.start(ctx, env, nil, nil)
	if err != nil {
		return err
	}
	defer r.stop()
	log := newLogger(env.stderr, c.LogLevel, false)
	fc := loadgen.FlowConfig{StepTimeout: c.StepTimeout, RequestBytes: 10 << 20, TopUpBytes: 5 << 20}
	fleet, err := loadgen.NewFleet(ctx, loadgen.FleetConfig{URL: r.url, Hosts: c.Hosts, Guests: c.Guests, Fund: loadgen.DBFunder(r.data, r.db),
		FundMinor: 1 << 40, WarnAtBytes: fc.RequestBytes / 2, Log: log, OwnAddresses: true})
	if err != nil {
		return fmt.Errorf("set up hosts and guests: %w", err)
	}
	defer fleet.Close()
	gw, guests, origin, stopGW, err := abuseGateway(ctx, c.PayingGuests)
	if err != nil {
		return err
	}
	defer stopGW()
	load := loadgen.LoadConfig{Rate: c.Rate, Duration: c.Duration, Drain: 30 * time.Second, Flow: fc, Seed: 1, ServerPID: r.pid}
	out := &abuseReport{Transport: r.transport}
	phase := func(name string, attack bool) {
		fmt.Fprintf(env.stderr, "bench: %s for %v\n", name, c.Duration)
		var wg sync.WaitGroup
		wg.Add(1)
		var gwRep *loadgen.GatewayGuestsReport
		go func() { defer wg.Done(); gwRep = loadgen.RunGatewayGuests(ctx, gw, guests, origin, c.Duration) }()
		if attack {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out.Attack = loadgen.RunAbuse(ctx, loadgen.AbuseConfig{URL: r.url, SlowConns: c.SlowConns, Malformed: c.Malformed,
					Compressed: c.Compressed, Gateway: gw, HandshakeRate: c.Handshakes, Sources: c.Sources, Duration: c.Duration})
			}()
		}
		rep, err := fleet.RunLoad(ctx, load)
		if err != nil {
			fmt.Fprintln(env.stderr, "bench:", err)
		}
		wg.Wait()
		if attack {
			out.Attacked, out.GatewayUnder = rep, gwRep
		} else {
			out.Alone, out.GatewayAlone = rep, gwRep
		}
	}
	phase("paid flows alone", false)
	phase("paid flows under attack", true)
	if out.Alone.AcceptedRate > 0 {
		out.Kept = out.Attacked.AcceptedRate / out.Alone.AcceptedRate
	}
	if c.JSON {
		return loadgen.WriteJSON(env.stdout, out)
	}
	w := env.stdout
	fmt.Fprintf(w, "paid flows over %s: %.1f/s alone, %.1f/s under attack (%.0f %% kept); p99 flow %.0f ms alone, %.0f ms attacked\n",
		out.Transport, out.Alone.AcceptedRate, out.Attacked.AcceptedRate, 100*out.Kept, out.Alone.Latency["flow"].P99, out.Attacked.Latency["flow"].P99)
	a := out.Attack
	fmt.Fprintf(w, "attack: %d slow connections opened (%d refused, %d closed by the server, %d still open at the end); %d malformed, %d compressed requests; answers %v; %d gateway handshakes (%d refused)\n",
		a.SlowOpened, a.SlowRefused, a.SlowClosed, a.SlowOpenAtEnd, a.Malformed, a.Compressed, a.Answers, a.Handshakes, a.HandshakeErrs)
	for _, g := range []struct {
		name string
		r    *loadgen.GatewayGuestsReport
	}{{"alone", out.GatewayAlone}, {"attacked", out.GatewayUnder}} {
		fmt.Fprintf(w, "gateway guests %s: %d of %d long downloads kept, short downloads %d ok / %d failed, %s moved\n",
			g.name, g.r.LongKept, g.r.Guests, g.r.ShortOK, g.r.ShortFail, size.Format(g.r.Bytes))
	}
	return nil
}

// abuseGateway starts a userspace gateway on loopback with n admitted
// paying guests and an origin they fetch from.
func abuseGateway(ctx context.Context, n int) (addr string, guests []loadgen.GatewayGuest, origin string, stop func(), err error) {
	oln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, "", nil, err
	}
	osrv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/n/"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want /n/N", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		zero := make([]byte, 32<<10)
		for n > 0 {
			k, err := w.Write(zero[:min(n, int64(len(zero)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	})}
	go osrv.Serve(oln)
	oaddr := netip.MustParseAddrPort(oln.Addr().String())
	gw, err := gwproxy.New(gwproxy.Config{Addr: "127.0.0.1:0", AllowDestination: func(ap netip.AddrPort) bool { return ap == oaddr }})
	if err != nil {
		osrv.Close()
		return "", nil, "", nil, err
	}
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- gw.Run(gctx) }()
	for i := range n {
		code, err := seal.NewAccessCode()
		if err != nil {
			cancel()
			osrv.Close()
			return "", nil, "", nil, err
		}
		sid := fmt.Sprintf("ses_abuse%d", i)
		if err := gw.Admit(ctx, gateway.Grant{SessionID: sid, Credential: code, Quota: 1 << 50}); err != nil {
			cancel()
			osrv.Close()
			return "", nil, "", nil, err
		}
		guests = append(guests, loadgen.GatewayGuest{Session: sid, Code: seal.FormatCode(code)})
	}
	return gw.Addr(), guests, "http://" + oln.Addr().String(), func() { cancel(); <-done; osrv.Close() }, nil
}

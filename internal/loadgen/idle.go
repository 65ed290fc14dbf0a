package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/client"
)

// ProcMem is a process's memory as /proc/PID/status tells it.
type ProcMem struct {
	RSSKiB  int64 `json:"rss_kib"`
	AnonKiB int64 `json:"anon_kib"`
	Threads int64 `json:"threads"`
}

// ReadProcMem reads /proc/PID/status.
func ReadProcMem(pid int) (ProcMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcMem{}, fmt.Errorf("loadgen: read memory of process %d: %w", pid, err)
	}
	defer f.Close()
	var m ProcMem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			m.RSSKiB = n
		case "RssAnon":
			m.AnonKiB = n
		case "Threads":
			m.Threads = n
		}
	}
	return m, sc.Err()
}

// GCTrace follows a Go process's GODEBUG=gctrace=1 output and keeps the
// last collection's figures: the live heap it marked and the goroutine
// stacks it scanned.
type GCTrace struct {
	mu    sync.Mutex
	buf   []byte // a line not yet ended
	n     int
	last  GCStat
	lines chan struct{}
}

// GCStat is one collection.
type GCStat struct {
	Seq       int     `json:"gc"`
	LiveMB    float64 `json:"live_heap_mb"`
	StacksMB  float64 `json:"stacks_mb"`
	GoalMB    float64 `json:"goal_mb"`
	ForcedRun bool    `json:"forced"`
}

// gc 12 @3.1s 2%: 0.1+1.2+0.02 ms clock, ... ms cpu, 4->5->3 MB, 6 MB goal, 1 MB stacks, 0 MB globals, 2 P (forced)
var gcLine = regexp.MustCompile(`^gc (\d+) @.*?(\d+)->(\d+)->(\d+) MB, (\d+) MB goal, (\d+) MB stacks`)

// NewGCTrace returns an empty trace; feed it the process's stderr.
func NewGCTrace() *GCTrace { return &GCTrace{lines: make(chan struct{}, 1)} }

// Write implements io.Writer over the process's stderr (the runtime
// writes a trace line in several pieces).
func (g *GCTrace) Write(b []byte) (int, error) {
	g.mu.Lock()
	g.buf = append(g.buf, b...)
	var lines []string
	for {
		i := bytes.IndexByte(g.buf, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, string(g.buf[:i]))
		g.buf = g.buf[i+1:]
	}
	if len(g.buf) > 1<<16 {
		g.buf = g.buf[:0]
	}
	g.mu.Unlock()
	for _, line := range lines {
		m := gcLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seq, _ := strconv.Atoi(m[1])
		live, _ := strconv.ParseFloat(m[4], 64)
		goal, _ := strconv.ParseFloat(m[5], 64)
		stacks, _ := strconv.ParseFloat(m[6], 64)
		g.mu.Lock()
		g.n++
		g.last = GCStat{Seq: seq, LiveMB: live, StacksMB: stacks, GoalMB: goal, ForcedRun: strings.Contains(line, "(forced)")}
		g.mu.Unlock()
		select {
		case g.lines <- struct{}{}:
		default:
		}
	}
	return len(b), nil
}

// Last returns the last collection seen and how many were seen.
func (g *GCTrace) Last() (GCStat, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last, g.n
}

// Next waits up to d (or until ctx ends) for a collection after the n-th.
func (g *GCTrace) Next(ctx context.Context, n int, d time.Duration) (GCStat, bool) {
	deadline := time.Now().Add(d)
	for {
		if last, seen := g.Last(); seen > n {
			return last, true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return GCStat{}, false
		}
		select {
		case <-g.lines:
		case <-time.After(left):
		case <-ctx.Done():
			return GCStat{}, false
		}
	}
}

// IdleConfig is an idle-streams run.
type IdleConfig struct {
	URL     string
	Streams int
	// Sources is how many loopback source addresses (127.0.0.1, .2, …)
	// the connections come from: each gives ~28,000 ephemeral ports.
	Sources int
	// Mux puts every device on one shared HTTP/2 client (streams
	// multiplexed, a new connection per 250 streams) instead of one TCP
	// connection per device.
	Mux bool
	// Measure is called after sign-in (connections closed) and again with
	// every stream open; it returns the server's memory.
	Measure func(phase string) (IdleMem, error)
	// Width is how many devices connect at once (default 64).
	Width int
	// TLS, if set, is what the devices trust of an https:// server.
	TLS *tls.Config
	// Hold, if positive, keeps every stream open that much longer after
	// the measurement and measures again: what the server spends
	// (collections, CPU) to hold idle streams, under a memory limit too.
	Hold time.Duration
	// Channels holds each device's channel (ChannelService.Carry, the
	// stream its unary calls ride) open instead of its inbox stream: what
	// a device in a session holds beside its inbox stream.
	Channels bool
}

// IdleMem is the server's memory at one point.
type IdleMem struct {
	Proc ProcMem `json:"proc"`
	GC   *GCStat `json:"gc,omitempty"`
	Go   *GoMem  `json:"go,omitempty"`
}

// GoMem is what the server's Go runtime says of its memory (its /metrics).
type GoMem struct {
	// HeldMiB is what the runtime has from the system and has not
	// returned (go_memstats_sys_bytes − go_memstats_heap_released_bytes):
	// the Go part of the RSS, at most. The rest of the RSS is the
	// binary's pages and memory outside Go's heap (SQLite's page caches).
	HeldMiB      float64 `json:"held_mib"`
	HeapInuseMiB float64 `json:"heap_inuse_mib"`
	// StacksMiB is the goroutines' stacks as allocated (the GC trace's
	// "stacks" is the part in use).
	StacksMiB float64 `json:"stacks_mib"`
	NextGCMiB float64 `json:"next_gc_mib"`
	// GCs is how many collections the runtime has run, CPUSeconds the
	// process's CPU time (user and system), both since it started.
	GCs        float64 `json:"gcs"`
	CPUSeconds float64 `json:"cpu_s"`
}

// ReadGoMem reads the Go runtime's memory from the server's /metrics.
func ReadGoMem(ctx context.Context, hc *http.Client, baseURL string) (*GoMem, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("loadgen: read the server's metrics: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("loadgen: read the server's metrics: %s", res.Status)
	}
	v := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "go_memstats_") && name != "go_gc_duration_seconds_count" && name != "process_cpu_seconds_total" {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			v[name] = f
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("loadgen: read the server's metrics: %w", err)
	}
	if _, ok := v["go_memstats_sys_bytes"]; !ok {
		return nil, errors.New("loadgen: the server's metrics have no go_memstats_sys_bytes")
	}
	const mib = 1 << 20
	return &GoMem{HeldMiB: (v["go_memstats_sys_bytes"] - v["go_memstats_heap_released_bytes"]) / mib,
		HeapInuseMiB: v["go_memstats_heap_inuse_bytes"] / mib, StacksMiB: v["go_memstats_stack_inuse_bytes"] / mib,
		NextGCMiB: v["go_memstats_next_gc_bytes"] / mib, GCs: v["go_gc_duration_seconds_count"], CPUSeconds: v["process_cpu_seconds_total"]}, nil
}

// IdleReport is what an idle-streams run measured.
type IdleReport struct {
	Streams int `json:"streams"`
	// Kind is what each device held open: "inbox streams" or "channels".
	Kind string `json:"kind"`
	// Transport is what the devices spoke ("h2c", "TLS 1.3"), as the
	// caller found out (ProbeTransport).
	Transport      string  `json:"transport,omitempty"`
	Connections    string  `json:"connections"`
	Sources        int     `json:"sources"`
	Opened         int     `json:"opened"`
	ConnectSeconds float64 `json:"connect_s"`
	Empty          IdleMem `json:"server_before_devices"`
	SignedIn       IdleMem `json:"server_after_signin"`
	Open           IdleMem `json:"server_with_streams"`
	// Held is the server after the streams were held open IdleConfig.Hold
	// (HeldSeconds) more; nil without Hold.
	Held        *IdleMem `json:"server_held,omitempty"`
	HeldSeconds float64  `json:"held_s,omitempty"`
	// Per stream: from signed in (connections closed) to every stream
	// open; per device: from no devices at all.
	RSSPerStreamKiB  float64 `json:"rss_per_stream_kib"`
	HeapPerStreamKiB float64 `json:"heap_per_stream_kib,omitempty"`
	StackPerStreamKB float64 `json:"stacks_per_stream_kib,omitempty"`
	RSSPerDeviceKiB  float64 `json:"rss_per_device_kib"`
	// GoHeldPerStreamKiB is the Go runtime's part of RSSPerStreamKiB
	// (GoMem.HeldMiB); the rest is outside Go's heap.
	GoHeldPerStreamKiB float64 `json:"go_held_per_stream_kib,omitempty"`
	StreamsPerGiB      float64 `json:"streams_per_gib"`
	Limit              string  `json:"limited_by,omitempty"`
}

// RunIdle signs in cfg.Streams devices, closes their connections, then
// opens one inbox stream per device and holds them all open while the
// server's memory is measured. empty is the server's memory before any
// device. It returns with every stream closed.
func RunIdle(ctx context.Context, cfg IdleConfig, empty IdleMem) (*IdleReport, error) {
	if cfg.Sources <= 0 {
		cfg.Sources = 1
	}
	if cfg.Width <= 0 {
		cfg.Width = 64
	}
	rep := &IdleReport{Streams: cfg.Streams, Kind: "inbox streams", Sources: cfg.Sources, Empty: empty, Connections: "one TCP connection per device"}
	if cfg.Channels {
		rep.Kind = "channels"
	}
	var shared *http.Client
	if cfg.Mux {
		shared = HTTPClientTLS(nil, cfg.TLS)
		rep.Connections = "one shared HTTP/2 client (streams multiplexed)"
		rep.Sources, cfg.Sources = 1, 1
	}
	hcs := make([]*http.Client, cfg.Streams)
	devs := make([]*client.Client, cfg.Streams)
	for i := range devs {
		hc := shared
		if hc == nil {
			hc = HTTPClientTLS(net.IPv4(127, 0, 0, byte(1+i%cfg.Sources)), cfg.TLS)
		}
		hcs[i] = hc
		devs[i] = NewDevice(cfg.URL, "idle", hc, false)
	}
	closeAll := func() {
		for _, hc := range hcs {
			hc.CloseIdleConnections()
		}
	}
	if err := parallel(ctx, len(devs), cfg.Width, func(i int) error {
		if err := SignIn(ctx, devs[i]); err != nil {
			return fmt.Errorf("sign in device %d: %w", i, err)
		}
		return nil
	}); err != nil {
		closeAll()
		return rep, err
	}
	closeAll()
	time.Sleep(time.Second)
	var err error
	if rep.SignedIn, err = cfg.Measure("signed in"); err != nil {
		return rep, err
	}

	sctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		closeAll()
	}()
	streams := make([]any, len(devs)) // held open until sctx ends
	t0 := time.Now()
	var mu sync.Mutex
	err = parallel(ctx, len(devs), cfg.Width, func(i int) error {
		var st any
		if cfg.Channels {
			tok, err := devs[i].Token(sctx)
			if err != nil {
				return fmt.Errorf("channel %d: %w", i, err)
			}
			ch := sharespotv1connect.NewChannelServiceClient(hcs[i], cfg.URL).Carry(sctx)
			ch.RequestHeader().Set("Authorization", "Bearer "+tok)
			if err := ch.Send(nil); err != nil {
				return fmt.Errorf("channel %d: %w", i, err)
			}
			if _, err := ch.Receive(); err != nil { // the opening
				return fmt.Errorf("channel %d: %w", i, err)
			}
			st = ch
		} else {
			in, err := devs[i].Inbox.Subscribe(sctx, connect.NewRequest(&sharespotv1.SubscribeRequest{}))
			if err != nil {
				return fmt.Errorf("stream %d: %w", i, err)
			}
			if !in.Receive() { // the first answer says it is subscribed
				return fmt.Errorf("stream %d: %w", i, in.Err())
			}
			st = in
		}
		mu.Lock()
		streams[i] = st
		rep.Opened++
		mu.Unlock()
		return nil
	})
	rep.ConnectSeconds = time.Since(t0).Seconds()
	if err != nil {
		rep.Limit = err.Error()
	}
	if rep.Opened == 0 {
		return rep, err
	}
	time.Sleep(2 * time.Second)
	open, merr := cfg.Measure("streams open")
	if merr != nil {
		return rep, merr
	}
	rep.Open = open
	n := float64(rep.Opened)
	rep.RSSPerStreamKiB = float64(open.Proc.RSSKiB-rep.SignedIn.Proc.RSSKiB) / n
	rep.RSSPerDeviceKiB = float64(open.Proc.RSSKiB-empty.Proc.RSSKiB) / n
	if open.GC != nil && rep.SignedIn.GC != nil {
		rep.HeapPerStreamKiB = (open.GC.LiveMB - rep.SignedIn.GC.LiveMB) * 1024 / n
		rep.StackPerStreamKB = (open.GC.StacksMB - rep.SignedIn.GC.StacksMB) * 1024 / n
	}
	if open.Go != nil && rep.SignedIn.Go != nil {
		rep.GoHeldPerStreamKiB = (open.Go.HeldMiB - rep.SignedIn.Go.HeldMiB) * 1024 / n
	}
	if rep.RSSPerStreamKiB > 0 {
		rep.StreamsPerGiB = 1024 * 1024 / rep.RSSPerStreamKiB
	}
	if cfg.Hold > 0 {
		t := time.Now()
		select {
		case <-time.After(cfg.Hold):
		case <-ctx.Done():
			return rep, ctx.Err()
		}
		held, herr := cfg.Measure(fmt.Sprintf("held %v", cfg.Hold))
		if herr != nil {
			return rep, herr
		}
		rep.Held, rep.HeldSeconds = &held, time.Since(t).Seconds()
	}
	for _, st := range streams {
		switch st := st.(type) {
		case *connect.ServerStreamForClient[sharespotv1.SubscribeResponse]:
			st.Close()
		case *connect.BidiStreamForClient[sharespotv1.CarryRequest, sharespotv1.CarryResponse]:
			st.CloseRequest()
			st.CloseResponse()
		}
	}
	return rep, err
}

// WriteTable writes the report for people.
func (rep *IdleReport) WriteTable(w io.Writer) {
	conns := rep.Connections
	if rep.Transport != "" {
		conns = rep.Transport + ", " + conns
	}
	fmt.Fprintf(w, "idle %s: %d of %d open (%s, %d source addresses), connected in %.1fs\n",
		rep.Kind, rep.Opened, rep.Streams, conns, rep.Sources, rep.ConnectSeconds)
	row := func(name string, m IdleMem) {
		fmt.Fprintf(w, "  %-24s RSS %8.1f MiB  anon %8.1f MiB  threads %4d", name, float64(m.Proc.RSSKiB)/1024, float64(m.Proc.AnonKiB)/1024, m.Proc.Threads)
		if m.GC != nil {
			fmt.Fprintf(w, "  live heap %6.0f MB  stacks %5.0f MB (gc %d)", m.GC.LiveMB, m.GC.StacksMB, m.GC.Seq)
		}
		if m.Go != nil {
			fmt.Fprintf(w, "  Go holds %7.1f MiB (heap in use %.1f, next GC at %.1f; stacks %.1f)", m.Go.HeldMiB, m.Go.HeapInuseMiB, m.Go.NextGCMiB, m.Go.StacksMiB)
		}
		fmt.Fprintln(w)
	}
	row("server, no devices", rep.Empty)
	row("after sign-in", rep.SignedIn)
	row("streams open", rep.Open)
	if rep.Held != nil {
		row(fmt.Sprintf("held %.0f s more", rep.HeldSeconds), *rep.Held)
	}
	fmt.Fprintf(w, "per stream: RSS %.1f KiB", rep.RSSPerStreamKiB)
	if rep.HeapPerStreamKiB != 0 {
		fmt.Fprintf(w, ", live heap %.1f KiB, goroutine stacks %.1f KiB", rep.HeapPerStreamKiB, rep.StackPerStreamKB)
	}
	fmt.Fprintf(w, "; per device incl. sign-in state: RSS %.1f KiB\n", rep.RSSPerDeviceKiB)
	if rep.GoHeldPerStreamKiB != 0 {
		fmt.Fprintf(w, "of the RSS per stream: Go's runtime %.1f KiB, the rest (SQLite's page caches, memory outside Go) %.1f KiB\n",
			rep.GoHeldPerStreamKiB, rep.RSSPerStreamKiB-rep.GoHeldPerStreamKiB)
	}
	fmt.Fprintf(w, "streams per GiB (RSS): %.0f (goal ≥ 50,000, i.e. ≤ 20 KiB each)\n", rep.StreamsPerGiB)
	if h, o := rep.Held, rep.Open; h != nil && h.Go != nil && o.Go != nil {
		fmt.Fprintf(w, "holding them %.0f s more cost the server %.0f collections and %.1f%% of a core (CPU time from its /metrics)\n",
			rep.HeldSeconds, h.Go.GCs-o.Go.GCs, 100*(h.Go.CPUSeconds-o.Go.CPUSeconds)/rep.HeldSeconds)
	}
	if rep.Limit != "" {
		fmt.Fprintf(w, "stopped early: %s\n", rep.Limit)
	}
}

package loadgen

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
)

// CallFloor is what one bare call costs the server under test, measured
// beside a run as a second yardstick: the public PaymentService.PlatformKeys
// (no token, no database, a response of two keys) called in closed loops,
// one per connection, through the server's whole HTTP/2 and Connect stack.
// Every step of a flow is at least one such call, so a flow's server CPU
// read in bare calls (InCalls) is a figure a faster or slower machine
// leaves alone, and it shows how far a goal stands from what the transport
// alone costs.
type CallFloor struct {
	Conns int   `json:"conns"`
	Calls int64 `json:"calls"`
	// ServerCPUPerCallUS is the server's user + system CPU per call, in µs.
	ServerCPUPerCallUS float64 `json:"server_cpu_us_per_call"`
	CallsPerS          float64 `json:"calls_per_s"`
	// RunPerUnitInCalls is the run's server CPU per flow or message read
	// in such calls (set by Against).
	RunPerUnitInCalls float64 `json:"run_server_cpu_per_unit_in_calls,omitempty"`
}

// Against returns f with the run's server CPU per unit read in bare calls
// (nil for a nil floor; unchanged when the run did not read the server's
// CPU apart).
func (f *CallFloor) Against(cpu *CPUReport) *CallFloor {
	if f == nil {
		return nil
	}
	g := *f
	if cpu != nil && cpu.Separate && cpu.Units > 0 {
		g.RunPerUnitInCalls = g.InCalls(cpu.ServerPerUnitMS)
	}
	return &g
}

// MeasureCallFloor calls the server at url (process pid, whose CPU it
// reads) for about d over conns connections of their own (TLS with tc for
// https:// URLs).
func MeasureCallFloor(ctx context.Context, url string, tc *tls.Config, pid, conns int, d time.Duration) (CallFloor, error) {
	if pid <= 0 || pid == os.Getpid() {
		return CallFloor{}, fmt.Errorf("loadgen: call floor: the server is not a process of its own, so its CPU cannot be read apart")
	}
	conns = max(conns, 1)
	cls := make([]sharespotv1connect.PaymentServiceClient, conns)
	for i := range cls {
		hc := HTTPClientTLS(nil, tc)
		defer hc.CloseIdleConnections() // not held open beside the run that follows
		cls[i] = sharespotv1connect.NewPaymentServiceClient(hc, url)
		// A first call opens the connection outside the measurement.
		if _, err := cls[i].PlatformKeys(ctx, connect.NewRequest(&sharespotv1.PlatformKeysRequest{})); err != nil {
			return CallFloor{}, fmt.Errorf("loadgen: call floor: %w", err)
		}
	}
	meter, err := StartCPU(pid)
	if err != nil {
		return CallFloor{}, err
	}
	var calls atomic.Int64
	var failed error
	var once sync.Once
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for _, c := range cls {
		wg.Go(func() {
			for time.Now().Before(stop) && ctx.Err() == nil {
				if _, err := c.PlatformKeys(ctx, connect.NewRequest(&sharespotv1.PlatformKeysRequest{})); err != nil {
					once.Do(func() { failed = err })
					return
				}
				calls.Add(1)
			}
		})
	}
	wg.Wait()
	n := calls.Load()
	if failed != nil {
		return CallFloor{}, fmt.Errorf("loadgen: call floor: %w", failed)
	}
	if n == 0 {
		return CallFloor{}, fmt.Errorf("loadgen: call floor: no call completed in %v", d)
	}
	cpu, err := meter.Stop(n, "call")
	if err != nil {
		return CallFloor{}, err
	}
	return CallFloor{Conns: conns, Calls: n, ServerCPUPerCallUS: 1000 * cpu.ServerPerUnitMS, CallsPerS: float64(n) / cpu.WallS}, nil
}

// InCalls is a server CPU figure in ms per unit read in bare calls.
func (f CallFloor) InCalls(ms float64) float64 {
	if f.ServerCPUPerCallUS <= 0 {
		return 0
	}
	return 1000 * ms / f.ServerCPUPerCallUS
}

// writeAgainst writes the call floor's line and, when the run measured
// the server's CPU apart, that CPU per unit in bare calls (nothing for a
// nil floor).
func (f *CallFloor) writeAgainst(w io.Writer, cpu *CPUReport) {
	if f == nil {
		return
	}
	f.WriteTable(w)
	if g := f.Against(cpu); g.RunPerUnitInCalls > 0 {
		fmt.Fprintf(w, "server CPU per %s: %.1f bare calls\n", cpu.Unit, g.RunPerUnitInCalls)
	}
}

// WriteTable writes the call floor's line.
func (f CallFloor) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "bare call (public PlatformKeys, %d connections in closed loops): %.0f µs of server CPU per call, %.0f calls/s\n",
		f.Conns, f.ServerCPUPerCallUS, f.CallsPerS)
}

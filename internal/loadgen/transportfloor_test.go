package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/harness"
)

// The transport floor's procedures: no Sharespot code behind them, the
// messages the server's bare call (PlatformKeys) takes and gives.
const (
	floorUnary  = "/floor.v1.Floor/Call"
	floorStream = "/floor.v1.Floor/Stream"
	floorServe  = "SHARESPOT_TRANSPORT_FLOOR_SERVE"
)

func TestMain(m *testing.M) {
	if os.Getenv(floorServe) == "1" {
		serveFloor() // this test binary as the floor's server process
		return
	}
	os.Exit(m.Run())
}

// floorKeys is the answer both procedures give: two keys, as the
// server's PlatformKeys gives.
var floorKeys = &sharespotv1.PlatformKeysResponse{Keys: []*sharespotv1.PlatformKey{
	{KeyId: "k1", PublicKey: make([]byte, 32)}, {KeyId: "k2", PublicKey: make([]byte, 32)}}}

// serveFloor serves the floor's procedures over cleartext HTTP/2 (as the
// server's h2c path: http2.Server.ServeConn per connection), prints its
// address, and runs until its parent closes its standard input.
func serveFloor() {
	// As the server's handlers (api.Handler): small messages go
	// uncompressed.
	small := connect.WithCompressMinBytes(4096)
	mux := http.NewServeMux()
	mux.Handle(floorUnary, connect.NewUnaryHandler(floorUnary, func(ctx context.Context, _ *connect.Request[sharespotv1.PlatformKeysRequest]) (*connect.Response[sharespotv1.PlatformKeysResponse], error) {
		return connect.NewResponse(floorKeys), nil
	}, small))
	mux.Handle(floorStream, connect.NewBidiStreamHandler(floorStream, func(ctx context.Context, s *connect.BidiStream[sharespotv1.PlatformKeysRequest, sharespotv1.PlatformKeysResponse]) error {
		for {
			if _, err := s.Receive(); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
			if err := s.Send(floorKeys); err != nil {
				return err
			}
		}
	}, small))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }()
	h2 := &http2.Server{}
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go h2.ServeConn(c, &http2.ServeConnOpts{Handler: mux})
	}
}

// BenchmarkTransportFloor measures what Go's HTTP/2 server and Connect
// alone cost the server per exchange of one small message each way, with
// no Sharespot code: a unary call, and a message on a bidirectional
// stream each connection holds open; with SHARESPOT_BENCH_BIN=PATH, that
// build's bare call as well (MeasureCallFloor for about as long, 200 ms at
// least: the benchmark's first run, of one exchange, would end before a
// call). The server is this test binary in a process of its own, its CPU
// read from /proc; SHARESPOT_BENCH_WORKERS connections (default 64), one
// closed loop each. Set beside the real
// server's bare call (MeasureCallFloor, reported by every spawned bench),
// it shows what Sharespot's own layers add to a call, and what a step
// sent as a message on a held stream instead of a call would cost.
func BenchmarkTransportFloor(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), floorServe+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("the floor's server printed no address: %v", err)
	}
	base := "http://" + strings.TrimSpace(line)
	conns := max(1, envIntOr("SHARESPOT_BENCH_WORKERS", 64))
	ctx := context.Background()
	req := &sharespotv1.PlatformKeysRequest{}

	measure := func(b *testing.B, exchange func(w int) error) {
		meter, err := StartCPU(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		var next atomic.Int64
		var failed atomic.Pointer[error]
		var wg sync.WaitGroup
		for w := range conns {
			wg.Go(func() {
				for next.Add(1) <= int64(b.N) {
					if err := exchange(w); err != nil {
						failed.CompareAndSwap(nil, &err)
						return
					}
				}
			})
		}
		wg.Wait()
		if e := failed.Load(); e != nil {
			b.Fatal(*e)
		}
		cpu, err := meter.Stop(int64(b.N), "exchange")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(1000*cpu.ServerPerUnitMS, "server-cpu-us/exchange")
		b.ReportMetric(1000*cpu.BenchPerUnitMS, "client-cpu-us/exchange")
	}

	b.Run("unary", func(b *testing.B) {
		cls := make([]*connect.Client[sharespotv1.PlatformKeysRequest, sharespotv1.PlatformKeysResponse], conns)
		for i := range cls {
			cls[i] = connect.NewClient[sharespotv1.PlatformKeysRequest, sharespotv1.PlatformKeysResponse](HTTPClient(nil), base+floorUnary)
			if _, err := cls[i].CallUnary(ctx, connect.NewRequest(req)); err != nil {
				b.Fatal(err)
			}
		}
		measure(b, func(w int) error {
			res, err := cls[w].CallUnary(ctx, connect.NewRequest(req))
			if err == nil && len(res.Msg.Keys) != 2 {
				err = fmt.Errorf("unary answer with %d keys, want 2", len(res.Msg.Keys))
			}
			return err
		})
	})
	if bin := os.Getenv("SHARESPOT_BENCH_BIN"); bin != "" {
		// The real server's bare call in the same run, for comparison.
		b.Run("sharespot-bare-call", func(b *testing.B) {
			dir := b.TempDir()
			proc, err := Spawn{Bin: bin, Dir: dir, DB: harness.DBFor(b, dir), Env: harness.CleanEnv(),
				Flags: []string{"--rate-device", "0", "--rate-ip", "0", "--max-inflight-ip", "0", "--max-streams-ip", "0", "--max-conns-ip", "0", "--log-level", "warn"}}.Start(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer proc.Stop(30 * time.Second)
			f, err := MeasureCallFloor(ctx, proc.URL(), nil, proc.PID(), conns, max(200*time.Millisecond, time.Duration(b.N)*75*time.Microsecond))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(f.ServerCPUPerCallUS, "server-cpu-us/exchange")
		})
	}
	b.Run("stream-message", func(b *testing.B) {
		streams := make([]*connect.BidiStreamForClient[sharespotv1.PlatformKeysRequest, sharespotv1.PlatformKeysResponse], conns)
		for i := range streams {
			c := connect.NewClient[sharespotv1.PlatformKeysRequest, sharespotv1.PlatformKeysResponse](HTTPClient(nil), base+floorStream)
			streams[i] = c.CallBidiStream(ctx)
			if err := streams[i].Send(req); err != nil {
				b.Fatal(err)
			}
			if _, err := streams[i].Receive(); err != nil {
				b.Fatal(err)
			}
		}
		defer func() {
			for _, s := range streams {
				s.CloseRequest()
				s.CloseResponse()
			}
		}()
		measure(b, func(w int) error {
			if err := streams[w].Send(req); err != nil {
				return err
			}
			res, err := streams[w].Receive()
			if err == nil && len(res.Keys) != 2 {
				err = fmt.Errorf("stream answer with %d keys, want 2", len(res.Keys))
			}
			return err
		})
	})
}

func envIntOr(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err == nil && n > 0 {
		return n
	}
	return def
}

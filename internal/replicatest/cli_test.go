package replicatest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// proc is a process (a sharespot command, haproxy) whose output is kept.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitFor waits (at most 60 s) until the output holds s.
func (p *proc) waitFor(t *testing.T, s string) {
	t.Helper()
	for end := time.Now().Add(60 * time.Second); !strings.Contains(p.output(), s); time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.done:
			if !strings.Contains(p.output(), s) {
				t.Fatalf("%s exited without printing %q:\n%s", p.cmd.Args[1], s, p.output())
			}
			return
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("%s did not print %q within 60s:\n%s", p.cmd.Args[1], s, p.output())
		}
	}
}

func cliEnv(dir string) []string {
	return append(harness.CleanEnv(), "XDG_CONFIG_HOME="+dir+"/config", "XDG_DATA_HOME="+dir+"/data", "XDG_STATE_HOME="+dir+"/state")
}

func start(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary(t), args...), done: make(chan struct{})}
	p.cmd.Env, p.cmd.Dir, p.cmd.Stdout, p.cmd.Stderr = cliEnv(dir), dir, p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func run(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env, cmd.Dir = cliEnv(dir), dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sharespot %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCLIFailover: the CLI reaches the client's failover. The host is on
// replica A; the guest is given --server B,A. B is SIGKILLed while the
// guest is online: the guest says it lost B, says it is connected again to
// A, and ends and settles there. The ledger audits clean.
func TestCLIFailover(t *testing.T) {
	nats := natstest.Require(t)
	db := pgtest.New(t)
	rs := startReplicas(t, db, []string{"--bus", nats}, "A", "B")
	a, b := rs[0], rs[1]
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gw := ln.Addr().String()
	ln.Close()
	if err := os.WriteFile(filepath.Join(dir, "scan.json"), []byte(`[{"ssid":"Cafe","bssid":"02:5e:00:00:00:01","signal_dbm":-48,"frequency_mhz":2437,"security":"wpa2"}]`), 0o600); err != nil {
		t.Fatal(err)
	}

	host := start(t, dir, "share", "--identity", "host.key", "--state", "host", "--ssid", "Cafe", "--bssid", "02:5e:00:00:00:01",
		"--price", "10", "--min", "1MB", "--share", "1GB", "--warn", "1MB", "--listen", gw, "--allow-local", "--server", a.URL)
	host.waitFor(t, "gateway for guests on")

	both := b.URL + "," + a.URL
	// A dead first URL is passed over for the next.
	out := strings.Fields(run(t, dir, "device", "id", "--identity", "guest.key")) // makes the key (and says so first)
	id := out[len(out)-1]
	run(t, dir, "wallet", "balance", "--identity", "guest.key", "--server", "http://127.0.0.1:1,"+both)
	run(t, dir, "wallet", "fund", "--db", db, "--device", id, "--amount", "1000", "--currency", "EUR")

	guest := start(t, dir, "connect", "--identity", "guest.key", "--scan-file", "scan.json", "Cafe", "--buy", "2MB", "--yes",
		"--forward", "127.0.0.1:0", "--server", both)
	guest.waitFor(t, "online: 2 MB granted")
	if err := b.kill(); err != nil {
		t.Fatal(err)
	}
	guest.waitFor(t, "lost the connection to the server at "+b.URL+" ")
	guest.waitFor(t, "connected again, to the server at "+a.URL)
	guest.cmd.Process.Signal(syscall.SIGINT)
	guest.waitFor(t, "session ended: used 0 B of 2 MB; paid €0.20, refunded €0.20")
	<-guest.done

	st, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := harness.Audit(context.Background(), st); err != nil {
		t.Fatalf("audit: %v", err)
	}
}

package replicatest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/loadgen"
)

// bin is the sharespot binary, built once by TestMain's first user.
var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds cmd/sharespot once for the package.
func binary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "replicatest-"); binErr != nil {
			return
		}
		binPath, binErr = harness.BuildBinary(binDir)
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binPath
}

// serverFlags are every replica's settings: deadlines short enough that a
// stuck session would end within the test, long enough that none ends in
// a healthy run; no rate limits.
var serverFlags = []string{
	"--quote-timeout", "10s", "--quote-ttl", "10s", "--grant-timeout", "10s",
	"--rate-device", "0", "--rate-ip", "0", "--log-level", "warn",
}

// replica is one `sharespot server` process.
type replica struct {
	name string
	URL  string
	cmd  *exec.Cmd

	mu     sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
	killed bool
}

type logWriter struct{ r *replica }

func (w logWriter) Write(b []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	return w.r.log.Write(b)
}

// startReplicas starts one replica per name on db, with extra flags, all at
// once (they race to migrate the fresh database and create the platform
// key, which they must survive), and waits until each listens.
func startReplicas(tb testing.TB, db string, extra []string, names ...string) []*replica {
	tb.Helper()
	bin := binary(tb)
	rs := make([]*replica, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs[i], errs[i] = startReplica(bin, tb.TempDir(), name, db, append(extra, "--key-file", keyFileFor(db)))
		}()
	}
	wg.Wait()
	for _, r := range rs {
		if r != nil {
			tb.Cleanup(func() {
				if err := r.stop(); err != nil {
					tb.Error(err)
				}
				if tb.Failed() {
					tb.Logf("replica %s output:\n%s", r.name, r.output())
				}
			})
		}
	}
	for _, err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
	return rs
}

func startReplica(bin, dir, name, db string, extra []string) (*replica, error) {
	args := append([]string{"server", "--listen", "127.0.0.1:0", "--data", dir, "--db", db}, serverFlags...)
	args = append(args, extra...)
	r := &replica{name: name, exited: make(chan struct{})}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = harness.CleanEnv()
	r.cmd.Stderr = logWriter{r}
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start replica %s: %w", name, err)
	}
	addrc := make(chan string, 1)
	go func() {
		loadgen.WatchServerOutput(stdout, logWriter{r}, addrc)
		r.cmd.Wait()
		close(r.exited)
	}()
	select {
	case a := <-addrc:
		r.URL = "http://" + a
		return r, nil
	case <-r.exited:
		return r, fmt.Errorf("replica %s exited before listening: %v\n%s", name, r.cmd.ProcessState, r.output())
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		return r, fmt.Errorf("replica %s did not listen within 30s\n%s", name, r.output())
	}
}

func (r *replica) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

// kill SIGKILLs the replica and waits until it is gone.
func (r *replica) kill() error {
	r.mu.Lock()
	r.killed = true
	r.mu.Unlock()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill replica %s: %w", r.name, err)
	}
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("replica %s still running 10s after SIGKILL", r.name)
	}
	ws, _ := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return fmt.Errorf("replica %s ended with %v, not by SIGKILL", r.name, r.cmd.ProcessState)
	}
	return nil
}

// stop stops a replica gracefully (SIGTERM, then SIGKILL after 15 s) and
// reports if it did not exit cleanly. A killed replica is left alone.
func (r *replica) stop() error {
	r.mu.Lock()
	killed := r.killed
	r.mu.Unlock()
	if killed {
		return nil
	}
	select {
	case <-r.exited:
		return fmt.Errorf("replica %s had exited on its own: %v", r.name, r.cmd.ProcessState)
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		return fmt.Errorf("replica %s did not stop within 15s of SIGTERM", r.name)
	}
	if !r.cmd.ProcessState.Success() {
		return fmt.Errorf("replica %s exited badly on stop: %v", r.name, r.cmd.ProcessState)
	}
	return nil
}

// keyFileFor is the key file every replica of db shares (the key that
// seals the platform's receipt-signing keys), the same for replicas
// started later on the same database.
func keyFileFor(db string) string {
	sum := sha256.Sum256([]byte(db))
	return filepath.Join(os.TempDir(), fmt.Sprintf("sharespot-replicatest-%x.key", sum[:8]))
}

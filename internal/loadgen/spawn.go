package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spawn describes a `sharespot server` process that the bench or the chaos
// test runs itself.
type Spawn struct {
	// Bin is the sharespot binary.
	Bin string
	// Dir is the data directory (SQLite lives there unless DB is set).
	Dir string
	// DB is a postgres:// URL, or "" for SQLite in Dir.
	DB string
	// Listen is the first address to listen on (default 127.0.0.1:0);
	// restarts reuse the port the first process got.
	Listen string
	// Flags are further server flags (deadlines, rate limits).
	Flags []string
	// TLSCert and TLSKey, if set, are PEM files the server serves TLS
	// with (--tls-cert, --tls-key); its URL is then https://.
	TLSCert, TLSKey string
	// Env is the process environment (default: this process's).
	Env []string
	// Log, if not nil, also gets the processes' output.
	Log io.Writer
}

// Proc is a running (or killed) server process started by Spawn.Start.
type Proc struct {
	spec Spawn

	mu     sync.Mutex
	cmd    *exec.Cmd
	addr   string
	exited chan struct{} // closed when the current process has exited
	state  *os.ProcessState
	out    bytes.Buffer // the last 1 MiB of output, for failure reports
	starts int
	fixed  string // the address the first process got; restarts reuse it
}

// Start starts the server and waits until it listens.
func (s Spawn) Start(ctx context.Context) (*Proc, error) {
	if s.Listen == "" {
		s.Listen = "127.0.0.1:0"
	}
	p := &Proc{spec: s}
	if err := p.start(ctx, s.Listen); err != nil {
		return nil, err
	}
	return p, nil
}

type procLog struct{ p *Proc }

func (w procLog) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.out.Len() > 1<<20 {
		rest := w.p.out.Bytes()[w.p.out.Len()-(512<<10):]
		w.p.out = *bytes.NewBuffer(append([]byte(nil), rest...))
	}
	w.p.out.Write(b)
	if w.p.spec.Log != nil {
		w.p.spec.Log.Write(b)
	}
	return len(b), nil
}

func (p *Proc) start(ctx context.Context, listen string) error {
	args := append([]string{"server", "--data", p.spec.Dir, "--listen", listen}, p.spec.Flags...)
	if p.spec.DB != "" {
		args = append(args, "--db", p.spec.DB)
	}
	if p.spec.TLSCert != "" {
		args = append(args, "--tls-cert", p.spec.TLSCert, "--tls-key", p.spec.TLSKey)
	}
	cmd := exec.Command(p.spec.Bin, args...)
	cmd.Env = p.spec.Env
	cmd.Stderr = procLog{p}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("loadgen: server stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("loadgen: start server: %w", err)
	}
	exited := make(chan struct{})
	addrc := make(chan string, 1)
	go func() {
		WatchServerOutput(stdout, procLog{p}, addrc)
		cmd.Wait()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(exited)
	}()
	p.mu.Lock()
	p.cmd, p.exited, p.addr, p.state = cmd, exited, "", nil
	p.starts++
	p.mu.Unlock()
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	select {
	case a := <-addrc:
		p.mu.Lock()
		p.addr = a
		if p.fixed == "" {
			p.fixed = a
		}
		p.mu.Unlock()
		return nil
	case <-exited:
		return fmt.Errorf("loadgen: the server exited before listening (%v):\n%s", p.ExitState(), p.Output())
	case <-timer.C:
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("loadgen: the server did not listen within 60s:\n%s", p.Output())
	case <-ctx.Done():
		cmd.Process.Kill()
		<-exited
		return ctx.Err()
	}
}

// Addr is where the current process listens ("" while none does).
func (p *Proc) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// URL is the server's base URL.
func (p *Proc) URL() string {
	if p.spec.TLSCert != "" {
		return "https://" + p.Addr()
	}
	return "http://" + p.Addr()
}

// PID is the current process's ID.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Starts counts the processes started so far.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Output returns the processes' recent output.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// ExitState is how the last process ended (nil while it runs).
func (p *Proc) ExitState() *os.ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Kill SIGKILLs the current process and waits until it is gone. It
// reports whether the process died of that signal (not of something
// else before it).
func (p *Proc) Kill() (bool, error) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.addr = ""
	p.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return false, fmt.Errorf("loadgen: kill server: %w", err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		return false, errors.New("loadgen: the server did not die within 30s of SIGKILL")
	}
	ws, _ := p.ExitState().Sys().(syscall.WaitStatus)
	return ws.Signaled() && ws.Signal() == syscall.SIGKILL, nil
}

// Restart starts a new process on the same address as the first; the
// previous one must have exited. A port still held is retried for a while.
func (p *Proc) Restart(ctx context.Context) error {
	p.mu.Lock()
	exited := p.exited
	addr := p.spec.Listen
	if a := p.lastAddr(); a != "" {
		addr = a
	}
	p.mu.Unlock()
	select {
	case <-exited:
	default:
		return errors.New("loadgen: restart: the server is still running")
	}
	var err error
	for range 50 {
		if err = p.start(ctx, addr); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// lastAddr is the address the processes listen on, from the first
// start's announcement (p.mu held).
func (p *Proc) lastAddr() string {
	if p.spec.Listen != "" && !strings.HasSuffix(p.spec.Listen, ":0") {
		return p.spec.Listen
	}
	return p.fixed
}

// Stop ends the current process with SIGTERM (graceful), then SIGKILL if
// it has not stopped within d. It returns the process's error, if any
// other than being told to stop.
func (p *Proc) Stop(d time.Duration) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.addr = ""
	p.mu.Unlock()
	select {
	case <-exited:
		return nil
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(d):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("loadgen: the server did not stop within %v of SIGTERM", d)
	}
	if st := p.ExitState(); st != nil && !st.Success() {
		return fmt.Errorf("loadgen: the server exited with %v", st)
	}
	return nil
}

// WatchServerOutput copies a `sharespot server` process's standard output
// to log line by line until it ends, and sends the address of its
// "listening on http://ADDR" (or https://ADDR) line to addr (dropped if
// addr is full).
func WatchServerOutput(stdout io.Reader, log io.Writer, addr chan<- string) {
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(log, line)
		_, rest, ok := strings.Cut(line, "listening on http://")
		if !ok {
			_, rest, ok = strings.Cut(line, "listening on https://")
		}
		if ok {
			a, _, _ := strings.Cut(rest, " ")
			select {
			case addr <- a:
			default:
			}
		}
	}
}

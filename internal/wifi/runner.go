package wifi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Runner runs an outside command and returns its standard output. Scanners
// take one so that tests never need a radio.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// DefaultCommandTimeout bounds one command when ExecRunner.Timeout is zero.
// A scan with nmcli --rescan yes or iw scan takes a few seconds, longer with
// 6 GHz channels.
const DefaultCommandTimeout = 30 * time.Second

const (
	defaultMaxOutput = 16 << 20 // a scan of hundreds of BSSs is a few MB
	maxStderr        = 4 << 10
)

// ExecRunner runs commands with os/exec. The command runs with LC_ALL=C:
// its output is parsed, not read by a person, so it must not be translated.
type ExecRunner struct {
	// Timeout for one command; zero means DefaultCommandTimeout.
	Timeout time.Duration
	// MaxOutput is the most standard output accepted, in bytes; zero means 16 MiB.
	MaxOutput int
}

var _ Runner = ExecRunner{}

// CommandError is a command that started and failed: it exited with an
// error, was killed, or ran out of time.
type CommandError struct {
	Cmd    string // the command line
	Stderr string // its standard error, trimmed and cut to a few KiB
	Err    error  // an *exec.ExitError, or wraps context.DeadlineExceeded
}

func (e *CommandError) Error() string {
	if e.Stderr == "" {
		return fmt.Sprintf("%s: %v (nothing on stderr)", e.Cmd, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, e.Stderr)
}

func (e *CommandError) Unwrap() error { return e.Err }

// Run runs name with args and returns what it wrote to standard output.
func (r ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	limit := r.MaxOutput
	if limit <= 0 {
		limit = defaultMaxOutput
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	cmd := exec.CommandContext(runCtx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C") // the last value of a key wins
	cmd.WaitDelay = time.Second                // don't wait for children holding the pipes
	stdout, stderr := &capWriter{max: limit}, &capWriter{max: maxStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr

	err := cmd.Run()
	line := strings.Join(append([]string{name}, args...), " ")
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return nil, fmt.Errorf("%s is not installed: %w", name, err)
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("%s: %w", line, ctx.Err())
	case err != nil && errors.Is(runCtx.Err(), context.DeadlineExceeded):
		return nil, &CommandError{Cmd: line, Stderr: stderr.text(),
			Err: fmt.Errorf("timed out after %s: %w", timeout, context.DeadlineExceeded)}
	case err != nil:
		return nil, &CommandError{Cmd: line, Stderr: stderr.text(), Err: err}
	case stdout.over:
		return nil, fmt.Errorf("%s: output is over %d bytes", line, limit)
	}
	return stdout.buf.Bytes(), nil
}

// capWriter keeps the first max bytes written to it and drops the rest, so
// that a runaway command cannot fill memory and is never blocked on its pipe.
type capWriter struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (w *capWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); len(p) > room {
		w.over = true
		w.buf.Write(p[:max(room, 0)])
	} else {
		w.buf.Write(p)
	}
	return len(p), nil
}

func (w *capWriter) text() string {
	s := strings.TrimSpace(strings.ToValidUTF8(w.buf.String(), "\uFFFD"))
	if w.over {
		s += " …"
	}
	return s
}

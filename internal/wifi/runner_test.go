package wifi

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestExecRunner(t *testing.T) {
	ctx := context.Background()
	r := ExecRunner{Timeout: 10 * time.Second}

	t.Run("stdout", func(t *testing.T) {
		out, err := r.Run(ctx, "sh", "-c", `printf 'a:b\n'; echo noise >&2`)
		if err != nil || string(out) != "a:b\n" {
			t.Fatalf("out %q, err %v", out, err)
		}
	})
	t.Run("untranslated", func(t *testing.T) {
		out, err := r.Run(ctx, "sh", "-c", `echo "$LC_ALL"`)
		if err != nil || string(out) != "C\n" {
			t.Fatalf("LC_ALL %q, err %v", out, err)
		}
	})
	t.Run("failure carries stderr", func(t *testing.T) {
		_, err := r.Run(ctx, "sh", "-c", `echo 'Error: NetworkManager is not running.' >&2; exit 8`)
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Stderr != "Error: NetworkManager is not running." {
			t.Fatalf("err %v", err)
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 8 {
			t.Fatalf("err %v does not carry exit status 8", err)
		}
		if !strings.Contains(err.Error(), "NetworkManager is not running") || !strings.Contains(err.Error(), "sh -c") {
			t.Fatalf("message %q", err)
		}
	})
	t.Run("not installed", func(t *testing.T) {
		_, err := r.Run(ctx, "sharespot-no-such-command")
		if !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), "sharespot-no-such-command is not installed") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		_, err := ExecRunner{Timeout: 100 * time.Millisecond}.Run(ctx, "sleep", "10")
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out after 100ms") {
			t.Fatalf("err %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("took %s", time.Since(start))
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := r.Run(cctx, "sleep", "10")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("output cap", func(t *testing.T) {
		_, err := ExecRunner{MaxOutput: 8}.Run(ctx, "sh", "-c", `echo 0123456789`)
		if err == nil || !strings.Contains(err.Error(), "output is over 8 bytes") {
			t.Fatalf("err %v", err)
		}
	})
}

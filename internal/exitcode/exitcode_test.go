package exitcode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestOf(t *testing.T) {
	sigint, cancel := context.WithCancelCause(context.Background())
	cancel(&Signaled{Signal: syscall.SIGINT})
	sigterm, cancel2 := context.WithCancelCause(context.Background())
	cancel2(&Signaled{Signal: syscall.SIGTERM})
	plain := context.Background()
	tests := []struct {
		name      string
		ctx       context.Context
		err       error
		want      Code
		wantQuiet bool
	}{
		{"done", plain, nil, OK, true},
		{"error", plain, errors.New("boom"), Error, false},
		{"declined", plain, With(Declined, errors.New("no")), Declined, false},
		{"usage, wrapped", plain, fmt.Errorf("x: %w", With(Usage, errors.New("bad"))), Usage, false},
		{"the signal itself", sigint, Interrupt(sigint, nil), Interrupted, true},
		{"an error ending after SIGINT", sigint, Interrupt(sigint, errors.New("end failed")), Interrupted, false},
		{"a cancelled call after SIGTERM", sigterm, fmt.Errorf("discover: %w", context.Canceled), Terminated, true},
		{"an error after SIGTERM", sigterm, errors.New("boom"), Terminated, false},
		{"done despite a signal (a server stopping)", sigterm, nil, OK, true},
		{"declined wins over the signal", sigint, With(Declined, errors.New("no")), Declined, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, quiet := Of(tt.ctx, tt.err)
			if code != tt.want || quiet != tt.wantQuiet {
				t.Fatalf("Of(%v) = %d, quiet %v; want %d, quiet %v", tt.err, code, quiet, tt.want, tt.wantQuiet)
			}
		})
	}
	if Interrupted != 130 || Terminated != 143 {
		t.Fatalf("Interrupted %d, Terminated %d; want 130, 143", Interrupted, Terminated)
	}
}

// TestDocumented: the README's table is this package's.
func TestDocumented(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range Table {
		row := fmt.Sprintf("| `%d` | %s |", e.Code, e.Meaning)
		if !strings.Contains(string(b), row) {
			t.Errorf("README.md lacks the row %q", row)
		}
	}
	if h := Help(); !strings.Contains(h, "130  interrupted") {
		t.Errorf("Help() = %q", h)
	}
}

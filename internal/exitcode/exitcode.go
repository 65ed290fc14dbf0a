// Package exitcode is the one table of the CLI's exit codes, for scripts
// (after gh, kubectl and the stripe CLI): 0 done, 1 an error, 2 bad usage,
// 3 declined, 128+N for a command a signal stopped (130 Ctrl-C, 143
// SIGTERM). A command says which it ends with by the error it returns:
// With gives an error its code, a Signaled cause is the signal's.
package exitcode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Code is a process exit status.
type Code int

// The codes. They are part of the CLI's interface: never renumber one.
const (
	// OK: the command did what it was asked.
	OK Code = 0
	// Error: it failed; stderr says why.
	Error Code = 1
	// Usage: the command line did not parse (an unknown command or flag,
	// a bad value, a configuration file that does not load).
	Usage Code = 2
	// Declined: a party said no: the person at a prompt, their
	// --max-spend, or the hotspot's host. Nothing was bought past what
	// stdout says.
	Declined Code = 3
	// Interrupted: SIGINT (Ctrl-C) stopped the command before it was
	// done; what it had begun was ended in order (a session settled).
	Interrupted Code = 128 + Code(syscall.SIGINT)
	// Terminated: SIGTERM did.
	Terminated Code = 128 + Code(syscall.SIGTERM)
)

// Entry is one row of the table.
type Entry struct {
	Code    Code
	Meaning string
}

// Table is every code, in order, with what it means: what `sharespot
// --help` and the README show.
var Table = []Entry{
	{OK, "done"},
	{Error, "an error (stderr says what went wrong)"},
	{Usage, "bad usage: the command line or the configuration file did not parse"},
	{Declined, "declined: you (at a prompt, or by --max-spend) or the hotspot's host said no"},
	{Interrupted, "interrupted by Ctrl-C (SIGINT); a session was ended and settled first"},
	{Terminated, "stopped by SIGTERM, likewise"},
}

// Help is the table as --help shows it. server and share, which serve
// until stopped, end with 0 when a signal stops them.
func Help() string {
	var b strings.Builder
	b.WriteString("Exit codes:\n")
	for _, e := range Table {
		fmt.Fprintf(&b, "  %3d  %s\n", e.Code, e.Meaning)
	}
	b.WriteString("  (server and share serve until stopped: a signal that stops them ends them with 0)\n")
	return b.String()
}

// codeError is an error with the code the process exits with.
type codeError struct {
	code Code
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

// With returns err with code as the exit status (nil for a nil err).
func With(code Code, err error) error {
	if err == nil {
		return nil
	}
	return &codeError{code, err}
}

// Signaled is the cause of a context that a signal cancelled: as an
// error, it exits with 128 plus the signal's number.
type Signaled struct{ Signal os.Signal }

func (s *Signaled) Error() string { return "stopped by " + s.Signal.String() }

// Is makes a Signaled a context.Canceled too.
func (s *Signaled) Is(target error) bool { return target == context.Canceled }

// Code is 128 plus the signal's number (Interrupted for SIGINT).
func (s *Signaled) Code() Code {
	if n, ok := s.Signal.(syscall.Signal); ok {
		return 128 + Code(n)
	}
	return Interrupted
}

// SignalOf is the signal that cancelled ctx, or nil.
func SignalOf(ctx context.Context) *Signaled {
	var s *Signaled
	if errors.As(context.Cause(ctx), &s) {
		return s
	}
	return nil
}

// Interrupt is what a command returns when a signal on ctx stopped it:
// err (what went wrong while ending in order) with the signal's code, or,
// when nothing did, the signal itself, which main does not print.
func Interrupt(ctx context.Context, err error) error {
	s := SignalOf(ctx)
	switch {
	case s == nil && err == nil:
		return context.Cause(ctx)
	case s == nil:
		return err
	case err == nil:
		return s
	}
	return With(s.Code(), err)
}

// Of is the exit status for err, a command's result with ctx its
// signal-cancelled context: OK for nil; With's code; the signal's for
// an error while a signal stopped the command (it was most likely the
// cause); else Error. quiet says that err need not be printed: it says
// no more than that a signal stopped the command.
func Of(ctx context.Context, err error) (code Code, quiet bool) {
	if err == nil {
		return OK, true
	}
	var ce *codeError
	if errors.As(err, &ce) {
		return ce.code, false
	}
	var s *Signaled
	if errors.As(err, &s) {
		return s.Code(), errors.Is(err, context.Canceled)
	}
	if s := SignalOf(ctx); s != nil {
		return s.Code(), errors.Is(err, context.Canceled)
	}
	return Error, false
}

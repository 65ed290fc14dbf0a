//go:build !device

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// scriptingCmds are the script commands that check what scripts rely on:
// exact exit codes (exec's ! tells only that a command failed) and the
// shape of --json outputs.
//
//	exits CODE PROG [ARGS...]   run PROG; fail unless it exits with CODE
//	start NAME PROG [ARGS...]   start PROG in the background (sh -c 'exec …' for redirections)
//	signal NAME INT|TERM        send it a signal
//	exited NAME CODE            wait (up to 60 s) for it to exit; fail unless with CODE
//	jsonshape FILE              stdout is JSON of FILE's shape (see checkShape)
func scriptingCmds() map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	return map[string]func(ts *testscript.TestScript, neg bool, args []string){
		"exits": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) < 2 {
				ts.Fatalf("usage: exits CODE PROG [ARGS...]")
			}
			want := atoi(ts, args[0])
			if got := exitCode(ts.Exec(args[1], args[2:]...)); got != want {
				ts.Fatalf("%s exited with %d, want %d", strings.Join(args[1:], " "), got, want)
			}
		},
		"start": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) < 2 {
				ts.Fatalf("usage: start NAME PROG [ARGS...]")
			}
			bg := backgrounds(ts)
			if bg.procs[args[0]] != nil {
				ts.Fatalf("a background process %s already runs", args[0])
			}
			prog, err := lookPath(args[1], ts.Getenv("PATH"))
			ts.Check(err)
			p := &bgProc{cmd: exec.Command(prog, args[2:]...), done: make(chan struct{})}
			p.cmd.Dir, p.cmd.Env = ts.MkAbs("."), scriptEnv(ts)
			p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
			ts.Check(p.cmd.Start())
			go func() { p.err = p.cmd.Wait(); close(p.done) }()
			bg.procs[args[0]] = p
		},
		"signal": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) != 2 {
				ts.Fatalf("usage: signal NAME INT|TERM")
			}
			sig := map[string]syscall.Signal{"INT": syscall.SIGINT, "TERM": syscall.SIGTERM}[args[1]]
			if sig == 0 {
				ts.Fatalf("signal %s: want INT or TERM", args[1])
			}
			ts.Check(backgrounds(ts).get(ts, args[0]).cmd.Process.Signal(sig))
		},
		"exited": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) != 2 {
				ts.Fatalf("usage: exited NAME CODE")
			}
			bg := backgrounds(ts)
			p, want := bg.get(ts, args[0]), atoi(ts, args[1])
			select {
			case <-p.done:
			case <-time.After(60 * time.Second):
				ts.Fatalf("%s did not exit within 60 s", args[0])
			}
			delete(bg.procs, args[0])
			if out := p.out.String(); out != "" {
				ts.Logf("[%s output]\n%s", args[0], out)
			}
			if got := exitCode(p.err); got != want {
				ts.Fatalf("%s exited with %d, want %d", args[0], got, want)
			}
		},
		"jsonshape": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) != 1 {
				ts.Fatalf("usage: jsonshape FILE")
			}
			var shape, got any
			ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[0])), &shape))
			if err := json.Unmarshal([]byte(ts.ReadFile("stdout")), &got); err != nil {
				ts.Fatalf("stdout is not JSON: %v", err)
			}
			if err := checkShape("$", shape, got); err != nil {
				ts.Fatalf("stdout does not have the shape of %s: %v", args[0], err)
			}
		},
	}
}

// checkShape checks a decoded JSON value against a shape: a JSON document
// of the same structure whose leaves name types ("string", "integer",
// "number", "bool"). An object must have exactly the shape's keys (a
// renamed or dropped field fails, and so does one the shape does not
// know yet); each element of an array must have the shape's one
// element's shape.
func checkShape(at string, shape, got any) error {
	switch s := shape.(type) {
	case string:
		ok := false
		switch s {
		case "string":
			_, ok = got.(string)
		case "bool":
			_, ok = got.(bool)
		case "number":
			_, ok = got.(float64)
		case "integer":
			f, isNum := got.(float64)
			ok = isNum && f == float64(int64(f))
		default:
			return fmt.Errorf("%s: the shape has an unknown type %q", at, s)
		}
		if !ok {
			return fmt.Errorf("%s: want a %s, got %#v", at, s, got)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(s) != 1 {
			return fmt.Errorf("%s: want an array (the shape: one element), got %#v", at, got)
		}
		for i, e := range g {
			if err := checkShape(fmt.Sprintf("%s[%d]", at, i), s[0], e); err != nil {
				return err
			}
		}
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %#v", at, got)
		}
		var keys []string
		for k := range s {
			keys = append(keys, k)
		}
		for k := range g {
			if _, ok := s[k]; !ok {
				return fmt.Errorf("%s: field %q is not in the shape", at, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			v, ok := g[k]
			if !ok {
				return fmt.Errorf("%s: field %q is missing", at, k)
			}
			if err := checkShape(at+"."+k, s[k], v); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: the shape holds %#v; want a type name, an array or an object", at, shape)
	}
	return nil
}

// bgProc is a process that start started.
type bgProc struct {
	cmd  *exec.Cmd
	out  syncBuffer
	err  error
	done chan struct{}
}

type bgProcs struct{ procs map[string]*bgProc }

func (b *bgProcs) get(ts *testscript.TestScript, name string) *bgProc {
	p := b.procs[name]
	if p == nil {
		ts.Fatalf("no background process %s (start starts one)", name)
	}
	return p
}

// allBackgrounds are each script's processes; a script runs its commands
// one at a time, scripts run in parallel.
var allBackgrounds sync.Map // *testscript.TestScript → *bgProcs

func backgrounds(ts *testscript.TestScript) *bgProcs {
	v, loaded := allBackgrounds.LoadOrStore(ts, &bgProcs{procs: map[string]*bgProc{}})
	b := v.(*bgProcs)
	if !loaded {
		ts.Defer(func() {
			for _, p := range b.procs {
				p.cmd.Process.Kill()
				<-p.done
			}
			allBackgrounds.Delete(ts)
		})
	}
	return b
}

// scriptEnv is this process's environment with the script's variables.
func scriptEnv(ts *testscript.TestScript) []string {
	env := os.Environ()
	for _, k := range []string{"PATH", "HOME", "WORK", "TMPDIR", "SHARESPOT_SERVER", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
		"LISTEN", "GATEWAY", "HOSTMETRICS", "STRIPEMOCK", "ORIGIN"} {
		if v := ts.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func lookPath(prog, path string) (string, error) {
	if strings.Contains(prog, "/") {
		return prog, nil
	}
	for _, dir := range strings.Split(path, string(os.PathListSeparator)) {
		p := dir + "/" + prog
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not on PATH", prog)
}

// exitCode is a finished command's exit status (-1 when it did not run or
// a signal killed it).
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

func atoi(ts *testscript.TestScript, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		ts.Fatalf("%q is not an exit code", s)
	}
	return n
}

// TestCheckShape: the --json checks fail on a renamed, missing or extra
// field and on a wrong type, in objects and in every array element.
func TestCheckShape(t *testing.T) {
	shape := `{"id": "string", "n": "integer", "ok": "bool", "items": [{"amount_minor": "integer"}]}`
	tests := []struct {
		name, got string
		ok        bool
	}{
		{"same", `{"id": "a", "n": 1, "ok": true, "items": [{"amount_minor": 5}, {"amount_minor": 6}]}`, true},
		{"empty array", `{"id": "a", "n": 1, "ok": true, "items": []}`, true},
		{"renamed", `{"ID": "a", "n": 1, "ok": true, "items": []}`, false},
		{"missing", `{"n": 1, "ok": true, "items": []}`, false},
		{"extra", `{"id": "a", "n": 1, "ok": true, "items": [], "x": 1}`, false},
		{"not an integer", `{"id": "a", "n": 1.5, "ok": true, "items": []}`, false},
		{"string for bool", `{"id": "a", "n": 1, "ok": "true", "items": []}`, false},
		{"second element", `{"id": "a", "n": 1, "ok": true, "items": [{"amount_minor": 5}, {"amount": 6}]}`, false},
	}
	var s any
	if err := json.Unmarshal([]byte(shape), &s); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got any
			if err := json.Unmarshal([]byte(tt.got), &got); err != nil {
				t.Fatal(err)
			}
			if err := checkShape("$", s, got); (err == nil) != tt.ok {
				t.Fatalf("checkShape = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

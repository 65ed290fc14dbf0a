//go:build !device

package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/sharespot/sharespot/internal/netns"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"sharespot": func() { os.Exit(run()) },
	})
}

// freePort returns a loopback address nobody listens on yet. It is drawn
// below Linux's ephemeral range (32768–60999 by default), where the
// kernel hands out ports for ":0" listeners and outgoing connections: a
// port it handed out and freed would soon go to another test's server,
// which the script's process would then find listening in its place.
func freePort() (string, error) {
	var last error
	for range 100 {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000))))
		if err != nil {
			last = err
			continue
		}
		defer ln.Close()
		return ln.Addr().String(), nil
	}
	return "", fmt.Errorf("no free loopback port in 20000–31999: %w", last)
}

// TestScripts runs the CLI end to end: the real binary against a real
// server, as a person would (testdata/script/*.txtar).
func TestScripts(t *testing.T) {
	p := scriptParams("testdata/script")
	maps.Copy(p.Cmds, scriptingCmds())
	testscript.Run(t, p)
}

// TestDeviceBuild runs the device build (-tags device) as a router or a
// phone would: the host's share and the guest's scan and connect are the
// device binary, sharespot-device in the scripts, against the full
// build's server (testdata/device/*.txtar).
func TestDeviceBuild(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command(goCommand(), "build", "-tags", "device", "-o", filepath.Join(bin, "sharespot-device"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags device: %v\n%s", err, out)
	}
	p := scriptParams("testdata/device")
	setup := p.Setup
	p.Setup = func(env *testscript.Env) error {
		env.Setenv("PATH", bin+string(os.PathListSeparator)+env.Getenv("PATH"))
		return setup(env)
	}
	testscript.Run(t, p)
}

// goCommand is the go command of the toolchain running the test.
func goCommand() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// scriptParams are the scripts in dir with the commands and set-up every
// script of this package has.
func scriptParams(dir string) testscript.Params {
	return testscript.Params{
		Dir: dir,
		Setup: func(env *testscript.Env) error {
			for _, name := range []string{"LISTEN", "GATEWAY", "HOSTMETRICS", "STRIPEMOCK"} {
				addr, err := freePort()
				if err != nil {
					return err
				}
				env.Setenv(name, addr)
			}
			env.Setenv("SHARESPOT_SERVER", "http://"+env.Getenv("LISTEN"))
			env.Setenv("XDG_CONFIG_HOME", env.WorkDir+"/config")
			env.Setenv("XDG_DATA_HOME", env.WorkDir+"/data")
			env.Setenv("XDG_STATE_HOME", env.WorkDir+"/state")
			// An origin on loopback for guests to fetch from through the
			// gateway: GET /bytes/N answers N bytes, netns.Content(N).
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/"))
				if err != nil || n < 0 || n > 100<<20 {
					http.Error(w, "want /bytes/N", http.StatusBadRequest)
					return
				}
				w.Header().Set("Content-Length", strconv.Itoa(n))
				io.Copy(w, netns.Content(int64(n)))
			}), ReadHeaderTimeout: 10 * time.Second}
			go origin.Serve(ln)
			env.Defer(func() { origin.Close() })
			env.Setenv("ORIGIN", "http://"+ln.Addr().String())
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// waitup URL: wait (up to 20 s) until URL/healthz answers.
			"waitup": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 {
					ts.Fatalf("usage: waitup URL")
				}
				deadline := time.Now().Add(20 * time.Second)
				for time.Now().Before(deadline) {
					res, err := http.Get(args[0] + "/healthz")
					if err == nil {
						res.Body.Close()
						if res.StatusCode == http.StatusOK {
							return
						}
					}
					time.Sleep(50 * time.Millisecond)
				}
				ts.Fatalf("%s did not come up", args[0])
			},
			// waitgrep FILE REGEXP: wait (up to 30 s) until FILE matches
			// REGEXP (a background command's output sent to a file).
			"waitgrep": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 {
					ts.Fatalf("usage: waitgrep FILE REGEXP")
				}
				re := regexp.MustCompile(args[1])
				deadline := time.Now().Add(30 * time.Second)
				for time.Now().Before(deadline) {
					if b, err := os.ReadFile(ts.MkAbs(args[0])); err == nil && re.Match(b) {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				b, _ := os.ReadFile(ts.MkAbs(args[0]))
				ts.Fatalf("%s never matched %q; it holds:\n%s", args[0], args[1], b)
			},
			// fetch FILE URL: GET URL (the origin's /bytes/N) through the
			// gateway with the first socks5h:// proxy URL written in FILE
			// (by connect), and check the whole body arrived, by its
			// SHA-256 against the served content's; with !, that it is
			// refused.
			"fetch": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 {
					ts.Fatalf("usage: fetch FILE URL")
				}
				b, err := os.ReadFile(ts.MkAbs(args[0]))
				ts.Check(err)
				m := regexp.MustCompile(`socks5h://\S+`).Find(b)
				if m == nil {
					ts.Fatalf("%s holds no socks5h:// URL", args[0])
				}
				proxy, err := url.Parse(string(m))
				ts.Check(err)
				size, err := strconv.ParseInt(args[1][strings.LastIndex(args[1], "/bytes/")+len("/bytes/"):], 10, 64)
				if !strings.Contains(args[1], "/bytes/") || err != nil {
					ts.Fatalf("fetch %s: want the origin's /bytes/N", args[1])
				}
				hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}, Timeout: 20 * time.Second}
				defer hc.CloseIdleConnections()
				n, err := func() (int64, error) {
					res, err := hc.Get(args[1])
					if err != nil {
						return 0, err
					}
					defer res.Body.Close()
					h := sha256.New()
					n, err := io.Copy(h, res.Body)
					switch {
					case err != nil:
					case res.StatusCode != http.StatusOK || n != size:
						err = fmt.Errorf("%s: got %d of %d bytes", res.Status, n, size)
					case [sha256.Size]byte(h.Sum(nil)) != netns.ContentSHA256(size):
						err = fmt.Errorf("got %d bytes whose SHA-256 %x is not the served content's %x", n, h.Sum(nil), netns.ContentSHA256(size))
					}
					return n, err
				}()
				switch {
				case neg && err == nil:
					ts.Fatalf("fetched %d bytes through the gateway", n)
				case !neg && err != nil:
					ts.Fatalf("fetch %s: %v", args[1], err)
				}
			},
			// scrape URL REGEXP: wait (up to 30 s) until URL (a /metrics
			// page, over HTTP/2 cleartext or HTTP/1.1) has a line matching
			// REGEXP; with !, check once that none does.
			"scrape": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 {
					ts.Fatalf("usage: scrape URL REGEXP")
				}
				re := regexp.MustCompile("(?m)" + args[1])
				var body []byte
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
					res, err := http.Get(args[0])
					if err != nil {
						continue
					}
					body, err = io.ReadAll(res.Body)
					res.Body.Close()
					if err != nil {
						continue
					}
					if neg {
						if re.Match(body) {
							ts.Fatalf("%s has a line matching %q", args[0], args[1])
						}
						return
					}
					if re.Match(body) {
						return
					}
				}
				ts.Fatalf("%s never matched %q; it holds:\n%s", args[0], args[1], body)
			},
			// connectjson FILE EVENT...: FILE (connect --json's stdout) is
			// JSON lines only, each an event with exactly the documented
			// fields, of their types; the EVENTs occur in this order (others
			// may come between).
			"connectjson": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 1 {
					ts.Fatalf("usage: connectjson FILE EVENT...")
				}
				b, err := os.ReadFile(ts.MkAbs(args[0]))
				ts.Check(err)
				want := args[1:]
				for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
					if err := checkConnectEvent(line); err != nil {
						ts.Fatalf("%s line %d %q: %v", args[0], i+1, line, err)
					}
					var e struct{ Event string }
					json.Unmarshal([]byte(line), &e)
					if len(want) > 0 && e.Event == want[0] {
						want = want[1:]
					}
				}
				if len(want) > 0 {
					ts.Fatalf("%s: no %q event in order; it holds:\n%s", args[0], want[0], b)
				}
			},
			// waitport ADDR: wait until something listens on ADDR.
			"waitport": func(ts *testscript.TestScript, neg bool, args []string) {
				deadline := time.Now().Add(20 * time.Second)
				for time.Now().Before(deadline) {
					if c, err := net.Dial("tcp", args[0]); err == nil {
						c.Close()
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				ts.Fatalf("nothing listens on %s", args[0])
			},
		},
	}
}

// connectEventSchema is the golden schema of connect --json's lines: each
// field and whether it is a string; proxy and reason only where they apply.
var connectEventSchema = map[string]bool{
	"event": true, "time": true, "session_id": true, "hotspot": true, "bytes": false, "used": false, "granted": false,
	"amount_minor": false, "currency": true, "paid_minor": false, "refunded_minor": false,
}

// checkConnectEvent checks a line of connect --json against the schema.
func checkConnectEvent(line string) error {
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	ev, _ := m["event"].(string)
	fields := maps.Clone(connectEventSchema)
	switch ev {
	case "granted", "low", "topped_up", "exhausted":
	case "online":
		fields["proxy"] = true // left out with the kernel gateway
	case "ended":
		fields["reason"] = true
	default:
		return fmt.Errorf("unknown event %q", ev)
	}
	for k, v := range m {
		str, ok := fields[k]
		if !ok {
			return fmt.Errorf("field %q is not in the schema of %s", k, ev)
		}
		if _, isStr := v.(string); isStr != str {
			return fmt.Errorf("field %q is %T", k, v)
		}
	}
	for k := range fields {
		if _, ok := m[k]; !ok && k != "proxy" {
			return fmt.Errorf("%s has no field %q", ev, k)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
		return fmt.Errorf("time: %w", err)
	}
	if m["session_id"] == "" {
		return errors.New("no session_id")
	}
	return nil
}

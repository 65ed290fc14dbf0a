package main

import (
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"sharespot": func() { os.Exit(run()) },
	})
}

// freePort returns a loopback address nobody listens on yet.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// TestScripts runs the CLI end to end: the real binary against a real
// server, as a person would (testdata/script/*.txtar).
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			for _, name := range []string{"LISTEN", "GATEWAY"} {
				addr, err := freePort()
				if err != nil {
					return err
				}
				env.Setenv(name, addr)
			}
			env.Setenv("SHARESPOT_SERVER", "http://"+env.Getenv("LISTEN"))
			env.Setenv("XDG_CONFIG_HOME", env.WorkDir+"/config")
			env.Setenv("XDG_DATA_HOME", env.WorkDir+"/data")
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
	})
}

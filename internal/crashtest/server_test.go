package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/loadgen"
)

// serverFlags are the server's settings in every run: short deadlines, so
// that a session a crash left stuck is moved on within seconds, and no
// rate limits.
var serverFlags = []string{
	"--quote-timeout", "2s", "--quote-ttl", "3s", "--grant-timeout", "2s",
	"--rate-device", "0", "--rate-ip", "0", "--log-level", "warn",
}

// serverProc runs `sharespot server` and supervises it: the first process
// carries the crash hook; when it dies of SIGKILL it is restarted without
// the hook on the same data directory, on the same port when it is free.
type serverProc struct {
	bin, dir, hook string

	mu       sync.Mutex
	addr     string    // where the current process listens ("" while none does)
	cur      *exec.Cmd // the current process
	stopping bool
	crashed  bool          // the hooked process died of SIGKILL
	late     bool          // ... while being stopped, after the flow
	crashAt  time.Time     // when it died
	downFor  time.Duration // from the crash to the restarted server listening
	errs     []error       // anything else that went wrong
	log      bytes.Buffer  // all processes' output
	done     chan struct{} // closed when the supervisor returns
}

// startServer starts the supervised server with hook ("" for none).
func startServer(t *testing.T, bin, dir, hook string) *serverProc {
	t.Helper()
	p := &serverProc{bin: bin, dir: dir, hook: hook, done: make(chan struct{})}
	go p.supervise()
	t.Cleanup(func() { p.stop() })
	return p
}

// waitListening waits, up to d, until a server listens (the hooked one,
// or the one restarted after a crash at startup).
func (p *serverProc) waitListening(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.Addr() == "" {
		select {
		case <-p.done:
			return false
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// Addr returns the current listening address ("" when none).
func (p *serverProc) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

func (p *serverProc) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

type logWriter struct{ p *serverProc }

func (w logWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.log.Write(b)
}

// supervise runs the server until stop, restarting it once the hooked
// process has crashed. Every wait is bounded.
func (p *serverProc) supervise() {
	defer close(p.done)
	listen := "127.0.0.1:0"
	for gen := 0; gen < 5; gen++ {
		hook := ""
		if gen == 0 {
			hook = p.hook
		}
		args := append([]string{"server", "--data", p.dir, "--listen", listen}, serverFlags...)
		if db := harness.DBIn(p.dir); db != "" {
			args = append(args, "--db", db)
		}
		cmd := exec.Command(p.bin, args...)
		cmd.Env = append(harness.CleanEnv(), "SHARESPOT_TEST_ACK_DELAY="+ackDelay.String())
		if hook != "" {
			cmd.Env = append(cmd.Env, "SHARESPOT_TEST_CRASH="+hook)
		}
		cmd.Stderr = logWriter{p}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			p.fail(err)
			return
		}
		p.mu.Lock()
		if p.stopping {
			p.mu.Unlock()
			return
		}
		if err := cmd.Start(); err != nil {
			p.mu.Unlock()
			p.fail(fmt.Errorf("start server: %w", err))
			return
		}
		p.cur = cmd
		p.mu.Unlock()

		addrc := make(chan string, 1)
		exitc := make(chan *os.ProcessState, 1)
		go func() {
			loadgen.WatchServerOutput(stdout, logWriter{p}, addrc)
			cmd.Wait()
			exitc <- cmd.ProcessState
		}()

		var st *os.ProcessState
		listened := false
		select {
		case a := <-addrc:
			listened = true
			p.mu.Lock()
			p.addr = a
			if !p.crashAt.IsZero() && p.downFor == 0 {
				p.downFor = time.Since(p.crashAt)
			}
			p.mu.Unlock()
			listen = a
			st = <-exitc
		case st = <-exitc:
			// Died before listening: the hook at the startup commit, or
			// the old port was taken.
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			p.fail(errors.New("server did not start listening within 20s"))
			<-exitc
			return
		}
		p.mu.Lock()
		p.addr = ""
		stopping := p.stopping
		p.mu.Unlock()
		ws, _ := st.Sys().(syscall.WaitStatus)
		killed := ws.Signaled() && ws.Signal() == syscall.SIGKILL
		switch {
		case gen == 0 && hook != "" && killed:
			p.mu.Lock()
			p.crashed, p.late, p.crashAt = true, stopping, time.Now()
			p.mu.Unlock()
			if stopping {
				return
			}
		case stopping:
			if !st.Success() && !(ws.Signaled() && ws.Signal() == syscall.SIGTERM) {
				p.fail(fmt.Errorf("server exited badly on stop: %v", st))
			}
			return
		case gen > 0 && !listened && !ws.Signaled() && listen != "127.0.0.1:0":
			// Probably the port was taken meanwhile: any port will do,
			// the clients dial whatever Addr says.
			listen = "127.0.0.1:0"
		default:
			p.fail(fmt.Errorf("server (hook %q) died unexpectedly: %v", hook, st))
			return
		}
	}
	p.fail(errors.New("server restarted too often"))
}

// stop stops the server gracefully (SIGTERM; SIGKILL after 15 s) and waits
// for the supervisor.
func (p *serverProc) stop() {
	p.mu.Lock()
	p.stopping = true
	cur := p.cur
	p.mu.Unlock()
	if cur != nil && cur.Process != nil {
		cur.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.fail(errors.New("server did not stop within 15s"))
		if cur != nil && cur.Process != nil {
			cur.Process.Kill()
		}
		<-p.done
	}
}

// result reports, after stop, whether the hooked process crashed and what
// else went wrong.
func (p *serverProc) result() (crashed, late bool, downFor time.Duration, errs []error, log string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.crashed, p.late, p.downFor, p.errs, p.log.String()
}

// newHTTPClient returns a device's HTTP client: HTTP/2 in cleartext to
// whatever address addr reports now, re-sending a request whose connection
// failed (refused, reset, lost) with a bounded backoff, as a client of a
// restarting server does. A re-sent request may reach the server twice;
// the server must make that harmless.
//
// acked, if not nil, is told the sequence of each Ack the server answered;
// refused, if not nil, each unary call the server refused, with the
// refusal's code.
func newHTTPClient(addr func() string, resent func(procedure string), acked func(seq uint64), refused func(procedure, code string)) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			a := addr()
			if a == "" {
				return nil, errors.New("crashtest: no server listening")
			}
			return d.DialContext(ctx, network, a)
		},
		MaxIdleConnsPerHost: 4,
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &resend{base: tr, budget: 10 * time.Second, resent: resent, acked: acked, refused: refused}}
}

// resend re-sends requests that failed in transport.
type resend struct {
	base    http.RoundTripper
	budget  time.Duration
	resent  func(procedure string)       // told of each request sent again
	acked   func(seq uint64)             // told of each Ack answered
	refused func(procedure, code string) // told of each unary call refused
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport.
func (rt *resend) CloseIdleConnections() {
	if c, ok := rt.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (rt *resend) RoundTrip(req *http.Request) (*http.Response, error) {
	deadline := time.Now().Add(rt.budget)
	backoff := 10 * time.Millisecond
	r := req
	for {
		resp, err := rt.base.RoundTrip(r)
		if err == nil && unary(req) {
			// A unary answer is read whole here: a server killed after it
			// began answering cuts the body off, and that is a lost answer
			// like a refused connection, re-sent the same way.
			err = readWhole(resp)
		}
		if err == nil {
			if rt.refused != nil && resp.StatusCode != http.StatusOK && unary(req) {
				rt.refused(req.URL.Path, refusalCode(resp))
			}
			if rt.acked != nil && resp.StatusCode == http.StatusOK && strings.HasSuffix(req.URL.Path, "/Ack") {
				if seq, ok := ackSeq(req); ok {
					rt.acked(seq)
				}
			}
			return resp, nil
		}
		if req.Context().Err() != nil || time.Now().After(deadline) || req.GetBody == nil {
			return nil, err
		}
		select {
		case <-req.Context().Done():
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
		body, berr := req.GetBody()
		if berr != nil {
			return nil, err
		}
		r = req.Clone(req.Context())
		r.Body = body
		if rt.resent != nil {
			rt.resent(req.URL.Path)
		}
	}
}

// unary reports whether req is a Connect unary call (streams keep their
// body open and are not buffered).
func unary(req *http.Request) bool {
	ct := req.Header.Get("Content-Type")
	return ct == "application/proto" || ct == "application/json"
}

// readWhole replaces resp.Body with its content read in full, or closes it
// and returns the error that cut it off.
func readWhole(resp *http.Response) error {
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("crashtest: answer cut off: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return nil
}

// refusalCode reads the code of a Connect unary error answer (read whole
// by readWhole, and left to be read again).
func refusalCode(resp *http.Response) string {
	b, err := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	var e struct {
		Code string `json:"code"`
	}
	if err != nil || json.Unmarshal(b, &e) != nil || e.Code == "" {
		return resp.Status
	}
	return e.Code
}

// ackSeq decodes the sequence an Ack request acknowledges (Connect unary,
// binary Protobuf, uncompressed: the client's defaults).
func ackSeq(req *http.Request) (uint64, bool) {
	if req.GetBody == nil || req.Header.Get("Content-Encoding") != "" {
		return 0, false
	}
	body, err := req.GetBody()
	if err != nil {
		return 0, false
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return 0, false
	}
	var m sharespotv1.AckRequest
	if proto.Unmarshal(b, &m) != nil {
		return 0, false
	}
	return m.Seq, true
}

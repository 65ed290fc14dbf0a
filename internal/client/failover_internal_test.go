package client

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeNet answers requests by host: a dial error for the hosts in down, a
// transport error after sending for those in broken, 200 otherwise. It
// records every request it sees as host+path and body.
type fakeNet struct {
	mu     sync.Mutex
	down   map[string]bool
	broken map[string]bool
	seen   []string
}

func (f *fakeNet) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, req.URL.Host+req.URL.Path+" "+string(body))
	switch {
	case f.down[req.URL.Host]:
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	case f.broken[req.URL.Host]:
		return nil, io.ErrUnexpectedEOF
	}
	return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("ok")), Request: req}, nil
}

func (f *fakeNet) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.seen
	f.seen = nil
	return s
}

// TestFailoverTransport drives the failover through a fake network: an
// unreachable server is skipped at once with the same request body, a
// request that failed after it was sent is not sent again but moves later
// requests on, the path below the base URL is kept on every server, and
// a duplicate or unparsable URL is no server.
func TestFailoverTransport(t *testing.T) {
	fn := &fakeNet{}
	hc := withFailover(&http.Client{Transport: fn}, []string{"http://a:1/api", "http://b:2/api/", "://bad", "https://c:3/other", "http://a:1/api"})
	const payload = "payload"
	steps := []struct {
		name         string
		down, broken []string
		wantErr      bool
		want         []string
	}{
		{"all up: the first server", nil, nil, false, []string{"a:1/api/svc/M"}},
		{"first down: the next at once, same body", []string{"a:1"}, nil, false, []string{"a:1/api/svc/M", "b:2/api/svc/M"}},
		{"stays on the server that worked", nil, nil, false, []string{"b:2/api/svc/M"}},
		{"sent, then broken: not sent again", nil, []string{"b:2"}, true, []string{"b:2/api/svc/M"}},
		{"later calls use the next server, on its own path", nil, nil, false, []string{"c:3/other/svc/M"}},
		{"all down: an error after trying each once", []string{"a:1", "b:2", "c:3"}, nil, true,
			[]string{"c:3/other/svc/M", "a:1/api/svc/M", "b:2/api/svc/M"}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			fn.down, fn.broken = map[string]bool{}, map[string]bool{}
			for _, h := range s.down {
				fn.down[h] = true
			}
			for _, h := range s.broken {
				fn.broken[h] = true
			}
			req, _ := http.NewRequest("POST", "http://a:1/api/svc/M", bytes.NewReader([]byte(payload)))
			resp, err := hc.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			if (err != nil) != s.wantErr {
				t.Errorf("err = %v, want an error: %v", err, s.wantErr)
			}
			var want []string
			for _, w := range s.want {
				want = append(want, w+" "+payload)
			}
			if got := fn.take(); !slices.Equal(got, want) {
				t.Errorf("requests\n got %q\nwant %q", got, want)
			}
		})
	}
	// Not addressed to the service: passed through untouched.
	req, _ := http.NewRequest("GET", "http://elsewhere/x", nil)
	if resp, err := hc.Do(req); err == nil {
		resp.Body.Close()
	}
	if got := fn.take(); !slices.Equal(got, []string{"elsewhere/x "}) {
		t.Errorf("a foreign request went to %q", got)
	}
}

// brokenBody fails its first read as a dead server's stream does.
type brokenBody struct{}

func (brokenBody) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }
func (brokenBody) Close() error             { return nil }

// TestFailoverOnBrokenStream: a response stream that breaks moves later
// requests to the next server, without a failed dial first.
func TestFailoverOnBrokenStream(t *testing.T) {
	var mu sync.Mutex
	var hosts []string
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		mu.Lock()
		hosts = append(hosts, req.URL.Host)
		mu.Unlock()
		return &http.Response{StatusCode: 200, Body: brokenBody{}, Request: req}, nil
	})
	hc := withFailover(&http.Client{Transport: rt}, []string{"http://a:1", "http://b:2"})
	for range 2 {
		resp, err := hc.Get("http://a:1/svc/Stream")
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if !slices.Equal(hosts, []string{"a:1", "b:2"}) {
		t.Errorf("requests went to %q, want a:1 then b:2", hosts)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// startCleartext serves h on a loopback listener through cleartext, as
// Serve does, and returns its address and a shutdown function.
func startCleartext(t *testing.T, h http.Handler, headerTimeout time.Duration) (string, func(context.Context) error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: headerTimeout, IdleTimeout: time.Minute}
	plain := newCleartext(ln, hs, context.Background())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(plain) }()
	var stopped bool
	stop := func(ctx context.Context) error {
		if stopped {
			return nil
		}
		stopped = true
		err := hs.Shutdown(ctx)
		plain.wait(ctx)
		if serr := <-errc; serr != http.ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", serr)
		}
		return err
	}
	t.Cleanup(func() { stop(context.Background()) }) //nolint:errcheck // a test's end
	return ln.Addr().String(), stop
}

func protoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Proto+" "+string(body))
	})
}

func h2cClient() *http.Client {
	return &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
}

func TestCleartextServesBothProtocols(t *testing.T) {
	addr, _ := startCleartext(t, protoHandler(), 5*time.Second)
	for _, tc := range []struct {
		name   string
		client *http.Client
		want   string
	}{
		{"HTTP/1.1", &http.Client{Transport: &http.Transport{}}, "HTTP/1.1 ping"},
		{"HTTP/2 with prior knowledge", h2cClient(), "HTTP/2.0 ping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 3 { // the same connection again
				res, err := tc.client.Post("http://"+addr+"/", "text/plain", strings.NewReader("ping"))
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if string(b) != tc.want {
					t.Fatalf("answer %q, want %q", b, tc.want)
				}
			}
		})
	}
}

// A request shorter than the preface, whose first bytes happen to be its
// start, must still be answered as HTTP/1 once a byte differs, without
// waiting for 24 bytes that never come.
func TestCleartextShortHTTP1Request(t *testing.T) {
	addr, _ := startCleartext(t, protoHandler(), 5*time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "PRI / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no HTTP/1 answer to a short request that starts like the preface: %v", err)
	}
	res.Body.Close()
}

// A connection that sends part of the preface and stops is closed at the
// header deadline, not held.
func TestCleartextStalledPrefaceClosed(t *testing.T) {
	addr, _ := startCleartext(t, protoHandler(), 300*time.Millisecond)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, h2Preface[:10]); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("a connection stalled inside the preface was still open after 10 s; the header deadline is 300 ms")
	}
	if err == nil {
		t.Fatal("the server wrote to a connection that never finished its preface")
	}
}

// Shutdown lets an HTTP/2 call in progress finish, then ends.
func TestCleartextShutdownFinishesCalls(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "finished")
	})
	addr, stop := startCleartext(t, h, 5*time.Second)
	got := make(chan string, 1)
	go func() {
		res, err := h2cClient().Get("http://" + addr + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		got <- string(b)
	}()
	<-started
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("shutdown returned (%v) while a call was in progress", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if s := <-got; s != "finished" {
		t.Fatalf("the call in progress during shutdown got %q", s)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("the listener still accepts after shutdown")
	}
}

// TestTLSH2Direct: HTTP/2 over TLS reaches the handler directly (see
// serveTLSH2) with what net/http's wrappers gave it: the TLS state, the
// remote address, a body, and the connection's base context; HTTP/1.1
// over TLS is still served.
func TestTLSH2Direct(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	type baseKey struct{}
	type seen struct {
		proto        int
		tls, local   bool
		remote, base string
		body         string
	}
	got := make(chan seen, 1)
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			base, _ := r.Context().Value(baseKey{}).(string)
			got <- seen{proto: r.ProtoMajor, tls: r.TLS != nil && r.TLS.HandshakeComplete, local: r.Context().Value(http.LocalAddrContextKey) != nil,
				remote: r.RemoteAddr, base: base, body: string(b)}
		}),
		BaseContext: func(net.Listener) context.Context { return context.WithValue(context.Background(), baseKey{}, "base") },
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	if err := serveTLSH2(hs); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.ServeTLS(ln, "", "")
	defer hs.Close()

	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // HTTP/1.1 only
		}
		res, err := (&http.Client{Transport: tr}).Post("https://"+ln.Addr().String()+"/", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		s := <-got
		want := 1
		if h2 {
			want = 2
		}
		if s.proto != want || !s.tls || !s.local || s.base != "base" || s.body != "hello" || !strings.HasPrefix(s.remote, "127.0.0.1:") {
			t.Errorf("HTTP/2 %v: the handler saw %+v", h2, s)
		}
		tr.CloseIdleConnections()
	}
}

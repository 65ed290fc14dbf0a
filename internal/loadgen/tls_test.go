package loadgen

import (
	"os"
	"strings"
	"testing"

	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/server"
)

// TestIdleOverTLS serves TLS with the bench's throwaway certificate and
// checks that its key is the owner's alone, that the bench's clients
// trust that certificate and nothing else does, that the transport is
// named, and that idle streams open over it (issue 16: measure TLS too).
func TestIdleOverTLS(t *testing.T) {
	cert, key, tc, err := SelfSignedTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v, mode %v; want 0600", key, err, fi.Mode().Perm())
	}
	env := harness.Start(t, func(c *server.Config) { c.Limits, c.TLSCert, c.TLSKey = api.Limits{}, cert, key })
	url := "https://" + strings.TrimPrefix(env.URL, "http://")
	ctx := t.Context()
	if got, err := ProbeTransport(ctx, url, nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client trusting the system's roots got %q, %v; want a certificate error", got, err)
	}
	got, err := ProbeTransport(ctx, url, tc)
	if err != nil || got != "TLS 1.3" {
		t.Fatalf("ProbeTransport = %q, %v; want TLS 1.3", got, err)
	}
	if got, err := ProbeTransport(ctx, env.URL, nil); err == nil {
		t.Fatalf("cleartext HTTP/2 to a TLS server answered %q", got)
	}
	rep, err := RunIdle(ctx, IdleConfig{URL: url, Streams: 5, TLS: tc, Measure: func(string) (IdleMem, error) { return IdleMem{}, nil }}, IdleMem{})
	if err != nil || rep.Opened != 5 {
		t.Fatalf("RunIdle over TLS: %d of 5 streams open, %v", rep.Opened, err)
	}
}

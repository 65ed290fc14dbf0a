//go:build !device

package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
)

func TestCrashHook(t *testing.T) {
	for _, bad := range []string{"now", "before:", "before:0", "after:-1", "during:3", "after:x", "after:Report Usage", "during:Pay"} {
		if _, err := crashHook(bad); err == nil {
			t.Errorf("crashHook(%q) accepted", bad)
		}
	}
	if h, err := crashHook(""); err != nil || h != nil {
		t.Fatalf("empty spec: %v, hook set: %v", err, h != nil)
	}
	for _, good := range []string{"after:3", "before:1", "after:ReportUsage", "before:Pay"} {
		if h, err := crashHook(good); err != nil || h == nil {
			t.Fatalf("%s: %v", good, err)
		}
	}
}

func TestAckDelayEnv(t *testing.T) {
	for _, bad := range []string{"10", "-5ms", "0s", "soon"} {
		if _, err := ackDelay(bad); err == nil || !strings.Contains(err.Error(), "SHARESPOT_TEST_ACK_DELAY") {
			t.Errorf("ackDelay(%q) = %v, want a refusal naming the variable", bad, err)
		}
	}
	if d, err := ackDelay(""); err != nil || d != 0 {
		t.Fatalf("unset: %v, %v; want the default (0)", d, err)
	}
	if d, err := ackDelay("10ms"); err != nil || d != 10*time.Millisecond {
		t.Fatalf("10ms: %v, %v", d, err)
	}
}

func TestServerConfigRefusesBadFlags(t *testing.T) {
	tests := []struct {
		name string
		cmd  ServerCmd
		want string
	}{
		{"fee above 100%", ServerCmd{FeeBPS: 10001, Suites: "x25519-hkdf-sha256-chacha20poly1305"}, "--fee-bps"},
		{"negative fee", ServerCmd{FeeBPS: -1, Suites: "x25519-hkdf-sha256-chacha20poly1305"}, "--fee-bps"},
		{"unknown suite", ServerCmd{Suites: "rot13"}, "--suites"},
		{"cert without key", ServerCmd{TLSCert: "c.pem", Suites: "x25519-hkdf-sha256-chacha20poly1305"}, "--tls-cert and --tls-key"},
		{"negative connection cap", ServerCmd{MaxConnsIP: -1, Suites: "x25519-hkdf-sha256-chacha20poly1305"}, "--max-conns-ip"},
		{"negative body timeout", ServerCmd{BodyTimeout: -time.Second, Suites: "x25519-hkdf-sha256-chacha20poly1305"}, "--body-timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cmd.config(nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("config() = %v, want an error naming %s", err, tt.want)
			}
		})
	}
	good := ServerCmd{FeeBPS: 250, Suites: "mlkem768x25519-hkdf-sha256-chacha20poly1305, x25519-hkdf-sha256-chacha20poly1305", AnnounceSuite: true,
		MaxInflightIP: 7, MaxStreamsIP: 8, MaxConnsIP: 9, BodyTimeout: time.Second, IdleTimeout: time.Minute}
	cfg, err := good.config(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Session.FeeBPS != 250 || len(cfg.Session.Suites) != 2 || !cfg.Session.Announce {
		t.Fatalf("config = %+v", cfg.Session)
	}
	l := cfg.Limits
	if l.PerIPInFlight != 7 || l.PerIPStreams != 8 || l.PerIPConns != 9 || l.Conns != connCap(fileLimit()) ||
		cfg.BodyTimeout != time.Second || cfg.IdleTimeout != time.Minute {
		t.Fatalf("limits %+v, body timeout %v, idle timeout %v", l, cfg.BodyTimeout, cfg.IdleTimeout)
	}
}

// TestConnCap: the default cap on connections leaves room below the
// open-files limit.
func TestConnCap(t *testing.T) {
	tests := []struct {
		files uint64
		want  int
	}{
		{0, 0},            // unknown
		{1 << 63, 0},      // unlimited
		{300, 150},        // small: half
		{1024, 768},       // 256 kept
		{20_000, 18_000},  // a tenth kept
		{1 << 20, 943719}, // 1048576 - 104857
	}
	for _, tt := range tests {
		if got := connCap(tt.files); got != tt.want {
			t.Errorf("connCap(%d) = %d, want %d", tt.files, got, tt.want)
		}
	}
}

func TestErrTextDropsTheCodeOfARefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("request access: %w", connect.NewError(connect.CodeInvalidArgument, errors.New("the smallest purchase here is 1 MB; you asked for 500 kB"))),
			"request access: the smallest purchase here is 1 MB; you asked for 500 kB"},
		{fmt.Errorf("pay: %w", connect.NewError(connect.CodeFailedPrecondition, errors.New("session ses_x is ended"))), "pay: session ses_x is ended"},
		// Not a refusal: the code says what kind of failure it was.
		{fmt.Errorf("cannot reach the server at x: %w", connect.NewError(connect.CodeUnavailable, errors.New("dial tcp: refused"))),
			"cannot reach the server at x: unavailable: dial tcp: refused"},
		{errors.New("plain \x1b[31m"), `plain \x1b[31m`},
	} {
		if got := errText(tc.err); got != tc.want {
			t.Errorf("errText(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

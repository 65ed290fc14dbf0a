//go:build !device

package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/identity"
)

// syncBuffer is a bytes.Buffer that goroutines may write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// checkTerminalSafe fails t if what would reach the terminal holds a
// control character other than a line end, or invalid UTF-8.
func checkTerminalSafe(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Errorf("%s is not valid UTF-8: %q", what, s)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return r != '\n' && unicode.IsControl(r) }); i >= 0 {
		t.Errorf("%s holds a control character at %d: %q", what, i, s)
	}
}

// A host controls the text of its SSID, its decline reasons and its end
// reasons. None of it reaches the guest's terminal with its control
// characters: a host cannot retitle the guest's window, clear its screen or
// forge lines on it.
func TestHostTextReachesTheGuestSafely(t *testing.T) {
	const evil = "\x1b]0;pwned\a\x1b[2J\u009b31m" // a proto string: valid UTF-8
	ctx := t.Context()
	e := harness.Start(t, nil)
	dir := t.TempDir()

	hostC := e.Device(t, "host")
	ssid := []byte("Cafe\u009b2J\u202e") // C1 CSI and a bidi override
	if _, err := hostC.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: ssid, Bssid: "02:5e:00:00:00:01", Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: 1_000_000, MinPurchaseBytes: 1_000_000, TopupPriceMinor: 10},
		ShareableBytes: 1_000_000_000, WarnAtBytes: 100_000,
	}})); err != nil {
		t.Fatal(err)
	}
	// The host declines the first request and accepts the next.
	var asked sync.Mutex
	requests := 0
	agent := &host.Agent{C: hostC, GW: &gateway.CodeGate{Address: "127.0.0.1:9"},
		Decide: func(*sharespotv1.AccessRequested) (bool, string) {
			asked.Lock()
			defer asked.Unlock()
			requests++
			return requests > 1, evil
		}}
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	harness.Listen(t, hostC, agent.Handle)

	keyPath := filepath.Join(dir, "guest.key")
	key, _, err := identity.LoadOrCreate(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	guestC := client.New(e.URL, key, client.Options{})
	if err := guestC.SignIn(ctx); err != nil {
		t.Fatal(err)
	}
	e.Fund(t, guestC, "EUR", 1000)
	scanFile := filepath.Join(dir, "scan.json")
	if err := os.WriteFile(scanFile, []byte(`[{"ssid_hex": "`+hex.EncodeToString(ssid)+`", "bssid": "02:5e:00:00:00:01", "signal_dbm": -48, "security": "wpa2"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := deviceFlags{identityFlag: identityFlag{Identity: keyPath}, Server: e.URL}
	scan := scanFlags{ScanFile: scanFile}

	t.Run("scan", func(t *testing.T) {
		var out syncBuffer
		cmd := &ScanCmd{deviceFlags: dev, scanFlags: scan}
		if err := cmd.Run(&runEnv{ctx: ctx, stdout: &out, stderr: &out}); err != nil {
			t.Fatal(err)
		}
		checkTerminalSafe(t, "scan's output", out.String())
		if !strings.Contains(out.String(), "0x"+hex.EncodeToString(ssid)) {
			t.Errorf("scan does not show the SSID in hex:\n%s", out.String())
		}
	})

	runConnect := func(t *testing.T) (string, error) {
		var out syncBuffer
		cmd := &ConnectCmd{deviceFlags: dev, scanFlags: scan, guestStateFlags: guestStateFlags{State: filepath.Join(dir, "state")},
			Target: "02:5e:00:00:00:01", Buy: "1MB", Yes: true}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err := cmd.Run(&runEnv{ctx: cctx, stdout: &out, stderr: &out})
		return out.String(), err
	}

	t.Run("decline reason", func(t *testing.T) {
		out, err := runConnect(t)
		if err == nil {
			t.Fatal("connect succeeded on a declined request")
		}
		checkTerminalSafe(t, "connect's output", out)
		checkTerminalSafe(t, "the error connect prints", errText(err))
		// The server drops control characters from a reason (and the
		// client escapes any that still came): what is left is shown.
		if !strings.Contains(errText(err), `declined by host: ]0;pwned`) {
			t.Errorf("the error does not show the reason: %q", errText(err))
		}
	})

	t.Run("end reason", func(t *testing.T) {
		// Once the guest is online, the host ends the session with its
		// own reason.
		go func() {
			for ctx.Err() == nil {
				res, err := hostC.Sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
				if err == nil {
					for _, s := range res.Msg.Sessions {
						if s.State == sharespotv1.SessionState_SESSION_STATE_ACTIVE {
							hostC.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: s.Id, Reason: evil}))
							return
						}
					}
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		out, err := runConnect(t)
		if err != nil {
			t.Fatalf("connect: %v\n%s", err, out)
		}
		checkTerminalSafe(t, "connect's output", out)
		if !strings.Contains(out, `the session ended (ended by host: ]0;pwned`) {
			t.Errorf("connect does not show the end reason:\n%s", out)
		}
	})
}

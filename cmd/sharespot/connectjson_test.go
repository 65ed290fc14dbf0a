//go:build !device

package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestConnectEventGolden: the JSON lines of connect --json, field by field
// as scripts read them (a renamed or retyped field fails here and in the
// topup script's schema check).
func TestConnectEventGolden(t *testing.T) {
	var b bytes.Buffer
	l := newEventLog(&b)
	l.now = func() time.Time { return time.Date(2026, 12, 5, 21, 30, 0, 123e6, time.FixedZone("CET", 3600)) }
	l.emit(connectEvent{Event: evOnline, SessionID: "ses_x", Hotspot: "Cafe", Used: 0, Granted: 2_000_000, Currency: "EUR", Proxy: "127.0.0.1:1081"})
	l.emit(connectEvent{Event: evToppedUp, SessionID: "ses_x", Hotspot: "Cafe", Bytes: 2_000_000, Used: 1_200_000, Granted: 4_000_000, AmountMinor: 20, Currency: "EUR"})
	l.emit(connectEvent{Event: evEnded, SessionID: "ses_x", Hotspot: "Cafe", Used: 1_500_000, Granted: 4_000_000, AmountMinor: 15, Currency: "EUR",
		PaidMinor: 40, RefundedMinor: 25, Reason: "guest stopped"})
	var lines []string
	for _, line := range bytes.Split(bytes.TrimSuffix(b.Bytes(), []byte("\n")), []byte("\n")) {
		lines = append(lines, string(line))
		if err := checkConnectEvent(string(line)); err != nil {
			t.Errorf("%s: %v", line, err)
		}
	}
	want := []string{
		`{"event":"online","time":"2026-12-05T20:30:00.123Z","session_id":"ses_x","hotspot":"Cafe","bytes":0,"used":0,"granted":2000000,"amount_minor":0,"currency":"EUR","paid_minor":0,"refunded_minor":0,"proxy":"127.0.0.1:1081"}`,
		`{"event":"topped_up","time":"2026-12-05T20:30:00.123Z","session_id":"ses_x","hotspot":"Cafe","bytes":2000000,"used":1200000,"granted":4000000,"amount_minor":20,"currency":"EUR","paid_minor":0,"refunded_minor":0}`,
		`{"event":"ended","time":"2026-12-05T20:30:00.123Z","session_id":"ses_x","hotspot":"Cafe","bytes":0,"used":1500000,"granted":4000000,"amount_minor":15,"currency":"EUR","paid_minor":40,"refunded_minor":25,"reason":"guest stopped"}`,
	}
	if d := cmp.Diff(want, lines); d != "" {
		t.Errorf("connect --json lines (-want +got):\n%s", d)
	}
}

package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/live")

// golden compares got with testdata/live/name.golden (-update rewrites it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", "live", name+".golden")
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs (-want +got):\n%s", p, d)
	}
}

func TestRenderGuests(t *testing.T) {
	tests := []struct {
		name string
		rows []guestRow
	}{
		{"empty", nil},
		{"guests", []guestRow{
			{Session: "ses_b", Guest: "GUESTBBBBBBB", State: "low", Used: 4_200_000, Granted: 5_000_000, Paid: 50, Currency: "EUR"},
			{Session: "ses_a", Guest: "GUESTAAAAAAA", State: "online", Used: 1_500_000, Granted: 10_000_000, Paid: 100, Currency: "EUR"},
			{Session: "ses_c", Guest: "GUESTCCCCCCC", State: "asked"},
			{Session: "ses_d", Guest: "GUESTDDDDDDD", State: "cut off", Used: 6_000_000, Granted: 5_000_000, Paid: 50, Currency: "EUR"},
		}},
		{"yen", []guestRow{{Session: "ses_y", Guest: "GUESTYYYYYYY", State: "online", Used: 1, Granted: 3, Paid: 1000, Currency: "JPY"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := "EUR"
			if tt.name == "yen" {
				cur = "JPY"
			}
			golden(t, "guests-"+tt.name, renderGuests(tt.rows, cur))
		})
	}
}

func TestGuestRowEarned(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    guestRow
		want int64
	}{
		{"nothing granted", guestRow{Paid: 100}, 0},
		{"half used", guestRow{Paid: 100, Granted: 10, Used: 5}, 50},
		{"rounds down", guestRow{Paid: 100, Granted: 3, Used: 1}, 33},
		{"overuse counts as all", guestRow{Paid: 100, Granted: 10, Used: 11}, 100},
		{"no overflow", guestRow{Paid: 1 << 40, Granted: 1 << 40, Used: 1 << 39}, 1 << 39},
		// By tranches, each at its own price: 10 MB for 100, then 20 MB
		// for 240 (a dearer top-up). 31 MB of 30 granted: all of both.
		{"tranches: the first half used", guestRow{Paid: 340, Granted: 30e6, Used: 5e6, Tranches: []tranche{{10e6, 100}, {20e6, 240}}}, 50},
		{"tranches: into the second", guestRow{Paid: 340, Granted: 30e6, Used: 15e6, Tranches: []tranche{{10e6, 100}, {20e6, 240}}}, 160},
		{"tranches: a top-up paid, not yet granted, adds nothing", guestRow{Paid: 700, Granted: 30e6, Used: 15e6, Tranches: []tranche{{10e6, 100}, {20e6, 240}}}, 160},
		{"tranches: overuse counts as all", guestRow{Paid: 340, Granted: 30e6, Used: 31e6, Tranches: []tranche{{10e6, 100}, {20e6, 240}}}, 340},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.earned(); got != tt.want {
				t.Errorf("earned = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestGuestViewTerminal: on a terminal, events go above the table and the
// table is erased and drawn again; the transcript is the golden file.
func TestGuestViewTerminal(t *testing.T) {
	for _, tty := range []bool{true, false} {
		name := "plain"
		if tty {
			name = "terminal"
		}
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			v := newGuestView(&b, tty, "EUR")
			v.event("ses_a  a guest asks for 5 MB", "ses_a", func(r *guestRow) { r.State, r.Guest = "asked", "GUESTAAAAAAA" })
			v.event("ses_a  paid and granted: 5 MB", "ses_a", func(r *guestRow) { r.State, r.Granted, r.Paid = "granted", 5_000_000, 50 })
			v.usage("ses_a", 2_500_000, 5_000_000)
			v.usage("ses_a", 2_500_000, 5_000_000) // unchanged: nothing drawn
			v.ask("guest GUESTBB wants 1 MB for €0.10. Accept? [Y/n] ")
			v.usage("ses_a", 3_000_000, 5_000_000) // held while the question waits
			v.answered()
			v.event("ses_a  ended after 3 MB; you earned €0.28", "ses_a", func(r *guestRow) { r.State = "ended" })
			golden(t, "view-"+name, b.String())
		})
	}
}

func TestProgress(t *testing.T) {
	for _, tty := range []bool{true, false} {
		name := "plain"
		if tty {
			name = "terminal"
		}
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			p := &progress{w: &b, tty: tty}
			p.update(0, 5_000_000)
			p.update(0, 5_000_000) // unchanged
			p.update(2_000_000, 5_000_000)
			p.printf("added %s\n", "5 MB")
			p.update(2_000_000, 10_000_000)
			p.update(12_000_000, 10_000_000) // never past full
			golden(t, "progress-"+name, b.String())
		})
	}
}

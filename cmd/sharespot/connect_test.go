package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
)

// TestTopUpFeeAsAsked: after "Buy 2 MB more for €0.20?" a fee of €0.20
// for 2 MB is paid without a second question; a fee that differs is said
// and asked about again (here answered no).
func TestTopUpFeeAsAsked(t *testing.T) {
	const MB = 1_000_000
	for _, tc := range []struct {
		name, input string
		fee         int64
		want        bool
		wantOut     string
	}{
		{"the price asked: paid", "", 20, true, "Paying €0.20 for 2 MB.\n"},
		{"another price: asked again", "n\n", 15, false, "The host asks €0.15 for 2 MB, not the €0.20 for 2 MB you said yes to. Pay? [y/N] "},
		{"another price, yes", "y\n", 15, true, "The host asks €0.15 for 2 MB, not the €0.20 for 2 MB you said yes to. Pay? [y/N] "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			r := &guestRun{c: &ConnectCmd{}, ses: &guest.Session{}, ask: newAsker(strings.NewReader(tc.input), &out), out: &out}
			o := r.buyOptions(false, 20, 2*MB)
			q := &sharespotv1.Quote{Id: "q", Bytes: 2 * MB, AmountMinor: tc.fee, Currency: "EUR", Kind: sharespotv1.QuoteKind_QUOTE_KIND_TOPUP}
			if got := o.Approve(context.Background(), q); got != tc.want || out.String() != tc.wantOut {
				t.Errorf("Approve = %v, said %q; want %v, %q", got, out.String(), tc.want, tc.wantOut)
			}
		})
	}
}

// TestAutoTopUpWaitsForHalf: a prompt with more than half of the last
// purchase left (a host that prompts at once) does not make --yes buy: it
// waits, and says so.
func TestAutoTopUpWaitsForHalf(t *testing.T) {
	const MB = 1_000_000
	var out bytes.Buffer
	r := &guestRun{c: &ConnectCmd{Yes: true}, ses: &guest.Session{}, out: &out, prog: &progress{w: &out},
		want: 2 * MB, tranche: 2 * MB, granted: 2 * MB, used: 83}
	if err := r.topUp("Data is running low."); err != nil {
		t.Fatal(err)
	}
	if !r.waiting || !strings.Contains(out.String(), "Buying 2 MB more (--yes) once 1 MB is left") {
		t.Errorf("waiting %v, said %q", r.waiting, out.String())
	}
}

//go:build !device

package main

import (
	"slices"
	"strings"

	"github.com/sharespot/sharespot/internal/session"
)

// auditJSON is `wallet audit --json`: what the text says, field by field
// (see jsonout.go for the conventions).
type auditJSON struct {
	OK bool `json:"ok"` // the ledger is consistent, no ended session holds escrow, the hosts' records match
	// Sums: every currency the ledger holds, with the sum of all its
	// balances (0 when consistent).
	Sums []auditSum `json:"sums"`
	// Negative and Drift name the accounts below zero that may not be, and
	// those whose balance differs from their transfers.
	Negative []string      `json:"negative_accounts"`
	Drift    []string      `json:"drifted_accounts"`
	Sessions auditSessions `json:"sessions"`
	Usage    auditUsage    `json:"usage"`
	// RecordDrift: hosts whose record shown in discovery differs from
	// their settled verified sessions (empty when consistent).
	RecordDrift []string `json:"host_record_drift"`
}

type auditSum struct {
	Currency string `json:"currency"`
	SumMinor int64  `json:"sum_minor"`
}

type auditSessions struct {
	Open            int64 `json:"open"`
	Ended           int64 `json:"ended"`
	EndedWithEscrow int64 `json:"ended_with_escrow"`
	// EndedUnmarked: ended without their end time (0 when consistent).
	EndedUnmarked int64 `json:"ended_without_end_time"`
}

type auditUsage struct {
	VerifiedSessions   int          `json:"verified_sessions"`
	UnverifiedSessions int          `json:"unverified_sessions"`
	Hosts              []auditHost  `json:"hosts"`
	WithholdingGuests  []auditGuest `json:"withholding_guests"`
}

// auditHost is a host's counts against its guests' acknowledgments.
type auditHost struct {
	HostDeviceID       string `json:"host_device_id"`
	VerifiedSessions   int    `json:"verified_sessions"`
	UnverifiedSessions int    `json:"unverified_sessions"`
	OverCounted        int    `json:"over_counted_sessions"` // counted past the acknowledgments plus the window
	HeldGuests         int    `json:"held_guest_sessions"`   // its guest stopped acknowledging and was held
	HostBytes          int64  `json:"host_bytes"`
	AckedBytes         int64  `json:"acked_bytes"`
}

// auditGuest is a guest that stopped acknowledging in verified sessions.
type auditGuest struct {
	GuestDeviceID string `json:"guest_device_id"`
	Sessions      int    `json:"sessions"`
}

func auditOf(rep session.AuditReport) auditJSON {
	a := rep.Ledger
	out := auditJSON{OK: rep.OK(), Sums: []auditSum{}, Negative: append([]string{}, a.Negative...), Drift: append([]string{}, a.Drift...),
		Sessions: auditSessions{rep.Open, rep.Ended, rep.HeldAfterEnd, rep.EndedUnmarked},
		Usage:    auditUsage{Hosts: []auditHost{}, WithholdingGuests: []auditGuest{}}, RecordDrift: append([]string{}, rep.RecordDrift...)}
	for cur, sum := range a.Sums {
		out.Sums = append(out.Sums, auditSum{cur, sum})
	}
	slices.SortFunc(out.Sums, func(x, y auditSum) int { return strings.Compare(x.Currency, y.Currency) })
	for _, h := range rep.Usage.Hosts {
		out.Usage.VerifiedSessions += h.Verified
		out.Usage.UnverifiedSessions += h.Unverified
		out.Usage.Hosts = append(out.Usage.Hosts, auditHost{h.Host, h.Verified, h.Unverified, h.Overclaimed, h.Held, h.HostBytes, h.AckedBytes})
	}
	for _, g := range rep.Usage.Guests {
		out.Usage.WithholdingGuests = append(out.Usage.WithholdingGuests, auditGuest{g.Guest, g.Sessions})
	}
	return out
}

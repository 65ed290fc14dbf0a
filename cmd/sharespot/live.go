package main

import (
	"context"
	"fmt"
	"io"
	"math/big"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/size"
)

// isTerminal reports whether w is a terminal (a character device), where
// live views redraw in place; anywhere else they write plain log lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// ANSI control sequences for redrawing in place.
const (
	eraseLine = "\r\x1b[K" // to the line's start, erase it
	eraseDown = "\x1b[J"   // erase from the cursor to the screen's end
)

func cursorUp(n int) string { return fmt.Sprintf("\x1b[%dA", n) }

// progress is connect's live view of used against granted volume (C1.7).
// On a terminal the bar is redrawn in place on one line; elsewhere a line
// is written when usage changes.
type progress struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex
	last string // the bar on screen ("" if none)
}

// update shows the bar for used of granted.
func (p *progress) update(used, granted int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := bar(used, granted)
	if b == p.last {
		return
	}
	if p.tty {
		fmt.Fprint(p.w, eraseLine+b)
	} else {
		fmt.Fprintln(p.w, b)
	}
	p.last = b
}

// printf writes a message, first moving off the bar's line on a terminal
// (the bar is drawn again at the next update).
func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.last != "" {
		fmt.Fprint(p.w, eraseLine)
		p.last = ""
	}
	fmt.Fprintf(p.w, format, args...)
}

// guestRow is one guest in share's live view.
type guestRow struct {
	Session  string
	Guest    string // device ID
	State    string // asked, paid, online, low, cut off, ended
	Used     int64
	Granted  int64
	Paid     int64 // minor units paid into escrow so far
	Currency string
	// Tranches are the granted quotes in grant order, as the server
	// settles them: what was used is billed tranche by tranche.
	Tranches []tranche
}

// tranche is one granted quote: its volume and price.
type tranche struct{ Bytes, Amount int64 }

// earned is what the guest's use so far is worth, before the platform
// fee, as the server settles it: used bytes consumed tranche by tranche in
// grant order, each billed at its own price, rounded down. It never goes
// down (usage only grows; a top-up paid but not yet granted adds nothing).
// Without the tranches known, floor(paid × used / granted).
func (r guestRow) earned() int64 {
	if len(r.Tranches) > 0 {
		rest, sum := max(r.Used, 0), int64(0)
		for _, t := range r.Tranches {
			u := min(rest, t.Bytes)
			rest -= u
			if u > 0 && t.Bytes > 0 {
				var n big.Int
				n.Mul(big.NewInt(t.Amount), big.NewInt(u))
				sum += n.Quo(&n, big.NewInt(t.Bytes)).Int64()
			}
		}
		return sum
	}
	if r.Granted <= 0 || r.Paid <= 0 {
		return 0
	}
	used := min(max(r.Used, 0), r.Granted)
	var n big.Int
	n.Mul(big.NewInt(r.Paid), big.NewInt(used))
	n.Quo(&n, big.NewInt(r.Granted))
	return n.Int64()
}

// renderGuests draws share's live view: one line per guest, oldest
// session first, with a bar of used against granted and the earnings.
func renderGuests(rows []guestRow, currency string) string {
	var b strings.Builder
	if len(rows) == 0 {
		b.WriteString("no guests yet\n")
		return b.String()
	}
	rs := slices.Clone(rows)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Session < rs[j].Session })
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tGUEST\tSTATE\tUSED / GRANTED\tEARNED")
	var total int64
	for _, r := range rs {
		cur := r.Currency
		if cur == "" {
			cur = currency
		}
		total += r.earned()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Session, short(r.Guest), r.State, bar(r.Used, r.Granted), client.FormatMoney(r.earned(), cur))
	}
	fmt.Fprintf(tw, "\t\t\t%d guest(s)\t%s before the platform fee\n", len(rs), client.FormatMoney(total, currency))
	tw.Flush()
	return b.String()
}

// guestView is share's live view. Events are written as log lines; on a
// terminal the table of guests below them is redrawn in place, elsewhere a
// guest's usage is written as a line when it changes.
type guestView struct {
	serverDown atomic.Bool // said unreachable, not yet back
	w          io.Writer
	tty        bool
	currency   string

	mu     sync.Mutex
	rows   map[string]*guestRow
	drawn  int               // lines of the table on screen
	logged map[string]string // non-terminal: last usage line per session
	paused bool              // a question is on screen
}

func newGuestView(w io.Writer, tty bool, currency string) *guestView {
	return &guestView{w: w, tty: tty, currency: currency, rows: map[string]*guestRow{}, logged: map[string]string{}}
}

// row returns the session's row, creating it.
func (v *guestView) row(sid string) *guestRow {
	r := v.rows[sid]
	if r == nil {
		r = &guestRow{Session: sid, Currency: v.currency}
		v.rows[sid] = r
	}
	return r
}

// event writes a log line and changes a row.
func (v *guestView) event(line string, sid string, change func(*guestRow)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.clear()
	if line != "" {
		fmt.Fprintln(v.w, line)
	}
	if change != nil && sid != "" {
		change(v.row(sid))
	}
	v.draw()
}

// usage sets a session's metered usage (from the gateway).
func (v *guestView) usage(sid string, used, granted int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.rows[sid]
	if r == nil || (r.Used == used && r.Granted == granted) {
		return
	}
	r.Used, r.Granted = used, granted
	if v.paused {
		return // drawn, or logged, once the question is answered
	}
	if !v.tty {
		line := fmt.Sprintf("%s  used %s of %s; earned %s", sid, size.Format(r.Used), size.Format(r.Granted), client.FormatMoney(r.earned(), r.Currency))
		if v.logged[sid] != line {
			fmt.Fprintln(v.w, line)
			v.logged[sid] = line
		}
		return
	}
	v.clear()
	v.draw()
}

// ask holds the view still while a question waits for an answer.
func (v *guestView) ask(question string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.clear()
	v.paused = true
	fmt.Fprint(v.w, question)
}

// answered lets the view redraw again.
func (v *guestView) answered() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.paused = false
	v.draw()
}

// clear erases the table on a terminal.
func (v *guestView) clear() {
	if v.tty && v.drawn > 0 {
		fmt.Fprint(v.w, cursorUp(v.drawn)+eraseDown)
		v.drawn = 0
	}
}

func (v *guestView) draw() {
	if !v.tty || v.paused {
		return
	}
	rows := make([]guestRow, 0, len(v.rows))
	for _, r := range v.rows {
		rows = append(rows, *r)
	}
	s := renderGuests(rows, v.currency)
	fmt.Fprint(v.w, s)
	v.drawn = strings.Count(s, "\n")
}

// sessions lists the sessions in the view that have not ended.
func (v *guestView) sessions() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var ids []string
	for id, r := range v.rows {
		if r.State != "ended" {
			ids = append(ids, id)
		}
	}
	return ids
}

// notify shows what the host agent tells (host.Host.Notify).
func (v *guestView) notify(what, sid string, used, quota int64) {
	switch what {
	case "request":
		v.event(fmt.Sprintf("%s  a guest asks for %s", sid, size.Format(quota)), sid, func(r *guestRow) { r.State = "asked" })
	case "granted":
		v.event(fmt.Sprintf("%s  paid and granted: %s", sid, size.Format(quota)), sid, func(r *guestRow) { r.State, r.Used, r.Granted = "granted", used, quota })
	case "online":
		v.event(fmt.Sprintf("%s  guest online", sid), sid, func(r *guestRow) { r.State = "online" })
	case "low":
		v.event(fmt.Sprintf("%s  %s of %s used: prompted the guest", sid, size.Format(used), size.Format(quota)), sid,
			func(r *guestRow) { r.State, r.Used, r.Granted = "low", used, quota })
	case "exhausted":
		v.event(fmt.Sprintf("%s  all %s used: guest cut off", sid, size.Format(quota)), sid, func(r *guestRow) { r.State, r.Used = "cut off", used })
	case "ending":
		v.event(fmt.Sprintf("%s  the guest left: revoked at the gateway, final count sent", sid), sid, func(r *guestRow) { r.State = "ending" })
	case "ended":
		v.event(fmt.Sprintf("%s  ended after %s; you earned %s", sid, size.Format(used), client.FormatMoney(quota, v.currency)), sid,
			func(r *guestRow) { r.State, r.Used = "ended", used })
	}
}

// serverStatus says once that the server is unreachable and once that it
// is back, whichever notices first: the inbox stream (at once, as it
// breaks or reconnects, to the next --server with several) or the view's
// refresh (every 5 s).
func (v *guestView) serverStatus(server string, err error) {
	switch {
	case err != nil && !v.serverDown.Swap(true):
		v.event(fmt.Sprintf("the server at %s is unreachable (%s); guests online keep their access, retrying", server, errText(err)), "", nil)
	case err == nil && v.serverDown.Swap(false):
		v.event(fmt.Sprintf("the server is reachable again, at %s", server), "", nil)
	}
}

// follow keeps the view current until ctx ends: this host's sessions from
// the server every 5 s, usage from the gateway every second (no radio, no
// guest: loopback calls only). A server outage is said once, and its end
// once: guests already online keep their access meanwhile.
func (v *guestView) follow(ctx context.Context, cl *client.Client, gw usageMeter) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for n := 0; ; n++ {
		if n%5 == 0 {
			if err := v.refresh(ctx, cl.Sessions, cl.DeviceID(), gw); ctx.Err() == nil {
				v.serverStatus(cl.Server(), err)
			}
		} else {
			for _, id := range v.sessions() {
				if used, quota, err := gw.Usage(id); err == nil {
					v.usage(id, used, quota)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sessionLister is what the view needs of the server.
type sessionLister interface {
	ListSessions(context.Context, *connect.Request[sharespotv1.ListSessionsRequest]) (*connect.Response[sharespotv1.ListSessionsResponse], error)
}

// usageMeter is what the view needs of the gateway.
type usageMeter interface {
	Usage(sessionID string) (used, quota int64, err error)
}

// refresh fills the view from the server (this host's open sessions:
// guest, paid, granted) and the gateway (metered usage).
func (v *guestView) refresh(ctx context.Context, sessions sessionLister, hostID string, gw usageMeter) error {
	res, err := sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
	if err != nil {
		return fmt.Errorf("list sessions: %w", err)
	}
	v.mu.Lock()
	for id, r := range v.rows {
		if r.State == "ended" { // shown ended until this refresh
			delete(v.rows, id)
			delete(v.logged, id)
		}
	}
	for _, s := range res.Msg.Sessions {
		if s.HostDeviceId != hostID {
			continue
		}
		r := v.row(s.Id)
		r.Guest, r.Paid, r.Granted = s.GuestDeviceId, s.PaidMinor, s.GrantedBytes
		r.Tranches = tranchesOf(s)
		if s.Currency != "" {
			r.Currency = s.Currency
		}
		r.Used = max(r.Used, s.UsedBytes)
		if r.State == "" || r.State == "asked" {
			r.State = stateName(s.State)
		}
	}
	v.mu.Unlock()
	for _, id := range v.sessions() {
		if used, quota, err := gw.Usage(id); err == nil {
			v.usage(id, used, quota)
		}
	}
	v.event("", "", nil) // redraw
	return nil
}

// tranchesOf is a session's granted quotes in grant order.
func tranchesOf(s *sharespotv1.Session) []tranche {
	qs := slices.Clone(s.GetQuotes())
	qs = slices.DeleteFunc(qs, func(q *sharespotv1.Quote) bool { return q.State != sharespotv1.QuoteState_QUOTE_STATE_GRANTED })
	slices.SortFunc(qs, func(a, b *sharespotv1.Quote) int { return int(a.Tranche - b.Tranche) })
	out := make([]tranche, len(qs))
	for i, q := range qs {
		out[i] = tranche{q.Bytes, q.AmountMinor}
	}
	return out
}

func stateName(s sharespotv1.SessionState) string {
	switch s {
	case sharespotv1.SessionState_SESSION_STATE_REQUESTED, sharespotv1.SessionState_SESSION_STATE_QUOTED:
		return "asked"
	case sharespotv1.SessionState_SESSION_STATE_PAID, sharespotv1.SessionState_SESSION_STATE_CONFIRMED:
		return "paid"
	case sharespotv1.SessionState_SESSION_STATE_ACTIVE:
		return "granted"
	case sharespotv1.SessionState_SESSION_STATE_ENDING:
		return "ending"
	case sharespotv1.SessionState_SESSION_STATE_ENDED:
		return "ended"
	}
	return "?"
}

package dashboard

import (
	"fmt"
	"sort"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

// Days is how many days the by-day tables and charts cover.
const Days = 14

const dayMS = int64(24 * time.Hour / time.Millisecond)

var ended = int64(sharespotv1.SessionState_SESSION_STATE_ENDED)

// Hotspot is one of a host's hotspots.
type Hotspot struct {
	ID, SSID, BSSID, Currency      string
	PriceMinor, UnitBytes          int64
	ShareableBytes, CommittedBytes int64
	Active                         bool
	// Record is the hotspot's host's record, as guests see it beside the
	// price (protocol.RecordText).
	Record string
	// Status: "online", "offline, last there … ago" (its host's agent is
	// away: not offered) or "withdrawn".
	Status string
}

// LiveSession is a session not yet ended.
type LiveSession struct {
	ID, Hotspot, Host, Guest, State, Currency string
	UsedBytes, GrantedBytes, PaidMinor        int64
	CreatedMS                                 int64
	// Samples are its usage reports, oldest first (at most maxSamples,
	// the latest), after a first point of nothing used at its creation
	// when they reach back that far.
	Samples []Sample
	// Rate is its bytes per second between its last two reports, or -1
	// where it cannot be told: fewer than two reports, or none for
	// staleAfter (its host is not reporting).
	Rate int64
}

// Sample is a session's usage count at a time.
type Sample struct {
	AtMS, Used int64
}

// maxSamples bounds a live session's samples the dashboard reads;
// staleAfter is how long after its last report a rate is still shown.
const (
	maxSamples = 180
	staleAfter = time.Minute
)

// RateText is the session's rate as the page shows it.
func (s LiveSession) RateText() string {
	if s.Rate < 0 {
		return "–"
	}
	return size.Format(s.Rate) + "/s"
}

// DeclinedRequest is a session that ended before anything was granted: a
// guest that declined the fee, a request cancelled or never paid. It moved
// no data and no money, and is shown apart from the settled sessions.
type DeclinedRequest struct {
	ID, Hotspot, Host, Guest, Reason string
	CreatedMS, EndedMS               int64
}

// EndedSession is a settled session (one that was granted data).
type EndedSession struct {
	ID, Hotspot, Guest, Currency, Reason string
	UsedBytes, GrantedBytes              int64
	HostMinor, FeeMinor, RefundedMinor   int64
	Verified                             bool
	HostCountBytes, AckedBytes           int64
	EndedMS                              int64
}

// DayMoney is one day's settled sessions in one currency.
type DayMoney struct {
	Day                                         string // YYYY-MM-DD, UTC
	Currency                                    string
	Started, Settled                            int64
	Declined                                    int64 // ended before a grant
	UsedBytes                                   int64
	ChargedMinor, HostMinor, FeeMinor, Refunded int64
}

// Amount is money in a currency.
type Amount struct {
	Currency string
	Minor    int64
}

// HostData is what a host's dashboard shows: only its own account's.
type HostData struct {
	AccountID string
	Devices   []string
	Wallet    []Amount
	Earned    []Amount // all time, after the platform fee
	Hotspots  []Hotspot
	Live      []LiveSession
	Days      []DayMoney
	History   []EndedSession
	Declined  []DeclinedRequest
}

// hostScope is the SQL condition on a sessions or hotspots table alias's
// host_device_id that keeps an account's own rows.
const hostScope = `host_device_id IN (SELECT id FROM devices WHERE account_id = ?)`

// LoadHost reads account's dashboard.
func LoadHost(tx *store.Tx, account string, now time.Time, away time.Duration) (*HostData, error) {
	d := &HostData{AccountID: account}
	rows, err := tx.Query(`SELECT id FROM devices WHERE account_id = ? ORDER BY id`, account)
	if err != nil {
		return nil, fmt.Errorf("dashboard: devices: %w", err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		d.Devices = append(d.Devices, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	ws, err := ledger.WalletBalances(tx, account)
	if err != nil {
		return nil, err
	}
	for _, m := range ws {
		d.Wallet = append(d.Wallet, Amount{m.Currency, m.Amount})
	}
	if d.Hotspots, err = hotspots(tx, account, now, away); err != nil {
		return nil, err
	}
	if d.Live, err = live(tx, now, hostScope, account); err != nil {
		return nil, err
	}
	if d.Days, err = days(tx, "s."+hostScope, []any{account}, now); err != nil {
		return nil, err
	}
	if d.Earned, err = sums(tx, `SELECT currency, COALESCE(SUM(settled_host_minor), 0) FROM sessions WHERE state = ? AND `+hostScope+` GROUP BY currency ORDER BY currency`, ended, account); err != nil {
		return nil, err
	}
	if d.History, err = history(tx, account, 50); err != nil {
		return nil, err
	}
	if d.Declined, err = declined(tx, "s."+hostScope, []any{account}, 20); err != nil {
		return nil, err
	}
	return d, nil
}

func hotspots(tx *store.Tx, account string, now time.Time, away time.Duration) ([]Hotspot, error) {
	rows, err := tx.Query(`SELECT id, ssid, bssid, currency, price_minor, unit_bytes, shareable_bytes, committed_bytes, active, host_device_id, seen_ms, online
		FROM hotspots WHERE `+hostScope+` ORDER BY created_ms, id`, account)
	if err != nil {
		return nil, fmt.Errorf("dashboard: hotspots: %w", err)
	}
	var out []Hotspot
	var hosts []string
	for rows.Next() {
		var h Hotspot
		var ssid []byte
		var active, online int64
		var host string
		var seen int64
		if err := rows.Scan(&h.ID, &ssid, &h.BSSID, &h.Currency, &h.PriceMinor, &h.UnitBytes, &h.ShareableBytes, &h.CommittedBytes, &active, &host, &seen, &online); err != nil {
			rows.Close()
			return nil, err
		}
		h.SSID, h.Active = string(ssid), active == 1
		r := registry.Hotspot{Active: h.Active, SeenMS: seen, Online: online == 1}
		switch {
		case !h.Active:
			h.Status = "withdrawn"
		case r.Present(now.UnixMilli(), away):
			h.Status = "online"
		default:
			h.Status = "offline, last there " + now.Sub(time.UnixMilli(seen)).Round(time.Second).String() + " ago"
		}
		out = append(out, h)
		hosts = append(hosts, host)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	recs, err := session.HostRecords(tx, hosts)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Record = protocol.RecordText(recs[hosts[i]])
	}
	return out, nil
}

func stateName(s int64) string {
	n := sharespotv1.SessionState(s).String()
	if len(n) > len("SESSION_STATE_") {
		return n[len("SESSION_STATE_"):]
	}
	return n
}

// live returns open sessions matching cond (with its arguments), newest
// first, at most 100, with their usage samples and rates at now.
// PaidMinor sums the quotes paid so far.
func live(tx *store.Tx, now time.Time, cond string, args ...any) ([]LiveSession, error) {
	out, err := openSessions(tx, cond, args...)
	if err != nil {
		return nil, err
	}
	for i := range out {
		if err := sample(tx, &out[i], now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// sample reads s's latest usage samples and works out its rate.
func sample(tx *store.Tx, s *LiveSession, now time.Time) error {
	rows, err := tx.Query(`SELECT at_ms, used_bytes FROM usage_samples WHERE session_id = ? ORDER BY at_ms DESC LIMIT ?`, s.ID, maxSamples)
	if err != nil {
		return fmt.Errorf("dashboard: usage of %s: %w", s.ID, err)
	}
	defer rows.Close()
	var back []Sample // newest first
	for rows.Next() {
		var p Sample
		if err := rows.Scan(&p.AtMS, &p.Used); err != nil {
			return err
		}
		back = append(back, p)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	s.Rate = -1
	if len(back) >= 2 && now.UnixMilli()-back[0].AtMS <= staleAfter.Milliseconds() {
		if dt := back[0].AtMS - back[1].AtMS; dt > 0 {
			s.Rate = max(0, back[0].Used-back[1].Used) * 1000 / dt
		}
	}
	if len(back) < maxSamples && (len(back) == 0 || back[len(back)-1].AtMS > s.CreatedMS) {
		s.Samples = append(s.Samples, Sample{s.CreatedMS, 0})
	}
	for i := len(back) - 1; i >= 0; i-- {
		s.Samples = append(s.Samples, back[i])
	}
	return nil
}

func openSessions(tx *store.Tx, cond string, args ...any) ([]LiveSession, error) {
	q := `SELECT s.id, h.ssid, s.host_device_id, s.guest_device_id, s.state, s.currency, s.used_bytes, s.granted_bytes, s.created_ms,
		COALESCE((SELECT SUM(q.amount_minor) FROM quotes q WHERE q.session_id = s.id AND q.state NOT IN (?, ?)), 0)
		FROM sessions s JOIN hotspots h ON h.id = s.hotspot_id WHERE s.state <> ?`
	qargs := []any{int64(sharespotv1.QuoteState_QUOTE_STATE_OPEN), int64(sharespotv1.QuoteState_QUOTE_STATE_EXPIRED), ended}
	if cond != "" {
		q += ` AND s.` + cond
		qargs = append(qargs, args...)
	}
	rows, err := tx.Query(q+` ORDER BY s.created_ms DESC, s.id LIMIT 100`, qargs...)
	if err != nil {
		return nil, fmt.Errorf("dashboard: open sessions: %w", err)
	}
	defer rows.Close()
	var out []LiveSession
	for rows.Next() {
		var s LiveSession
		var ssid []byte
		var st int64
		if err := rows.Scan(&s.ID, &ssid, &s.Host, &s.Guest, &st, &s.Currency, &s.UsedBytes, &s.GrantedBytes, &s.CreatedMS, &s.PaidMinor); err != nil {
			return nil, err
		}
		s.Hotspot, s.State = string(ssid), stateName(st)
		out = append(out, s)
	}
	return out, rows.Err()
}

// days sums sessions by UTC day and currency over the last Days days:
// started by creation day, settled figures by the day they ended.
func days(tx *store.Tx, cond string, args []any, now time.Time) ([]DayMoney, error) {
	today := now.UTC().UnixMilli() / dayMS
	from := (today - Days + 1) * dayMS
	where := ""
	if cond != "" {
		where = " AND " + cond
	}
	q := `SELECT s.state, s.currency, s.created_ms, s.updated_ms, s.granted_bytes, s.used_bytes, s.settled_host_minor, s.settled_fee_minor, s.refunded_minor
		FROM sessions s WHERE (s.created_ms >= ? OR (s.state = ? AND s.updated_ms >= ?))` + where
	rows, err := tx.Query(q, append([]any{from, ended, from}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("dashboard: sessions by day: %w", err)
	}
	defer rows.Close()
	type key struct {
		day int64
		cur string
	}
	m := map[key]*DayMoney{}
	get := func(day int64, cur string) *DayMoney {
		k := key{day, cur}
		if m[k] == nil {
			m[k] = &DayMoney{Day: time.UnixMilli(day * dayMS).UTC().Format("2006-01-02"), Currency: cur}
		}
		return m[k]
	}
	for rows.Next() {
		var st, created, updated, granted, used, host, fee, refunded int64
		var cur string
		if err := rows.Scan(&st, &cur, &created, &updated, &granted, &used, &host, &fee, &refunded); err != nil {
			return nil, err
		}
		if created >= from {
			get(created/dayMS, cur).Started++
		}
		if st == ended && updated >= from {
			// A request that ended before a grant is no settled session,
			// but money it moved (a refund of a fee paid) still counts.
			d := get(updated/dayMS, cur)
			if granted == 0 {
				d.Declined++
			} else {
				d.Settled++
			}
			d.UsedBytes += used
			d.HostMinor += host
			d.FeeMinor += fee
			d.ChargedMinor += host + fee
			d.Refunded += refunded
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]DayMoney, 0, len(m))
	for _, d := range m {
		out = append(out, *d)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Day != out[j].Day {
			return out[i].Day > out[j].Day
		}
		return out[i].Currency < out[j].Currency
	})
	return out, nil
}

func sums(tx *store.Tx, q string, args ...any) ([]Amount, error) {
	rows, err := tx.Query(q, args...)
	if err != nil {
		return nil, fmt.Errorf("dashboard: totals: %w", err)
	}
	defer rows.Close()
	var out []Amount
	for rows.Next() {
		var a Amount
		if err := rows.Scan(&a.Currency, &a.Minor); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func history(tx *store.Tx, account string, limit int) ([]EndedSession, error) {
	rows, err := tx.Query(`SELECT s.id, h.ssid, s.guest_device_id, s.currency, s.end_reason, s.used_bytes, s.granted_bytes,
		s.settled_host_minor, s.settled_fee_minor, s.refunded_minor, s.verified, s.host_count_bytes, s.guest_acked_bytes, s.updated_ms
		FROM sessions s JOIN hotspots h ON h.id = s.hotspot_id WHERE s.state = ? AND s.granted_bytes > 0 AND s.`+hostScope+`
		ORDER BY s.updated_ms DESC, s.id LIMIT ?`, ended, account, limit)
	if err != nil {
		return nil, fmt.Errorf("dashboard: history: %w", err)
	}
	defer rows.Close()
	var out []EndedSession
	for rows.Next() {
		var e EndedSession
		var ssid []byte
		var verified int64
		if err := rows.Scan(&e.ID, &ssid, &e.Guest, &e.Currency, &e.Reason, &e.UsedBytes, &e.GrantedBytes, &e.HostMinor, &e.FeeMinor,
			&e.RefundedMinor, &verified, &e.HostCountBytes, &e.AckedBytes, &e.EndedMS); err != nil {
			return nil, err
		}
		e.Hotspot, e.Verified = string(ssid), verified == 1
		out = append(out, e)
	}
	return out, rows.Err()
}

// declined returns the latest sessions matching cond (with its arguments)
// that ended before a grant, at most limit.
func declined(tx *store.Tx, cond string, args []any, limit int) ([]DeclinedRequest, error) {
	q := `SELECT s.id, h.ssid, s.host_device_id, s.guest_device_id, s.end_reason, s.created_ms, s.updated_ms
		FROM sessions s JOIN hotspots h ON h.id = s.hotspot_id WHERE s.state = ? AND s.granted_bytes = 0`
	qargs := []any{ended}
	if cond != "" {
		q += ` AND ` + cond
		qargs = append(qargs, args...)
	}
	rows, err := tx.Query(q+` ORDER BY s.updated_ms DESC, s.id LIMIT ?`, append(qargs, limit)...)
	if err != nil {
		return nil, fmt.Errorf("dashboard: declined requests: %w", err)
	}
	defer rows.Close()
	var out []DeclinedRequest
	for rows.Next() {
		var d DeclinedRequest
		var ssid []byte
		if err := rows.Scan(&d.ID, &ssid, &d.Host, &d.Guest, &d.Reason, &d.CreatedMS, &d.EndedMS); err != nil {
			return nil, err
		}
		d.Hotspot = string(ssid)
		out = append(out, d)
	}
	return out, rows.Err()
}

// StateCount is how many sessions are in a state.
type StateCount struct {
	State string
	N     int64
}

// TopHost is one of the hosts that earned most.
type TopHost struct {
	Host, Currency      string
	Sessions, UsedBytes int64
	HostMinor, FeeMinor int64
}

// UsageTotals sums the usage reconciliation over all hosts.
type UsageTotals struct {
	Verified, Unverified, Overclaimed, FlaggedHosts int
	// Held: verified sessions whose guest stopped acknowledging and was
	// held at the window; WithholdingGuests, how many guests did so.
	Held, WithholdingGuests int
	HostBytes, AckedBytes   int64
}

// OperatorData is what the operator's dashboard shows.
type OperatorData struct {
	States []StateCount
	// Settled counts the ended sessions that were granted data;
	// DeclinedN, those that ended before a grant (Declined lists the
	// latest 20 of them).
	Settled, DeclinedN int64
	Declined           []DeclinedRequest
	Live               []LiveSession
	Days               []DayMoney
	Fees               []Amount
	Audit              session.AuditReport
	AuditSums          []Amount
	Top                []TopHost
	Usage              UsageTotals
	UsageHosts         []session.HostReconciliation // at most 20, overclaimed first
	// Withheld are the guests that stopped acknowledging in verified
	// sessions (at most 20, most first).
	Withheld []session.GuestWithheld
}

// LoadOperator reads the operator's dashboard.
func LoadOperator(tx *store.Tx, now time.Time) (*OperatorData, error) {
	d := &OperatorData{}
	var err error
	if d.States, err = stateCounts(tx); err != nil {
		return nil, err
	}
	if d.Live, err = live(tx, now, ""); err != nil {
		return nil, err
	}
	if d.Days, err = days(tx, "", nil, now); err != nil {
		return nil, err
	}
	err = tx.QueryRow(`SELECT COALESCE(SUM(CASE WHEN granted_bytes > 0 THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN granted_bytes = 0 THEN 1 ELSE 0 END), 0)
		FROM sessions WHERE state = ?`, ended).Scan(&d.Settled, &d.DeclinedN)
	if err != nil {
		return nil, fmt.Errorf("dashboard: settled and declined: %w", err)
	}
	if d.Declined, err = declined(tx, "", nil, 20); err != nil {
		return nil, err
	}
	if d.Fees, err = sums(tx, `SELECT currency, COALESCE(SUM(balance), 0) FROM ledger_accounts WHERE kind = 'fee' GROUP BY currency ORDER BY currency`); err != nil {
		return nil, err
	}
	if d.Audit, err = session.Audit(tx); err != nil {
		return nil, err
	}
	for cur, s := range d.Audit.Ledger.Sums {
		d.AuditSums = append(d.AuditSums, Amount{cur, s})
	}
	sort.Slice(d.AuditSums, func(i, j int) bool { return d.AuditSums[i].Currency < d.AuditSums[j].Currency })
	rows, err := tx.Query(`SELECT host_device_id, currency, COUNT(*), COALESCE(SUM(used_bytes), 0), COALESCE(SUM(settled_host_minor), 0), COALESCE(SUM(settled_fee_minor), 0)
		FROM sessions WHERE state = ? AND granted_bytes > 0 GROUP BY host_device_id, currency
		ORDER BY SUM(settled_host_minor) DESC, host_device_id LIMIT 10`, ended)
	if err != nil {
		return nil, fmt.Errorf("dashboard: top hosts: %w", err)
	}
	for rows.Next() {
		var t TopHost
		if err := rows.Scan(&t.Host, &t.Currency, &t.Sessions, &t.UsedBytes, &t.HostMinor, &t.FeeMinor); err != nil {
			rows.Close()
			return nil, err
		}
		d.Top = append(d.Top, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, r := range d.Audit.Usage.Hosts {
		d.Usage.Verified += r.Verified
		d.Usage.Unverified += r.Unverified
		d.Usage.Overclaimed += r.Overclaimed
		d.Usage.Held += r.Held
		d.Usage.HostBytes += r.HostBytes
		d.Usage.AckedBytes += r.AckedBytes
		if r.Overclaimed > 0 {
			d.Usage.FlaggedHosts++
		}
	}
	d.UsageHosts = d.Audit.Usage.Hosts
	if len(d.UsageHosts) > 20 {
		d.UsageHosts = d.UsageHosts[:20]
	}
	d.Usage.WithholdingGuests = len(d.Audit.Usage.Guests)
	d.Withheld = d.Audit.Usage.Guests
	if len(d.Withheld) > 20 {
		d.Withheld = d.Withheld[:20]
	}
	return d, nil
}

func stateCounts(tx *store.Tx) ([]StateCount, error) {
	rows, err := tx.Query(`SELECT state, COUNT(*) FROM sessions GROUP BY state ORDER BY state`)
	if err != nil {
		return nil, fmt.Errorf("dashboard: sessions by state: %w", err)
	}
	defer rows.Close()
	var out []StateCount
	for rows.Next() {
		var st, n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out = append(out, StateCount{stateName(st), n})
	}
	return out, rows.Err()
}

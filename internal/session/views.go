package session

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
)

// Get returns a session to one of its parties.
func (e *Engine) Get(tx *store.Tx, p Party, sessionID string) (*sharespotv1.Session, error) {
	s, err := e.load(tx, sessionID, p, roleEither)
	if err != nil {
		return nil, err
	}
	return e.render(tx, s, p)
}

// A party's sessions, newest first (%s the party's column), on the indexes
// of migration 0009: all of them on (party, created_ms), the unfinished
// ones on the partial index of those (countOpen says why the state's test
// stays).
var (
	listAll  = `SELECT id FROM sessions WHERE %s = ? ORDER BY created_ms DESC LIMIT ?`
	listOpen = `SELECT id FROM sessions WHERE %s = ? AND ended_ms = 0 AND state <> ` +
		strconv.Itoa(int(sharespotv1.SessionState_SESSION_STATE_ENDED)) + ` ORDER BY created_ms DESC LIMIT ?`
)

// List returns p's sessions as host or guest, newest first; openOnly keeps
// those not yet ended (ending ones included).
func (e *Engine) List(tx *store.Tx, p Party, openOnly bool, limit int) ([]*sharespotv1.Session, error) {
	if limit <= 0 || limit > 200 {
		limit = 200
	}
	var ids []string
	for _, col := range []string{"host_device_id", "guest_device_id"} {
		q := listAll
		if openOnly {
			q = listOpen
		}
		rows, err := tx.Query(fmt.Sprintf(q, col), p.DeviceID, limit)
		if err != nil {
			return nil, fmt.Errorf("session: list: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var out []*sharespotv1.Session
	for _, id := range ids {
		s, err := loadRow(tx, id)
		if err != nil {
			return nil, err
		}
		v, err := e.render(tx, s, p)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedUnixMs > out[j].CreatedUnixMs })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// render returns the session as p may see it.
func (e *Engine) render(tx *store.Tx, s *row, p Party) (*sharespotv1.Session, error) {
	out := &sharespotv1.Session{
		Id: s.ID, HotspotId: s.HotspotID, HostDeviceId: s.Host, GuestDeviceId: s.Guest, State: s.State,
		RequestedBytes: s.Requested, GrantedBytes: s.Granted, UsedBytes: s.Used, Currency: s.Currency, Suite: s.Suite,
		DeadlineUnixMs: s.DeadlineMS, EndReason: s.EndReason, SettledHostMinor: s.SettledHost, SettledFeeMinor: s.SettledFee,
		RefundedMinor: s.Refunded, CreatedUnixMs: s.CreatedMS, UpdatedUnixMs: s.UpdatedMS, Tariff: s.Tariff.Proto(),
		GuestAckedBytes: s.GuestAcked, CreditWindowBytes: s.Window, HostCountBytes: s.HostCount, Verified: s.Verified,
		CardRefundedMinor: s.CardRefunded, DisputedMinor: s.Disputed, UsageMode: s.Mode, GuestDeviceKey: s.GuestKey,
	}
	qs, err := quotesOf(tx, s.ID)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(qs, func(i, j int) bool { return qs[i].CreatedMS < qs[j].CreatedMS })
	for _, q := range qs {
		if q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN && q.State != sharespotv1.QuoteState_QUOTE_STATE_EXPIRED {
			out.PaidMinor += q.Amount
		}
		var rc *sharespotv1.Receipt
		if p.DeviceID == s.Guest && q.State != sharespotv1.QuoteState_QUOTE_STATE_OPEN {
			// The guest may fetch its receipt again (after a crash).
			if rc, err = e.pay.Stored(tx, q.ID); err != nil {
				return nil, fmt.Errorf("session: receipt of %s: %w", q.ID, err)
			}
		}
		out.Quotes = append(out.Quotes, q.proto(rc))
	}
	return out, nil
}

// HostReconciliation compares one host's counts with its guests'
// acknowledgments over its settled sessions that were granted something
// (a declined request, or one never paid, moved no data and counts in
// neither column).
type HostReconciliation struct {
	Host string
	// Verified sessions (the guest acknowledged), unverified ones.
	Verified, Unverified int
	// Overclaimed: verified sessions whose host count ran ahead of the
	// guest's acknowledgment by more than the credit window: the host
	// counted what its guest did not acknowledge (the bill was capped).
	Overclaimed int
	// Held: verified sessions whose guest stopped acknowledging and was
	// held at the credit window by this host's gateway (the host says so
	// in its final count): the guest withheld, not the host.
	Held int
	// HostBytes and AckedBytes sum the verified sessions' figures.
	HostBytes, AckedBytes int64
}

// GuestWithheld is a guest that stopped acknowledging what it received in
// verified sessions and was held by the host's gateway.
type GuestWithheld struct {
	Guest    string
	Sessions int
}

// Reconciliation is the usage part of the audit: per host, its counts
// against its guests' acknowledgments (hosts with overclaimed sessions
// first), and the guests that withheld acknowledgments (most first).
type Reconciliation struct {
	Hosts  []HostReconciliation
	Guests []GuestWithheld
}

// Reconcile compares, over every settled session that was granted
// something, each host's counts with its guests' acknowledgments, and
// says who is to blame where they differ beyond the window.
func Reconcile(tx *store.Tx) (Reconciliation, error) {
	rows, err := tx.Query(`SELECT host_device_id, guest_device_id, usage_mode, host_count_bytes, guest_acked_bytes, credit_window_bytes, guest_held
		FROM sessions WHERE state = ? AND granted_bytes > 0 ORDER BY host_device_id`, int32(sharespotv1.SessionState_SESSION_STATE_ENDED))
	if err != nil {
		return Reconciliation{}, fmt.Errorf("session: reconcile: %w", err)
	}
	defer rows.Close()
	var out Reconciliation
	withheld := map[string]int{}
	for rows.Next() {
		var host, guest string
		var mode, held int32
		var count, acked, window int64
		if err := rows.Scan(&host, &guest, &mode, &count, &acked, &window, &held); err != nil {
			return Reconciliation{}, err
		}
		if len(out.Hosts) == 0 || out.Hosts[len(out.Hosts)-1].Host != host {
			out.Hosts = append(out.Hosts, HostReconciliation{Host: host})
		}
		r := &out.Hosts[len(out.Hosts)-1]
		if sharespotv1.UsageMode(mode) != sharespotv1.UsageMode_USAGE_MODE_VERIFIED {
			r.Unverified++
			continue
		}
		r.Verified++
		r.HostBytes += count
		r.AckedBytes += acked
		switch {
		case count > acked+window:
			r.Overclaimed++
		case held != 0:
			r.Held++
			withheld[guest]++
		}
	}
	if err := rows.Err(); err != nil {
		return Reconciliation{}, err
	}
	sort.SliceStable(out.Hosts, func(i, j int) bool { return out.Hosts[i].Overclaimed > out.Hosts[j].Overclaimed })
	for g, n := range withheld {
		out.Guests = append(out.Guests, GuestWithheld{Guest: g, Sessions: n})
	}
	sort.Slice(out.Guests, func(i, j int) bool {
		a, b := out.Guests[i], out.Guests[j]
		return a.Sessions > b.Sessions || (a.Sessions == b.Sessions && a.Guest < b.Guest)
	})
	return out, nil
}

// HostRecords returns, for each of hosts, its record from its settled
// verified sessions: what a guest that cannot verify is shown before
// paying (a host with none has a zero record). The records are kept by
// the writes that settle sessions (host_records); CheckHostRecords holds
// them to the sessions.
func HostRecords(tx *store.Tx, hosts []string) (map[string]*sharespotv1.HostRecord, error) {
	out := map[string]*sharespotv1.HostRecord{}
	seen := map[string]bool{}
	var args []any // each host once
	for _, h := range hosts {
		if !seen[h] {
			seen[h] = true
			args = append(args, h)
		}
	}
	// In parts, each well under the engines' limits on a statement's
	// parameters.
	for part := range slices.Chunk(args, 500) {
		if err := tx.Together(ReadingHostRecords("?"+strings.Repeat(", ?", len(part)-1), part, out)); err != nil {
			return nil, err
		}
	}
	for _, h := range hosts {
		if out[h] == nil {
			out[h] = &sharespotv1.HostRecord{}
		}
	}
	return out, nil
}

// ReadingHostRecords is HostRecords as a reading: the records of the hosts
// that hosts (a subquery or a list of placeholders, with its args)
// selects, into out. A host with
// no record is left out of out (its record is zero).
func ReadingHostRecords(hosts string, args []any, out map[string]*sharespotv1.HostRecord) store.Reading {
	return store.Reading{Query: `SELECT host_device_id, verified_sessions, over_counted_sessions, counted_bytes, acknowledged_bytes
		FROM host_records WHERE host_device_id IN (` + hosts + `)`, Args: args, Row: func(sc store.Scanner) error {
		var h string
		r := &sharespotv1.HostRecord{}
		if err := sc.Scan(&h, &r.VerifiedSessions, &r.OverCountedSessions, &r.CountedBytes, &r.AcknowledgedBytes); err != nil {
			return fmt.Errorf("session: host records: %w", err)
		}
		out[h] = r
		return nil
	}}
}

// recordsFromSessions adds up each host's record from its settled verified
// sessions (as rows.go's record counts one session; migration 0008's
// backfill is the same query): host, sessions, over-counted, counted and
// acknowledged bytes. Its parameters: the ended state, the verified mode.
const recordsFromSessions = `SELECT host_device_id AS h, COUNT(*) AS n,
	SUM(CASE WHEN host_count_bytes > guest_acked_bytes + credit_window_bytes THEN 1 ELSE 0 END) AS o,
	SUM(host_count_bytes) AS c, SUM(guest_acked_bytes) AS a
	FROM sessions WHERE state = ? AND usage_mode = ? AND granted_bytes > 0 GROUP BY host_device_id`

// RebuildHostRecords sets every host's record from its settled verified
// sessions, as migration 0008 first did (server.Open calls it when
// CheckHostRecords finds a difference).
func RebuildHostRecords(tx *store.Tx) error {
	if _, err := tx.Exec(`DELETE FROM host_records`); err != nil {
		return fmt.Errorf("session: rebuild host records: %w", err)
	}
	_, err := tx.Exec(`INSERT INTO host_records (host_device_id, verified_sessions, over_counted_sessions, counted_bytes, acknowledged_bytes)
		`+recordsFromSessions,
		int32(sharespotv1.SessionState_SESSION_STATE_ENDED), int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED))
	if err != nil {
		return fmt.Errorf("session: rebuild host records: %w", err)
	}
	return nil
}

// endedUnmarked is a condition on sessions: ended without ended_ms, as a
// replica of a release before schema 9 ends them during a rolling
// upgrade. ended_ms = 0 lets the partial indexes of unfinished sessions
// find them.
var endedUnmarked = `ended_ms = 0 AND state = ` + strconv.Itoa(int(sharespotv1.SessionState_SESSION_STATE_ENDED))

// CountEndedUnmarked counts the sessions that ended without ended_ms: the
// audit's check, and the start's test of whether RepairEnded has work.
func CountEndedUnmarked(tx *store.Tx) (int64, error) {
	var n int64
	if err := tx.QueryRow(`SELECT COUNT(*) FROM sessions WHERE ` + endedUnmarked).Scan(&n); err != nil {
		return 0, fmt.Errorf("session: count ended sessions without their end time: %w", err)
	}
	return n, nil
}

// RepairEnded gives each session that ended without ended_ms its last
// update's time, as migration 0009 did (server.Open calls it when
// CountEndedUnmarked finds any).
func RepairEnded(tx *store.Tx) error {
	if _, err := tx.Exec(`UPDATE sessions SET ended_ms = CASE WHEN updated_ms > 0 THEN updated_ms ELSE 1 END WHERE ` + endedUnmarked); err != nil {
		return fmt.Errorf("session: mark ended sessions: %w", err)
	}
	tx.ForgetAll()
	return nil
}

// CheckHostRecords holds every host's kept record (host_records) to the
// sum over its settled verified sessions, and returns a difference for
// each host where they differ: the audit's check of the bookkeeping.
func CheckHostRecords(tx *store.Tx) ([]string, error) {
	rows, err := tx.Query(`SELECT h, CAST(SUM(n) AS BIGINT), CAST(SUM(o) AS BIGINT), CAST(SUM(c) AS BIGINT), CAST(SUM(a) AS BIGINT) FROM (
		`+recordsFromSessions+`
		UNION ALL
		SELECT host_device_id, -verified_sessions, -over_counted_sessions, -counted_bytes, -acknowledged_bytes FROM host_records
	) d GROUP BY h HAVING SUM(n) <> 0 OR SUM(o) <> 0 OR SUM(c) <> 0 OR SUM(a) <> 0 ORDER BY h`,
		int32(sharespotv1.SessionState_SESSION_STATE_ENDED), int32(sharespotv1.UsageMode_USAGE_MODE_VERIFIED))
	if err != nil {
		return nil, fmt.Errorf("session: check host records: %w", err)
	}
	defer rows.Close()
	var diffs []string
	for rows.Next() {
		var h string
		var n, o, c, a int64
		if err := rows.Scan(&h, &n, &o, &c, &a); err != nil {
			return nil, fmt.Errorf("session: check host records: %w", err)
		}
		diffs = append(diffs, fmt.Sprintf("host %s: its sessions less its kept record: %d sessions, %d over-counted, %d bytes counted, %d acknowledged", h, n, o, c, a))
	}
	return diffs, rows.Err()
}

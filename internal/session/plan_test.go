package session

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/sharespot/sharespot/internal/store"
)

// TestSessionQueriesUseTheirIndexes: the caps checked at every request and
// a party's listings are answered from the indexes of migrations 0009 and
// 0011 on each engine, and so are the start's count of sessions ended
// without their end time, the deadline sweep and a gateway's running
// sessions. A partial index is used only where the planner sees its
// condition hold: bound states would hide it from both planners.
func TestSessionQueriesUseTheirIndexes(t *testing.T) {
	id, limit := []any{"x"}, []any{"x", 10} // a party's ID; and a listing's limit
	cases := []struct {
		query, index string
		args         []any
	}{
		{countUnpaid, "sessions_account_open", id},
		{openOf, "sessions_guest_open", id},
		{fmt.Sprintf(listOpen, "host_device_id"), "sessions_host_open", limit},
		{fmt.Sprintf(listOpen, "guest_device_id"), "sessions_guest_open", limit},
		{fmt.Sprintf(listAll, "host_device_id"), "sessions_host", limit},
		{fmt.Sprintf(listAll, "guest_device_id"), "sessions_guest", limit},
		// Every start counts these: a scan of the unfinished sessions only.
		{`SELECT COUNT(*) FROM sessions WHERE ` + endedUnmarked, "sessions_[a-z]+_open", nil},
		// The sweep, too (a time and a limit): no index holds the deadline (0011).
		{overdue, "sessions_[a-z]+_open", []any{int64(1), 10}},
		{atGateway, "sessions_gateway_open", []any{"x", 5, 6}}, // an address and two states
	}
	onEngines(t, func(t *testing.T, st *store.Store, e store.Engine) {
		if e == store.Postgres {
			plannedOn(t, st)
		}
		for _, c := range cases {
			plan, err := planOf(t, st, e, c.query, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`\b` + c.index + `\b`).MatchString(plan) {
				t.Errorf("%s\nplanned without %s:\n%s", c.query, c.index, plan)
			}
		}
	})
}

// plannedOn fills the sessions table of st, a PostgreSQL store, with
// 4,000 rows of many guests, accounts, hosts and gateways, half of them
// ended, and has PostgreSQL analyze it. On an empty table every partial
// index of the unfinished sessions costs the planner the same, and it
// takes whichever comes first; with these statistics it takes the index
// whose key the query names, as it does in service. (The foreign keys are
// not checked: these sessions have no devices or hotspots.)
func plannedOn(t *testing.T, st *store.Store) {
	t.Helper()
	named := map[string]string{
		"id":               "'s' || g",
		"hotspot_id":       "'p' || (g % 300)",
		"host_device_id":   "'h' || (g % 300)",
		"guest_device_id":  "'d' || (g % 1000)",
		"guest_account_id": "'a' || (g % 1000)",
		"gateway_address":  "'w' || (g % 300)",
		"state":            "g % 7",
		"deadline_ms":      "g",
		"created_ms":       "g",
		"ended_ms":         "CASE WHEN g % 2 = 0 THEN 0 ELSE g END",
	}
	err := st.Write(t.Context(), func(tx *store.Tx) error {
		var cols, exprs []string
		rows, err := tx.Query(`SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'sessions' ORDER BY ordinal_position`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var name, kind string
			if err := rows.Scan(&name, &kind); err != nil {
				rows.Close()
				return err
			}
			expr, ok := named[name]
			switch {
			case ok:
			case kind == "bytea":
				expr = `'\\x'::bytea`
			case kind == "text":
				expr = "''"
			default:
				expr = "0"
			}
			cols, exprs = append(cols, name), append(exprs, expr)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.Exec(`SET LOCAL session_replication_role = replica`); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO sessions (` + strings.Join(cols, ", ") + `) SELECT ` + strings.Join(exprs, ", ") + ` FROM generate_series(1, 4000) AS g`); err != nil {
			return err
		}
		_, err = tx.Exec(`ANALYZE sessions`)
		return err
	})
	if err != nil {
		t.Fatalf("fill sessions for the planner: %v", err)
	}
}

// planOf is the engine's plan for query with args, its text joined.
func planOf(t *testing.T, st *store.Store, e store.Engine, query string, args ...any) (string, error) {
	var plan []string
	err := st.Write(t.Context(), func(tx *store.Tx) error {
		q := "EXPLAIN QUERY PLAN " + query
		if e == store.Postgres {
			// An empty table is read whole whatever its indexes: ask which
			// index the planner would take.
			if _, err := tx.Exec(`SET LOCAL enable_seqscan = off`); err != nil {
				return err
			}
			q = "EXPLAIN " + query
		}
		rows, err := tx.Query(q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			return err
		}
		for rows.Next() {
			v := make([]any, len(cols))
			for i := range v {
				v[i] = new(any)
			}
			if err := rows.Scan(v...); err != nil {
				return err
			}
			for _, c := range v {
				if s, ok := (*c.(*any)).(string); ok {
					plan = append(plan, s)
				}
			}
		}
		return rows.Err()
	})
	return strings.Join(plan, "\n"), err
}

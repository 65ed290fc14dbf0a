package session

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/sharespot/sharespot/internal/store"
)

// TestSessionQueriesUseTheirIndexes: the caps checked at every request and
// a party's listings are answered from the indexes of migration 0009 on
// each engine, and so is the start's count of sessions ended without
// their end time. A partial index is used only where the planner sees its
// condition hold: bound states would hide it from both planners.
func TestSessionQueriesUseTheirIndexes(t *testing.T) {
	cases := []struct{ query, index string }{
		{countUnpaid, "sessions_guest_unpaid"},
		{openOf, "sessions_guest_open"},
		{fmt.Sprintf(listOpen, "host_device_id"), "sessions_host_open"},
		{fmt.Sprintf(listOpen, "guest_device_id"), "sessions_guest_open"},
		{fmt.Sprintf(listAll, "host_device_id"), "sessions_host"},
		{fmt.Sprintf(listAll, "guest_device_id"), "sessions_guest"},
		// Every start counts these: a scan of the unfinished sessions only.
		{`SELECT COUNT(*) FROM sessions WHERE ` + endedUnmarked, "sessions_(guest|host)_open"},
	}
	onEngines(t, func(t *testing.T, st *store.Store, e store.Engine) {
		for _, c := range cases {
			plan, err := planOf(t, st, e, c.query)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`\b` + c.index + `\b`).MatchString(plan) {
				t.Errorf("%s\nplanned without %s:\n%s", c.query, c.index, plan)
			}
		}
	})
}

// planOf is the engine's plan for query, its text joined.
func planOf(t *testing.T, st *store.Store, e store.Engine, query string) (string, error) {
	args := []any{"x"}
	if !strings.Contains(query, "?") {
		args = nil
	}
	if strings.Count(query, "?") == 2 {
		args = append(args, 10)
	}
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

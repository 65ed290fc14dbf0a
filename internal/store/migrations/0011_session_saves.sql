-- A session's saves rewrite none of its indexes (issue 25). Never edit
-- after release.
--
-- Nearly every step of a session saves its state and its deadline. Three
-- indexes held one of the two in their key or their condition, so every
-- save wrote an entry in each of them, and on PostgreSQL in each of the
-- table's indexes: no save could be a HOT update. Now no index holds the
-- state or the deadline:
-- - The deadline sweep and the overdue escrow figure read the unfinished
--   sessions (ended_ms = 0: a session's end sets its deadline to 0 in the
--   same save) through an index on that condition, and pick the overdue
--   ones among them.
-- - The unpaid-requests cap counts an account's unfinished sessions in the
--   two unpaid states: its index holds the account's unfinished sessions.
-- - A gateway's running sessions are found among its unfinished ones.
-- ended_ms and gateway_address are each set once (at the end, at the
-- grant), so their saves are the only ones that touch an index.
DROP INDEX sessions_gateway;
DROP INDEX sessions_deadline;
DROP INDEX sessions_guest_unpaid;
CREATE INDEX sessions_gateway_open ON sessions (gateway_address) WHERE ended_ms = 0;
CREATE INDEX sessions_account_open ON sessions (guest_account_id) WHERE ended_ms = 0;

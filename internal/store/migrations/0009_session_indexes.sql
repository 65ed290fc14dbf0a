-- A session's transitions rewrite fewer index entries (issue 25).
-- Never edit after release.
--
-- Every transition of a session saves its state, and each index with the
-- state in its key or its condition is rewritten with it: a B-tree page
-- more to write per transition and per index. Now:
-- - sessions_hotspot is gone: no query reaches sessions by hotspot.
-- - A party's sessions are indexed by the party and the time they were
--   made (listing, newest first), entries written once, at the request.
-- - A party's unfinished sessions (the cap on a guest's, a listing of the
--   open ones) have indexes of their own, on the condition ended_ms = 0:
--   ended_ms is set by the write that ends the session and by none
--   before, so an entry is added at the request and removed at the end.
-- - The unpaid-requests cap counts an account's sessions in the two unpaid
--   states: its index holds those alone.
DROP INDEX sessions_hotspot;
DROP INDEX sessions_guest_account;
DROP INDEX sessions_host;
DROP INDEX sessions_guest;

-- When the session ended, 0 while it is unfinished.
ALTER TABLE sessions ADD COLUMN ended_ms BIGINT NOT NULL DEFAULT 0;
UPDATE sessions SET ended_ms = CASE WHEN updated_ms > 0 THEN updated_ms ELSE 1 END WHERE state = 6;

CREATE INDEX sessions_host ON sessions (host_device_id, created_ms);
CREATE INDEX sessions_guest ON sessions (guest_device_id, created_ms);
CREATE INDEX sessions_host_open ON sessions (host_device_id, created_ms) WHERE ended_ms = 0;
CREATE INDEX sessions_guest_open ON sessions (guest_device_id, created_ms) WHERE ended_ms = 0;
CREATE INDEX sessions_guest_unpaid ON sessions (guest_account_id) WHERE state IN (1, 2);

-- The web dashboard's sign-in (issue 15). Never edit after release.
--
-- Every token is stored only as HMAC-SHA256 under the server's admin key
-- (admin.key in the data directory), so neither a copy of the database nor
-- write access to it alone makes a working link or session.

-- One-time sign-in links: a host's (role 'host', its account) from
-- `sharespot share --dashboard`, an operator's (role 'operator') from
-- `sharespot server admin-link`. Deleted when used.
CREATE TABLE dashboard_links (
    hash       BLOB PRIMARY KEY,
    role       TEXT NOT NULL,
    account_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX dashboard_links_expiry ON dashboard_links (expires_ms);

-- Browser sessions opened by a link (the cookie's hash).
CREATE TABLE dashboard_sessions (
    hash       BLOB PRIMARY KEY,
    role       TEXT NOT NULL,
    account_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_ms);

-- A check value of the admin key the servers of this database use, so
-- that `sharespot server admin-link` can tell a wrong key file at once.
CREATE TABLE dashboard_keys (
    id          TEXT PRIMARY KEY,
    check_value BLOB NOT NULL,
    created_ms  BIGINT NOT NULL
);

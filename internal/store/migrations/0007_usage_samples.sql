-- Usage over time, for the dashboard's live rate and chart (issue 24).
-- Never edit after release.
--
-- One row per usage report of a session (the host's metered count at the
-- server's time of the report): the dashboard works out a session's rate
-- from its last two and draws its bytes over time. Only a view: no money
-- is worked out from these rows.
CREATE TABLE usage_samples (
    session_id TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    used_bytes BIGINT NOT NULL,
    PRIMARY KEY (session_id, at_ms)
);

-- Each host's record from its settled verified sessions (issue 25).
-- Never edit after release.
--
-- What a guest that cannot verify is shown before paying: how many of the
-- host's settled verified sessions it counted beyond the guest's
-- acknowledgment and credit window, and its counted and acknowledged
-- bytes. Discovery used to add these up over every such session of the
-- host at every scan (the cost grew with the host's history); they are
-- now kept up to date by the write that settles or changes a session,
-- in its transaction. The audit checks them against the sessions.
CREATE TABLE host_records (
    host_device_id        TEXT PRIMARY KEY,
    verified_sessions     BIGINT NOT NULL,
    over_counted_sessions BIGINT NOT NULL,
    counted_bytes         BIGINT NOT NULL,
    acknowledged_bytes    BIGINT NOT NULL
);

INSERT INTO host_records (host_device_id, verified_sessions, over_counted_sessions, counted_bytes, acknowledged_bytes)
SELECT host_device_id, COUNT(*),
       SUM(CASE WHEN host_count_bytes > guest_acked_bytes + credit_window_bytes THEN 1 ELSE 0 END),
       SUM(host_count_bytes), SUM(guest_acked_bytes)
FROM sessions
WHERE state = 6 AND usage_mode = 1 AND granted_bytes > 0 -- ended, verified (the protocol's enum values)
GROUP BY host_device_id;

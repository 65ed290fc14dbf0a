-- Usage the guest verifies with the host directly (issue 21). Never edit
-- after release.
--
-- usage_mode is fixed by the guest's request: 1 verified (the guest
-- acknowledges what it receives; the gateways hold it to its last
-- acknowledgment plus the credit window, and settlement bills at most
-- that), 2 unverified (acknowledgments refused; the host's count, at most
-- what was bought). Sessions from before: verified when the guest had
-- acknowledged something, as settlement then decided.
ALTER TABLE sessions ADD COLUMN usage_mode INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET usage_mode = CASE WHEN verified <> 0 OR guest_acked_bytes > 0 THEN 1 ELSE 2 END;

-- The guest's device key (Ed25519), copied at the request: it signs the
-- guest's acknowledgments, which the server and the host's gateway check.
ALTER TABLE sessions ADD COLUMN guest_device_key BLOB;
UPDATE sessions SET guest_device_key = (SELECT public_key FROM devices WHERE devices.id = sessions.guest_device_id);

-- The host's final count said the gateway held a guest that stopped
-- acknowledging at the credit window (for the operator's audit).
ALTER TABLE sessions ADD COLUMN guest_held INTEGER NOT NULL DEFAULT 0;

-- The gateway the host granted the session at (its kind and the address
-- guests reach it at): the guest page's proxy auto-config is served only
-- for a gateway a running session was granted at.
ALTER TABLE sessions ADD COLUMN gateway_kind TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN gateway_address TEXT NOT NULL DEFAULT '';
CREATE INDEX sessions_gateway ON sessions (gateway_address, state);

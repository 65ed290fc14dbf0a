-- Fair settlement (issue 10). Never edit after release.

-- The tariff the guest was shown, copied into the session at the request:
-- every quote of the session is priced from this copy.
ALTER TABLE sessions ADD COLUMN tariff_price_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN tariff_topup_price_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN tariff_unit_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN tariff_min_purchase_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE sessions SET
    tariff_price_minor = (SELECT h.price_minor FROM hotspots h WHERE h.id = sessions.hotspot_id),
    tariff_topup_price_minor = (SELECT h.topup_price_minor FROM hotspots h WHERE h.id = sessions.hotspot_id),
    tariff_unit_bytes = (SELECT h.unit_bytes FROM hotspots h WHERE h.id = sessions.hotspot_id),
    tariff_min_purchase_bytes = (SELECT h.min_purchase_bytes FROM hotspots h WHERE h.id = sessions.hotspot_id);

-- Evidence of usage: the guest's last signed count of bytes received, the
-- credit window the host may bill beyond it, and at settlement the host's
-- own count and whether the bill rested on the guest's acknowledgments.
ALTER TABLE sessions ADD COLUMN guest_acked_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN credit_window_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN host_count_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
-- Sessions settled before evidence were billed on the host's count.
UPDATE sessions SET host_count_bytes = used_bytes;

-- The guest's account, for the cap on unpaid requests per account.
ALTER TABLE sessions ADD COLUMN guest_account_id TEXT NOT NULL DEFAULT '';
UPDATE sessions SET guest_account_id = (SELECT d.account_id FROM devices d WHERE d.id = sessions.guest_device_id);
CREATE INDEX sessions_guest_account ON sessions (guest_account_id, state);

-- Each granted quote is a tranche: its place in grant order, and once the
-- session is settled the bytes used in it and what they cost.
ALTER TABLE quotes ADD COLUMN tranche INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quotes ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE quotes ADD COLUMN billed_minor BIGINT NOT NULL DEFAULT 0;
UPDATE quotes SET tranche = (
    SELECT COUNT(*) FROM quotes q2
    WHERE q2.session_id = quotes.session_id AND q2.state = 4
      AND (q2.created_ms < quotes.created_ms OR (q2.created_ms = quotes.created_ms AND q2.kind < quotes.kind)
           OR (q2.created_ms = quotes.created_ms AND q2.kind = quotes.kind AND q2.id <= quotes.id)))
WHERE state = 4;

-- Volume is now reserved when a quote is paid, not when it is quoted:
-- give back what open (unpaid) quotes held.
UPDATE hotspots SET committed_bytes = committed_bytes - (
    SELECT COALESCE(SUM(q.bytes), 0) FROM quotes q JOIN sessions s ON s.id = q.session_id
    WHERE s.hotspot_id = hotspots.id AND q.state = 1);
UPDATE sessions SET reserved_bytes = reserved_bytes - (
    SELECT COALESCE(SUM(q.bytes), 0) FROM quotes q WHERE q.session_id = sessions.id AND q.state = 1);

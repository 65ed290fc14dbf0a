-- Hosts that are really there (issue 22). Never edit after release.
--
-- seen_ms is when the hotspot's host last showed it was there (its agent's
-- inbox stream, which the server marks every third of --host-away while it
-- is open; a registration or an update); online is 0 once that stream
-- closed and no other took over. A hotspot is offered only while online
-- and seen within --host-away. Hotspots from before count as seen at their
-- last update.
ALTER TABLE hotspots ADD COLUMN seen_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hotspots ADD COLUMN online INTEGER NOT NULL DEFAULT 1;
UPDATE hotspots SET seen_ms = updated_ms;

-- Signed node requests other than batches (command polls, reports, pulses, events) carry no
-- sequence number: the controller remembers each one's signature until its timestamp leaves
-- the clock window, so a replay within the window is refused.
CREATE TABLE request_nonces (
    signature   TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX request_nonces_expires ON request_nonces (expires_at);

-- Who a heartbeat belongs to: 'node:<name>' (a node pulsed it first, or it is the agent's
-- own), 'operator' (an operator token made it) or 'watchtower' (the compatibility listener
-- did). Only its owner, or an operator token, may pulse it, change its alert or cancel it.
ALTER TABLE heartbeats ADD COLUMN owner TEXT NOT NULL DEFAULT 'operator';
-- Rows made before owners existed: a node's, when they name one; else the watchTower
-- listener's, so its clients keep working (operator tokens may pulse any heartbeat anyway).
UPDATE heartbeats SET owner = CASE WHEN node IS NOT NULL THEN 'node:' || node ELSE 'watchtower' END;
-- The quota's count of a node's heartbeats.
CREATE INDEX heartbeats_owner ON heartbeats (owner);

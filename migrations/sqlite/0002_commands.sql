-- Commands: the queue, its audit trail, and the central error log.

CREATE TABLE commands (
    id           TEXT PRIMARY KEY,      -- ULID made by the sender: sorts in sending order
    node         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    method       TEXT NOT NULL,
    envelope     TEXT NOT NULL,         -- the signed command (JSON), delivered verbatim
    parallel     BIGINT NOT NULL,       -- 1: may run beside others; 0: in order, one at a time
    retries      BIGINT NOT NULL,
    timeout_ms   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    sent_by      TEXT NOT NULL,
    via          TEXT NOT NULL,         -- api | nats
    created_at   BIGINT NOT NULL,
    state        TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    deadline     BIGINT,                -- when the current attempt is given up on
    delivered_at BIGINT,
    started_at   BIGINT,
    finished_at  BIGINT,
    published    BIGINT NOT NULL DEFAULT 0,  -- NATS: the stream has it
    result       TEXT                   -- JSON
);
CREATE INDEX commands_node_state ON commands (node, state, id);
CREATE INDEX commands_state_deadline ON commands (state, deadline);

CREATE TABLE command_log (
    seq         INTEGER PRIMARY KEY,
    command_id  TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    state       TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX command_log_id ON command_log (command_id, ts);

-- `error` for the central error log, `event` otherwise.
ALTER TABLE events ADD COLUMN category TEXT NOT NULL DEFAULT 'event';
CREATE INDEX events_category_ts ON events (category, ts);

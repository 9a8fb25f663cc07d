-- Heartbeats: a service says "expect me again within next_in (+ grace)"; the controller notes
-- when it does not. And the alerts their transitions raise, for the notifier to deliver.

CREATE TABLE heartbeats (
    service       TEXT COLLATE "C" PRIMARY KEY,
    node          TEXT COLLATE "C",
    next_in_ms    BIGINT NOT NULL,
    grace_ms      BIGINT NOT NULL,
    alert_channel TEXT COLLATE "C",
    alert_target  TEXT COLLATE "C",
    state         TEXT COLLATE "C" NOT NULL,        -- new | up | down | cancelled ("late" is up past next_in)
    prev_state    TEXT COLLATE "C",                 -- the state the latest pulse found: 'down' means it recovered
    prev_since    BIGINT,               -- and since when it had been in it
    last_pulse    BIGINT NOT NULL,
    deadline      BIGINT NOT NULL,      -- last_pulse + next_in + grace
    state_since   BIGINT NOT NULL,
    pulses        BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
-- The monitor's two questions: the next deadline, and which have passed.
CREATE INDEX heartbeats_watched_deadline ON heartbeats (deadline) WHERE state IN ('new', 'up');

CREATE TABLE alerts (
    id            BIGSERIAL PRIMARY KEY,
    ts            BIGINT NOT NULL,
    source        TEXT COLLATE "C" NOT NULL,        -- heartbeat
    subject       TEXT COLLATE "C" NOT NULL,        -- the service
    kind          TEXT COLLATE "C" NOT NULL,        -- down | recovered
    level         BIGINT NOT NULL,
    message       TEXT COLLATE "C" NOT NULL,
    channel       TEXT COLLATE "C",
    target        TEXT COLLATE "C",
    delivered_at  BIGINT                -- set by the notifier
);
CREATE INDEX alerts_undelivered ON alerts (id) WHERE delivered_at IS NULL;
CREATE INDEX alerts_ts ON alerts (ts);

-- The event log's filters: service exact, level at least, time range; newest first by id.
CREATE INDEX events_service_id ON events (service, id);
CREATE INDEX events_node_id ON events (node, id);
CREATE INDEX events_level_id ON events (level, id);

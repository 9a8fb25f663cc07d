-- The spine: enrolled nodes, operator tokens, the ingest ledger, history.
-- Times are milliseconds since the Unix epoch (BIGINT) in both backends.

CREATE TABLE nodes (
    name        TEXT PRIMARY KEY,
    key         TEXT NOT NULL,
    allow       TEXT NOT NULL,      -- JSON array of CIDRs; empty: any address
    labels      TEXT NOT NULL,      -- JSON object
    created_at  BIGINT NOT NULL
);

CREATE TABLE node_status (
    name        TEXT PRIMARY KEY,
    last_seen   BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL,
    vitals      TEXT,               -- JSON, from the newest batch that carried them
    vitals_at   BIGINT
);

CREATE TABLE api_tokens (
    hash        TEXT PRIMARY KEY,   -- hex SHA-256 of the token; the token itself is never stored
    label       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE ingest_streams (
    node        TEXT NOT NULL,
    instance    TEXT NOT NULL,
    last_seq    BIGINT NOT NULL,    -- gaps = last_seq - batches: numbers below it never stored
    batches     BIGINT NOT NULL,
    dropped     BIGINT NOT NULL,    -- batches the agent reports it dropped from a full spool
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (node, instance)
);

CREATE TABLE batches (
    node        TEXT NOT NULL,
    instance    TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    sent_at     BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    records     BIGINT NOT NULL,
    samples     BIGINT NOT NULL,
    PRIMARY KEY (node, instance, seq)
);
CREATE INDEX batches_received_at ON batches (received_at);

CREATE TABLE series (
    id          INTEGER PRIMARY KEY,
    node        TEXT NOT NULL,
    collector   TEXT NOT NULL,
    name        TEXT NOT NULL,
    labels      TEXT NOT NULL,      -- canonical JSON object, keys sorted
    UNIQUE (node, name, labels)
);

-- One row per record: the record's samples packed as (series_id i64 LE, value f64 LE) pairs,
-- sorted by series_id. A row per sample made every write cost a b-tree insert per sample (and,
-- ordered by series, a page rewrite per series per commit); packed, a batch of 50 samples is one
-- insert at the end of its node's range. Reading one series decodes its collector's rows in the
-- time range.
CREATE TABLE samples (
    node        TEXT NOT NULL,
    collector   TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    points      BLOB NOT NULL
);
CREATE INDEX samples_node_collector_ts ON samples (node, collector, ts);

CREATE TABLE records (
    node        TEXT NOT NULL,
    collector   TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX records_node_collector_ts ON records (node, collector, ts);
CREATE INDEX records_ts ON records (ts);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    ts          BIGINT NOT NULL,
    node        TEXT,
    service     TEXT,
    level       BIGINT NOT NULL,
    message     TEXT NOT NULL,
    fields      TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);

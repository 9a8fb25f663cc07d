-- Dashboard sessions: the cookie holds a random id; only its SHA-256 is stored.

CREATE TABLE ui_sessions (
    id_hash     TEXT PRIMARY KEY,
    who         TEXT NOT NULL,          -- the token label or user that logged in
    csrf        TEXT NOT NULL,          -- the token every state-changing form carries
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);

-- Failed dashboard logins, counted per key so every controller on the database agrees:
-- `addr:<address or IPv6 /64>`, `user:<name>`, `pair:<address>|<name>` (web/ui/session.rs
-- says which limit each key has). A key's failures are forgotten after a quiet day.

CREATE TABLE login_failures (
    key              TEXT PRIMARY KEY,
    failures         BIGINT NOT NULL,   -- counted since the key was last cleared or forgotten
    last_ms          BIGINT NOT NULL,   -- the latest failure
    next_allowed_ms  BIGINT NOT NULL    -- no attempt under this key is checked before this
);
CREATE INDEX login_failures_last ON login_failures (last_ms);

-- Where each user last logged in successfully: those addresses skip the per-user and
-- per-address limits (an attacker elsewhere cannot lock the user out from them).
CREATE TABLE login_known (
    user_name  TEXT NOT NULL,
    addr       TEXT NOT NULL,
    last_ms    BIGINT NOT NULL,
    PRIMARY KEY (user_name, addr)
);
CREATE INDEX login_known_last ON login_known (last_ms);

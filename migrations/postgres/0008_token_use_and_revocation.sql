-- Operator tokens can be listed and revoked (`fleet token list | revoke`, GET /api/v1/tokens,
-- DELETE /api/v1/tokens/{id}). A token is named by `id`: the first 16 hex digits of its hash,
-- enough to tell tokens apart and to revoke one, never the secret nor its hash in full.
-- A revoked token stays listed (`revoked_at`), so who had access and when is not forgotten.

ALTER TABLE api_tokens ADD COLUMN id TEXT COLLATE "C";
UPDATE api_tokens SET id = substr(hash, 1, 16);
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
ALTER TABLE api_tokens ADD COLUMN last_used_at BIGINT;   -- written at most once a minute
ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT;

-- The token a dashboard session was opened with (its id), so revoking it ends the session.
ALTER TABLE ui_sessions ADD COLUMN token_id TEXT COLLATE "C";
CREATE INDEX ui_sessions_token ON ui_sessions (token_id);

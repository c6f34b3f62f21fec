-- Projects, their AI keys, and gateway usage with its rollup.

-- A deleted project keeps its row (deleted_at set) so that its soft-deleted
-- AI keys and the audit log still point at something; its name is free again.
CREATE TABLE projects (
	id          TEXT PRIMARY KEY,
	org_id      TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	description TEXT NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL,
	deleted_at  INTEGER
);
CREATE UNIQUE INDEX projects_org_name ON projects (org_id, name) WHERE deleted_at IS NULL;

-- Only the SHA-256 of a secret is stored; key is the public identifier.
CREATE TABLE ai_keys (
	id             TEXT PRIMARY KEY,
	project_id     TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
	org_id         TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	name           TEXT NOT NULL,
	ai_type        TEXT NOT NULL CHECK (ai_type IN ('OPENAI', 'GOOGLE', 'ANTHROPIC', 'AWS', 'OTHER')),
	key            TEXT NOT NULL UNIQUE,
	secret_hash    BLOB NOT NULL UNIQUE,
	rate_limit_rpm INTEGER NOT NULL DEFAULT 0,
	rate_limit_tpm INTEGER NOT NULL DEFAULT 0,
	token_budget   INTEGER NOT NULL DEFAULT 0,
	budget_period  TEXT NOT NULL DEFAULT '',
	created_by     TEXT NOT NULL DEFAULT '',
	created_at     INTEGER NOT NULL,
	updated_at     INTEGER NOT NULL,
	last_used_at   INTEGER,
	deleted_at     INTEGER
);
CREATE INDEX ai_keys_project ON ai_keys (project_id, id);

-- One row per gateway request. No foreign keys: rows arrive in batches off
-- the request path and must not be refused because a key, a provider or a
-- project was deleted meanwhile; retention removes them by age.
CREATE TABLE usage (
	id                  TEXT PRIMARY KEY,
	time                INTEGER NOT NULL,
	org_id              TEXT NOT NULL,
	project_id          TEXT NOT NULL DEFAULT '',
	user_id             TEXT NOT NULL DEFAULT '',
	api_key_id          TEXT NOT NULL DEFAULT '',
	ai_key_id           TEXT NOT NULL DEFAULT '',
	provider_id         TEXT NOT NULL DEFAULT '',
	provider_key_id     TEXT NOT NULL DEFAULT '',
	model               TEXT NOT NULL DEFAULT '',
	status              INTEGER NOT NULL,
	stream              INTEGER NOT NULL DEFAULT 0,
	latency_ms          REAL NOT NULL DEFAULT 0,
	upstream_latency_ms REAL NOT NULL DEFAULT 0,
	input_tokens        INTEGER NOT NULL DEFAULT 0,
	output_tokens       INTEGER NOT NULL DEFAULT 0,
	cache_read_tokens   INTEGER NOT NULL DEFAULT 0,
	cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
	failovers           INTEGER NOT NULL DEFAULT 0
);
-- Reads of raw rows are always one org over a time range (the partial hours
-- at the edges of a usage query); retention deletes by time alone.
CREATE INDEX usage_org_time ON usage (org_id, time);
CREATE INDEX usage_time ON usage (time);

-- Per-org totals per group-by dimension, per hour (period 'h') and per UTC
-- day (period 'd'), kept in the transaction that inserts the raw rows. A
-- 30-day query reads about 30 daily rows per group instead of every request.
CREATE TABLE usage_rollup (
	org_id             TEXT NOT NULL,
	dim                TEXT NOT NULL,
	period             TEXT NOT NULL,
	bucket             INTEGER NOT NULL,
	key                TEXT NOT NULL,
	requests           INTEGER NOT NULL,
	errors             INTEGER NOT NULL,
	input_tokens       INTEGER NOT NULL,
	output_tokens      INTEGER NOT NULL,
	cache_read_tokens  INTEGER NOT NULL,
	cache_write_tokens INTEGER NOT NULL,
	PRIMARY KEY (org_id, dim, period, bucket, key)
) WITHOUT ROWID;

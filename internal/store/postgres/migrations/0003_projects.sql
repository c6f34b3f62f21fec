-- Projects, their AI keys, and gateway usage with its rollup.

-- A deleted project keeps its row (deleted_at set) so that its soft-deleted
-- AI keys and the audit log still point at something; its name is free again.
CREATE TABLE projects (
	id          TEXT PRIMARY KEY,
	org_id      TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	description TEXT NOT NULL DEFAULT '',
	created_at  TIMESTAMPTZ NOT NULL,
	updated_at  TIMESTAMPTZ NOT NULL,
	deleted_at  TIMESTAMPTZ
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
	secret_hash    BYTEA NOT NULL UNIQUE,
	rate_limit_rpm BIGINT NOT NULL DEFAULT 0,
	rate_limit_tpm BIGINT NOT NULL DEFAULT 0,
	token_budget   BIGINT NOT NULL DEFAULT 0,
	budget_period  TEXT NOT NULL DEFAULT '',
	created_by     TEXT NOT NULL DEFAULT '',
	created_at     TIMESTAMPTZ NOT NULL,
	updated_at     TIMESTAMPTZ NOT NULL,
	last_used_at   TIMESTAMPTZ,
	deleted_at     TIMESTAMPTZ
);
CREATE INDEX ai_keys_project ON ai_keys (project_id, id);

-- One row per gateway request. No foreign keys: rows arrive in batches off
-- the request path and must not be refused because a key, a provider or a
-- project was deleted meanwhile; retention removes them by age.
CREATE TABLE usage (
	id                  TEXT PRIMARY KEY,
	time                TIMESTAMPTZ NOT NULL,
	org_id              TEXT NOT NULL,
	project_id          TEXT NOT NULL DEFAULT '',
	user_id             TEXT NOT NULL DEFAULT '',
	api_key_id          TEXT NOT NULL DEFAULT '',
	ai_key_id           TEXT NOT NULL DEFAULT '',
	provider_id         TEXT NOT NULL DEFAULT '',
	provider_key_id     TEXT NOT NULL DEFAULT '',
	model               TEXT NOT NULL DEFAULT '',
	status              INTEGER NOT NULL,
	stream              BOOLEAN NOT NULL DEFAULT FALSE,
	latency_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
	upstream_latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
	input_tokens        BIGINT NOT NULL DEFAULT 0,
	output_tokens       BIGINT NOT NULL DEFAULT 0,
	cache_read_tokens   BIGINT NOT NULL DEFAULT 0,
	cache_write_tokens  BIGINT NOT NULL DEFAULT 0,
	failovers           INTEGER NOT NULL DEFAULT 0
);
-- Reads of raw rows are always one org over a time range (the partial hours
-- at the edges of a usage query); retention deletes by time alone.
CREATE INDEX usage_org_time ON usage (org_id, time);
CREATE INDEX usage_time ON usage (time);

-- Per-org totals per group-by dimension, per hour (period 'h') and per UTC
-- day (period 'd'), kept in the transaction that inserts the raw rows. A
-- 30-day query reads about 30 daily rows per group instead of every request.
-- Each batch adds to the rows of its hour and day: free room in every page
-- lets PostgreSQL update them in place (HOT) instead of leaving a dead
-- version and a new index entry behind each time.
CREATE TABLE usage_rollup (
	org_id             TEXT NOT NULL,
	dim                TEXT NOT NULL,
	period             TEXT NOT NULL,
	bucket             TIMESTAMPTZ NOT NULL,
	key                TEXT NOT NULL,
	requests           BIGINT NOT NULL,
	errors             BIGINT NOT NULL,
	input_tokens       BIGINT NOT NULL,
	output_tokens      BIGINT NOT NULL,
	cache_read_tokens  BIGINT NOT NULL,
	cache_write_tokens BIGINT NOT NULL,
	PRIMARY KEY (org_id, dim, period, bucket, key)
) WITH (fillfactor = 70);

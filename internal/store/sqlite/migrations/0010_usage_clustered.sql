-- Raw usage is kept in one B-tree, clustered on (org_id, time, id), instead
-- of three: the rowid table, the index of its id primary key and
-- usage_org_time. Every insert of the gateway paid for all three; every
-- read of raw rows (the partial hours of a usage query, retention's purge)
-- is one org over a time range, which the primary key's order now serves
-- without a lookup from an index into the table. The id stays unique
-- within its org and time, which is what keeps a retried batch whose
-- commit did land from being counted twice: the retry writes the same
-- rows, with the same org, time and id, and conflicts.
CREATE TABLE usage_clustered (
	id                  TEXT NOT NULL,
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
	failovers           INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (org_id, time, id)
) WITHOUT ROWID;

-- In key order, so the copy appends instead of splitting pages.
INSERT INTO usage_clustered (id, time, org_id, project_id, user_id, api_key_id, ai_key_id, provider_id, provider_key_id,
	model, status, stream, latency_ms, upstream_latency_ms, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, failovers)
SELECT id, time, org_id, project_id, user_id, api_key_id, ai_key_id, provider_id, provider_key_id,
	model, status, stream, latency_ms, upstream_latency_ms, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, failovers
FROM usage ORDER BY org_id, time, id;

-- usage_org_time goes with the table: the primary key is its order.
DROP TABLE usage;
ALTER TABLE usage_clustered RENAME TO usage;

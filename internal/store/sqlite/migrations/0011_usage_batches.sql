-- Raw usage is written packed: the rows of one org within one UTC hour
-- that one batch of the gateway brings go in one row here, their fields
-- encoded in data (see usage_pack.go), rows counting them. A row per
-- request in usage cost the engine more than the rest of the request.
-- Raw rows are only read for the partial hours at the edges of a usage
-- query, one org and one hour at a time: the primary key's order. id is
-- the batch's first request's id, so that a retried batch whose commit
-- did land conflicts instead of counting twice. usage keeps the rows
-- written before this version until retention removes them; nothing new
-- goes there.
CREATE TABLE usage_batches (
	org_id TEXT NOT NULL,
	hour   INTEGER NOT NULL,
	id     TEXT NOT NULL,
	rows   INTEGER NOT NULL,
	data   BLOB NOT NULL,
	PRIMARY KEY (org_id, hour, id)
);

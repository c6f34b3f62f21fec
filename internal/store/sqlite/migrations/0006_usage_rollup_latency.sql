-- The usage query also answers failovers and the mean latency per group
-- (SPEC §7.7), so the rollup keeps their sums: the mean is latency_ms_sum
-- divided by requests.
--
-- Rows written before this migration are filled in from the raw rows they
-- total. Retention removes raw rows and totals at the same UTC-day cut, so
-- every existing total still has its raw rows and comes out exact.
ALTER TABLE usage_rollup ADD COLUMN failovers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_rollup ADD COLUMN latency_ms_sum REAL NOT NULL DEFAULT 0;

WITH dims(dim) AS (VALUES ('provider'), ('model'), ('user'), ('project'), ('api_key')),
periods(period, width) AS (VALUES ('h', 3600000000), ('d', 86400000000)),
totals AS (
	SELECT u.org_id AS org_id, d.dim AS dim, p.period AS period, u.time - u.time % p.width AS bucket,
		CASE d.dim
			WHEN 'provider' THEN u.provider_id
			WHEN 'model' THEN u.model
			WHEN 'user' THEN u.user_id
			WHEN 'project' THEN u.project_id
			ELSE CASE WHEN u.api_key_id <> '' THEN u.api_key_id ELSE u.ai_key_id END
		END AS key,
		SUM(u.failovers) AS failovers, SUM(u.latency_ms) AS latency_ms_sum
	FROM usage u CROSS JOIN dims d CROSS JOIN periods p
	GROUP BY 1, 2, 3, 4, 5
)
UPDATE usage_rollup SET failovers = totals.failovers, latency_ms_sum = totals.latency_ms_sum
FROM totals
WHERE usage_rollup.org_id = totals.org_id AND usage_rollup.dim = totals.dim AND usage_rollup.period = totals.period
	AND usage_rollup.bucket = totals.bucket AND usage_rollup.key = totals.key;

-- Retention purges raw usage org by org through usage_org_time, so the
-- index on time alone went: it cost every insert, in the gateway's
-- hottest write, for a purge that runs once an hour.
DROP INDEX usage_time;

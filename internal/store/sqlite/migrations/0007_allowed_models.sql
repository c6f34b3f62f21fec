-- The model allowlist of a platform key or AI key (SPEC §7.2), as a JSON
-- array of exact names and "prefix*" patterns. '[]' allows every model,
-- which is what every key made before this migration keeps doing. The
-- gateway reads it only through the authentication cache, never per
-- request, so a column it cannot index costs nothing.
ALTER TABLE api_keys ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';
ALTER TABLE ai_keys ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';

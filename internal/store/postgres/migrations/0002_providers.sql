-- Providers, their upstream keys and users' personal credentials. Every
-- secret is sealed by the key ring: the column holds the ciphertext and
-- <column>_version the data key version that sealed it, so a rewrap finds
-- what is left to re-encrypt without opening anything.

-- Names sort bytewise (COLLATE "C") as in SQLite, so both engines list
-- providers in the same order.
CREATE TABLE providers (
	id               TEXT PRIMARY KEY,
	org_id           TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	name             TEXT COLLATE "C" NOT NULL,
	display_name     TEXT NOT NULL,
	type             TEXT NOT NULL,
	base_url         TEXT NOT NULL,
	enabled          BOOLEAN NOT NULL,
	key_source       TEXT NOT NULL CHECK (key_source IN ('org', 'user', 'user_or_org')),
	settings         BYTEA NOT NULL,
	settings_version INTEGER NOT NULL,
	created_at       TIMESTAMPTZ NOT NULL,
	updated_at       TIMESTAMPTZ NOT NULL,
	UNIQUE (org_id, name)
);
CREATE INDEX providers_settings_version ON providers (settings_version);

-- fingerprint is a keyed HMAC of the key, so the same key twice on one
-- provider is refused without storing or comparing plaintext.
CREATE TABLE provider_keys (
	id              TEXT PRIMARY KEY,
	provider_id     TEXT NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
	name            TEXT NOT NULL DEFAULT '',
	hint            TEXT NOT NULL,
	priority        INTEGER NOT NULL,
	enabled         BOOLEAN NOT NULL,
	api_key         BYTEA NOT NULL,
	api_key_version INTEGER NOT NULL,
	fingerprint     BYTEA NOT NULL,
	created_at      TIMESTAMPTZ NOT NULL,
	updated_at      TIMESTAMPTZ NOT NULL,
	last_used_at    TIMESTAMPTZ,
	cooldown_until  TIMESTAMPTZ,
	UNIQUE (provider_id, fingerprint)
);
CREATE INDEX provider_keys_order ON provider_keys (provider_id, priority, id);
CREATE INDEX provider_keys_api_key_version ON provider_keys (api_key_version);

CREATE TABLE user_credentials (
	id              TEXT PRIMARY KEY,
	user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	provider_id     TEXT NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
	hint            TEXT NOT NULL,
	api_key         BYTEA NOT NULL,
	api_key_version INTEGER NOT NULL,
	fingerprint     BYTEA NOT NULL,
	created_at      TIMESTAMPTZ NOT NULL,
	updated_at      TIMESTAMPTZ NOT NULL,
	last_used_at    TIMESTAMPTZ,
	UNIQUE (user_id, provider_id)
);
CREATE INDEX user_credentials_user ON user_credentials (user_id, id);
CREATE INDEX user_credentials_org ON user_credentials (org_id);
CREATE INDEX user_credentials_provider ON user_credentials (provider_id);
CREATE INDEX user_credentials_api_key_version ON user_credentials (api_key_version);

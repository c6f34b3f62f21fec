-- Orgs, users, memberships, invitations, sessions, platform API keys, the
-- key ring, the meta table and the audit log.
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);

CREATE TABLE orgs (
	id         TEXT PRIMARY KEY,
	slug       TEXT NOT NULL UNIQUE,
	name       TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
);

CREATE TABLE users (
	id            TEXT PRIMARY KEY,
	email         TEXT NOT NULL UNIQUE,
	name          TEXT NOT NULL,
	password_hash TEXT NOT NULL DEFAULT '',
	created_at    INTEGER NOT NULL,
	updated_at    INTEGER NOT NULL
);

CREATE TABLE memberships (
	org_id     TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE invitations (
	id          TEXT PRIMARY KEY,
	org_id      TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	token_hash  BLOB NOT NULL UNIQUE,
	expires_at  INTEGER NOT NULL,
	accepted_at INTEGER,
	created_at  INTEGER NOT NULL
);

CREATE INDEX invitations_org ON invitations (org_id);
CREATE INDEX invitations_user ON invitations (user_id);

CREATE TABLE sessions (
	id         TEXT PRIMARY KEY,
	user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	token_hash BLOB NOT NULL UNIQUE,
	csrf_token TEXT NOT NULL,
	ip         TEXT NOT NULL DEFAULT '',
	user_agent TEXT NOT NULL DEFAULT '',
	expires_at INTEGER NOT NULL,
	created_at INTEGER NOT NULL
);

CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_keys (
	id             TEXT PRIMARY KEY,
	org_id         TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	name           TEXT NOT NULL,
	description    TEXT NOT NULL DEFAULT '',
	prefix         TEXT NOT NULL,
	hash           BLOB NOT NULL UNIQUE,
	permissions    INTEGER NOT NULL,
	status         TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
	rate_limit_rpm INTEGER NOT NULL DEFAULT 0,
	rate_limit_tpm INTEGER NOT NULL DEFAULT 0,
	token_budget   INTEGER NOT NULL DEFAULT 0,
	budget_period  TEXT NOT NULL DEFAULT '',
	created_at     INTEGER NOT NULL,
	updated_at     INTEGER NOT NULL,
	last_used_at   INTEGER,
	expires_at     INTEGER,
	revoked_at     INTEGER,
	grace_until    INTEGER,
	rotated_from   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX api_keys_user ON api_keys (user_id, id);
CREATE INDEX api_keys_org ON api_keys (org_id, id);

CREATE TABLE data_keys (
	version    INTEGER PRIMARY KEY,
	wrapped    BLOB NOT NULL,
	is_primary INTEGER NOT NULL,
	created_at INTEGER NOT NULL
);
-- At most one primary data key: the one new values are sealed with.
CREATE UNIQUE INDEX data_keys_primary ON data_keys (is_primary) WHERE is_primary = 1;

-- The audit log: a hash chain per org. org_id is '' for events that belong
-- to no org (a failed login of an unknown address).
CREATE TABLE audit_events (
	id            TEXT PRIMARY KEY,
	org_id        TEXT NOT NULL,
	seq           INTEGER NOT NULL,
	time          INTEGER NOT NULL,
	actor_type    TEXT NOT NULL,
	actor_id      TEXT NOT NULL,
	actor_email   TEXT NOT NULL DEFAULT '',
	action        TEXT NOT NULL,
	resource_type TEXT NOT NULL,
	resource_id   TEXT NOT NULL,
	resource_name TEXT NOT NULL DEFAULT '',
	ip            TEXT NOT NULL DEFAULT '',
	user_agent    TEXT NOT NULL DEFAULT '',
	request_id    TEXT NOT NULL DEFAULT '',
	changes       TEXT NOT NULL DEFAULT '{}',
	prev_hash     BLOB NOT NULL,
	hash          BLOB NOT NULL,
	UNIQUE (org_id, seq)
);
-- Lists run newest first by (time, id); retention finds its cut by time.
CREATE INDEX audit_events_org_time ON audit_events (org_id, time, id);

-- The head of each org's chain, locked while appending so appends of one
-- org are serialized. anchor_seq and anchor_hash are the last event that
-- retention removed: the oldest remaining event must link to it.
CREATE TABLE audit_heads (
	org_id      TEXT PRIMARY KEY,
	seq         INTEGER NOT NULL,
	hash        BLOB NOT NULL,
	anchor_seq  INTEGER NOT NULL,
	anchor_hash BLOB NOT NULL
);

-- An invitation is a pending membership: it names an address, the name
-- and role the inviter gave, and nothing of any user. The user it is for,
-- new or existing, joins only by accepting it (the membership is created
-- then); until then it grants nothing, and the inviter learns nothing of
-- whether the address already has an account. Accepting deletes the row,
-- which makes the token single-use.
CREATE TABLE member_invitations (
	id         TEXT PRIMARY KEY,
	org_id     TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
	email      TEXT COLLATE "C" NOT NULL,
	name       TEXT NOT NULL,
	role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
	token_hash BYTEA NOT NULL UNIQUE,
	invited_by TEXT NOT NULL DEFAULT '',
	expires_at TIMESTAMPTZ NOT NULL,
	created_at TIMESTAMPTZ NOT NULL,
	updated_at TIMESTAMPTZ NOT NULL,
	UNIQUE (org_id, email)
);

-- Invitations still open become pending ones: their memberships were
-- created before the user accepted, for users who never set a password,
-- and are taken back until the link is used. An invitation made void by
-- the member's removal (or removal and re-adding) is not carried over.
INSERT INTO member_invitations (id, org_id, email, name, role, token_hash, invited_by, expires_at, created_at, updated_at)
SELECT i.id, i.org_id, u.email, u.name, m.role, i.token_hash, '', i.expires_at, i.created_at, i.created_at
FROM invitations i
JOIN users u ON u.id = i.user_id
JOIN memberships m ON m.org_id = i.org_id AND m.user_id = i.user_id
WHERE i.accepted_at IS NULL AND u.password_hash = '' AND m.created_at <= i.created_at
ON CONFLICT DO NOTHING;

DELETE FROM memberships WHERE EXISTS (
	SELECT 1 FROM member_invitations mi JOIN users u ON u.email = mi.email
	WHERE mi.org_id = memberships.org_id AND u.id = memberships.user_id
);

DROP TABLE invitations;

-- The CSRF token of a session is now derived from the session's own token
-- (an HMAC) and never stored; the column is kept empty. Sessions made
-- before held it in clear, so they end: their users sign in again.
DELETE FROM sessions;

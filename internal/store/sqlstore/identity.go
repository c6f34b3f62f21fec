package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// CreateOrg implements store.Identity. It keeps o.ID when the caller set one.
func (s *Store) CreateOrg(ctx context.Context, o *keybridge.Org) error {
	if o.ID == "" {
		o.ID = newID()
	}
	now := s.Now()
	o.CreatedAt, o.UpdatedAt = now, now
	_, err := s.exec(ctx, `INSERT INTO orgs (id, slug, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)`,
		o.ID, o.Slug, o.Name, s.ts(now), s.ts(now))
	return s.conflict(err, fmt.Sprintf("an org with slug %q already exists", o.Slug))
}

const orgColumns = `o.id, o.slug, o.name, o.created_at, o.updated_at`

func scanOrg(sc rowScanner, o *keybridge.Org, extra ...any) error {
	return sc.Scan(append([]any{&o.ID, &o.Slug, &o.Name, timeCol{&o.CreatedAt}, timeCol{&o.UpdatedAt}}, extra...)...)
}

// Org implements store.Identity. A slug may look like an ID, so an ID match
// wins over a slug match.
func (s *Store) Org(ctx context.Context, idOrSlug string) (*keybridge.Org, error) {
	var o keybridge.Org
	err := scanOrg(s.queryRow(ctx, `SELECT `+orgColumns+` FROM orgs o WHERE o.id = ? OR o.slug = ?
		ORDER BY CASE WHEN o.id = ? THEN 0 ELSE 1 END LIMIT 1`, idOrSlug, idOrSlug, idOrSlug), &o)
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("org %q", idOrSlug))
	}
	return &o, nil
}

// UpdateOrg implements store.Identity.
func (s *Store) UpdateOrg(ctx context.Context, o *keybridge.Org) error {
	now := s.Now()
	res, err := s.exec(ctx, `UPDATE orgs SET slug = ?, name = ?, updated_at = ? WHERE id = ?`,
		o.Slug, o.Name, s.ts(now), o.ID)
	if err := mustAffect(res, s.conflict(err, fmt.Sprintf("an org with slug %q already exists", o.Slug)), "org"); err != nil {
		return err
	}
	o.UpdatedAt = now
	return nil
}

// DeleteOrg implements store.Identity. Foreign keys cascade the delete to
// what the org owns. Its audit events stay: the log outlives what it
// records, and retention removes it like any other. Every cached key may
// have belonged to the org, so caches are told to drop everything.
func (s *Store) DeleteOrg(ctx context.Context, id string) error {
	return s.write(ctx, func(s *Store) error {
		res, err := s.exec(ctx, `DELETE FROM orgs WHERE id = ?`, id)
		if err := mustAffect(res, err, "org"); err != nil {
			return err
		}
		return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateAll})
	})
}

// CountOrgs implements store.Identity.
func (s *Store) CountOrgs(ctx context.Context) (int, error) {
	var n int
	err := s.queryRow(ctx, `SELECT COUNT(*) FROM orgs`).Scan(&n)
	return n, err
}

// OrgsForUser implements store.Identity. Orgs come sorted by slug.
func (s *Store) OrgsForUser(ctx context.Context, userID string) ([]store.OrgMembership, error) {
	rows, err := s.query(ctx, `SELECT `+orgColumns+`, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id
		WHERE m.user_id = ? ORDER BY o.slug`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.OrgMembership
	for rows.Next() {
		var om store.OrgMembership
		if err := scanOrg(rows, &om.Org, &om.Role); err != nil {
			return nil, err
		}
		out = append(out, om)
	}
	return out, rows.Err()
}

// CreateUser implements store.Identity. The email is stored normalized.
func (s *Store) CreateUser(ctx context.Context, u *keybridge.User) error {
	if u.ID == "" {
		u.ID = newID()
	}
	u.Email = keybridge.NormalizeEmail(u.Email)
	now := s.Now()
	u.CreatedAt, u.UpdatedAt = now, now
	_, err := s.exec(ctx, `INSERT INTO users (id, email, name, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
		u.ID, u.Email, u.Name, u.PasswordHash, s.ts(now), s.ts(now))
	return s.conflict(err, fmt.Sprintf("a user with email %q already exists", u.Email))
}

const userColumns = `id, email, name, password_hash, created_at, updated_at`

func scanUser(sc rowScanner) (*keybridge.User, error) {
	var u keybridge.User
	if err := sc.Scan(&u.ID, &u.Email, &u.Name, &u.PasswordHash, timeCol{&u.CreatedAt}, timeCol{&u.UpdatedAt}); err != nil {
		return nil, err
	}
	return &u, nil
}

// User implements store.Identity.
func (s *Store) User(ctx context.Context, id string) (*keybridge.User, error) {
	u, err := scanUser(s.queryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = ?`, id))
	return u, notFound(err, "user")
}

// UserByEmail implements store.Identity. The address is normalized first.
func (s *Store) UserByEmail(ctx context.Context, email string) (*keybridge.User, error) {
	u, err := scanUser(s.queryRow(ctx, `SELECT `+userColumns+` FROM users WHERE email = ?`, keybridge.NormalizeEmail(email)))
	return u, notFound(err, "user")
}

// UpdateUser implements store.Identity.
func (s *Store) UpdateUser(ctx context.Context, u *keybridge.User) error {
	now := s.Now()
	res, err := s.exec(ctx, `UPDATE users SET name = ?, password_hash = ?, updated_at = ? WHERE id = ?`,
		u.Name, u.PasswordHash, s.ts(now), u.ID)
	if err := mustAffect(res, err, "user"); err != nil {
		return err
	}
	u.UpdatedAt = now
	return nil
}

// CreateMembership implements store.Identity.
func (s *Store) CreateMembership(ctx context.Context, m *keybridge.Membership) error {
	now := s.Now()
	m.CreatedAt, m.UpdatedAt = now, now
	return s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, `INSERT INTO memberships (org_id, user_id, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?)`,
			m.OrgID, m.UserID, string(m.Role), tx.ts(now), tx.ts(now))
		if err != nil {
			return tx.conflict(err, "the user is already a member of the org")
		}
		// A member added back gets their keys back at once: caches may
		// hold them as refused.
		return tx.Publish(ctx, store.Invalidation{Kind: store.InvalidateUser, ID: m.UserID})
	})
}

// Membership implements store.Identity.
func (s *Store) Membership(ctx context.Context, orgID, userID string) (*keybridge.Membership, error) {
	var m keybridge.Membership
	err := s.queryRow(ctx, `SELECT org_id, user_id, role, created_at, updated_at FROM memberships
		WHERE org_id = ? AND user_id = ?`, orgID, userID).
		Scan(&m.OrgID, &m.UserID, &m.Role, timeCol{&m.CreatedAt}, timeCol{&m.UpdatedAt})
	if err != nil {
		return nil, notFound(err, "member")
	}
	return &m, nil
}

// memberColumns reads a membership with its user; invitationMemberColumns
// reads a pending invitation in the same shape.
const (
	memberColumns           = `m.org_id, m.user_id, m.role, m.created_at, m.updated_at, u.email, u.name, 0 AS invited, NULL AS expires_at`
	invitationMemberColumns = `i.org_id, i.id, i.role, i.created_at, i.updated_at, i.email, i.name, 1 AS invited, i.expires_at`
)

func scanMember(sc rowScanner) (*keybridge.Member, error) {
	var m keybridge.Member
	var invited int
	err := sc.Scan(&m.OrgID, &m.UserID, &m.Role, timeCol{&m.CreatedAt}, timeCol{&m.UpdatedAt}, &m.Email, &m.Name, &invited,
		nullTimeCol{&m.InviteExpiresAt})
	if err != nil {
		return nil, err
	}
	m.Invited = invited == 1
	return &m, nil
}

// Members implements store.Identity. The cursor is the last (email, ID) of
// the previous page: an address is a member or invited, so the email
// alone sorts, and the ID breaks the tie a race could leave.
func (s *Store) Members(ctx context.Context, orgID string, page store.Page) ([]keybridge.Member, string, error) {
	limit := limitOf(page)
	after, err := decodeCursor(page.Cursor, 2)
	if err != nil {
		return nil, "", err
	}
	var lastEmail, lastID string
	if after != nil {
		lastEmail, lastID = after[0], after[1]
	}
	out, err := queryAll(ctx, s, scanMember, `SELECT * FROM (
			SELECT `+memberColumns+` FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = ?
			UNION ALL
			SELECT `+invitationMemberColumns+` FROM member_invitations i WHERE i.org_id = ?
		) ms WHERE ms.email > ? OR (ms.email = ? AND ms.user_id > ?) ORDER BY ms.email, ms.user_id LIMIT ?`,
		orgID, orgID, lastEmail, lastEmail, lastID, limit+1)
	if err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, limit, func(m *keybridge.Member) []string { return []string{m.Email, m.UserID} })
	return out, next, nil
}

// Member implements store.Identity.
func (s *Store) Member(ctx context.Context, orgID, userID string) (*keybridge.Member, error) {
	m, err := scanMember(s.queryRow(ctx, `SELECT `+memberColumns+` FROM memberships m JOIN users u ON u.id = m.user_id
		WHERE m.org_id = ? AND m.user_id = ?`, orgID, userID))
	if err != nil {
		return nil, notFound(err, "member")
	}
	return m, nil
}

// UpdateMembership implements store.Identity. The user's keys carry the
// role's power, so their cached entries are invalidated.
func (s *Store) UpdateMembership(ctx context.Context, m *keybridge.Membership) error {
	return s.write(ctx, func(s *Store) error {
		now := s.Now()
		res, err := s.exec(ctx, `UPDATE memberships SET role = ?, updated_at = ? WHERE org_id = ? AND user_id = ?`,
			string(m.Role), s.ts(now), m.OrgID, m.UserID)
		if err := mustAffect(res, err, "member"); err != nil {
			return err
		}
		m.UpdatedAt = now
		return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateUser, ID: m.UserID})
	})
}

// DeleteMembership implements store.Identity. The user's keys lose their
// power in the org, so their cached entries are invalidated.
func (s *Store) DeleteMembership(ctx context.Context, orgID, userID string) error {
	return s.write(ctx, func(s *Store) error {
		res, err := s.exec(ctx, `DELETE FROM memberships WHERE org_id = ? AND user_id = ?`, orgID, userID)
		if err := mustAffect(res, err, "member"); err != nil {
			return err
		}
		return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateUser, ID: userID})
	})
}

// CountOwners implements store.Identity. PostgreSQL refuses FOR UPDATE
// beside an aggregate, so the rows are locked in a subquery. A concurrent
// transaction waiting on the lock re-reads the rows once it gets them, and
// no longer counts an owner the first one demoted.
func (s *Store) CountOwners(ctx context.Context, orgID string) (int, error) {
	var n int
	err := s.queryRow(ctx, `SELECT COUNT(*) FROM (SELECT user_id FROM memberships
		WHERE org_id = ? AND role = 'owner'`+s.db.Dialect.ForUpdate+`) owners`, orgID).Scan(&n)
	return n, err
}

// CreateInvitation implements store.Identity.
func (s *Store) CreateInvitation(ctx context.Context, inv *keybridge.Invitation) error {
	if inv.ID == "" {
		inv.ID = newID()
	}
	now := s.Now()
	inv.CreatedAt, inv.UpdatedAt = now, now
	_, err := s.exec(ctx, `INSERT INTO member_invitations (id, org_id, email, name, role, token_hash, invited_by, expires_at, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		inv.ID, inv.OrgID, inv.Email, inv.Name, string(inv.Role), inv.TokenHash, inv.InvitedBy, s.ts(inv.ExpiresAt), s.ts(now), s.ts(now))
	return s.conflict(err, "the address is already invited")
}

const invitationColumns = `id, org_id, email, name, role, token_hash, invited_by, expires_at, created_at, updated_at`

func scanInvitation(sc rowScanner) (*keybridge.Invitation, error) {
	var inv keybridge.Invitation
	err := sc.Scan(&inv.ID, &inv.OrgID, &inv.Email, &inv.Name, &inv.Role, &inv.TokenHash, &inv.InvitedBy,
		timeCol{&inv.ExpiresAt}, timeCol{&inv.CreatedAt}, timeCol{&inv.UpdatedAt})
	if err != nil {
		return nil, notFound(err, "invitation")
	}
	return &inv, nil
}

// Invitation implements store.Identity.
func (s *Store) Invitation(ctx context.Context, orgID, id string) (*keybridge.Invitation, error) {
	return scanInvitation(s.queryRow(ctx, `SELECT `+invitationColumns+` FROM member_invitations WHERE org_id = ? AND id = ?`, orgID, id))
}

// InvitationByEmail implements store.Identity.
func (s *Store) InvitationByEmail(ctx context.Context, orgID, email string) (*keybridge.Invitation, error) {
	return scanInvitation(s.queryRow(ctx, `SELECT `+invitationColumns+` FROM member_invitations WHERE org_id = ? AND email = ?`,
		orgID, keybridge.NormalizeEmail(email)))
}

// InvitationByHash implements store.Identity.
func (s *Store) InvitationByHash(ctx context.Context, hash []byte) (*keybridge.Invitation, error) {
	return scanInvitation(s.queryRow(ctx, `SELECT `+invitationColumns+` FROM member_invitations WHERE token_hash = ?`, hash))
}

// UpdateInvitation implements store.Identity.
func (s *Store) UpdateInvitation(ctx context.Context, inv *keybridge.Invitation) error {
	now := s.Now()
	res, err := s.exec(ctx, `UPDATE member_invitations SET name = ?, role = ?, token_hash = ?, invited_by = ?, expires_at = ?, updated_at = ?
		WHERE org_id = ? AND id = ?`,
		inv.Name, string(inv.Role), inv.TokenHash, inv.InvitedBy, s.ts(inv.ExpiresAt), s.ts(now), inv.OrgID, inv.ID)
	if err := mustAffect(res, s.conflict(err, "invitation token exists"), "invitation"); err != nil {
		return err
	}
	inv.UpdatedAt = now
	return nil
}

// DeleteInvitation implements store.Identity.
func (s *Store) DeleteInvitation(ctx context.Context, orgID, id string) error {
	res, err := s.exec(ctx, `DELETE FROM member_invitations WHERE org_id = ? AND id = ?`, orgID, id)
	return mustAffect(res, err, "invitation")
}

// CreateSession implements store.Identity. The CSRF token is not stored:
// it is derived from the session's token, which only the client holds.
func (s *Store) CreateSession(ctx context.Context, sess *keybridge.Session) error {
	if sess.ID == "" {
		sess.ID = newID()
	}
	sess.CreatedAt = s.Now()
	_, err := s.exec(ctx, `INSERT INTO sessions (id, user_id, token_hash, csrf_token, ip, user_agent, expires_at, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		sess.ID, sess.UserID, sess.TokenHash, "", sess.IP, sess.UserAgent, s.ts(sess.ExpiresAt), s.ts(sess.CreatedAt))
	return s.conflict(err, "session exists")
}

// SessionByHash implements store.Identity.
func (s *Store) SessionByHash(ctx context.Context, hash []byte) (*keybridge.Session, error) {
	var sess keybridge.Session
	err := s.queryRow(ctx, `SELECT id, user_id, token_hash, ip, user_agent, expires_at, created_at
		FROM sessions WHERE token_hash = ? AND expires_at > ?`, hash, s.ts(s.Now())).
		Scan(&sess.ID, &sess.UserID, &sess.TokenHash, &sess.IP, &sess.UserAgent, timeCol{&sess.ExpiresAt}, timeCol{&sess.CreatedAt})
	if err != nil {
		return nil, notFound(err, "session")
	}
	return &sess, nil
}

// DeleteSession implements store.Identity.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	_, err := s.exec(ctx, `DELETE FROM sessions WHERE id = ?`, id)
	return err
}

// DeleteUserSessions implements store.Identity.
func (s *Store) DeleteUserSessions(ctx context.Context, userID, keep string) (int64, error) {
	res, err := s.exec(ctx, `DELETE FROM sessions WHERE user_id = ? AND id <> ?`, userID, keep)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// DeleteExpiredSessions implements store.Identity.
func (s *Store) DeleteExpiredSessions(ctx context.Context, t time.Time) (int64, error) {
	res, err := s.exec(ctx, `DELETE FROM sessions WHERE expires_at <= ?`, s.ts(t))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

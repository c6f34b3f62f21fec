package sqlstore

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

func init() {
	registerSealed(keybridge.SealedCredential, "id", "api_key_version")
}

const credentialColumns = `id, user_id, org_id, provider_id, hint, api_key, fingerprint, created_at, updated_at, last_used_at`

func scanCredential(sc rowScanner) (*keybridge.Credential, error) {
	var c keybridge.Credential
	err := sc.Scan(&c.ID, &c.UserID, &c.OrgID, &c.ProviderID, &c.Hint, &c.Sealed, &c.Fingerprint,
		timeCol{&c.CreatedAt}, timeCol{&c.UpdatedAt}, nullTimeCol{&c.LastUsedAt})
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// CreateCredential implements store.Credentials. It keeps c.ID when set
// (the key is sealed bound to it).
func (s *Store) CreateCredential(ctx context.Context, c *keybridge.Credential) error {
	return s.write(ctx, func(s *Store) error {
		if c.ID == "" {
			c.ID = newID()
		}
		now := s.Now()
		_, err := s.exec(ctx, `INSERT INTO user_credentials (id, user_id, org_id, provider_id, hint, api_key, api_key_version,
			fingerprint, created_at, updated_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			c.ID, c.UserID, c.OrgID, c.ProviderID, c.Hint, c.Sealed, sealedVersionOf(c.Sealed), c.Fingerprint,
			s.ts(now), s.ts(now), s.tsNull(c.LastUsedAt))
		if err := s.conflict(err, "you already have a personal key for this provider; update or delete it"); err != nil {
			return err
		}
		c.CreatedAt, c.UpdatedAt = now, now
		return s.publishCredential(ctx, c.OrgID, c.UserID)
	})
}

// publishCredential tells caches that a personal credential of userID in
// orgID changed.
func (s *Store) publishCredential(ctx context.Context, orgID, userID string) error {
	return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateCredential, ID: userID, Org: orgID})
}

// Credential implements store.Credentials.
func (s *Store) Credential(ctx context.Context, userID, id string) (*keybridge.Credential, error) {
	c, err := scanCredential(s.queryRow(ctx, `SELECT `+credentialColumns+` FROM user_credentials WHERE id = ? AND user_id = ?`, id, userID))
	if err != nil {
		return nil, notFound(err, "credential")
	}
	return c, nil
}

// CredentialFor implements store.Credentials.
func (s *Store) CredentialFor(ctx context.Context, userID, providerID string) (*keybridge.Credential, error) {
	c, err := scanCredential(s.queryRow(ctx, `SELECT `+credentialColumns+` FROM user_credentials WHERE user_id = ? AND provider_id = ?`, userID, providerID))
	if err != nil {
		return nil, notFound(err, "credential")
	}
	return c, nil
}

// ListCredentials implements store.Credentials. IDs are UUIDv7, so
// ordering by ID is ordering by creation.
func (s *Store) ListCredentials(ctx context.Context, userID string) ([]keybridge.Credential, error) {
	return queryAll(ctx, s, scanCredential, `SELECT `+credentialColumns+` FROM user_credentials WHERE user_id = ? ORDER BY id DESC`, userID)
}

// CredentialProviders implements store.Credentials. Only current members
// count: a former member's leftover credentials do not show.
func (s *Store) CredentialProviders(ctx context.Context, orgID string) (map[string][]string, error) {
	rows, err := s.query(ctx, `SELECT c.user_id, c.provider_id FROM user_credentials c
		JOIN memberships m ON m.org_id = c.org_id AND m.user_id = c.user_id
		WHERE c.org_id = ? ORDER BY c.user_id, c.provider_id`, orgID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var user, provider string
		if err := rows.Scan(&user, &provider); err != nil {
			return nil, err
		}
		out[user] = append(out[user], provider)
	}
	return out, rows.Err()
}

// UpdateCredential implements store.Credentials. The org published is
// the stored row's, whatever c.OrgID says.
func (s *Store) UpdateCredential(ctx context.Context, c *keybridge.Credential) error {
	return s.write(ctx, func(s *Store) error {
		now := s.Now()
		var orgID string
		err := s.queryRow(ctx, `UPDATE user_credentials SET api_key = ?, api_key_version = ?, fingerprint = ?, hint = ?, updated_at = ?
			WHERE id = ? AND user_id = ? RETURNING org_id`, c.Sealed, sealedVersionOf(c.Sealed), c.Fingerprint, c.Hint, s.ts(now), c.ID, c.UserID).Scan(&orgID)
		if err != nil {
			return notFound(err, "credential")
		}
		c.UpdatedAt = now
		return s.publishCredential(ctx, orgID, c.UserID)
	})
}

// DeleteCredential implements store.Credentials.
func (s *Store) DeleteCredential(ctx context.Context, userID, id string) error {
	return s.write(ctx, func(s *Store) error {
		var orgID string
		err := s.queryRow(ctx, `DELETE FROM user_credentials WHERE id = ? AND user_id = ? RETURNING org_id`, id, userID).Scan(&orgID)
		if err != nil {
			return notFound(err, "credential")
		}
		return s.publishCredential(ctx, orgID, userID)
	})
}

// TouchCredentials implements store.Credentials, as TouchProviderKeys does
// for upstream keys: a time never moves backwards, and rows are written in
// ID order so that concurrent batches cannot deadlock.
func (s *Store) TouchCredentials(ctx context.Context, lastUsed map[string]time.Time) error {
	if len(lastUsed) == 0 {
		return nil
	}
	return s.write(ctx, func(s *Store) error {
		for _, id := range slices.Sorted(maps.Keys(lastUsed)) {
			t := lastUsed[id]
			if _, err := s.exec(ctx, `UPDATE user_credentials SET last_used_at = ?
				WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`, s.ts(t), id, s.ts(t)); err != nil {
				return err
			}
		}
		return nil
	})
}

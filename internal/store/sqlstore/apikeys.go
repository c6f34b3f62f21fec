package sqlstore

import (
	"context"
	"slices"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// CreateAPIKey implements store.APIKeys. It keeps k.ID when the caller set
// one. Permissions are stored as their bit set.
func (s *Store) CreateAPIKey(ctx context.Context, k *keybridge.APIKey) error {
	if k.ID == "" {
		k.ID = newID()
	}
	if k.Status == "" {
		k.Status = keybridge.KeyActive
	}
	now := s.Now()
	k.CreatedAt, k.UpdatedAt = now, now
	_, err := s.exec(ctx, `INSERT INTO api_keys (id, org_id, user_id, name, description, prefix, hash, permissions, status,
		rate_limit_rpm, rate_limit_tpm, token_budget, budget_period, created_at, updated_at,
		last_used_at, expires_at, revoked_at, grace_until, rotated_from,
		allowed_models)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.OrgID, k.UserID, k.Name, k.Description, k.Prefix, k.Hash, int64(k.Permissions), string(k.Status),
		k.RateLimitRPM, k.RateLimitTPM, k.TokenBudget, string(k.BudgetPeriod), s.ts(now), s.ts(now),
		s.tsNull(k.LastUsedAt), s.tsNull(k.ExpiresAt), s.tsNull(k.RevokedAt), s.tsNull(k.GraceUntil), k.RotatedFrom,
		modelsValue(k.AllowedModels))
	return s.conflict(err, "an API key with this hash exists")
}

const apiKeyColumns = `id, org_id, user_id, name, description, prefix, hash, permissions, status,
	rate_limit_rpm, rate_limit_tpm, token_budget, budget_period, created_at, updated_at,
	last_used_at, expires_at, revoked_at, grace_until, rotated_from,
	allowed_models`

func scanAPIKey(sc rowScanner) (*keybridge.APIKey, error) {
	var k keybridge.APIKey
	var perms int64
	err := sc.Scan(&k.ID, &k.OrgID, &k.UserID, &k.Name, &k.Description, &k.Prefix, &k.Hash, &perms, &k.Status,
		&k.RateLimitRPM, &k.RateLimitTPM, &k.TokenBudget, &k.BudgetPeriod, timeCol{&k.CreatedAt}, timeCol{&k.UpdatedAt},
		nullTimeCol{&k.LastUsedAt}, nullTimeCol{&k.ExpiresAt}, nullTimeCol{&k.RevokedAt}, nullTimeCol{&k.GraceUntil}, &k.RotatedFrom,
		modelsCol{&k.AllowedModels})
	if err != nil {
		return nil, err
	}
	k.Permissions = keybridge.Permissions(perms)
	return &k, nil
}

// APIKey implements store.APIKeys.
func (s *Store) APIKey(ctx context.Context, id string) (*keybridge.APIKey, error) {
	k, err := scanAPIKey(s.queryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id))
	return k, notFound(err, "API key")
}

// APIKeyByHash implements store.APIKeys. It is the authentication path's
// read on a cache miss: one indexed lookup on the read pool.
func (s *Store) APIKeyByHash(ctx context.Context, hash []byte) (*keybridge.APIKey, error) {
	k, err := scanAPIKey(s.queryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE hash = ?`, hash))
	return k, notFound(err, "API key")
}

// ListAPIKeys implements store.APIKeys. IDs are UUIDv7, so ordering by ID
// is ordering by creation, and the last ID of a page is its cursor.
func (s *Store) ListAPIKeys(ctx context.Context, f store.APIKeyFilter, page store.Page) ([]keybridge.APIKey, string, error) {
	limit := limitOf(page)
	before, err := decodeCursor(page.Cursor, 1)
	if err != nil {
		return nil, "", err
	}
	where, args := `WHERE 1 = 1`, []any{}
	if f.OrgID != "" {
		where += ` AND org_id = ?`
		args = append(args, f.OrgID)
	}
	if f.UserID != "" {
		where += ` AND user_id = ?`
		args = append(args, f.UserID)
	}
	if before != nil {
		where += ` AND id < ?`
		args = append(args, before[0])
	}
	out, err := queryAll(ctx, s, scanAPIKey, `SELECT `+apiKeyColumns+` FROM api_keys `+where+` ORDER BY id DESC LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, limit, func(k *keybridge.APIKey) []string { return []string{k.ID} })
	return out, next, nil
}

// UpdateAPIKey implements store.APIKeys. Every process drops its cached
// copy of the key once the change commits.
func (s *Store) UpdateAPIKey(ctx context.Context, k *keybridge.APIKey) error {
	return s.write(ctx, func(s *Store) error {
		now := s.Now()
		res, err := s.exec(ctx, `UPDATE api_keys SET name = ?, description = ?, permissions = ?, status = ?,
			rate_limit_rpm = ?, rate_limit_tpm = ?, token_budget = ?, budget_period = ?,
			revoked_at = ?, grace_until = ?, expires_at = ?, updated_at = ?,
			allowed_models = ? WHERE id = ?`,
			k.Name, k.Description, int64(k.Permissions), string(k.Status),
			k.RateLimitRPM, k.RateLimitTPM, k.TokenBudget, string(k.BudgetPeriod),
			s.tsNull(k.RevokedAt), s.tsNull(k.GraceUntil), s.tsNull(k.ExpiresAt), s.ts(now),
			modelsValue(k.AllowedModels), k.ID)
		if err := mustAffect(res, err, "API key"); err != nil {
			return err
		}
		k.UpdatedAt = now
		return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateAPIKey, ID: k.ID})
	})
}

// TouchAPIKeys implements store.APIKeys: one transaction per batch, keys
// in ID order so that batches from several replicas lock rows in the same
// order and cannot deadlock. updated_at stays: use is not a change.
func (s *Store) TouchAPIKeys(ctx context.Context, lastUsed map[string]time.Time) error {
	if len(lastUsed) == 0 {
		return nil
	}
	ids := make([]string, 0, len(lastUsed))
	for id := range lastUsed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return s.write(ctx, func(s *Store) error {
		stmt, err := s.tx.PrepareContext(ctx, s.q(`UPDATE api_keys SET last_used_at = ?
			WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, id := range ids {
			t := s.ts(lastUsed[id])
			if _, err := stmt.ExecContext(ctx, t, id, t); err != nil {
				return err
			}
		}
		return nil
	})
}

package sqlstore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Projects are soft-deleted: the row stays, hidden from every read, so the
// AI keys it held (soft-deleted with it) and their audit events keep a
// parent. Only undeleted projects hold a name.

const projectColumns = `id, org_id, name, description, created_at, updated_at`

func scanProject(sc rowScanner) (*keybridge.Project, error) {
	var p keybridge.Project
	err := sc.Scan(&p.ID, &p.OrgID, &p.Name, &p.Description, timeCol{&p.CreatedAt}, timeCol{&p.UpdatedAt})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// CreateProject implements store.Projects. EConflict when the org already
// has an undeleted project of that name.
func (s *Store) CreateProject(ctx context.Context, p *keybridge.Project) error {
	return s.write(ctx, func(tx *Store) error {
		now := tx.Now()
		id := newID()
		_, err := tx.exec(ctx, `INSERT INTO projects (id, org_id, name, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
			id, p.OrgID, p.Name, p.Description, tx.ts(now), tx.ts(now))
		if err != nil {
			return tx.conflict(err, fmt.Sprintf("a project named %q already exists", p.Name))
		}
		p.ID, p.CreatedAt, p.UpdatedAt = id, now, now
		return nil
	})
}

// Project implements store.Projects. ENotFound for a deleted project and
// for a project of another org.
func (s *Store) Project(ctx context.Context, orgID, id string) (*keybridge.Project, error) {
	p, err := scanProject(s.queryRow(ctx, `SELECT `+projectColumns+` FROM projects WHERE id = ? AND org_id = ? AND deleted_at IS NULL`, id, orgID))
	if err != nil {
		return nil, notFound(err, "project")
	}
	return p, nil
}

// ListProjects implements store.Projects: undeleted projects by name.
func (s *Store) ListProjects(ctx context.Context, orgID string, page store.Page) ([]keybridge.Project, string, error) {
	limit := limitOf(page)
	after, err := decodeCursor(page.Cursor, 1)
	if err != nil {
		return nil, "", err
	}
	query := `SELECT ` + projectColumns + ` FROM projects WHERE org_id = ? AND deleted_at IS NULL`
	args := []any{orgID}
	if after != nil {
		query += ` AND name > ?`
		args = append(args, after[0])
	}
	query += ` ORDER BY name LIMIT ?`
	args = append(args, limit+1)
	out, err := queryAll(ctx, s, scanProject, query, args...)
	if err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, limit, func(p *keybridge.Project) []string { return []string{p.Name} })
	return out, next, nil
}

// UpdateProject implements store.Projects. It sets p.UpdatedAt.
func (s *Store) UpdateProject(ctx context.Context, p *keybridge.Project) error {
	return s.write(ctx, func(tx *Store) error {
		now := tx.Now()
		res, err := tx.exec(ctx, `UPDATE projects SET name = ?, description = ?, updated_at = ? WHERE id = ? AND org_id = ? AND deleted_at IS NULL`,
			p.Name, p.Description, tx.ts(now), p.ID, p.OrgID)
		if err != nil {
			return tx.conflict(err, fmt.Sprintf("a project named %q already exists", p.Name))
		}
		if err := mustAffect(res, nil, "project"); err != nil {
			return err
		}
		p.UpdatedAt = now
		return nil
	})
}

// DeleteProject implements store.Projects: the project and every AI key it
// holds are soft-deleted at the transaction's time, and each key that was
// live is invalidated so caches on every replica drop it on commit.
func (s *Store) DeleteProject(ctx context.Context, orgID, id string) error {
	return s.write(ctx, func(tx *Store) error {
		now := tx.ts(tx.Now())
		res, err := tx.exec(ctx, `UPDATE projects SET deleted_at = ?, updated_at = ? WHERE id = ? AND org_id = ? AND deleted_at IS NULL`, now, now, id, orgID)
		if err := mustAffect(res, err, "project"); err != nil {
			return err
		}
		// The project row is now locked (PostgreSQL) or the writer is ours
		// (SQLite), and CreateAIKey locks it too, so no key can be added
		// between this read and the update below.
		rows, err := tx.query(ctx, `SELECT id FROM ai_keys WHERE project_id = ? AND deleted_at IS NULL`, id)
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var kid string
			if err := rows.Scan(&kid); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, kid)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `UPDATE ai_keys SET deleted_at = ?, updated_at = ? WHERE project_id = ? AND deleted_at IS NULL`, now, now, id); err != nil {
			return err
		}
		for _, kid := range ids {
			if err := tx.Publish(ctx, store.Invalidation{Kind: store.InvalidateAIKey, ID: kid}); err != nil {
				return err
			}
		}
		return nil
	})
}

func init() {
	registerSealed(keybridge.SealedAIKeySecret, "id", "secret_version")
}

const aiKeyColumns = `k.id, k.project_id, k.org_id, k.name, k.ai_type, k.key, k.secret_hash, k.secret_sealed,
	k.rate_limit_rpm, k.rate_limit_tpm, k.token_budget, k.budget_period,
	k.created_by, k.created_at, k.last_used_at, k.deleted_at,
	k.allowed_models`

func scanAIKey(sc rowScanner) (*keybridge.AIKey, error) {
	var k keybridge.AIKey
	var budget string
	err := sc.Scan(&k.ID, &k.ProjectID, &k.OrgID, &k.Name, &k.AIType, &k.Key, &k.SecretHash, &k.SecretSealed,
		&k.RateLimitRPM, &k.RateLimitTPM, &k.TokenBudget, &budget,
		&k.CreatedBy, timeCol{&k.CreatedAt}, nullTimeCol{&k.LastUsedAt}, nullTimeCol{&k.DeletedAt},
		modelsCol{&k.AllowedModels})
	if err != nil {
		return nil, err
	}
	k.BudgetPeriod = keybridge.BudgetPeriod(budget)
	return &k, nil
}

// CreateAIKey implements store.Projects. k.ProjectID must be an undeleted
// project of k.OrgID (ENotFound otherwise); EConflict on a used key or
// secret hash. It keeps k.ID when set (an AWS key's secret is sealed bound
// to it).
func (s *Store) CreateAIKey(ctx context.Context, k *keybridge.AIKey) error {
	return s.write(ctx, func(tx *Store) error {
		// Lock the project row so a concurrent DeleteProject either sees
		// this key or makes this insert fail: a deleted project never
		// keeps a live key.
		var pid string
		err := tx.queryRow(ctx, `SELECT id FROM projects WHERE id = ? AND org_id = ? AND deleted_at IS NULL`+tx.db.Dialect.ForUpdate, k.ProjectID, k.OrgID).Scan(&pid)
		if err != nil {
			return notFound(err, "project")
		}
		now := tx.Now()
		id := k.ID
		if id == "" {
			id = newID()
		}
		var sealed any // NULL, not an empty blob, when there is no secret
		if len(k.SecretSealed) > 0 {
			sealed = k.SecretSealed
		}
		_, err = tx.exec(ctx, `INSERT INTO ai_keys (id, project_id, org_id, name, ai_type, key, secret_hash, secret_sealed, secret_version,
			rate_limit_rpm, rate_limit_tpm, token_budget, budget_period, created_by, created_at, updated_at,
			allowed_models)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			id, k.ProjectID, k.OrgID, k.Name, string(k.AIType), k.Key, k.SecretHash, sealed, sealedVersionOf(k.SecretSealed),
			k.RateLimitRPM, k.RateLimitTPM, k.TokenBudget, string(k.BudgetPeriod), k.CreatedBy, tx.ts(now), tx.ts(now),
			modelsValue(k.AllowedModels))
		if err != nil {
			return tx.conflict(err, "an AI key with this key or secret already exists")
		}
		k.ID, k.CreatedAt, k.LastUsedAt, k.DeletedAt = id, now, nil, nil
		return nil
	})
}

// AIKey implements store.Projects. ENotFound also for a key of another project.
func (s *Store) AIKey(ctx context.Context, projectID, id string) (*keybridge.AIKey, error) {
	k, err := scanAIKey(s.queryRow(ctx, `SELECT `+aiKeyColumns+` FROM ai_keys k WHERE k.id = ? AND k.project_id = ?`, id, projectID))
	if err != nil {
		return nil, notFound(err, "AI key")
	}
	return k, nil
}

// AIKeyBySecretHash implements store.Projects. A key whose project is
// deleted is not found either, whatever its own row says.
func (s *Store) AIKeyBySecretHash(ctx context.Context, hash []byte) (*keybridge.AIKey, error) {
	k, err := scanAIKey(s.queryRow(ctx, `SELECT `+aiKeyColumns+` FROM ai_keys k JOIN projects p ON p.id = k.project_id
		WHERE k.secret_hash = ? AND k.deleted_at IS NULL AND p.deleted_at IS NULL`, hash))
	if err != nil {
		return nil, notFound(err, "AI key")
	}
	return k, nil
}

// AIKeyByKey implements store.Projects. Like AIKeyBySecretHash, a key
// whose project is deleted is not found.
func (s *Store) AIKeyByKey(ctx context.Context, key string) (*keybridge.AIKey, error) {
	k, err := scanAIKey(s.queryRow(ctx, `SELECT `+aiKeyColumns+` FROM ai_keys k JOIN projects p ON p.id = k.project_id
		WHERE k.key = ? AND k.deleted_at IS NULL AND p.deleted_at IS NULL`, key))
	if err != nil {
		return nil, notFound(err, "AI key")
	}
	return k, nil
}

// ListAIKeys implements store.Projects: newest first (IDs are UUIDv7, so
// ID order is creation order).
func (s *Store) ListAIKeys(ctx context.Context, projectID string, includeDeleted bool, page store.Page) ([]keybridge.AIKey, string, error) {
	limit := limitOf(page)
	before, err := decodeCursor(page.Cursor, 1)
	if err != nil {
		return nil, "", err
	}
	query := `SELECT ` + aiKeyColumns + ` FROM ai_keys k WHERE k.project_id = ?`
	args := []any{projectID}
	if !includeDeleted {
		query += ` AND k.deleted_at IS NULL`
	}
	if before != nil {
		query += ` AND k.id < ?`
		args = append(args, before[0])
	}
	query += ` ORDER BY k.id DESC LIMIT ?`
	args = append(args, limit+1)
	out, err := queryAll(ctx, s, scanAIKey, query, args...)
	if err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, limit, func(k *keybridge.AIKey) []string { return []string{k.ID} })
	return out, next, nil
}

// UpdateAIKey implements store.Projects: it writes name, limits and model
// allowlist of an undeleted key (ENotFound for a deleted one) and
// invalidates it, so new limits apply at once on every replica.
func (s *Store) UpdateAIKey(ctx context.Context, k *keybridge.AIKey) error {
	return s.write(ctx, func(tx *Store) error {
		res, err := tx.exec(ctx, `UPDATE ai_keys SET name = ?, rate_limit_rpm = ?, rate_limit_tpm = ?, token_budget = ?, budget_period = ?, updated_at = ?,
			allowed_models = ? WHERE id = ? AND project_id = ? AND deleted_at IS NULL`,
			k.Name, k.RateLimitRPM, k.RateLimitTPM, k.TokenBudget, string(k.BudgetPeriod), tx.ts(tx.Now()),
			modelsValue(k.AllowedModels), k.ID, k.ProjectID)
		if err := mustAffect(res, err, "AI key"); err != nil {
			return err
		}
		return tx.Publish(ctx, store.Invalidation{Kind: store.InvalidateAIKey, ID: k.ID})
	})
}

// DeleteAIKey implements store.Projects.
func (s *Store) DeleteAIKey(ctx context.Context, projectID, id string) error {
	return s.write(ctx, func(tx *Store) error {
		now := tx.ts(tx.Now())
		res, err := tx.exec(ctx, `UPDATE ai_keys SET deleted_at = ?, updated_at = ? WHERE id = ? AND project_id = ? AND deleted_at IS NULL`, now, now, id, projectID)
		if err := mustAffect(res, err, "AI key"); err != nil {
			return err
		}
		return tx.Publish(ctx, store.Invalidation{Kind: store.InvalidateAIKey, ID: id})
	})
}

// TouchAIKeys implements store.Projects. Keys are written in ID order so
// that two replicas flushing at once take row locks in the same order.
func (s *Store) TouchAIKeys(ctx context.Context, lastUsed map[string]time.Time) error {
	if len(lastUsed) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *Store) error {
		for _, id := range slices.Sorted(maps.Keys(lastUsed)) {
			t := tx.ts(lastUsed[id])
			if _, err := tx.exec(ctx, `UPDATE ai_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`, t, id, t); err != nil {
				return err
			}
		}
		return nil
	})
}

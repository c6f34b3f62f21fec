package sqlstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

func init() {
	registerSealed(keybridge.SealedProviderSettings, "id", "settings_version")
	registerSealed(keybridge.SealedProviderKey, "id", "api_key_version")
}

// sealedVersionOf reads the data key version a sealed value records (the
// key ring writes a format byte, then the version as a big-endian uint32),
// so each sealed column's <column>_version is filled without opening it.
// An empty or foreign value gets version 0, which a rewrap then visits.
func sealedVersionOf(ciphertext []byte) int {
	if len(ciphertext) < 5 || ciphertext[0] != 1 {
		return 0
	}
	return int(binary.BigEndian.Uint32(ciphertext[1:5]))
}

const providerColumns = `p.id, p.org_id, p.name, p.display_name, p.type, p.base_url, p.enabled, p.key_source,
	p.settings, p.created_at, p.updated_at,
	(SELECT COUNT(*) FROM provider_keys k WHERE k.provider_id = p.id)`

func scanProvider(sc rowScanner) (*keybridge.Provider, error) {
	var p keybridge.Provider
	var typ, keySource string
	err := sc.Scan(&p.ID, &p.OrgID, &p.Name, &p.DisplayName, &typ, &p.BaseURL, &p.Enabled, &keySource,
		&p.SettingsSealed, timeCol{&p.CreatedAt}, timeCol{&p.UpdatedAt}, &p.KeyCount)
	if err != nil {
		return nil, err
	}
	p.Type, p.KeySource = keybridge.ProviderType(typ), keybridge.KeySource(keySource)
	return &p, nil
}

// CreateProvider implements store.Providers. It keeps p.ID when the caller
// set one (the settings are sealed bound to the ID, so the ID comes first).
func (s *Store) CreateProvider(ctx context.Context, p *keybridge.Provider) error {
	return s.write(ctx, func(s *Store) error {
		if p.ID == "" {
			p.ID = newID()
		}
		now := s.Now()
		_, err := s.exec(ctx, `INSERT INTO providers (id, org_id, name, display_name, type, base_url, enabled, key_source,
			settings, settings_version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			p.ID, p.OrgID, p.Name, p.DisplayName, string(p.Type), p.BaseURL, p.Enabled, string(p.KeySource),
			p.SettingsSealed, sealedVersionOf(p.SettingsSealed), s.ts(now), s.ts(now))
		if err := s.conflict(err, fmt.Sprintf("a provider named %q already exists in this org", p.Name)); err != nil {
			return err
		}
		p.CreatedAt, p.UpdatedAt, p.KeyCount = now, now, 0
		return s.publishProvider(ctx, p.OrgID, p.ID)
	})
}

// publishProvider tells caches that provider id of orgID changed. A new
// provider is published too: a name unknown until now may route from now on.
func (s *Store) publishProvider(ctx context.Context, orgID, id string) error {
	return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateProvider, ID: id, Org: orgID})
}

// Provider implements store.Providers. An ID match wins over a name match.
// Inside a transaction the row is locked until commit (PostgreSQL; SQLite
// has one writer anyway), because every caller there reads to change: the
// settings are sealed whole, so two PATCHes rotating different secrets
// must merge one after the other or one rotation is lost.
func (s *Store) Provider(ctx context.Context, orgID, idOrName string) (*keybridge.Provider, error) {
	lock := ""
	if s.tx != nil {
		lock = s.db.Dialect.ForUpdate
	}
	p, err := scanProvider(s.queryRow(ctx, `SELECT `+providerColumns+` FROM providers p
		WHERE p.org_id = ? AND (p.id = ? OR p.name = ?)
		ORDER BY CASE WHEN p.id = ? THEN 0 ELSE 1 END LIMIT 1`+lock, orgID, idOrName, idOrName, idOrName))
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("provider %q", idOrName))
	}
	return p, nil
}

// ListProviders implements store.Providers. It pages by name.
func (s *Store) ListProviders(ctx context.Context, orgID string, page store.Page) ([]keybridge.Provider, string, error) {
	limit := limitOf(page)
	after, err := decodeCursor(page.Cursor, 1)
	if err != nil {
		return nil, "", err
	}
	last := ""
	if after != nil {
		last = after[0]
	}
	out, err := queryAll(ctx, s, scanProvider, `SELECT `+providerColumns+` FROM providers p
		WHERE p.org_id = ? AND p.name > ? ORDER BY p.name LIMIT ?`, orgID, last, limit+1)
	if err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, limit, func(p *keybridge.Provider) []string { return []string{p.Name} })
	return out, next, nil
}

// UpdateProvider implements store.Providers. The type never changes.
func (s *Store) UpdateProvider(ctx context.Context, p *keybridge.Provider) error {
	return s.write(ctx, func(s *Store) error {
		now := s.Now()
		res, err := s.exec(ctx, `UPDATE providers SET name = ?, display_name = ?, base_url = ?, enabled = ?, key_source = ?,
			settings = ?, settings_version = ?, updated_at = ? WHERE id = ? AND org_id = ?`,
			p.Name, p.DisplayName, p.BaseURL, p.Enabled, string(p.KeySource),
			p.SettingsSealed, sealedVersionOf(p.SettingsSealed), s.ts(now), p.ID, p.OrgID)
		if err := mustAffect(res, s.conflict(err, fmt.Sprintf("a provider named %q already exists in this org", p.Name)), "provider"); err != nil {
			return err
		}
		p.UpdatedAt = now
		return s.publishProvider(ctx, p.OrgID, p.ID)
	})
}

// DeleteProvider implements store.Providers. Its keys and the personal
// credentials for it go with it (ON DELETE CASCADE); the one
// InvalidateProvider covers them, since caches keep them under the provider.
func (s *Store) DeleteProvider(ctx context.Context, orgID, id string) error {
	return s.write(ctx, func(s *Store) error {
		res, err := s.exec(ctx, `DELETE FROM providers WHERE id = ? AND org_id = ?`, id, orgID)
		if err := mustAffect(res, err, "provider"); err != nil {
			return err
		}
		return s.publishProvider(ctx, orgID, id)
	})
}

const providerKeyColumns = `id, provider_id, name, hint, priority, enabled, api_key, fingerprint,
	created_at, updated_at, last_used_at, cooldown_until`

func scanProviderKey(sc rowScanner) (*keybridge.ProviderKey, error) {
	var k keybridge.ProviderKey
	err := sc.Scan(&k.ID, &k.ProviderID, &k.Name, &k.Hint, &k.Priority, &k.Enabled, &k.Sealed, &k.Fingerprint,
		timeCol{&k.CreatedAt}, timeCol{&k.UpdatedAt}, nullTimeCol{&k.LastUsedAt}, nullTimeCol{&k.CooldownUntil})
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// CreateProviderKey implements store.Providers. It keeps k.ID when set (the
// key is sealed bound to it). It locks the provider's row so that
// concurrent creates cannot pass keybridge.MaxProviderKeys together, and
// returns EConflict when the provider already holds that many, EConflict
// for a fingerprint already on the provider, and ENotFound for a missing
// provider.
func (s *Store) CreateProviderKey(ctx context.Context, k *keybridge.ProviderKey) error {
	return s.write(ctx, func(s *Store) error {
		var orgID string
		err := s.queryRow(ctx, `SELECT org_id FROM providers WHERE id = ?`+s.db.Dialect.ForUpdate, k.ProviderID).Scan(&orgID)
		if err != nil {
			return notFound(err, "provider")
		}
		var n int
		if err := s.queryRow(ctx, `SELECT COUNT(*) FROM provider_keys WHERE provider_id = ?`, k.ProviderID).Scan(&n); err != nil {
			return err
		}
		if n >= keybridge.MaxProviderKeys {
			return keybridge.Errorf(keybridge.EConflict, "a provider holds at most %d keys; delete one first", keybridge.MaxProviderKeys)
		}
		if k.ID == "" {
			k.ID = newID()
		}
		now := s.Now()
		k.CreatedAt, k.UpdatedAt = now, now
		_, err = s.exec(ctx, `INSERT INTO provider_keys (id, provider_id, name, hint, priority, enabled, api_key, api_key_version,
			fingerprint, created_at, updated_at, last_used_at, cooldown_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			k.ID, k.ProviderID, k.Name, k.Hint, k.Priority, k.Enabled, k.Sealed, sealedVersionOf(k.Sealed),
			k.Fingerprint, s.ts(now), s.ts(now), s.tsNull(k.LastUsedAt), s.tsNull(k.CooldownUntil))
		if err := s.conflict(err, "this key is already stored for the provider"); err != nil {
			return err
		}
		return s.publishProviderKey(ctx, orgID, k.ID)
	})
}

// publishProviderKey tells caches that upstream key id, of a provider of
// orgID, changed.
func (s *Store) publishProviderKey(ctx context.Context, orgID, id string) error {
	return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateProviderKey, ID: id, Org: orgID})
}

// providerOrg returns the org of provider id, for the invalidations of its
// keys, which carry no org of their own.
func (s *Store) providerOrg(ctx context.Context, id string) (string, error) {
	var orgID string
	err := s.queryRow(ctx, `SELECT org_id FROM providers WHERE id = ?`, id).Scan(&orgID)
	return orgID, notFound(err, "provider")
}

// ProviderKey implements store.Providers.
func (s *Store) ProviderKey(ctx context.Context, providerID, id string) (*keybridge.ProviderKey, error) {
	k, err := scanProviderKey(s.queryRow(ctx, `SELECT `+providerKeyColumns+` FROM provider_keys WHERE id = ? AND provider_id = ?`, id, providerID))
	if err != nil {
		return nil, notFound(err, "key")
	}
	return k, nil
}

// ProviderKeys implements store.Providers.
func (s *Store) ProviderKeys(ctx context.Context, providerID string) ([]keybridge.ProviderKey, error) {
	return queryAll(ctx, s, scanProviderKey, `SELECT `+providerKeyColumns+` FROM provider_keys WHERE provider_id = ? ORDER BY priority, id`, providerID)
}

// UpdateProviderKey implements store.Providers. It leaves the gateway's
// runtime state alone, last_used_at and cooldown_until, and reads them back
// into k: an admin's edit read the key before writing it, and writing what
// it read would undo a cooldown set in between.
func (s *Store) UpdateProviderKey(ctx context.Context, k *keybridge.ProviderKey) error {
	return s.write(ctx, func(s *Store) error {
		now := s.Now()
		var lastUsed, cooldown *time.Time
		err := s.queryRow(ctx, `UPDATE provider_keys SET name = ?, priority = ?, enabled = ?, updated_at = ?
			WHERE id = ? AND provider_id = ? RETURNING last_used_at, cooldown_until`,
			k.Name, k.Priority, k.Enabled, s.ts(now), k.ID, k.ProviderID).Scan(nullTimeCol{&lastUsed}, nullTimeCol{&cooldown})
		if err != nil {
			return notFound(err, "key")
		}
		k.LastUsedAt, k.CooldownUntil = lastUsed, cooldown
		orgID, err := s.providerOrg(ctx, k.ProviderID)
		if err != nil {
			return err
		}
		k.UpdatedAt = now
		return s.publishProviderKey(ctx, orgID, k.ID)
	})
}

// DeleteProviderKey implements store.Providers.
func (s *Store) DeleteProviderKey(ctx context.Context, providerID, id string) error {
	return s.write(ctx, func(s *Store) error {
		res, err := s.exec(ctx, `DELETE FROM provider_keys WHERE id = ? AND provider_id = ?`, id, providerID)
		if err := mustAffect(res, err, "key"); err != nil {
			return err
		}
		orgID, err := s.providerOrg(ctx, providerID)
		if err != nil {
			return err
		}
		return s.publishProviderKey(ctx, orgID, id)
	})
}

// TouchProviderKeys implements store.Providers. A time never moves
// backwards, so batches flushed out of order do no harm. Keys are written
// in ID order so that two replicas flushing at once take row locks in the
// same order and cannot deadlock.
func (s *Store) TouchProviderKeys(ctx context.Context, lastUsed map[string]time.Time) error {
	if len(lastUsed) == 0 {
		return nil
	}
	return s.write(ctx, func(s *Store) error {
		for _, id := range slices.Sorted(maps.Keys(lastUsed)) {
			t := lastUsed[id]
			if _, err := s.exec(ctx, `UPDATE provider_keys SET last_used_at = ?
				WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`, s.ts(t), id, s.ts(t)); err != nil {
				return err
			}
		}
		return nil
	})
}

// SetProviderKeyCooldowns implements store.Providers. It writes
// cooldown_until alone, so it neither undoes nor is undone by an admin's
// edit of the same keys, and publishes nothing: the gateway keeps cooldowns
// in memory and stores them for display. Keys go in ID order, as in
// TouchProviderKeys, so concurrent batches cannot deadlock.
func (s *Store) SetProviderKeyCooldowns(ctx context.Context, until map[string]time.Time) error {
	if len(until) == 0 {
		return nil
	}
	return s.write(ctx, func(s *Store) error {
		for _, id := range slices.Sorted(maps.Keys(until)) {
			var t *time.Time
			if u := until[id]; !u.IsZero() {
				t = &u
			}
			if _, err := s.exec(ctx, `UPDATE provider_keys SET cooldown_until = ? WHERE id = ?`, s.tsNull(t), id); err != nil {
				return err
			}
		}
		return nil
	})
}

package sqlstore

import (
	"context"
	"fmt"
	"regexp"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// sealedColumn is one column that holds values sealed by the key ring.
type sealedColumn struct {
	table, idColumn, column, versionColumn string
}

// sealedColumns is every sealed column, filled by registerSealed from
// init functions and read-only once main starts.
var sealedColumns []sealedColumn

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// registerSealed declares that sc holds sealed values, each row named by
// idColumn, with versionColumn (an integer) holding the data key version
// that sealed the value. The area that owns the table calls it from an init
// function, with the keybridge.SealedColumn whose AD binds the values, so
// the rewrap opens them under the binding they were sealed with; writes of
// the value must keep versionColumn true. The key ring then counts, finds
// and rewraps these values without knowing the tables. Rows whose column is
// NULL or empty hold no secret and are skipped.
func registerSealed(sc keybridge.SealedColumn, idColumn, versionColumn string) {
	c := sealedColumn{sc.Table, idColumn, sc.Column, versionColumn}
	for _, id := range []string{c.table, c.idColumn, c.column, c.versionColumn} {
		if !identifier.MatchString(id) {
			panic(fmt.Sprintf("registerSealed: %q is not a plain identifier", id))
		}
	}
	for _, o := range sealedColumns {
		if o.table == c.table && o.column == c.column {
			panic(fmt.Sprintf("registerSealed: %s.%s registered twice", c.table, c.column))
		}
	}
	sealedColumns = append(sealedColumns, c)
}

// sealedColumnOf returns the registered column ref names.
func sealedColumnOf(ref keybridge.SealedRef) (sealedColumn, error) {
	for _, c := range sealedColumns {
		if c.table == ref.Table && c.column == ref.Column {
			return c, nil
		}
	}
	return sealedColumn{}, fmt.Errorf("%s.%s is not a sealed column", ref.Table, ref.Column)
}

// holdsSecret is the condition of rows whose sealed column holds a value.
func (c sealedColumn) holdsSecret() string {
	return c.column + ` IS NOT NULL AND LENGTH(` + c.column + `) > 0`
}

// DataKeys implements store.KeyRing. Inside a transaction it first locks
// every data key row until the transaction ends (PostgreSQL; SQLite's
// single writer serializes anyway), because callers there read the ring to
// change it: a rotation and a master key change running at once would
// otherwise leave a new key wrapped under the old master beside keys
// re-wrapped under the new one, and no master key would open the ring.
// The read comes after the lock, in a statement of its own, so that it
// sees what the transaction it waited for added.
func (s *Store) DataKeys(ctx context.Context) ([]keybridge.DataKey, error) {
	if s.tx != nil && s.db.Dialect.ForUpdate != "" {
		if _, err := s.exec(ctx, `SELECT version FROM data_keys ORDER BY version`+s.db.Dialect.ForUpdate); err != nil {
			return nil, fmt.Errorf("lock key ring: %w", err)
		}
	}
	rows, err := s.query(ctx, `SELECT version, wrapped, is_primary, created_at FROM data_keys ORDER BY version`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []keybridge.DataKey
	for rows.Next() {
		var k keybridge.DataKey
		if err := rows.Scan(&k.Version, &k.Wrapped, &k.Primary, timeCol{&k.CreatedAt}); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// CreateDataKey implements store.KeyRing. It publishes InvalidateKeyRing,
// so every process reloads its ring once the key is committed.
func (s *Store) CreateDataKey(ctx context.Context, k *keybridge.DataKey) error {
	return s.write(ctx, func(s *Store) error {
		k.CreatedAt = s.Now()
		if k.Primary {
			if _, err := s.exec(ctx, `UPDATE data_keys SET is_primary = ? WHERE is_primary = ?`, false, true); err != nil {
				return err
			}
		}
		_, err := s.exec(ctx, `INSERT INTO data_keys (version, wrapped, is_primary, created_at) VALUES (?, ?, ?, ?)`,
			k.Version, k.Wrapped, k.Primary, s.ts(k.CreatedAt))
		if err := s.conflict(err, fmt.Sprintf("data key version %d exists", k.Version)); err != nil {
			return err
		}
		return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateKeyRing})
	})
}

// UpdateDataKeyWrap implements store.KeyRing. It publishes InvalidateKeyRing.
func (s *Store) UpdateDataKeyWrap(ctx context.Context, version int, wrapped []byte) error {
	return s.write(ctx, func(s *Store) error {
		res, err := s.exec(ctx, `UPDATE data_keys SET wrapped = ? WHERE version = ?`, wrapped, version)
		if err := mustAffect(res, err, "data key"); err != nil {
			return err
		}
		return s.Publish(ctx, store.Invalidation{Kind: store.InvalidateKeyRing})
	})
}

// SealedCounts implements store.KeyRing.
func (s *Store) SealedCounts(ctx context.Context) (map[int]int, error) {
	counts := map[int]int{}
	for _, c := range sealedColumns {
		rows, err := s.query(ctx, `SELECT `+c.versionColumn+`, COUNT(*) FROM `+c.table+
			` WHERE `+c.holdsSecret()+` GROUP BY `+c.versionColumn)
		if err != nil {
			return nil, fmt.Errorf("count %s.%s: %w", c.table, c.column, err)
		}
		for rows.Next() {
			var version, n int
			if err := rows.Scan(&version, &n); err != nil {
				rows.Close()
				return nil, err
			}
			counts[version] += n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return counts, nil
}

// SealedNotVersion implements store.KeyRing. Values come column by column
// in row ID order; a rewrap that replaces what it gets and asks again
// makes progress however often it stops.
func (s *Store) SealedNotVersion(ctx context.Context, version, limit int) ([]keybridge.SealedRef, error) {
	var refs []keybridge.SealedRef
	for _, c := range sealedColumns {
		if len(refs) >= limit {
			break
		}
		rows, err := s.query(ctx, `SELECT `+c.idColumn+`, `+c.versionColumn+`, `+c.column+` FROM `+c.table+
			` WHERE `+c.versionColumn+` <> ? AND `+c.holdsSecret()+` ORDER BY `+c.idColumn+` LIMIT ?`,
			version, limit-len(refs))
		if err != nil {
			return nil, fmt.Errorf("find sealed %s.%s: %w", c.table, c.column, err)
		}
		for rows.Next() {
			ref := keybridge.SealedRef{Table: c.table, Column: c.column}
			if err := rows.Scan(&ref.RowID, &ref.Version, &ref.Ciphertext); err != nil {
				rows.Close()
				return nil, err
			}
			refs = append(refs, ref)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return refs, nil
}

// ReplaceSealed implements store.KeyRing. It leaves updated_at alone: a
// rewrap changes how a value is kept, not the value.
func (s *Store) ReplaceSealed(ctx context.Context, ref keybridge.SealedRef, version int, ciphertext []byte) (bool, error) {
	c, err := sealedColumnOf(ref)
	if err != nil {
		return false, err
	}
	res, err := s.exec(ctx, `UPDATE `+c.table+` SET `+c.column+` = ?, `+c.versionColumn+` = ? WHERE `+
		c.idColumn+` = ? AND `+c.column+` = ?`, ciphertext, version, ref.RowID, ref.Ciphertext)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

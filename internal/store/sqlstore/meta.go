package sqlstore

import "context"

// GetMeta implements store.Meta.
func (s *Store) GetMeta(ctx context.Context, key string) (string, error) {
	var v string
	err := s.queryRow(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	return v, notFound(err, "meta key")
}

// SetMeta implements store.Meta.
func (s *Store) SetMeta(ctx context.Context, key, value string) error {
	_, err := s.exec(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	return err
}

// DeleteMeta implements store.Meta.
func (s *Store) DeleteMeta(ctx context.Context, key string) error {
	_, err := s.exec(ctx, `DELETE FROM meta WHERE key = ?`, key)
	return err
}

// TakeMeta implements store.Meta. DELETE ... RETURNING takes the row lock in
// PostgreSQL, so a concurrent taker waits and then finds nothing; SQLite's
// single writer serializes the same way.
func (s *Store) TakeMeta(ctx context.Context, key string) (string, error) {
	var v string
	err := s.write(ctx, func(tx *Store) error {
		return tx.tx.QueryRowContext(ctx, tx.q(`DELETE FROM meta WHERE key = ? RETURNING value`), key).Scan(&v)
	})
	return v, notFound(err, "meta key")
}

package sqlstore

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Migrate applies, in order and each in its own transaction, every
// migration in fsys not applied yet. Files are named NNNN_name.sql; they
// only ever go up. lock, when set, runs first in each transaction to keep
// concurrent replicas from migrating at once. A database migrated by a newer
// release is refused rather than run by code that does not know its schema.
func Migrate(ctx context.Context, db *DB, fsys fs.FS, lock string) error {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("no migrations")
	}
	slices.Sort(names)
	latest := 0
	for _, name := range names {
		version, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", name)
		}
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		if err := applyMigration(ctx, db, version, name, string(body), lock); err != nil {
			return fmt.Errorf("migration %s: %w", name, err)
		}
		latest = max(latest, version)
	}
	var newest int
	if err := db.Write.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&newest); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if newest > latest {
		return fmt.Errorf("the database schema is at version %d, newer than this release knows (%d): run a newer keybridge", newest, latest)
	}
	return nil
}

func applyMigration(ctx context.Context, db *DB, version int, name, body, lock string) error {
	tx, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if lock != "" {
		if _, err := tx.ExecContext(ctx, lock); err != nil {
			return err
		}
	}
	// Created under the lock: in PostgreSQL two sessions running CREATE
	// TABLE IF NOT EXISTS at once can both try to create it, and one fails.
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	s := &Store{db: db}
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, body); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`), version, name); err != nil {
		return err
	}
	return tx.Commit()
}

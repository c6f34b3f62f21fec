// Package sqlite opens Keybridge's embedded store: pure-Go SQLite
// (modernc.org/sqlite, no cgo) in WAL mode with one writer connection and a
// separate read pool.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/keybridge/keybridge/internal/store/sqlstore"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Open opens (creating if needed) the database file at path and applies
// migrations.
func Open(ctx context.Context, path string) (*sqlstore.Store, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	}
	if err := makePrivate(path); err != nil {
		return nil, err
	}
	// busy_timeout comes first so that the pragmas after it wait for a
	// lock instead of failing. synchronous=FULL makes every acknowledged
	// commit survive a crash of the process or of the machine.
	pragmas := "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + pragmas
	write, err := sql.Open("sqlite", dsn+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	write.SetMaxOpenConns(1)
	write.SetConnMaxIdleTime(0)
	read, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	read.SetMaxOpenConns(8)
	read.SetMaxIdleConns(8)
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		read.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	db := &sqlstore.DB{Write: write, Read: read, Dialect: sqlstore.Dialect{
		Name:            "sqlite",
		UniqueViolation: uniqueViolation,
	}}
	if err := Migrate(ctx, db); err != nil {
		write.Close()
		read.Close()
		return nil, err
	}
	return sqlstore.New(db), nil
}

// Migrate applies the embedded SQLite migrations to db.
func Migrate(ctx context.Context, db *sqlstore.DB) error {
	sub, err := fsSub()
	if err != nil {
		return err
	}
	return sqlstore.Migrate(ctx, db, sub, "")
}

func uniqueViolation(err error) bool {
	var e *sqlite.Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}

// makePrivate creates the database file, mode 0600, before SQLite does,
// and takes group and other permissions off the files of an existing one.
// The database holds every sealed secret and every key hash: it is kept
// from other users like the master key. SQLite gives its -wal and -shm
// files the database file's mode, so they are 0600 too.
func makePrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("create sqlite database: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create sqlite database: %w", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if mode := st.Mode().Perm(); mode&0o077 != 0 {
			if err := os.Chmod(p, mode&^0o077); err != nil {
				return fmt.Errorf("make %s private: %w", p, err)
			}
		}
	}
	return nil
}

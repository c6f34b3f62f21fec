// Package postgres opens Keybridge's store on PostgreSQL through pgx, and
// spreads invalidations between replicas with LISTEN/NOTIFY.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock keeps replicas that start together from migrating at once.
const migrationLock = `SELECT pg_advisory_xact_lock(7245817203)`

// Open connects to the database at url (a postgres:// URL; a search_path
// parameter selects a schema) and applies migrations.
func Open(ctx context.Context, url string) (*sqlstore.Store, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(10)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	// Notifications go on a channel named after the schema, so databases
	// shared by several schemas (tests) do not hear each other.
	var schema string
	if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("read current schema: %w", err)
	}
	channel := "keybridge_" + schema
	sdb := &sqlstore.DB{Write: db, Read: db, Dialect: sqlstore.Dialect{
		Name:            "postgres",
		Numbered:        true,
		UniqueViolation: uniqueViolation,
		ForUpdate:       " FOR UPDATE",
		Notify: func(ctx context.Context, tx *sql.Tx, payload string) error {
			_, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, channel, payload)
			return err
		},
		Listen: func(ctx context.Context, deliver func(string), listening func(bool)) error {
			return listen(ctx, cfg, channel, deliver, listening)
		},
	}}
	if err := Migrate(ctx, sdb); err != nil {
		db.Close()
		return nil, err
	}
	return sqlstore.New(sdb), nil
}

// Migrate applies the embedded PostgreSQL migrations to db.
func Migrate(ctx context.Context, db *sqlstore.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	return sqlstore.Migrate(ctx, db, sub, migrationLock)
}

func uniqueViolation(err error) bool {
	var e *pgconn.PgError
	return errors.As(err, &e) && e.Code == "23505"
}

// listen holds a dedicated connection on LISTEN channel, reconnecting after
// failures. Until a LISTEN is in place, notifications may be missed: the
// time before the first one, and every reconnect. So listening(true) is
// called each time one is in place, the first time included, and
// listening(false) each time it is lost.
func listen(ctx context.Context, cfg *pgx.ConnConfig, channel string, deliver func(string), listening func(bool)) error {
	for ctx.Err() == nil {
		err := listenOnce(ctx, cfg, channel, deliver, func() { listening(true) })
		listening(false)
		if ctx.Err() != nil {
			break
		}
		_ = err // the connection dropped: wait a moment and reconnect
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}

func listenOnce(ctx context.Context, cfg *pgx.ConnConfig, channel string, deliver func(string), ready func()) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	ready()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		deliver(n.Payload)
	}
}

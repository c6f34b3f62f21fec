// Package sqlstore implements store.Store once, over database/sql, for both
// engines. The drivers (store/sqlite, store/postgres) open the connections,
// own the migrations and supply a Dialect for the few places where SQLite
// and PostgreSQL really differ: placeholders, time columns, unique
// violations, row locks and notifications.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Dialect is what differs between engines.
type Dialect struct {
	// Name is "sqlite" or "postgres".
	Name string
	// Numbered turns ? placeholders into $1, $2, ... (PostgreSQL).
	Numbered bool
	// UniqueViolation reports whether err is a unique-constraint violation.
	UniqueViolation func(err error) bool
	// ForUpdate is appended to SELECTs that lock rows (" FOR UPDATE" in
	// PostgreSQL; empty in SQLite, whose single writer serializes).
	ForUpdate string
	// Notify publishes a payload inside tx (PostgreSQL: pg_notify, which
	// delivers on commit). Nil when notifications stay in-process.
	Notify func(ctx context.Context, tx *sql.Tx, payload string) error
	// Listen delivers notifications from other processes until ctx ends,
	// reconnecting after failures. It calls listening(true) each time it
	// starts hearing them (once it first listens, and after every
	// reconnect) and listening(false) as soon as it may miss some. The
	// store runs one at a time. Nil when there are none.
	Listen func(ctx context.Context, deliver func(payload string), listening func(up bool)) error
}

// DB is an opened database: a writer and a reader pool (the same pool in
// PostgreSQL; one connection and a read pool in SQLite).
type DB struct {
	Write   *sql.DB
	Read    *sql.DB
	Dialect Dialect

	rebound sync.Map // query string -> rebound query string
	// prepared holds the few statements worth preparing once on the
	// writer pool (see prepare); each connection prepares them once.
	prepared sync.Map // rebound query string -> *sql.Stmt
	// origin tags this process's notifications, so its own subscribers,
	// told at commit, skip the copy that comes back through Listen.
	origin string
	hub    hub
}

// Store is store.Store over a DB, either outside a transaction or inside one.
type Store struct {
	db *DB
	tx *sql.Tx
	// now is fixed for the life of a transaction.
	now time.Time
	// published holds the invalidations the transaction publishes, each
	// once, for this process's subscribers to hear at commit.
	published *[]store.Invalidation
}

// New returns a Store over db.
func New(db *DB) *Store {
	db.hub.closing = make(chan struct{})
	db.origin = newID()
	return &Store{db: db}
}

var _ store.Store = (*Store)(nil)

// Now returns the transaction's time, or the current time outside one.
// Times are kept to the microsecond, the precision both engines store.
func (s *Store) Now() time.Time {
	if s.tx != nil {
		return s.now
	}
	return time.Now().UTC().Truncate(time.Microsecond)
}

// InTx implements store.Store.
func (s *Store) InTx(ctx context.Context, fn func(tx store.Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	tx, err := s.db.Write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	var published []store.Invalidation
	txs := &Store{db: s.db, tx: tx, now: time.Now().UTC().Truncate(time.Microsecond), published: &published}
	if err := fn(txs); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	for _, inv := range published {
		s.db.deliver(inv)
	}
	return nil
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error { return s.db.Write.PingContext(ctx) }

// Close implements store.Store. It ends subscriptions first, and the
// shared Listen with its connection.
func (s *Store) Close() error {
	s.db.hub.close()
	var err error
	s.db.prepared.Range(func(_, st any) bool {
		err = errors.Join(err, st.(*sql.Stmt).Close())
		return true
	})
	err = errors.Join(err, s.db.Write.Close())
	if s.db.Read != s.db.Write {
		err = errors.Join(err, s.db.Read.Close())
	}
	return err
}

// DB returns the database under s, for driver tests and maintenance
// tools that must look at the connections themselves.
func (s *Store) DB() *DB { return s.db }

// DialectName returns the engine's name.
func (s *Store) DialectName() string { return s.db.Dialect.Name }

// newID returns a UUIDv7, so IDs sort by creation.
func newID() string { return uuid.Must(uuid.NewV7()).String() }

// q rewrites placeholders for the engine, caching the result.
func (s *Store) q(query string) string {
	if !s.db.Dialect.Numbered {
		return query
	}
	if v, ok := s.db.rebound.Load(query); ok {
		return v.(string)
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	out := b.String()
	s.db.rebound.Store(query, out)
	return out
}

// exec runs a statement in the transaction, or on the writer.
func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s.tx != nil {
		return s.tx.ExecContext(ctx, s.q(query), args...)
	}
	return s.db.Write.ExecContext(ctx, s.q(query), args...)
}

// prepare returns query prepared on the writer pool, preparing it the
// first time. It must be called outside a transaction: preparing takes a
// writer connection, and SQLite has only one. A statement whose text is
// as costly for the engine to parse as to run (the usage rollup's
// upserts) is then parsed once per connection instead of once per batch.
func (s *Store) prepare(ctx context.Context, query string) (*sql.Stmt, error) {
	q := s.q(query)
	if st, ok := s.db.prepared.Load(q); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.Write.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.db.prepared.LoadOrStore(q, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// query runs a read in the transaction, or on the read pool.
func (s *Store) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s.tx != nil {
		return s.tx.QueryContext(ctx, s.q(query), args...)
	}
	return s.db.Read.QueryContext(ctx, s.q(query), args...)
}

// queryRow runs a one-row read in the transaction, or on the read pool.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	if s.tx != nil {
		return s.tx.QueryRowContext(ctx, s.q(query), args...)
	}
	return s.db.Read.QueryRowContext(ctx, s.q(query), args...)
}

// write runs fn in a transaction: it joins the current one or opens its
// own, so a method that writes several rows is atomic either way.
func (s *Store) write(ctx context.Context, fn func(s *Store) error) error {
	return s.InTx(ctx, func(tx store.Store) error { return fn(tx.(*Store)) })
}

// notFound turns sql.ErrNoRows into a not_found error about what.
func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return keybridge.Errorf(keybridge.ENotFound, "%s not found", what)
	}
	return err
}

// conflict turns a unique violation into a conflict error with msg.
func (s *Store) conflict(err error, msg string) error {
	if err != nil && s.db.Dialect.UniqueViolation(err) {
		return keybridge.Errorf(keybridge.EConflict, "%s", msg)
	}
	return err
}

// mustAffect returns a not_found error about what when res touched no row.
func mustAffect(res sql.Result, err error, what string) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return keybridge.Errorf(keybridge.ENotFound, "%s not found", what)
	}
	return nil
}

// limitOf returns the page size p asks for: DefaultLimit when unset, at
// most MaxLimit.
func limitOf(p store.Page) int {
	switch {
	case p.Limit <= 0:
		return store.DefaultLimit
	case p.Limit > store.MaxLimit:
		return store.MaxLimit
	}
	return p.Limit
}

// encodeCursor turns the sort key of a page's last row into an opaque
// cursor: lists page by keyset (WHERE key > last), so rows inserted or
// deleted between pages neither repeat nor go missing.
func encodeCursor(key ...string) string {
	b, _ := json.Marshal(key)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor returns the n-part sort key packed in cursor, or nil for the
// first page. A cursor this store did not make is an invalid_argument error
// on "cursor".
func decodeCursor(cursor string, n int) ([]string, error) {
	if cursor == "" {
		return nil, nil
	}
	var key []string
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	if err == nil {
		err = json.Unmarshal(b, &key)
	}
	// A part holding NUL (a forged "\u0000") would reach PostgreSQL as
	// text, which it refuses with an error of its own: a 500, not a 400.
	if err != nil || len(key) != n || slices.ContainsFunc(key, func(k string) bool { return strings.IndexByte(k, 0) >= 0 }) {
		return nil, keybridge.FieldError("cursor", "is not a cursor from a previous page")
	}
	return key, nil
}

// trimPage cuts rows, fetched with LIMIT limit+1 so that one row more than
// the page says whether another page follows, down to limit. It returns the
// cursor of the next page, made of the last kept row's key, or "" on the
// last page.
func trimPage[T any](rows []T, limit int, key func(*T) []string) ([]T, string) {
	if len(rows) <= limit {
		return rows, ""
	}
	rows = rows[:limit]
	return rows, encodeCursor(key(&rows[limit-1])...)
}

// rowScanner is a *sql.Row or *sql.Rows, what every scanX function reads.
type rowScanner interface{ Scan(...any) error }

// queryAll runs a read and scans every row into a T with scan.
func queryAll[T any](ctx context.Context, s *Store, scan func(rowScanner) (*T, error), query string, args ...any) ([]T, error) {
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, rows.Err()
}

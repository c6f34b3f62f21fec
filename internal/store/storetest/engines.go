package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, to create and drop test schemas
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/postgres"
	"github.com/keybridge/keybridge/internal/store/sqlite"
)

// PostgresURLEnv names the variable that points tests at a PostgreSQL
// server; PostgreSQL tests are skipped when it is unset.
const PostgresURLEnv = "KEYBRIDGE_TEST_POSTGRES_URL"

// Engine is one store engine, for tests that run against each.
type Engine struct {
	Name string
	New  Factory
}

// Engines returns SQLite, and PostgreSQL when KEYBRIDGE_TEST_POSTGRES_URL is
// set, so tests above the store can loop over every engine CI provides:
//
//	for _, e := range storetest.Engines() {
//		t.Run(e.Name, func(t *testing.T) { st := e.New(t); ... })
//	}
func Engines() []Engine {
	engines := []Engine{{Name: "sqlite", New: SQLite}}
	if os.Getenv(PostgresURLEnv) != "" {
		engines = append(engines, Engine{Name: "postgres", New: Postgres})
	}
	return engines
}

// SQLite returns a fresh, migrated store in a new file under t.TempDir(),
// closed when t ends.
func SQLite(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "keybridge.db"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Postgres returns a fresh, migrated store in a new schema of the server
// named by KEYBRIDGE_TEST_POSTGRES_URL, dropped when t ends. It skips t when
// the variable is unset.
func Postgres(t testing.TB) store.Store {
	t.Helper()
	st, _ := SharedPostgres(t)
	return st
}

// SharedPostgres is Postgres for tests of several replicas: besides the
// first store it returns open, which opens another store on the same schema
// (another replica sharing the database, with its own connections and its
// own LISTEN), closed when t ends.
func SharedPostgres(t testing.TB) (first store.Store, open func() store.Store) {
	t.Helper()
	schemaURL := postgresSchema(t)
	open = func() store.Store {
		t.Helper()
		st, err := postgres.Open(context.Background(), schemaURL)
		if err != nil {
			t.Fatalf("open postgres: %v", err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	return open(), open
}

// PostgresURL returns the URL of a fresh, empty schema (not migrated),
// dropped when t ends, for tests of opening and migrating. It skips t when
// KEYBRIDGE_TEST_POSTGRES_URL is unset.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return postgresSchema(t)
}

// postgresSchema creates a schema kbtest_<random> dropped when t ends, and
// returns a URL whose search_path selects it. The driver names its
// notification channel after the current schema, so tests running side by
// side on one server do not hear each other.
func postgresSchema(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresURLEnv)
	if base == "" {
		t.Skip(PostgresURLEnv + " is not set")
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", PostgresURLEnv, err)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	var b [8]byte
	rand.Read(b[:])
	schema := "kbtest_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	// Registered before the stores' cleanups, so it runs after them: the
	// schema is dropped once every connection to it is closed.
	t.Cleanup(func() {
		defer admin.Close()
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

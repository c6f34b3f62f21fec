package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/keybridge/keybridge/internal/store/sqlite"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

func TestConformance(t *testing.T) { storetest.Run(t, storetest.SQLite) }

func BenchmarkAPIKeyByHash(b *testing.B) { storetest.BenchmarkAPIKeyByHash(b, storetest.SQLite) }

// TestPragmas checks that every connection of both pools gets the pragmas,
// not just the first: database/sql opens connections on demand, and a
// connection without foreign_keys would skip cascades, one without
// busy_timeout would fail instead of waiting for the writer.
func TestPragmas(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "keybridge.db"))
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	defer st.Close()
	db := st.DB()
	for _, pool := range []struct {
		name      string
		db        *sql.DB
		conns     int
		queryOnly int
	}{
		{"writer", db.Write, 1, 0},
		{"reader", db.Read, 4, 1},
	} {
		// Hold several connections at once so the pool must open new ones.
		var conns []*sql.Conn
		for range pool.conns {
			c, err := pool.db.Conn(ctx)
			if err != nil {
				t.Fatalf("%s: Conn = %v", pool.name, err)
			}
			defer c.Close()
			conns = append(conns, c)
		}
		for i, c := range conns {
			var journal string
			var foreignKeys, busyTimeout, queryOnly int
			for _, p := range []struct {
				pragma string
				dest   any
			}{
				{"journal_mode", &journal}, {"foreign_keys", &foreignKeys},
				{"busy_timeout", &busyTimeout}, {"query_only", &queryOnly},
			} {
				if err := c.QueryRowContext(ctx, "PRAGMA "+p.pragma).Scan(p.dest); err != nil {
					t.Fatalf("%s conn %d: PRAGMA %s = %v", pool.name, i, p.pragma, err)
				}
			}
			if journal != "wal" || foreignKeys != 1 || busyTimeout <= 0 || queryOnly != pool.queryOnly {
				t.Errorf("%s conn %d: journal_mode %q, foreign_keys %d, busy_timeout %d, query_only %d; want wal, 1, > 0, %d",
					pool.name, i, journal, foreignKeys, busyTimeout, queryOnly, pool.queryOnly)
			}
		}
	}
	if _, err := db.Read.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('k', 'v')`); err == nil {
		t.Errorf("a write on the read pool succeeded, want it refused")
	}
}

// TestReopen: opening a migrated database again applies nothing and works,
// but a database migrated by a newer release is refused rather than run by
// code that does not know its schema.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keybridge.db")
	for i := range 2 {
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			t.Fatalf("Open #%d = %v", i+1, err)
		}
		if i == 1 {
			if _, err := st.DB().Write.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql')`); err != nil {
				t.Fatal(err)
			}
		}
		st.Close()
	}
	if st, err := sqlite.Open(ctx, path); err == nil {
		st.Close()
		t.Fatalf("Open of a database from a newer release = nil error, want a refusal")
	}
}

func TestUsageRollupBackfill(t *testing.T) {
	storetest.UsageRollupBackfill(t, storetest.SQLite, sqlite.Migrate)
}

func TestInvitationsCarryOver(t *testing.T) {
	storetest.InvitationsCarryOver(t, storetest.SQLite, sqlite.Migrate)
}

package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
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

// TestFilesArePrivate checks that the database and its -wal and -shm files
// are created 0600 and a data directory Open creates is 0700, whatever the
// umask, like the master key: they hold every sealed secret and key hash.
// An existing database readable by others is made private.
func TestFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "keybridge.db")
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	if err := st.CreateOrg(ctx, &keybridge.Org{Slug: "acme", Name: "Acme"}); err != nil {
		t.Fatalf("CreateOrg = %v", err)
	}
	check := func(when string) {
		t.Helper()
		for name, want := range map[string]os.FileMode{dir: 0o700, path: 0o600, path + "-wal": 0o600, path + "-shm": 0o600} {
			fi, err := os.Stat(name)
			if err != nil {
				t.Errorf("%s: stat %s: %v", when, filepath.Base(name), err)
				continue
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s: %s has mode %v, want %v", when, filepath.Base(name), got, want)
			}
		}
	}
	check("new database")
	st.Close()

	// SQLite removed -wal and -shm on close; empty ones stand in for
	// those of a database that was not closed cleanly.
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen = %v", err)
	}
	defer st.Close()
	check("reopened")
	if _, err := st.Org(ctx, "acme"); err != nil {
		t.Errorf("after the reopen, Org(acme) = %v, want the org written before", err)
	}
}

package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/sqlite"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
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

func TestBudgetPeriodsWithoutBudgetCleared(t *testing.T) {
	storetest.BudgetPeriodsWithoutBudgetCleared(t, storetest.SQLite, sqlite.Migrate)
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

// TestUsageClusteredCarriesRows checks migration 0010 on a database with
// raw usage rows in usage, as releases before usage_batches wrote them:
// every row is still there with every field, the usage queries answer the
// same, and retention still purges.
func TestUsageClusteredCarriesRows(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keybridge.db")
	write, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	write.SetMaxOpenConns(1)
	defer write.Close()
	db := &sqlstore.DB{Write: write, Read: write, Dialect: sqlstore.Dialect{Name: "sqlite", UniqueViolation: func(error) bool { return false }}}
	before := fstest.MapFS{}
	names, err := filepath.Glob("migrations/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		// Every migration but 0010 itself: the raw rows in usage are
		// written as a release before usage_batches wrote them.
		if base := filepath.Base(name); !strings.HasPrefix(base, "0010_") {
			body, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			before[base] = &fstest.MapFile{Data: body}
		}
	}
	if len(before) != len(names)-1 {
		t.Fatalf("found %d migrations besides 0010, want %d", len(before), len(names)-1)
	}
	if err := sqlstore.Migrate(ctx, db, before, ""); err != nil {
		t.Fatalf("migrate all but 0010: %v", err)
	}
	st := sqlstore.New(db)

	start := time.Date(2031, 5, 1, 7, 45, 0, 0, time.UTC)
	var batch []keybridge.Usage
	for i := range 1800 {
		u := keybridge.Usage{
			Time: start.Add(time.Duration(i) * 2 * time.Minute), OrgID: []string{"org-a", "org-b", "org-c"}[i%3],
			ProviderID: fmt.Sprint("provider-", i%4), ProviderKeyID: fmt.Sprint("pk-", i%5), Model: fmt.Sprint("model-", i%6),
			Status: []int{200, 200, 429, 500}[i%4], Stream: i%2 == 0, LatencyMS: float64(i) * 1.25, UpstreamLatencyMS: float64(i),
			InputTokens: int64(i), OutputTokens: int64(2 * i), CacheReadTokens: int64(i % 7), CacheWriteTokens: int64(i % 11), Failovers: i % 3,
		}
		if i%4 == 0 {
			u.AIKeyID, u.ProjectID = fmt.Sprint("aikey-", i%9), fmt.Sprint("project-", i%5)
		} else {
			u.UserID, u.APIKeyID = fmt.Sprint("user-", i%13), fmt.Sprint("apikey-", i%17)
		}
		if i%600 == 0 {
			// Two rows of one org at one instant: the id tells them apart.
			u.Time = start
		}
		batch = append(batch, u)
	}
	// A few batches, as the gateway writes them.
	for chunk := range slices.Chunk(batch, 500) {
		storetest.LegacyUsage(t, st, chunk)
	}
	dump := func() []string {
		t.Helper()
		rows, err := write.Query(`SELECT id, time, org_id, project_id, user_id, api_key_id, ai_key_id, provider_id, provider_key_id, model,
			status, stream, latency_ms, upstream_latency_ms, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, failovers
			FROM usage ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			v := make([]any, 19)
			p := make([]any, 19)
			for i := range v {
				p[i] = &v[i]
			}
			if err := rows.Scan(p...); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%#v", v))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	queries := func() []string {
		t.Helper()
		var out []string
		for _, org := range []string{"org-a", "org-b", "org-c"} {
			for _, by := range []keybridge.UsageGroupBy{keybridge.GroupByProvider, keybridge.GroupByModel, keybridge.GroupByUser, keybridge.GroupByProject, keybridge.GroupByAPIKey} {
				for _, b := range []keybridge.UsageBucket{keybridge.BucketNone, keybridge.BucketHour, keybridge.BucketDay} {
					// Partial hours at both ends read raw rows.
					q := keybridge.UsageQuery{OrgID: org, GroupBy: by, Since: start.Add(17 * time.Minute), Until: start.Add(55*time.Hour + 9*time.Minute), Bucket: b}
					groups, err := st.QueryUsage(ctx, q)
					if err != nil {
						t.Fatalf("QueryUsage(%+v) = %v", q, err)
					}
					out = append(out, fmt.Sprintf("%s %s %s %+v", org, by, b, groups))
				}
			}
		}
		return out
	}
	rowsBefore, answersBefore := dump(), queries()
	if len(rowsBefore) != len(batch) {
		t.Fatalf("%d rows before migrating, want %d", len(rowsBefore), len(batch))
	}

	if err := sqlite.Migrate(ctx, db); err != nil {
		t.Fatalf("migrate = %v", err)
	}
	var withoutRowid int
	if err := write.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'usage' AND sql LIKE '%WITHOUT ROWID%'`).Scan(&withoutRowid); err != nil || withoutRowid != 1 {
		t.Fatalf("usage after migrating is not the clustered table (%d, %v)", withoutRowid, err)
	}
	var check string
	if err := write.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check = %q, %v", check, err)
	}
	if got := dump(); !slices.Equal(got, rowsBefore) {
		t.Errorf("rows after migrating differ: %d rows, want %d", len(got), len(rowsBefore))
	}
	if got := queries(); !slices.Equal(got, answersBefore) {
		for i := range got {
			if got[i] != answersBefore[i] {
				t.Errorf("after migrating:\n %s\nwant\n %s", got[i], answersBefore[i])
				break
			}
		}
	}
	// Retention purges through the new key: the first UTC day goes.
	cut := start.Truncate(24 * time.Hour).Add(24 * time.Hour)
	n, err := st.DeleteUsageBefore(ctx, cut)
	if err != nil {
		t.Fatalf("DeleteUsageBefore = %v", err)
	}
	var want, left int64
	for _, u := range batch {
		if u.Time.Before(cut) {
			want++
		}
	}
	if err := write.QueryRow(`SELECT COUNT(*) FROM usage WHERE time < ?`, cut.UnixMicro()).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if n != want || left != 0 {
		t.Errorf("DeleteUsageBefore removed %d rows and left %d before the cut, want %d and 0", n, left, want)
	}
}

package sqlstore_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// The registry is tested on tables of the test's own, so it does not
// depend on any area's schema. Registration is global, so every store this
// test binary opens gets the tables.
func init() {
	sqlstore.RegisterSealed(keybridge.SealedColumn{Table: "test_vault", Column: "secret"}, "id", "secret_version")
	sqlstore.RegisterSealed(keybridge.SealedColumn{Table: "test_vault", Column: "other"}, "id", "other_version")
	sqlstore.RegisterSealed(keybridge.SealedColumn{Table: "test_box", Column: "sealed"}, "box_id", "sealed_version")
}

func openWithTables(t *testing.T, e storetest.Engine) *sqlstore.Store {
	t.Helper()
	st := e.New(t).(*sqlstore.Store)
	blob := "BLOB"
	if st.DialectName() == "postgres" {
		blob = "BYTEA"
	}
	for _, ddl := range []string{
		`CREATE TABLE test_vault (id TEXT PRIMARY KEY, secret ` + blob + ` NOT NULL, secret_version INTEGER NOT NULL,
			other ` + blob + `, other_version INTEGER NOT NULL DEFAULT 0)`,
		`CREATE TABLE test_box (box_id TEXT PRIMARY KEY, sealed ` + blob + `, sealed_version INTEGER NOT NULL DEFAULT 0)`,
	} {
		if _, err := st.DB().Write.Exec(ddl); err != nil {
			t.Fatalf("create test table: %v", err)
		}
	}
	return st
}

// rebind numbers the placeholders of q for PostgreSQL.
func rebind(st *sqlstore.Store, q string) string {
	if st.DialectName() != "postgres" {
		return q
	}
	for i := 1; strings.Contains(q, "?"); i++ {
		q = strings.Replace(q, "?", fmt.Sprintf("$%d", i), 1)
	}
	return q
}

type vaultRow struct {
	id       string
	secret   string
	version  int
	other    []byte // nil: NULL
	otherVer int
}

func TestSealedRegistry(t *testing.T) {
	ctx := context.Background()
	for _, e := range storetest.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			st := openWithTables(t, e)
			ins := func(q string, args ...any) {
				t.Helper()
				if _, err := st.DB().Write.Exec(rebind(st, q), args...); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			for _, r := range []vaultRow{
				{"v1", "s-a", 1, []byte("o-a"), 2},
				{"v2", "s-b", 2, nil, 0},      // other is NULL: no secret there
				{"v3", "s-c", 1, []byte{}, 0}, // other is empty: no secret either
				{"v4", "s-d", 3, []byte("o-d"), 1},
			} {
				ins(`INSERT INTO test_vault (id, secret, secret_version, other, other_version) VALUES (?, ?, ?, ?, ?)`,
					r.id, []byte(r.secret), r.version, r.other, r.otherVer)
			}
			ins(`INSERT INTO test_box (box_id, sealed, sealed_version) VALUES (?, ?, ?)`, "b1", []byte("box"), 1)
			ins(`INSERT INTO test_box (box_id, sealed_version) VALUES (?, ?)`, "b2", 0)

			counts, err := st.SealedCounts(ctx)
			if err != nil {
				t.Fatalf("SealedCounts = %v", err)
			}
			// version 1: v1.secret, v3.secret, v4.other, b1; version 2: v2.secret, v1.other; version 3: v4.secret.
			if want := map[int]int{1: 4, 2: 2, 3: 1}; !maps.Equal(counts, want) {
				t.Errorf("SealedCounts = %v, want %v", counts, want)
			}

			refs, err := st.SealedNotVersion(ctx, 1, 100)
			if err != nil {
				t.Fatalf("SealedNotVersion = %v", err)
			}
			var got []string
			for _, r := range refs {
				got = append(got, fmt.Sprintf("%s.%s:%s@%d=%s", r.Table, r.Column, r.RowID, r.Version, r.Ciphertext))
			}
			slices.Sort(got)
			want := []string{"test_vault.other:v1@2=o-a", "test_vault.secret:v2@2=s-b", "test_vault.secret:v4@3=s-d"}
			if !slices.Equal(got, want) {
				t.Errorf("SealedNotVersion(1) = %v, want %v", got, want)
			}
			for limit := 1; limit <= 3; limit++ {
				if refs, err := st.SealedNotVersion(ctx, 1, limit); err != nil || len(refs) != limit {
					t.Errorf("SealedNotVersion(1, limit %d) = %d refs, %v; want %d", limit, len(refs), err, limit)
				}
			}

			// A rewrap replaces each value it read, unless it changed since.
			stale := refs[0]
			for _, r := range refs {
				ok, err := st.ReplaceSealed(ctx, r, 1, append([]byte("new-"), r.Ciphertext...))
				if err != nil || !ok {
					t.Errorf("ReplaceSealed(%s.%s %s) = %v, %v; want replaced", r.Table, r.Column, r.RowID, ok, err)
				}
			}
			if ok, err := st.ReplaceSealed(ctx, stale, 1, []byte("lost")); err != nil || ok {
				t.Errorf("ReplaceSealed(stale ciphertext) = %v, %v; want not replaced", ok, err)
			}
			if refs, err := st.SealedNotVersion(ctx, 1, 100); err != nil || len(refs) != 0 {
				t.Errorf("SealedNotVersion(1) after the rewrap = %+v, %v; want none", refs, err)
			}
			if counts, err := st.SealedCounts(ctx); err != nil || !maps.Equal(counts, map[int]int{1: 7}) {
				t.Errorf("SealedCounts after the rewrap = %v, %v; want all 7 on version 1", counts, err)
			}
			var secret []byte
			if err := st.DB().Read.QueryRow(rebind(st, `SELECT secret FROM test_vault WHERE id = ?`), "v4").Scan(&secret); err != nil || string(secret) != "new-s-d" {
				t.Errorf("test_vault v4 secret = %q, %v; want new-s-d", secret, err)
			}

			_, err = st.ReplaceSealed(ctx, keybridge.SealedRef{Table: "users", Column: "email", RowID: "x"}, 1, []byte("x"))
			if err == nil {
				t.Errorf("ReplaceSealed(unregistered column) = nil error, want one")
			}
		})
	}
}

func TestRegisterSealedRefusesBadNames(t *testing.T) {
	for _, args := range [][4]string{
		{"test_vault", "id", "secret", "secret_version"}, // twice
		{"t; DROP TABLE users", "id", "c", "v"},
		{"t", "id", "c", ""},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterSealed%q did not panic", args)
				}
			}()
			sqlstore.RegisterSealed(keybridge.SealedColumn{Table: args[0], Column: args[2]}, args[1], args[3])
		}()
	}
}

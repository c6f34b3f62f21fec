package storetest

import (
	"database/sql"
	"strconv"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
)

// Raw is the database under a test store, for changing it behind the
// store's back the way someone with access to the database could: to
// tamper with audit rows, or to make writes fail.
type Raw struct {
	DB       *sql.DB
	Postgres bool
}

// RawOf returns the database under st, a store opened by this package.
func RawOf(t testing.TB, st store.Store) Raw {
	t.Helper()
	s, ok := st.(*sqlstore.Store)
	if !ok {
		t.Fatalf("store is %T, want *sqlstore.Store", st)
	}
	return Raw{DB: s.DB().Write, Postgres: s.DialectName() == "postgres"}
}

// Exec runs query, written with ? placeholders for either engine, and fails
// t unless it touched a row.
func (r Raw) Exec(t testing.TB, query string, args ...any) {
	t.Helper()
	if r.Postgres {
		for i := 1; strings.Contains(query, "?"); i++ {
			query = strings.Replace(query, "?", "$"+strconv.Itoa(i), 1)
		}
	}
	res, err := r.DB.Exec(query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		t.Fatalf("%s %v: touched no row", query, args)
	}
}

// RefuseAuditWrites installs a trigger that makes every insert into the
// audit log fail, to show that a change whose event cannot be written does
// not happen.
func (r Raw) RefuseAuditWrites(t testing.TB) {
	t.Helper()
	stmts := []string{`CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit writes refused'); END`}
	if r.Postgres {
		stmts = []string{
			`CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit writes refused'; END $$`,
			`CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_audit()`,
		}
	}
	for _, s := range stmts {
		if _, err := r.DB.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

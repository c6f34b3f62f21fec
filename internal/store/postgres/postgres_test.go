package postgres_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/postgres"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

func TestConformance(t *testing.T) { storetest.Run(t, storetest.Postgres) }

func BenchmarkAPIKeyByHash(b *testing.B) { storetest.BenchmarkAPIKeyByHash(b, storetest.Postgres) }

// TestConcurrentOpen starts replicas together on an empty schema: exactly
// one migrates, the others wait for it and find the work done.
func TestConcurrentOpen(t *testing.T) {
	url := storetest.PostgresURL(t)
	const replicas = 4
	errs := make(chan error, replicas)
	var wg sync.WaitGroup
	for range replicas {
		wg.Go(func() {
			st, err := postgres.Open(context.Background(), url)
			if err == nil {
				t.Cleanup(func() { st.Close() })
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Open of a replica started with others = %v", err)
		}
	}
}

// TestListsSortBytewise runs on a database whose default collation is
// linguistic (ICU en-US, as many installations are), where PostgreSQL
// would otherwise sort "a" before "B": lists sorted by a text column must
// come in the bytewise order SQLite gives, so both engines list alike.
func TestListsSortBytewise(t *testing.T) {
	base := os.Getenv(storetest.PostgresURLEnv)
	if base == "" {
		t.Skip(storetest.PostgresURLEnv + " is not set")
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	rand.Read(b[:])
	name := "kbtest_icu_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(`CREATE DATABASE ` + name + ` TEMPLATE template0 ENCODING 'UTF8'
		LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'`); err != nil {
		admin.Close()
		t.Skipf("create a database with an ICU collation: %v", err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		if _, err := admin.Exec(`DROP DATABASE ` + name + ` WITH (FORCE)`); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	ctx := context.Background()
	st, err := postgres.Open(ctx, u.String())
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	defer st.Close()

	org := &keybridge.Org{Slug: "acme", Name: "Acme"}
	if err := st.CreateOrg(ctx, org); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"ab", "a", "B", "a-c"} {
		if err := st.CreateProject(ctx, &keybridge.Project{OrgID: org.ID, Name: n}); err != nil {
			t.Fatalf("CreateProject(%q) = %v", n, err)
		}
	}
	projects, _, err := st.ListProjects(ctx, org.ID, store.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range projects {
		names = append(names, p.Name)
	}
	if want := []string{"B", "a", "a-c", "ab"}; !slices.Equal(names, want) {
		t.Errorf("ListProjects = %q, want %q", names, want)
	}

	for _, email := range []string{"ab@x.test", "a_d@x.test", "a.c@x.test"} {
		u := &keybridge.User{Email: email, Name: email}
		if err := st.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		if err := st.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: u.ID, Role: keybridge.RoleMember}); err != nil {
			t.Fatal(err)
		}
	}
	members, _, err := st.Members(ctx, org.ID, store.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var emails []string
	for _, m := range members {
		emails = append(emails, m.Email)
	}
	if want := []string{"a.c@x.test", "a_d@x.test", "ab@x.test"}; !slices.Equal(emails, want) {
		t.Errorf("Members = %q, want %q", emails, want)
	}
}

func TestUsageRollupBackfill(t *testing.T) {
	storetest.UsageRollupBackfill(t, storetest.Postgres, postgres.Migrate)
}

func TestInvitationsCarryOver(t *testing.T) {
	storetest.InvitationsCarryOver(t, storetest.Postgres, postgres.Migrate)
}

func TestBudgetPeriodsWithoutBudgetCleared(t *testing.T) {
	storetest.BudgetPeriodsWithoutBudgetCleared(t, storetest.Postgres, postgres.Migrate)
}

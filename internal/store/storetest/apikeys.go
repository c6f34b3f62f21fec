package storetest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
)

func testAPIKeys(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("CreateAndGet", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		u := baseUser(t, st, "a@example.com")
		expires := baseTime
		k := &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: "ci", Description: "the CI key", Prefix: "kb_abcdefghi",
			Hash:        baseHash("secret"),
			Permissions: keybridge.PermProvidersRead | keybridge.PermGatewayInvoke | keybridge.PermAPIKeysWrite,
			Status:      keybridge.KeyActive,
			Limits:      keybridge.Limits{RateLimitRPM: 60, RateLimitTPM: 1 << 40, TokenBudget: 5000, BudgetPeriod: keybridge.BudgetMonth},
			ExpiresAt:   &expires, RotatedFrom: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}
		if err := st.CreateAPIKey(ctx, k); err != nil {
			t.Fatalf("CreateAPIKey = %v", err)
		}
		if k.ID == "" || k.CreatedAt.IsZero() || !k.UpdatedAt.Equal(k.CreatedAt) {
			t.Fatalf("CreateAPIKey set ID %q, times %v, %v; want an ID and equal times", k.ID, k.CreatedAt, k.UpdatedAt)
		}
		want := *k
		truncated := baseTime.Truncate(time.Microsecond)
		want.ExpiresAt = &truncated
		for name, get := range map[string]func() (*keybridge.APIKey, error){
			"APIKey":       func() (*keybridge.APIKey, error) { return st.APIKey(ctx, k.ID) },
			"APIKeyByHash": func() (*keybridge.APIKey, error) { return st.APIKeyByHash(ctx, baseHash("secret")) },
		} {
			got, err := get()
			if err != nil {
				t.Fatalf("%s = %v", name, err)
			}
			if g, w := apiKeyString(got), apiKeyString(&want); g != w {
				t.Errorf("%s =\n%s\nwant\n%s", name, g, w)
			}
		}
		err := st.CreateAPIKey(ctx, &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: "dup", Prefix: "kb_x", Hash: baseHash("secret")})
		baseCode(t, "CreateAPIKey(used hash)", err, keybridge.EConflict)
		_, err = st.APIKey(ctx, "nope")
		baseCode(t, "APIKey(missing)", err, keybridge.ENotFound)
		_, err = st.APIKeyByHash(ctx, baseHash("unknown"))
		baseCode(t, "APIKeyByHash(unknown)", err, keybridge.ENotFound)
	})

	t.Run("List", func(t *testing.T) {
		st := newStore(t)
		acme, other := baseOrg(t, st, "acme"), baseOrg(t, st, "other")
		alice, bob := baseUser(t, st, "alice@example.com"), baseUser(t, st, "bob@example.com")
		baseMember(t, st, acme.ID, alice.ID, keybridge.RoleOwner)
		baseMember(t, st, acme.ID, bob.ID, keybridge.RoleMember)
		baseMember(t, st, other.ID, alice.ID, keybridge.RoleOwner)
		var all []string
		for i, owner := range []struct{ org, user string }{
			{acme.ID, alice.ID}, {acme.ID, bob.ID}, {other.ID, alice.ID}, {acme.ID, alice.ID}, {acme.ID, bob.ID}, {acme.ID, alice.ID},
		} {
			all = append(all, baseAPIKey(t, st, owner.org, owner.user, fmt.Sprint("key", i)).Name)
		}
		slices.Reverse(all) // newest first
		for _, tc := range []struct {
			filter store.APIKeyFilter
			want   []string
		}{
			{store.APIKeyFilter{}, all},
			{store.APIKeyFilter{UserID: alice.ID}, []string{"key5", "key3", "key2", "key0"}},
			{store.APIKeyFilter{OrgID: acme.ID}, []string{"key5", "key4", "key3", "key1", "key0"}},
			{store.APIKeyFilter{OrgID: acme.ID, UserID: bob.ID}, []string{"key4", "key1"}},
			{store.APIKeyFilter{OrgID: other.ID, UserID: bob.ID}, nil},
		} {
			for _, limit := range []int{0, 1, 2, 4} {
				var got []string
				page := store.Page{Limit: limit}
				for pages := 0; ; pages++ {
					if pages > 10 {
						t.Fatalf("ListAPIKeys(%+v, limit %d): paging does not end", tc.filter, limit)
					}
					keys, next, err := st.ListAPIKeys(ctx, tc.filter, page)
					if err != nil {
						t.Fatalf("ListAPIKeys(%+v) = %v", tc.filter, err)
					}
					for _, k := range keys {
						got = append(got, k.Name)
					}
					if next == "" {
						break
					}
					page.Cursor = next
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("ListAPIKeys(%+v, limit %d) = %v, want %v", tc.filter, limit, got, tc.want)
				}
			}
		}
		_, _, err := st.ListAPIKeys(ctx, store.APIKeyFilter{}, store.Page{Cursor: "%%%"})
		baseCode(t, "ListAPIKeys(bad cursor)", err, keybridge.EInvalid)
	})

	t.Run("Update", func(t *testing.T) {
		st := newStore(t)
		ch := baseSubscribe(t, st, st)
		org := baseOrg(t, st, "acme")
		u := baseUser(t, st, "a@example.com")
		k := baseAPIKey(t, st, org.ID, u.ID, "k")
		created := k.CreatedAt
		grace, revoked := baseTime, baseTime.Add(time.Hour)
		k.Name, k.Description, k.Permissions, k.Status = "renamed", "now described", keybridge.PermUsageRead, keybridge.KeyRevoked
		k.Limits = keybridge.Limits{RateLimitRPM: 1, TokenBudget: 2, BudgetPeriod: keybridge.BudgetDay}
		k.GraceUntil, k.RevokedAt, k.ExpiresAt = &grace, &revoked, &grace
		// Fields UpdateAPIKey does not write.
		k.Prefix, k.Hash, k.OrgID = "changed", baseHash("changed"), "changed"
		if err := st.UpdateAPIKey(ctx, k); err != nil {
			t.Fatalf("UpdateAPIKey = %v", err)
		}
		baseExpect(t, "UpdateAPIKey", ch, store.Invalidation{Kind: store.InvalidateAPIKey, ID: k.ID})
		got, err := st.APIKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := *k
		want.Prefix, want.Hash, want.OrgID = "kb_k", baseHash("key "+org.ID+u.ID+"k"), org.ID
		want.CreatedAt = created
		g1, r1 := grace.Truncate(time.Microsecond), revoked.Truncate(time.Microsecond)
		want.GraceUntil, want.RevokedAt, want.ExpiresAt = &g1, &r1, &g1
		if g, w := apiKeyString(got), apiKeyString(&want); g != w {
			t.Errorf("APIKey after UpdateAPIKey =\n%s\nwant\n%s", g, w)
		}
		baseCode(t, "UpdateAPIKey(missing)", st.UpdateAPIKey(ctx, &keybridge.APIKey{ID: "nope", Status: keybridge.KeyActive}), keybridge.ENotFound)
		baseMarker(t, "UpdateAPIKey(missing)", st, ch)
	})

	t.Run("Touch", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		u := baseUser(t, st, "a@example.com")
		a, b := baseAPIKey(t, st, org.ID, u.ID, "a"), baseAPIKey(t, st, org.ID, u.ID, "b")
		t1 := baseTime
		t0, t2 := t1.Add(-time.Minute), t1.Add(time.Minute)
		for _, step := range []struct {
			touch        map[string]time.Time
			wantA, wantB time.Time
		}{
			{map[string]time.Time{a.ID: t1}, t1, time.Time{}},
			{map[string]time.Time{a.ID: t0, b.ID: t1, "unknown": t2}, t1, t1}, // a does not go back
			{map[string]time.Time{a.ID: t2}, t2, t1},
			{nil, t2, t1},
		} {
			if err := st.TouchAPIKeys(ctx, step.touch); err != nil {
				t.Fatalf("TouchAPIKeys(%v) = %v", step.touch, err)
			}
			for _, c := range []struct {
				id   string
				want time.Time
			}{{a.ID, step.wantA}, {b.ID, step.wantB}} {
				k, err := st.APIKey(ctx, c.id)
				if err != nil {
					t.Fatal(err)
				}
				if c.want.IsZero() != (k.LastUsedAt == nil) || (k.LastUsedAt != nil && !k.LastUsedAt.Equal(c.want.Truncate(time.Microsecond))) {
					t.Errorf("after TouchAPIKeys(%v): key %s last_used_at = %v, want %v", step.touch, k.Name, k.LastUsedAt, c.want)
				}
				if !k.UpdatedAt.Equal(k.CreatedAt) {
					t.Errorf("TouchAPIKeys moved updated_at of %s to %v", k.Name, k.UpdatedAt)
				}
			}
		}
	})
}

// apiKeyString prints every field of k, pointers followed.
func apiKeyString(k *keybridge.APIKey) string {
	tp := func(t *time.Time) string {
		if t == nil {
			return "nil"
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("id=%s org=%s user=%s name=%q desc=%q prefix=%s hash=%x perms=%d status=%s limits=%+v created=%s updated=%s used=%s expires=%s revoked=%s grace=%s from=%s",
		k.ID, k.OrgID, k.UserID, k.Name, k.Description, k.Prefix, k.Hash, k.Permissions, k.Status, k.Limits,
		k.CreatedAt.UTC().Format(time.RFC3339Nano), k.UpdatedAt.UTC().Format(time.RFC3339Nano),
		tp(k.LastUsedAt), tp(k.ExpiresAt), tp(k.RevokedAt), tp(k.GraceUntil), k.RotatedFrom)
}

// BudgetPeriodsWithoutBudgetCleared checks the migration that clears the
// budget period of keys stored with one but no budget (the API refuses
// such a key now): those show no period after it, platform keys and AI
// keys alike, and a key with a budget keeps its period.
func BudgetPeriodsWithoutBudgetCleared(t *testing.T, newStore Factory, migrate func(context.Context, *sqlstore.DB) error) {
	ctx := context.Background()
	st := newStore(t)
	org := baseOrg(t, st, "acme")
	u := baseUser(t, st, "owner@example.com")
	apiKey := func(name string, lim keybridge.Limits) *keybridge.APIKey {
		k := &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: name, Prefix: "kb_" + name, Hash: baseHash(name),
			Permissions: keybridge.AllPermissions, Status: keybridge.KeyActive, Limits: lim}
		if err := st.CreateAPIKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	p := projProject(t, st, org.ID, "web")
	aiKey := func(name string, lim keybridge.Limits) *keybridge.AIKey {
		k := &keybridge.AIKey{ProjectID: p.ID, OrgID: org.ID, Name: name, AIType: keybridge.AIOther, Key: "kbk_" + name, SecretHash: baseHash(name), Limits: lim}
		if err := st.CreateAIKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	stale := keybridge.Limits{RateLimitRPM: 60, BudgetPeriod: keybridge.BudgetMonth}
	budgeted := keybridge.Limits{TokenBudget: 5000, BudgetPeriod: keybridge.BudgetDay}
	staleAPI, budgetedAPI := apiKey("stale", stale), apiKey("budgeted", budgeted)
	staleAI, budgetedAI := aiKey("stale", stale), aiKey("budgeted", budgeted)

	RawOf(t, st).Exec(t, `DELETE FROM schema_migrations WHERE name LIKE '%_budget_period_without_budget.sql'`)
	if err := migrate(ctx, st.(*sqlstore.Store).DB()); err != nil {
		t.Fatalf("migrate = %v", err)
	}
	want := map[string]keybridge.Limits{"stale": {RateLimitRPM: 60}, "budgeted": budgeted}
	for _, k := range []*keybridge.APIKey{staleAPI, budgetedAPI} {
		got, err := st.APIKey(ctx, k.ID)
		if err != nil || got.Limits != want[k.Name] {
			t.Errorf("platform key %s after the migration: %+v, %v; want limits %+v", k.Name, got, err, want[k.Name])
		}
	}
	for _, k := range []*keybridge.AIKey{staleAI, budgetedAI} {
		got, err := st.AIKey(ctx, p.ID, k.ID)
		if err != nil || got.Limits != want[k.Name] {
			t.Errorf("AI key %s after the migration: %+v, %v; want limits %+v", k.Name, got, err, want[k.Name])
		}
	}
}

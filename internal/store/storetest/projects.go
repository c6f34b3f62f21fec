package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Helpers of the projects suite, prefixed "proj".

func projProject(t testing.TB, st store.Store, orgID, name string) *keybridge.Project {
	t.Helper()
	p := &keybridge.Project{OrgID: orgID, Name: name, Description: "about " + name}
	if err := st.CreateProject(context.Background(), p); err != nil {
		t.Fatalf("CreateProject(%q) = %v", name, err)
	}
	return p
}

func projAIKey(t testing.TB, st store.Store, p *keybridge.Project, name string) *keybridge.AIKey {
	t.Helper()
	k := &keybridge.AIKey{ProjectID: p.ID, OrgID: p.OrgID, Name: name, AIType: keybridge.AIOpenAI,
		Key: "kbk_" + p.ID + name, SecretHash: baseHash("secret " + p.ID + name), CreatedBy: "user-1"}
	if err := st.CreateAIKey(context.Background(), k); err != nil {
		t.Fatalf("CreateAIKey(%q) = %v", name, err)
	}
	return k
}

func projNames(ps []keybridge.Project) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func projKeyIDs(ks []keybridge.AIKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.ID)
	}
	return out
}

// projInvalidations collects what ch hears within wait, markers left out.
func projInvalidations(ch <-chan store.Invalidation, wait time.Duration) []store.Invalidation {
	var out []store.Invalidation
	for {
		inv, ok := baseNext(ch, wait)
		if !ok {
			return out
		}
		out = append(out, inv)
	}
}

func testProjects(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("CreateGetUpdate", func(t *testing.T) {
		st := newStore(t)
		org, other := baseOrg(t, st, "acme"), baseOrg(t, st, "other")
		p := projProject(t, st, org.ID, "web")
		if p.ID == "" || p.CreatedAt.IsZero() || !p.UpdatedAt.Equal(p.CreatedAt) {
			t.Errorf("CreateProject set ID %q, CreatedAt %v, UpdatedAt %v; want an ID and equal times", p.ID, p.CreatedAt, p.UpdatedAt)
		}
		got, err := st.Project(ctx, org.ID, p.ID)
		if err != nil {
			t.Fatalf("Project = %v", err)
		}
		if got.Name != "web" || got.Description != "about web" || got.OrgID != org.ID || !got.CreatedAt.Equal(p.CreatedAt) {
			t.Errorf("Project = %+v, want %+v", got, p)
		}
		_, err = st.Project(ctx, other.ID, p.ID)
		baseCode(t, "Project(other org)", err, keybridge.ENotFound)
		_, err = st.Project(ctx, org.ID, "no-such-id")
		baseCode(t, "Project(unknown)", err, keybridge.ENotFound)

		err = st.CreateProject(ctx, &keybridge.Project{OrgID: org.ID, Name: "web"})
		baseCode(t, "CreateProject(same name)", err, keybridge.EConflict)
		projProject(t, st, other.ID, "web") // names are per org

		p2 := projProject(t, st, org.ID, "api")
		p2.Name = "web"
		baseCode(t, "UpdateProject(to a used name)", st.UpdateProject(ctx, p2), keybridge.EConflict)
		p2.Name, p2.Description = "backend", "new words"
		if err := st.UpdateProject(ctx, p2); err != nil {
			t.Fatalf("UpdateProject = %v", err)
		}
		got, _ = st.Project(ctx, org.ID, p2.ID)
		if got.Name != "backend" || got.Description != "new words" || got.UpdatedAt.Before(got.CreatedAt) {
			t.Errorf("after UpdateProject, Project = %+v", got)
		}
		wrongOrg := *p2
		wrongOrg.OrgID = other.ID
		baseCode(t, "UpdateProject(other org)", st.UpdateProject(ctx, &wrongOrg), keybridge.ENotFound)
	})

	t.Run("ListPages", func(t *testing.T) {
		st := newStore(t)
		org, other := baseOrg(t, st, "acme"), baseOrg(t, st, "other")
		for _, n := range []string{"delta", "alpha", "echo", "charlie", "bravo"} {
			projProject(t, st, org.ID, n)
		}
		projProject(t, st, other.ID, "zulu")
		var got []string
		pg := store.Page{Limit: 2}
		for i := 0; ; i++ {
			items, next, err := st.ListProjects(ctx, org.ID, pg)
			if err != nil {
				t.Fatalf("ListProjects = %v", err)
			}
			if len(items) > 2 {
				t.Fatalf("page %d has %d items, want at most 2", i, len(items))
			}
			got = append(got, projNames(items)...)
			if next == "" {
				break
			}
			if i > 5 {
				t.Fatal("ListProjects does not stop paging")
			}
			pg.Cursor = next
		}
		want := []string{"alpha", "bravo", "charlie", "delta", "echo"}
		if !slices.Equal(got, want) {
			t.Errorf("ListProjects pages = %v, want %v", got, want)
		}
		_, _, err := st.ListProjects(ctx, org.ID, store.Page{Cursor: "not a cursor"})
		baseCode(t, "ListProjects(bad cursor)", err, keybridge.EInvalid)
	})

	t.Run("DeleteProject", func(t *testing.T) {
		st := newStore(t)
		org, other := baseOrg(t, st, "acme"), baseOrg(t, st, "other")
		p := projProject(t, st, org.ID, "web")
		k1, k2 := projAIKey(t, st, p, "one"), projAIKey(t, st, p, "two")
		if err := st.DeleteAIKey(ctx, p.ID, k2.ID); err != nil {
			t.Fatalf("DeleteAIKey = %v", err)
		}
		ch := baseSubscribe(t, st, st)

		baseCode(t, "DeleteProject(other org)", st.DeleteProject(ctx, other.ID, p.ID), keybridge.ENotFound)
		if err := st.DeleteProject(ctx, org.ID, p.ID); err != nil {
			t.Fatalf("DeleteProject = %v", err)
		}
		invs := projInvalidations(ch, 300*time.Millisecond)
		if !slices.Contains(invs, store.Invalidation{Kind: store.InvalidateAIKey, ID: k1.ID}) {
			t.Errorf("DeleteProject published %v, want an invalidation of live key %s", invs, k1.ID)
		}
		_, err := st.Project(ctx, org.ID, p.ID)
		baseCode(t, "Project(deleted)", err, keybridge.ENotFound)
		baseCode(t, "DeleteProject(again)", st.DeleteProject(ctx, org.ID, p.ID), keybridge.ENotFound)
		_, err = st.AIKeyBySecretHash(ctx, k1.SecretHash)
		baseCode(t, "AIKeyBySecretHash(key of deleted project)", err, keybridge.ENotFound)
		got, err := st.AIKey(ctx, p.ID, k1.ID)
		if err != nil || got.DeletedAt == nil {
			t.Errorf("AIKey(key of deleted project) = %+v, %v; want the row with deleted_at set", got, err)
		}
		items, _, _ := st.ListProjects(ctx, org.ID, store.Page{})
		if len(items) != 0 {
			t.Errorf("ListProjects after delete = %v, want none", projNames(items))
		}
		// The name is free again, and a new project of that name is a
		// new project: the old keys stay dead.
		p2 := projProject(t, st, org.ID, "web")
		if p2.ID == p.ID {
			t.Errorf("new project reuses the deleted one's ID")
		}
		baseCode(t, "CreateAIKey(deleted project)", st.CreateAIKey(ctx, &keybridge.AIKey{ProjectID: p.ID, OrgID: org.ID,
			Name: "late", AIType: keybridge.AIOther, Key: "kbk_late", SecretHash: baseHash("late")}), keybridge.ENotFound)
	})

	t.Run("AIKeys", func(t *testing.T) {
		st := newStore(t)
		org, other := baseOrg(t, st, "acme"), baseOrg(t, st, "other")
		p, q := projProject(t, st, org.ID, "web"), projProject(t, st, org.ID, "api")
		k := &keybridge.AIKey{ProjectID: p.ID, OrgID: org.ID, Name: "ci", AIType: keybridge.AIAnthropic,
			Key: "kbk_ci", SecretHash: baseHash("secret ci"), CreatedBy: "user-7",
			Limits: keybridge.Limits{RateLimitRPM: 60, RateLimitTPM: 1000, TokenBudget: 5000, BudgetPeriod: keybridge.BudgetDay}}
		if err := st.CreateAIKey(ctx, k); err != nil {
			t.Fatalf("CreateAIKey = %v", err)
		}
		if k.ID == "" || k.CreatedAt.IsZero() {
			t.Errorf("CreateAIKey set ID %q CreatedAt %v", k.ID, k.CreatedAt)
		}
		got, err := st.AIKey(ctx, p.ID, k.ID)
		if err != nil {
			t.Fatalf("AIKey = %v", err)
		}
		if got.Name != "ci" || got.AIType != keybridge.AIAnthropic || got.Key != "kbk_ci" || got.CreatedBy != "user-7" ||
			got.Limits != k.Limits || got.OrgID != org.ID || got.ProjectID != p.ID || got.DeletedAt != nil || got.LastUsedAt != nil ||
			!slices.Equal(got.SecretHash, k.SecretHash) || !got.CreatedAt.Equal(k.CreatedAt) {
			t.Errorf("AIKey = %+v, want %+v", got, k)
		}
		_, err = st.AIKey(ctx, q.ID, k.ID)
		baseCode(t, "AIKey(other project)", err, keybridge.ENotFound)
		byHash, err := st.AIKeyBySecretHash(ctx, baseHash("secret ci"))
		if err != nil || byHash.ID != k.ID {
			t.Errorf("AIKeyBySecretHash = %+v, %v; want key %s", byHash, err, k.ID)
		}
		_, err = st.AIKeyBySecretHash(ctx, baseHash("unknown"))
		baseCode(t, "AIKeyBySecretHash(unknown)", err, keybridge.ENotFound)

		dupKey := &keybridge.AIKey{ProjectID: q.ID, OrgID: org.ID, Name: "x", AIType: keybridge.AIOther, Key: "kbk_ci", SecretHash: baseHash("other")}
		baseCode(t, "CreateAIKey(used key)", st.CreateAIKey(ctx, dupKey), keybridge.EConflict)
		dupHash := &keybridge.AIKey{ProjectID: q.ID, OrgID: org.ID, Name: "x", AIType: keybridge.AIOther, Key: "kbk_new", SecretHash: baseHash("secret ci")}
		baseCode(t, "CreateAIKey(used secret)", st.CreateAIKey(ctx, dupHash), keybridge.EConflict)
		foreign := &keybridge.AIKey{ProjectID: p.ID, OrgID: other.ID, Name: "x", AIType: keybridge.AIOther, Key: "kbk_f", SecretHash: baseHash("f")}
		baseCode(t, "CreateAIKey(project of another org)", st.CreateAIKey(ctx, foreign), keybridge.ENotFound)

		ch := baseSubscribe(t, st, st)
		k.Name = "ci-2"
		k.Limits = keybridge.Limits{RateLimitRPM: 10}
		if err := st.UpdateAIKey(ctx, k); err != nil {
			t.Fatalf("UpdateAIKey = %v", err)
		}
		baseExpect(t, "UpdateAIKey", ch, store.Invalidation{Kind: store.InvalidateAIKey, ID: k.ID})
		got, _ = st.AIKey(ctx, p.ID, k.ID)
		if got.Name != "ci-2" || got.Limits != (keybridge.Limits{RateLimitRPM: 10}) {
			t.Errorf("after UpdateAIKey, AIKey = %+v", got)
		}
		wrong := *k
		wrong.ProjectID = q.ID
		baseCode(t, "UpdateAIKey(other project)", st.UpdateAIKey(ctx, &wrong), keybridge.ENotFound)

		baseCode(t, "DeleteAIKey(other project)", st.DeleteAIKey(ctx, q.ID, k.ID), keybridge.ENotFound)
		if err := st.DeleteAIKey(ctx, p.ID, k.ID); err != nil {
			t.Fatalf("DeleteAIKey = %v", err)
		}
		baseExpect(t, "DeleteAIKey", ch, store.Invalidation{Kind: store.InvalidateAIKey, ID: k.ID})
		baseCode(t, "DeleteAIKey(again)", st.DeleteAIKey(ctx, p.ID, k.ID), keybridge.ENotFound)
		baseCode(t, "UpdateAIKey(deleted)", st.UpdateAIKey(ctx, k), keybridge.ENotFound)
		_, err = st.AIKeyBySecretHash(ctx, k.SecretHash)
		baseCode(t, "AIKeyBySecretHash(deleted)", err, keybridge.ENotFound)
		got, err = st.AIKey(ctx, p.ID, k.ID)
		if err != nil || got.DeletedAt == nil {
			t.Errorf("AIKey(deleted) = %+v, %v; want the row with deleted_at", got, err)
		}
	})

	t.Run("AWSKeySecret", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		p := projProject(t, st, org.ID, "web")
		plain := projAIKey(t, st, p, "bearer only") // no sealed secret: skipped by the ring
		// A ciphertext as the key ring writes one: format 1, version 7.
		sealed := []byte{1, 0, 0, 0, 7, 'c', 'i', 'p', 'h', 'e', 'r'}
		k := &keybridge.AIKey{ID: "0190a5a8-0000-7000-8000-00000000a005", ProjectID: p.ID, OrgID: org.ID, Name: "aws",
			AIType: keybridge.AIAWS, Key: "kbk_aws", SecretHash: baseHash("secret aws"), SecretSealed: sealed}
		if err := st.CreateAIKey(ctx, k); err != nil {
			t.Fatalf("CreateAIKey(AWS) = %v", err)
		}
		if k.ID != "0190a5a8-0000-7000-8000-00000000a005" {
			t.Errorf("CreateAIKey replaced the ID it was given by %q", k.ID)
		}
		got, err := st.AIKeyByKey(ctx, "kbk_aws")
		if err != nil || got.ID != k.ID || got.AIType != keybridge.AIAWS || !slices.Equal(got.SecretSealed, sealed) || !slices.Equal(got.SecretHash, k.SecretHash) {
			t.Errorf("AIKeyByKey = %+v, %v; want key %s with its sealed secret and hash", got, err, k.ID)
		}
		if got, err := st.AIKeyBySecretHash(ctx, baseHash("secret aws")); err != nil || got.ID != k.ID {
			t.Errorf("AIKeyBySecretHash(AWS key) = %+v, %v; want key %s: its secret is also a bearer token", got, err, k.ID)
		}
		if got, err := st.AIKeyByKey(ctx, plain.Key); err != nil || got.ID != plain.ID || len(got.SecretSealed) != 0 {
			t.Errorf("AIKeyByKey(key without sealed secret) = %+v, %v; want key %s with none", got, err, plain.ID)
		}
		_, err = st.AIKeyByKey(ctx, "kbk_unknown")
		baseCode(t, "AIKeyByKey(unknown)", err, keybridge.ENotFound)
		_, err = st.AIKeyByKey(ctx, "secret aws")
		baseCode(t, "AIKeyByKey(a secret)", err, keybridge.ENotFound)

		counts, err := st.SealedCounts(ctx)
		if err != nil || counts[7] != 1 {
			t.Errorf("SealedCounts = %v, %v; want one value of version 7", counts, err)
		}
		refs, err := st.SealedNotVersion(ctx, 8, 100)
		if err != nil || len(refs) != 1 || refs[0].Table != keybridge.SealedAIKeySecret.Table ||
			refs[0].Column != keybridge.SealedAIKeySecret.Column || refs[0].RowID != k.ID || refs[0].Version != 7 {
			t.Fatalf("SealedNotVersion(8) = %+v, %v; want the AWS key's secret alone", refs, err)
		}
		resealed := []byte{1, 0, 0, 0, 8, 'n', 'e', 'w'}
		if ok, err := st.ReplaceSealed(ctx, refs[0], 8, resealed); !ok || err != nil {
			t.Fatalf("ReplaceSealed = %v, %v; want replaced", ok, err)
		}
		if got, _ := st.AIKeyByKey(ctx, "kbk_aws"); got == nil || !slices.Equal(got.SecretSealed, resealed) {
			t.Errorf("after ReplaceSealed, AIKeyByKey = %+v; want the new ciphertext", got)
		}

		if err := st.DeleteAIKey(ctx, p.ID, k.ID); err != nil {
			t.Fatalf("DeleteAIKey = %v", err)
		}
		_, err = st.AIKeyByKey(ctx, "kbk_aws")
		baseCode(t, "AIKeyByKey(deleted)", err, keybridge.ENotFound)
		if err := st.DeleteProject(ctx, org.ID, p.ID); err != nil {
			t.Fatalf("DeleteProject = %v", err)
		}
		_, err = st.AIKeyByKey(ctx, plain.Key)
		baseCode(t, "AIKeyByKey(key of deleted project)", err, keybridge.ENotFound)
	})

	t.Run("ListAIKeys", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		p, q := projProject(t, st, org.ID, "web"), projProject(t, st, org.ID, "api")
		var ids []string
		for i := range 5 {
			ids = append(ids, projAIKey(t, st, p, fmt.Sprint("k", i)).ID)
		}
		projAIKey(t, st, q, "elsewhere")
		if err := st.DeleteAIKey(ctx, p.ID, ids[1]); err != nil {
			t.Fatalf("DeleteAIKey = %v", err)
		}
		slices.Reverse(ids) // newest first
		for _, tc := range []struct {
			includeDeleted bool
			want           []string
		}{
			{false, slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == ids[3] })},
			{true, ids},
		} {
			var got []string
			pg := store.Page{Limit: 2}
			for i := 0; i < 10; i++ {
				items, next, err := st.ListAIKeys(ctx, p.ID, tc.includeDeleted, pg)
				if err != nil {
					t.Fatalf("ListAIKeys = %v", err)
				}
				got = append(got, projKeyIDs(items)...)
				if next == "" {
					break
				}
				pg.Cursor = next
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ListAIKeys(includeDeleted=%v) = %v, want %v", tc.includeDeleted, got, tc.want)
			}
		}
	})

	t.Run("TouchAIKeys", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		p := projProject(t, st, org.ID, "web")
		k := projAIKey(t, st, p, "one")
		later, earlier := baseTime, baseTime.Add(-time.Hour)
		if err := st.TouchAIKeys(ctx, map[string]time.Time{k.ID: later, "unknown": later}); err != nil {
			t.Fatalf("TouchAIKeys = %v", err)
		}
		if err := st.TouchAIKeys(ctx, map[string]time.Time{k.ID: earlier}); err != nil {
			t.Fatalf("TouchAIKeys = %v", err)
		}
		got, _ := st.AIKey(ctx, p.ID, k.ID)
		if want := later.Truncate(time.Microsecond); got.LastUsedAt == nil || !got.LastUsedAt.Equal(want) {
			t.Errorf("LastUsedAt = %v, want %v (never moved backwards)", got.LastUsedAt, want)
		}
	})

	t.Run("RollbackWithTransaction", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		p := projProject(t, st, org.ID, "web")
		k := projAIKey(t, st, p, "one")
		boom := errors.New("boom")
		err := st.InTx(ctx, func(tx store.Store) error {
			if err := tx.DeleteProject(ctx, org.ID, p.ID); err != nil {
				return err
			}
			projProject(t, tx, org.ID, "created-then-rolled-back")
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("InTx = %v, want %v", err, boom)
		}
		if _, err := st.Project(ctx, org.ID, p.ID); err != nil {
			t.Errorf("Project after rolled-back delete = %v, want it back", err)
		}
		if _, err := st.AIKeyBySecretHash(ctx, k.SecretHash); err != nil {
			t.Errorf("AIKeyBySecretHash after rolled-back delete = %v, want the key live", err)
		}
		items, _, _ := st.ListProjects(ctx, org.ID, store.Page{})
		if got := projNames(items); !slices.Equal(got, []string{"web"}) {
			t.Errorf("ListProjects = %v, want [web]", got)
		}
	})
}

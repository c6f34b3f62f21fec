package httpapi_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

type orgJSON struct {
	ID   string `json:"id"`
	Slug string `json:"slug"`
	Name string `json:"name"`
	Role string `json:"role"`
}

type memberJSON struct {
	UserID      string          `json:"user_id"`
	Email       string          `json:"email"`
	Name        string          `json:"name"`
	Role        string          `json:"role"`
	Invited     bool            `json:"invited"`
	Credentials map[string]bool `json:"credentials"`
}

func TestOrgs(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, memberKey := e.addMember(keybridge.RoleMember)
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		other := e.otherOrg()

		resp, raw := e.do("GET", "/api/v1/orgs", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if l := decodeAs[struct{ Items []orgJSON }](t, raw).Items; len(l) != 1 || l[0].ID != e.Org.ID || l[0].Role != "owner" {
			t.Errorf("GET /orgs = %s, want only acme as owner", raw)
		}

		// Create: the caller becomes owner; a key needs every permission.
		narrowKey := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}}).Key
		resp, raw = e.do("POST", "/api/v1/orgs", e.OwnerKey, map[string]string{"slug": "beta", "name": "Beta"})
		wantStatus(t, resp, raw, http.StatusCreated)
		beta := decodeAs[orgJSON](t, raw)
		if beta.Slug != "beta" || beta.Role != "owner" || beta.ID == "" {
			t.Errorf("POST /orgs = %s", raw)
		}
		for name, c := range map[string]struct {
			key, body, code string
		}{
			"member key":  {memberKey, `{"slug":"gamma","name":"Gamma"}`, keybridge.EForbidden},
			"narrow key":  {narrowKey, `{"slug":"gamma","name":"Gamma"}`, keybridge.EForbidden},
			"bad slug":    {e.OwnerKey, `{"slug":"Gamma!","name":"Gamma"}`, keybridge.EInvalid},
			"no name":     {e.OwnerKey, `{"slug":"gamma"}`, keybridge.EInvalid},
			"slug in use": {e.OwnerKey, `{"slug":"beta","name":"Again"}`, keybridge.EConflict},
		} {
			resp, raw := e.do("POST", "/api/v1/orgs", c.key, c.body)
			if resp.StatusCode == http.StatusCreated {
				t.Errorf("%s: POST /orgs = 201", name)
				continue
			}
			wantError(t, resp, raw, c.code)
		}

		// Read by id or slug; another org's is 404 for every method.
		for _, ref := range []string{e.Org.ID, e.Org.Slug} {
			resp, raw = e.do("GET", "/api/v1/orgs/"+ref, memberKey, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			if o := decodeAs[orgJSON](t, raw); o.ID != e.Org.ID || o.Role != "member" {
				t.Errorf("GET /orgs/%s = %s", ref, raw)
			}
		}
		for _, m := range []string{"GET", "PATCH", "DELETE"} {
			var body any // GET and DELETE take none
			if m == "PATCH" {
				body = map[string]string{"name": "Mine"}
			}
			resp, raw = e.do(m, "/api/v1/orgs/"+other.Org.Slug, e.OwnerKey, body)
			wantError(t, resp, raw, keybridge.ENotFound)
		}
		resp, raw = e.do("GET", "/api/v1/orgs/no-such-org", e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound)

		// Update: admins, not members; empty body and a used slug refused.
		resp, raw = e.do("PATCH", "/api/v1/orgs/"+e.Org.Slug, memberKey, map[string]string{"name": "Nope"})
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("PATCH", "/api/v1/orgs/"+e.Org.Slug, adminKey, `{}`)
		wantError(t, resp, raw, keybridge.EInvalid)
		resp, raw = e.do("PATCH", "/api/v1/orgs/"+e.Org.Slug, adminKey, map[string]string{"slug": "beta"})
		wantError(t, resp, raw, keybridge.EConflict)
		resp, raw = e.do("PATCH", "/api/v1/orgs/"+e.Org.Slug, adminKey, map[string]string{"name": "Acme Inc"})
		wantStatus(t, resp, raw, http.StatusOK)
		if o := decodeAs[orgJSON](t, raw); o.Name != "Acme Inc" || o.Slug != e.Org.Slug {
			t.Errorf("PATCH /orgs = %s", raw)
		}

		// Delete: owners only.
		resp, raw = e.do("DELETE", "/api/v1/orgs/"+e.Org.Slug, adminKey, nil)
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("DELETE", "/api/v1/orgs/"+e.Org.Slug, memberKey, nil)
		wantError(t, resp, raw, keybridge.EForbidden)
		if got := e.auditActions(e.Org.ID); !slices.Equal(got, []string{"org.update", "api_key.create"}) {
			t.Errorf("acme's audit actions = %v, want [org.update api_key.create]", got)
		}
		resp, raw = e.do("DELETE", "/api/v1/orgs/beta", e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound) // the acme key is bound to acme
		owner := e.login(e.Owner.Email, e.OwnerPassword)
		resp, raw = owner.do("DELETE", "/api/v1/orgs/beta", nil)
		wantStatus(t, resp, raw, http.StatusNoContent)
		resp, raw = owner.do("GET", "/api/v1/orgs/beta", nil)
		wantError(t, resp, raw, keybridge.ENotFound)
		resp, raw = owner.do("DELETE", "/api/v1/orgs/"+e.Org.Slug, nil)
		wantStatus(t, resp, raw, http.StatusNoContent)
		if e.works(e.OwnerKey) {
			t.Error("a key of a deleted org still works")
		}
		if e.works(memberKey) {
			t.Error("a member's key of a deleted org still works")
		}
	})
}

func TestMembers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		memberID, memberKey := e.addMember(keybridge.RoleMember)
		adminID, adminKey := e.addMember(keybridge.RoleAdmin)
		other := e.otherOrg()
		base := "/api/v1/orgs/" + e.Org.Slug + "/members"

		// A personal credential shows as a flag in the member list.
		p := &keybridge.Provider{OrgID: e.Org.ID, Name: "openai", DisplayName: "OpenAI", Type: keybridge.ProviderOpenAI,
			BaseURL: "https://api.openai.com/v1", Enabled: true, KeySource: keybridge.KeySourceUser, SettingsSealed: []byte("sealed")}
		if err := e.Store.CreateProvider(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := e.Store.CreateCredential(ctx, &keybridge.Credential{UserID: memberID, OrgID: e.Org.ID, ProviderID: p.ID,
			Hint: "...abcd", Sealed: []byte("sealed"), Fingerprint: []byte("fp")}); err != nil {
			t.Fatal(err)
		}

		// Admins see who holds a personal key (SPEC §6); members do not.
		for name, c := range map[string]struct {
			key       string
			wantFlags bool
		}{"member": {memberKey, false}, "admin": {adminKey, true}, "owner": {e.OwnerKey, true}} {
			resp, raw := e.do("GET", base, c.key, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			byID := map[string]memberJSON{}
			for _, m := range decodeAs[struct{ Items []memberJSON }](t, raw).Items {
				byID[m.UserID] = m
			}
			if len(byID) != 3 || byID[e.Owner.ID].Role != "owner" || byID[adminID].Role != "admin" {
				t.Errorf("GET members as %s = %s", name, raw)
			}
			got := byID[memberID].Credentials
			if c.wantFlags && (!got[p.ID] || len(got) != 1) {
				t.Errorf("GET members as %s: member's credentials = %v, want {%s: true}", name, got, p.ID)
			}
			if !c.wantFlags && (got != nil || strings.Contains(string(raw), `"credentials"`)) {
				t.Errorf("GET members as %s shows credential flags: %s", name, raw)
			}
			if byID[adminID].Credentials != nil {
				t.Errorf("GET members as %s: admin's credentials = %v, want none", name, byID[adminID].Credentials)
			}
		}
		resp, raw := e.do("GET", base, memberKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		resp, raw = e.do("GET", base, other.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound)

		add := func(key, email, role string) (*http.Response, []byte) {
			return e.do("POST", base, key, map[string]string{"email": email, "role": role})
		}
		for name, c := range map[string]struct{ key, email, role, code string }{
			"member adds":        {memberKey, "a@acme.test", "member", keybridge.EForbidden},
			"admin grants owner": {adminKey, "b@acme.test", "owner", keybridge.EForbidden},
			"bad role":           {adminKey, "c@acme.test", "root", keybridge.EInvalid},
			"bad email":          {adminKey, "not an email", "member", keybridge.EInvalid},
			"already a member":   {adminKey, e.Owner.Email, "member", keybridge.EConflict},
			"other org":          {other.OwnerKey, "d@acme.test", "member", keybridge.ENotFound},
		} {
			resp, raw := add(c.key, c.email, c.role)
			if resp.StatusCode == http.StatusCreated {
				t.Errorf("%s: 201", name)
				continue
			}
			wantError(t, resp, raw, c.code)
		}
		resp, raw = add(adminKey, "helper@acme.test", "admin")
		wantStatus(t, resp, raw, http.StatusCreated)
		resp, raw = add(e.OwnerKey, "second-owner@acme.test", "owner")
		wantStatus(t, resp, raw, http.StatusCreated)
		secondOwner := decodeAs[struct {
			UserID string `json:"user_id"`
		}](t, raw).UserID

		// Roles: owner changes need an owner; the last owner stays.
		patch := func(key, userID, role string) (*http.Response, []byte) {
			return e.do("PATCH", base+"/"+userID, key, map[string]string{"role": role})
		}
		resp, raw = patch(adminKey, secondOwner, "member")
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = patch(adminKey, memberID, "owner")
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = patch(memberKey, memberID, "admin")
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = patch(adminKey, other.Owner.ID, "member")
		wantError(t, resp, raw, keybridge.ENotFound)
		resp, raw = patch(adminKey, memberID, "boss")
		wantError(t, resp, raw, keybridge.EInvalid)
		resp, raw = patch(adminKey, memberID, "admin")
		wantStatus(t, resp, raw, http.StatusOK)
		if m := decodeAs[memberJSON](t, raw); m.Role != "admin" || m.UserID != memberID {
			t.Errorf("PATCH member = %s", raw)
		}
		resp, raw = patch(e.OwnerKey, secondOwner, "admin")
		wantStatus(t, resp, raw, http.StatusOK)
		resp, raw = patch(e.OwnerKey, e.Owner.ID, "admin")
		wantError(t, resp, raw, keybridge.EConflict)
		resp, raw = e.do("DELETE", base+"/"+e.Owner.ID, e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.EConflict)

		// Removal: an admin may remove a member, not an owner.
		resp, raw = e.do("DELETE", base+"/"+e.Owner.ID, adminKey, nil)
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("DELETE", base+"/"+other.Owner.ID, adminKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound)
		resp, raw = e.do("DELETE", base+"/"+memberID, adminKey, nil)
		wantStatus(t, resp, raw, http.StatusNoContent)
		if e.works(memberKey) {
			resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.Slug, memberKey, nil)
			if resp.StatusCode == http.StatusOK {
				t.Errorf("a removed member's key still reads the org: %s", raw)
			}
		}
		resp, raw = e.do("DELETE", base+"/"+memberID, adminKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound)

		// The removal revokes the member's key, in the same transaction.
		want := []string{"api_key.revoke", "member.delete", "member.update", "member.update", "member.create", "member.create"}
		if got := e.auditActions(e.Org.ID); !slices.Equal(got, want) {
			t.Errorf("audit actions = %v, want %v", got, want)
		}
	})
}

// TestLastOwnerUnderConcurrency has two owners demote each other at the same
// time, again and again: whatever the interleaving, the org keeps an owner.
func TestLastOwnerUnderConcurrency(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		base := "/api/v1/orgs/" + e.Org.Slug + "/members/"
		for round := 0; round < 5; round++ {
			otherID, otherKey := e.addMember(keybridge.RoleOwner)
			var wg sync.WaitGroup
			statuses := make([]int, 2)
			for i, c := range []struct{ key, target string }{{e.OwnerKey, otherID}, {otherKey, e.Owner.ID}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, _ := e.do("PATCH", base+c.target, c.key, map[string]string{"role": "admin"})
					statuses[i] = resp.StatusCode
				}()
			}
			wg.Wait()
			n, err := e.Store.CountOwners(ctx, e.Org.ID)
			if err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("round %d: statuses %v left %d owners, want 1", round, statuses, n)
			}
			// Put the first owner back in charge for the next round.
			m, err := e.Store.Membership(ctx, e.Org.ID, e.Owner.ID)
			if err != nil {
				t.Fatal(err)
			}
			if m.Role != keybridge.RoleOwner {
				m.Role = keybridge.RoleOwner
				if err := e.Store.UpdateMembership(ctx, m); err != nil {
					t.Fatal(err)
				}
				if err := e.Store.DeleteMembership(ctx, e.Org.ID, otherID); err != nil {
					t.Fatal(err)
				}
				if err := e.Store.Publish(ctx, store.Invalidation{Kind: store.InvalidateAll}); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

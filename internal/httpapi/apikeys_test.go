package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// keyJSON is a platform key as the API shows it.
type keyJSON struct {
	ID          string     `json:"id"`
	OrgID       string     `json:"org_id"`
	UserID      string     `json:"user_id"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Prefix      string     `json:"prefix"`
	Permissions []string   `json:"permissions"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	RevokedAt   *time.Time `json:"revoked_at"`
	GraceUntil  *time.Time `json:"grace_until"`
	RotatedFrom string     `json:"rotated_from"`
	RateLimit   int64      `json:"rate_limit_rpm"`
	Budget      int64      `json:"token_budget"`
	Period      string     `json:"budget_period"`
	Key         string     `json:"key"`
}

// newKey creates a platform key through the API with caller's credentials
// and fails the test unless it answers 201.
func (e *env) newKey(caller string, body map[string]any) keyJSON {
	e.t.Helper()
	if _, ok := body["name"]; !ok {
		body["name"] = "key " + fmt.Sprint(time.Now().UnixNano())
	}
	resp, raw := e.do("POST", "/api/v1/api-keys", caller, body)
	wantStatus(e.t, resp, raw, http.StatusCreated)
	k := decodeAs[keyJSON](e.t, raw)
	if !apikey.Valid(k.Key, apikey.PlatformPrefix) {
		e.t.Fatalf("created key %q is not a valid platform key", k.Key)
	}
	return k
}

// keyID returns the id of the key a token is, through GET /users/me.
func (e *env) keyID(token string) string {
	e.t.Helper()
	resp, raw := e.do("GET", "/api/v1/users/me", token, nil)
	wantStatus(e.t, resp, raw, http.StatusOK)
	me := decodeAs[struct {
		APIKey struct {
			ID string `json:"id"`
		} `json:"api_key"`
	}](e.t, raw)
	return me.APIKey.ID
}

// works reports whether token authenticates (GET /users/me is 200); any
// answer but 200 or 401 fails the test.
func (e *env) works(token string) bool {
	e.t.Helper()
	resp, raw := e.do("GET", "/api/v1/users/me", token, nil)
	switch resp.StatusCode {
	case http.StatusOK:
		return true
	case http.StatusUnauthorized:
		wantError(e.t, resp, raw, keybridge.EUnauthenticated)
		return false
	}
	e.t.Fatalf("GET /users/me = %d %s, want 200 or 401", resp.StatusCode, raw)
	return false
}

func TestAPIKeyLifecycle(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
		k := e.newKey(e.OwnerKey, map[string]any{
			"name": "ci", "description": "for CI", "permissions": []string{"gateway:invoke", "providers:read"},
			"expires_at": exp, "rate_limit_rpm": 60,
		})
		if k.OrgID != e.Org.ID || k.UserID != e.Owner.ID || k.Status != "active" || k.Name != "ci" || k.Description != "for CI" {
			t.Errorf("created key = %+v, want active ci in org %s of %s", k, e.Org.ID, e.Owner.ID)
		}
		if k.Prefix != k.Key[:12] {
			t.Errorf("prefix = %q, want the key's first 12 characters %q", k.Prefix, k.Key[:12])
		}
		if want := []string{"providers:read", "gateway:invoke"}; !slices.Equal(k.Permissions, want) {
			t.Errorf("permissions = %v, want %v", k.Permissions, want)
		}
		if k.ExpiresAt == nil || !k.ExpiresAt.Equal(exp) || k.RateLimit != 60 {
			t.Errorf("expires_at = %v, rate_limit_rpm = %d, want %v and 60", k.ExpiresAt, k.RateLimit, exp)
		}
		if !e.works(k.Key) {
			t.Fatal("a new key does not authenticate")
		}

		// Reads never hold the plaintext or the hash.
		resp, raw := e.do("GET", "/api/v1/api-keys", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if strings.Contains(string(raw), k.Key) || strings.Contains(string(raw), `"key"`) || strings.Contains(string(raw), `"hash"`) {
			t.Errorf("GET /api-keys shows a secret: %s", raw)
		}
		list := decodeAs[struct{ Items []keyJSON }](t, raw)
		if len(list.Items) != 2 || list.Items[0].ID != k.ID {
			t.Errorf("GET /api-keys = %d keys, first %v; want 2, newest (%s) first", len(list.Items), list.Items, k.ID)
		}
		resp, raw = e.do("GET", "/api/v1/api-keys/"+k.ID, e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if got := decodeAs[keyJSON](t, raw); got.ID != k.ID || got.Key != "" {
			t.Errorf("GET /api-keys/{id} = %s", raw)
		}

		// PATCH changes only what is sent.
		resp, raw = e.do("PATCH", "/api/v1/api-keys/"+k.ID, e.OwnerKey, map[string]any{
			"name": "ci-2", "permissions": []string{"gateway:invoke"}, "token_budget": 1000, "budget_period": "day", "expires_at": nil,
		})
		wantStatus(t, resp, raw, http.StatusOK)
		got := decodeAs[keyJSON](t, raw)
		if got.Name != "ci-2" || got.Description != "for CI" || !slices.Equal(got.Permissions, []string{"gateway:invoke"}) ||
			got.Budget != 1000 || got.Period != "day" || got.ExpiresAt != nil || got.RateLimit != 60 {
			t.Errorf("after PATCH = %s", raw)
		}
		// The key's new permissions hold at once: providers:read is gone.
		resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/members", k.Key, nil)
		wantStatus(t, resp, raw, http.StatusForbidden)

		steps := []struct {
			method, path string
			wantStatus   int
			wantState    string
			works        bool
		}{
			{"POST", "/suspend", 200, "suspended", false},
			{"POST", "/suspend", 200, "suspended", false},
			{"POST", "/reactivate", 200, "active", true},
			{"POST", "/revoke", 200, "revoked", false},
			{"POST", "/reactivate", 409, "revoked", false},
			{"POST", "/suspend", 409, "revoked", false},
			{"PATCH", "", 409, "revoked", false},
			{"POST", "/revoke", 200, "revoked", false},
			{"DELETE", "", 204, "revoked", false},
		}
		for _, st := range steps {
			var body any
			if st.method == "PATCH" {
				body = map[string]string{"name": "again"}
			}
			resp, raw := e.do(st.method, "/api/v1/api-keys/"+k.ID+st.path, e.OwnerKey, body)
			if st.wantStatus == 409 {
				wantError(t, resp, raw, keybridge.EConflict)
			} else {
				wantStatus(t, resp, raw, st.wantStatus)
			}
			resp, raw = e.do("GET", "/api/v1/api-keys/"+k.ID, e.OwnerKey, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			cur := decodeAs[keyJSON](t, raw)
			if cur.Status != st.wantState {
				t.Errorf("after %s %s: status = %q, want %q", st.method, st.path, cur.Status, st.wantState)
			}
			if (cur.Status == "revoked") != (cur.RevokedAt != nil) {
				t.Errorf("after %s %s: status %s with revoked_at %v", st.method, st.path, cur.Status, cur.RevokedAt)
			}
			if w := e.works(k.Key); w != st.works {
				t.Errorf("after %s %s: key works = %v, want %v", st.method, st.path, w, st.works)
			}
		}

		// Each change wrote its event, once; the no-op repeats wrote none.
		want := []string{"api_key.revoke", "api_key.reactivate", "api_key.suspend", "api_key.update", "api_key.create"}
		if got := e.auditActions(e.Org.ID); !slices.Equal(got, want) {
			t.Errorf("audit actions = %v, want %v", got, want)
		}
	})
}

func TestAPIKeyRotationAndExpiry(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		perms := []string{"gateway:invoke", "members:read"}
		now := e.newKey(e.OwnerKey, map[string]any{"permissions": perms, "rate_limit_tpm": 500})
		graceful := e.newKey(e.OwnerKey, map[string]any{"permissions": perms})
		expiring := e.newKey(e.OwnerKey, map[string]any{"permissions": perms, "expires_at": time.Now().Add(1500 * time.Millisecond)})

		resp, raw := e.do("POST", "/api/v1/api-keys/"+now.ID+"/rotate", e.OwnerKey, map[string]int{"grace_period_seconds": 0})
		wantStatus(t, resp, raw, http.StatusCreated)
		next := decodeAs[keyJSON](t, raw)
		if next.Key == "" || next.ID == now.ID || next.RotatedFrom != now.ID || next.Name != now.Name ||
			!slices.Equal(next.Permissions, now.Permissions) || next.RateLimit != now.RateLimit {
			t.Errorf("rotated key = %s, want the same settings as %+v with a new plaintext", raw, now)
		}
		if e.works(now.Key) {
			t.Error("a key rotated with no grace period still works")
		}
		if !e.works(next.Key) {
			t.Error("the rotated key's successor does not work")
		}
		resp, raw = e.do("POST", "/api/v1/api-keys/"+now.ID+"/rotate", e.OwnerKey, map[string]int{"grace_period_seconds": 0})
		wantError(t, resp, raw, keybridge.EConflict)

		resp, raw = e.do("POST", "/api/v1/api-keys/"+graceful.ID+"/rotate", e.OwnerKey, map[string]int{"grace_period_seconds": 1})
		wantStatus(t, resp, raw, http.StatusCreated)
		gnext := decodeAs[keyJSON](t, raw)
		if !e.works(graceful.Key) || !e.works(gnext.Key) {
			t.Fatal("during the grace period both keys must work")
		}
		if !e.works(expiring.Key) {
			t.Fatal("a key before its expires_at does not work")
		}
		time.Sleep(1600 * time.Millisecond)
		if e.works(graceful.Key) {
			t.Error("a rotated key still works after its grace period")
		}
		if !e.works(gnext.Key) {
			t.Error("the successor stopped working with the old key's grace period")
		}
		if e.works(expiring.Key) {
			t.Error("a key past its expires_at still works")
		}

		for _, bad := range []string{`{"grace_period_seconds": -1}`, `{"grace_period_seconds": 604801}`, `{}`, `{"grace_period_seconds": "60"}`} {
			resp, raw := e.do("POST", "/api/v1/api-keys/"+gnext.ID+"/rotate", e.OwnerKey, bad)
			wantError(t, resp, raw, keybridge.EInvalid)
		}
	})
}

func TestAPIKeyAuthFailures(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		unknown, _ := apikey.Generate(apikey.PlatformPrefix)
		tampered := []byte(e.OwnerKey)
		tampered[10] ^= 1
		for name, header := range map[string]string{
			"none":          "",
			"empty bearer":  "Bearer ",
			"other scheme":  "Basic " + e.OwnerKey,
			"tampered":      "Bearer " + string(tampered),
			"unknown":       "Bearer " + unknown,
			"not a key":     "Bearer hello",
			"ai key prefix": "Bearer kbs_" + e.OwnerKey[3:],
		} {
			resp, raw := e.send("GET", "/api/v1/users/me", nil, func(r *http.Request) {
				if header != "" {
					r.Header.Set("Authorization", header)
				}
			})
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s: status = %d, want 401", name, resp.StatusCode)
				continue
			}
			wantError(t, resp, raw, keybridge.EUnauthenticated)
		}
	})
}

func TestAPIKeyPermissions(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		memberID, memberKey := e.addMember(keybridge.RoleMember)
		adminID, adminKey := e.addMember(keybridge.RoleAdmin)
		member := e.login(e.userEmail(memberID), memberPassword)

		t.Run("create", func(t *testing.T) {
			for _, c := range []struct {
				name, caller string
				sess         *session
				body         string
				code         string
			}{
				{"unknown permission", e.OwnerKey, nil, `{"name":"x","permissions":["providers:read","root"]}`, keybridge.EInvalid},
				{"no permissions", e.OwnerKey, nil, `{"name":"x","permissions":[]}`, keybridge.EInvalid},
				{"permissions missing", e.OwnerKey, nil, `{"name":"x"}`, keybridge.EInvalid},
				{"no name", e.OwnerKey, nil, `{"permissions":["gateway:invoke"]}`, keybridge.EInvalid},
				{"past expiry", e.OwnerKey, nil, `{"name":"x","permissions":["gateway:invoke"],"expires_at":"2001-01-01T00:00:00Z"}`, keybridge.EInvalid},
				{"negative limit", e.OwnerKey, nil, `{"name":"x","permissions":["gateway:invoke"],"rate_limit_rpm":-1}`, keybridge.EInvalid},
				{"budget without period", e.OwnerKey, nil, `{"name":"x","permissions":["gateway:invoke"],"token_budget":5}`, keybridge.EInvalid},
				{"unknown org", e.OwnerKey, nil, `{"org":"nope","name":"x","permissions":["gateway:invoke"]}`, keybridge.ENotFound},
				{"member grants admin permission", "", member, `{"name":"x","permissions":["providers:write"]}`, keybridge.EForbidden},
				{"member key without api_keys:write", memberKey, nil, `{"name":"x","permissions":["gateway:invoke"]}`, keybridge.EForbidden},
			} {
				var resp *http.Response
				var raw []byte
				if c.sess != nil {
					resp, raw = c.sess.do("POST", "/api/v1/api-keys", c.body)
				} else {
					resp, raw = e.do("POST", "/api/v1/api-keys", c.caller, c.body)
				}
				if resp.StatusCode != httpapi.Status(c.code) {
					t.Errorf("%s: POST /api-keys = %d %s, want %s", c.name, resp.StatusCode, raw, c.code)
					continue
				}
				got := wantError(t, resp, raw, c.code)
				if c.code == keybridge.EInvalid && len(got.Error.Fields) == 0 {
					t.Errorf("%s: 400 names no field: %s", c.name, raw)
				}
			}
			// A member may create a key within its role, through its session.
			resp, raw := member.do("POST", "/api/v1/api-keys", map[string]any{"name": "mine", "permissions": []string{"gateway:invoke"}})
			wantStatus(t, resp, raw, http.StatusCreated)
		})

		ownerKeyID := e.keyID(e.OwnerKey)
		memberKeyID := e.keyID(memberKey)

		t.Run("visibility", func(t *testing.T) {
			// A member cannot see or touch another user's key.
			for _, path := range []string{"", "/suspend", "/revoke", "/reactivate"} {
				method := "POST"
				if path == "" {
					method = "GET"
				}
				resp, raw := e.do(method, "/api/v1/api-keys/"+ownerKeyID+path, memberKey, nil)
				wantError(t, resp, raw, keybridge.ENotFound)
			}
			resp, raw := e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/api-keys", memberKey, nil)
			wantError(t, resp, raw, keybridge.EForbidden)

			// Another org sees nothing of this one.
			other := e.otherOrg()
			resp, raw = e.do("GET", "/api/v1/api-keys/"+memberKeyID, other.OwnerKey, nil)
			wantError(t, resp, raw, keybridge.ENotFound)
			resp, raw = e.do("POST", "/api/v1/api-keys/"+memberKeyID+"/revoke", other.OwnerKey, nil)
			wantError(t, resp, raw, keybridge.ENotFound)
			resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.ID+"/api-keys", other.OwnerKey, nil)
			wantError(t, resp, raw, keybridge.ENotFound)
			resp, raw = e.do("POST", "/api/v1/api-keys", other.OwnerKey, map[string]any{"org": e.Org.Slug, "name": "x", "permissions": []string{"gateway:invoke"}})
			wantError(t, resp, raw, keybridge.ENotFound)
		})

		t.Run("admin", func(t *testing.T) {
			resp, raw := e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/api-keys", adminKey, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			var users []string
			for _, k := range decodeAs[struct{ Items []keyJSON }](t, raw).Items {
				users = append(users, k.UserID)
			}
			for _, id := range []string{e.Owner.ID, memberID, adminID} {
				if !slices.Contains(users, id) {
					t.Errorf("org key list has no key of %s: %v", id, users)
				}
			}
			// An admin may suspend, reactivate and revoke a member's key...
			for _, step := range []struct {
				path  string
				works bool
			}{{"/suspend", false}, {"/reactivate", true}} {
				resp, raw = e.do("POST", "/api/v1/api-keys/"+memberKeyID+step.path, adminKey, nil)
				wantStatus(t, resp, raw, http.StatusOK)
				if got := e.works(memberKey); got != step.works {
					t.Errorf("after an admin's %s the member key works = %v, want %v", step.path, got, step.works)
				}
			}
			// ...but not change or rotate it: it can see it, so 403.
			resp, raw = e.do("PATCH", "/api/v1/api-keys/"+memberKeyID, adminKey, map[string]string{"name": "mine now"})
			wantError(t, resp, raw, keybridge.EForbidden)
			resp, raw = e.do("POST", "/api/v1/api-keys/"+memberKeyID+"/rotate", adminKey, map[string]int{"grace_period_seconds": 0})
			wantError(t, resp, raw, keybridge.EForbidden)
			resp, raw = e.do("DELETE", "/api/v1/api-keys/"+memberKeyID, adminKey, nil)
			wantStatus(t, resp, raw, http.StatusNoContent)
			if e.works(memberKey) {
				t.Error("a key an admin revoked still works")
			}
		})

		t.Run("demotion", func(t *testing.T) {
			// A demoted admin's key loses the admin's power at once.
			resp, raw := e.do("PATCH", "/api/v1/orgs/"+e.Org.Slug+"/members/"+adminID, e.OwnerKey, map[string]string{"role": "member"})
			wantStatus(t, resp, raw, http.StatusOK)
			resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/api-keys", adminKey, nil)
			wantError(t, resp, raw, keybridge.EForbidden)
			resp, raw = e.do("GET", "/api/v1/users/me", adminKey, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			me := decodeAs[struct {
				APIKey struct {
					Permissions []string `json:"permissions"`
					Effective   []string `json:"effective_permissions"`
				} `json:"api_key"`
			}](t, raw)
			if len(me.APIKey.Permissions) != 10 || !slices.Equal(me.APIKey.Effective, keybridge.RoleMember.Permissions().Names()) {
				t.Errorf("demoted admin's key: permissions %v, effective %v; want all ten and the member's", me.APIKey.Permissions, me.APIKey.Effective)
			}
		})
	})
}

func TestAPIKeyOrgChoice(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		owner := e.login(e.Owner.Email, e.OwnerPassword)
		body := map[string]any{"name": "x", "permissions": []string{"gateway:invoke"}}
		// With one org, org may be left out.
		resp, raw := owner.do("POST", "/api/v1/api-keys", body)
		wantStatus(t, resp, raw, http.StatusCreated)
		resp, raw = owner.do("POST", "/api/v1/orgs", map[string]string{"slug": "second", "name": "Second"})
		wantStatus(t, resp, raw, http.StatusCreated)
		// With two, it is required...
		resp, raw = owner.do("POST", "/api/v1/api-keys", body)
		if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["org"] == "" {
			t.Errorf("400 does not name org: %s", raw)
		}
		// ...by id or slug.
		body["org"] = "second"
		resp, raw = owner.do("POST", "/api/v1/api-keys", body)
		wantStatus(t, resp, raw, http.StatusCreated)
		// A key is bound to its org: with the first org's key, the
		// second is not there.
		resp, raw = e.do("POST", "/api/v1/api-keys", e.OwnerKey, body)
		wantError(t, resp, raw, keybridge.ENotFound)
		// The session's list shows keys of both orgs; a key's, its org's only.
		resp, raw = owner.do("GET", "/api/v1/api-keys", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		orgs := map[string]bool{}
		for _, k := range decodeAs[struct{ Items []keyJSON }](t, raw).Items {
			orgs[k.OrgID] = true
		}
		if len(orgs) != 2 {
			t.Errorf("session's key list spans %d orgs, want 2", len(orgs))
		}
		resp, raw = e.do("GET", "/api/v1/api-keys", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		for _, k := range decodeAs[struct{ Items []keyJSON }](t, raw).Items {
			if k.OrgID != e.Org.ID {
				t.Errorf("a key's list shows a key of org %s", k.OrgID)
			}
		}
	})
}

func TestLeakedKeys(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		active := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
		suspended := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
		resp, raw := e.do("POST", "/api/v1/api-keys/"+suspended.ID+"/suspend", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		unknown, _ := apikey.Generate(apikey.PlatformPrefix)

		report := func(tokens ...string) []map[string]string {
			var out []map[string]string
			for _, tok := range tokens {
				out = append(out, map[string]string{"token": tok, "type": "keybridge_api_key",
					"url": "https://github.com/acme/app/blob/main/.env", "source": "content"})
			}
			return out
		}
		resp, realBody := e.do("POST", "/api/v1/leaked-keys", "", report(active.Key, suspended.Key, unknown, "kb_garbage"))
		wantStatus(t, resp, realBody, http.StatusOK)
		resp, fakeBody := e.do("POST", "/api/v1/leaked-keys", "", report(unknown, unknown, "kb_x", "nothing"))
		wantStatus(t, resp, fakeBody, http.StatusOK)
		if string(realBody) != string(fakeBody) {
			t.Errorf("answers differ for real (%s) and unknown (%s) tokens", realBody, fakeBody)
		}
		for _, k := range []keyJSON{active, suspended} {
			resp, raw := e.do("GET", "/api/v1/api-keys/"+k.ID, e.OwnerKey, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			if got := decodeAs[keyJSON](t, raw); got.Status != "revoked" {
				t.Errorf("leaked %s key: status = %s, want revoked", k.Status, got.Status)
			}
		}
		events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: e.Org.ID, Action: "api_key.revoke_leaked"}, store.Page{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(events) != 2 {
			t.Fatalf("%d api_key.revoke_leaked events, want 2", len(events))
		}
		for _, ev := range events {
			c, _ := json.Marshal(ev.Changes)
			if !strings.Contains(string(c), "https://github.com/acme/app/blob/main/.env") || strings.Contains(string(c), "kb_") {
				t.Errorf("leak event changes = %s, want the url and no token", c)
			}
			if ev.Actor.Type != keybridge.ActorSystem {
				t.Errorf("leak event actor = %+v, want the system", ev.Actor)
			}
		}
		// A second report of a revoked key changes nothing.
		resp, raw = e.do("POST", "/api/v1/leaked-keys", "", report(active.Key))
		wantStatus(t, resp, raw, http.StatusOK)
		if n := len(e.auditActions(e.Org.ID)); n != 5 {
			t.Errorf("%d audit events after a repeated report, want 5 (2 creates, a suspend, 2 leak revocations)", n)
		}

		for name, body := range map[string]any{
			"object":        `{"token":"x"}`,
			"unknown field": `[{"token":"x","extra":1}]`,
			"bad json":      `[{"token":`,
			"wrong type":    `[{"token":5}]`,
		} {
			resp, raw := e.do("POST", "/api/v1/leaked-keys", "", body)
			if resp.StatusCode != 400 {
				t.Errorf("%s: status = %d %s, want 400", name, resp.StatusCode, raw)
				continue
			}
			wantError(t, resp, raw, keybridge.EInvalid)
		}
		resp, raw = e.do("POST", "/api/v1/leaked-keys", "", report(make([]string, 101)...))
		wantError(t, resp, raw, keybridge.ETooLarge)

		// Rate limited per IP: within a few dozen requests, 429.
		limited := false
		for i := 0; i < 30 && !limited; i++ {
			resp, raw = e.do("POST", "/api/v1/leaked-keys", "", "[]")
			if resp.StatusCode == http.StatusTooManyRequests {
				wantError(t, resp, raw, keybridge.ERateLimited)
				limited = true
			}
		}
		if !limited {
			t.Error("30 leak reports from one IP were never rate limited")
		}
	})
}

func TestSessionCSRF(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		s := e.login(e.Owner.Email, e.OwnerPassword)
		body := map[string]any{"name": "x", "permissions": []string{"gateway:invoke"}}
		resp, raw := e.send("POST", "/api/v1/api-keys", body, func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: s.Cookie.Name, Value: s.Cookie.Value})
		})
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.send("POST", "/api/v1/api-keys", body, func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: s.Cookie.Name, Value: s.Cookie.Value})
			r.Header.Set("X-CSRF-Token", s.CSRF+"x")
		})
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = s.do("POST", "/api/v1/api-keys", body)
		wantStatus(t, resp, raw, http.StatusCreated)
		// Safe methods need no token.
		resp, raw = e.send("GET", "/api/v1/api-keys", nil, func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: s.Cookie.Name, Value: s.Cookie.Value})
		})
		wantStatus(t, resp, raw, http.StatusOK)
	})
}

// TestRotateExpiredKey checks that an expired key cannot be rotated: its
// successor would carry the same expiry and be born dead, while the
// answer said 201 with a fresh plaintext.
func TestRotateExpiredKey(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		k := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
		stored, err := e.Store.APIKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		past := time.Now().Add(-time.Minute).UTC()
		stored.ExpiresAt = &past
		if err := e.Store.UpdateAPIKey(ctx, stored); err != nil {
			t.Fatal(err)
		}
		resp, raw := e.do("POST", "/api/v1/api-keys/"+k.ID+"/rotate", e.OwnerKey, map[string]int{"grace_period_seconds": 0})
		wantError(t, resp, raw, keybridge.EConflict)
	})
}

// TestKeyAnswersShowEveryLimit checks that every answer holding a key, of
// either kind, shows all its limits even when it has none (SPEC §3): 0 for
// a limit, null for the budget period, [] for the model list.
func TestKeyAnswersShowEveryLimit(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	check := func(what string, body []byte, wantKeys int) {
		t.Helper()
		var one map[string]any
		if err := json.Unmarshal(body, &one); err != nil {
			t.Fatalf("%s: decode %s: %v", what, body, err)
		}
		keys := []any{one}
		if items, ok := one["items"].([]any); ok {
			keys = items
		}
		if len(keys) != wantKeys {
			t.Fatalf("%s: %d keys in %s, want %d", what, len(keys), body, wantKeys)
		}
		for _, k := range keys {
			k := k.(map[string]any)
			for _, f := range []string{"rate_limit_rpm", "rate_limit_tpm", "token_budget"} {
				if v, ok := k[f]; !ok || v != float64(0) {
					t.Errorf("%s: %s = %v (sent: %t), want 0 in %s", what, f, v, ok, body)
				}
			}
			if v, ok := k["budget_period"]; !ok || v != nil {
				t.Errorf("%s: budget_period = %v (sent: %t), want null in %s", what, v, ok, body)
			}
			if v, ok := k["allowed_models"].([]any); !ok || len(v) != 0 {
				t.Errorf("%s: allowed_models = %v, want [] in %s", what, k["allowed_models"], body)
			}
		}
	}
	call := func(method, path string, body any, want int) []byte {
		t.Helper()
		resp, raw := e.do(method, path, e.OwnerKey, body)
		wantStatus(t, resp, raw, want)
		return raw
	}

	created := call("POST", "/api/v1/api-keys", map[string]any{"name": "plain", "permissions": []string{"gateway:invoke"}}, http.StatusCreated)
	check("platform key create", created, 1)
	id := decodeAs[keyJSON](t, created).ID
	path := "/api/v1/api-keys/" + id
	check("platform key get", call("GET", path, nil, http.StatusOK), 1)
	check("platform key list", call("GET", "/api/v1/api-keys", nil, http.StatusOK), 2) // the owner's own key too
	check("org key list", call("GET", "/api/v1/orgs/"+e.Org.Slug+"/api-keys", nil, http.StatusOK), 2)
	check("platform key PATCH", call("PATCH", path, map[string]any{"name": "plain-2"}, http.StatusOK), 1)
	check("suspend", call("POST", path+"/suspend", nil, http.StatusOK), 1)
	check("reactivate", call("POST", path+"/reactivate", nil, http.StatusOK), 1)
	rotated := call("POST", path+"/rotate", map[string]any{"grace_period_seconds": 0}, http.StatusCreated)
	check("rotate", rotated, 1)
	check("revoke", call("POST", "/api/v1/api-keys/"+decodeAs[keyJSON](t, rotated).ID+"/revoke", nil, http.StatusOK), 1)

	p := e.pjCreate(e.Org, e.OwnerKey, "plain")
	keys := pjPath(e.Org, "/"+p.ID+"/ai-keys")
	created = call("POST", keys, map[string]any{"name": "plain", "ai_type": "OPENAI"}, http.StatusCreated)
	check("AI key list", call("GET", keys, nil, http.StatusOK), 1)
	check("AI key PATCH", call("PATCH", keys+"/"+decodeAs[pjCreated](t, created).ID, map[string]any{"name": "plain-2"}, http.StatusOK), 1)
}

// TestKeyAuditKeepsEmptyPeriod checks that the audit log records a budget
// period that is cleared as "", as it always has, although key answers
// show no period as null.
func TestKeyAuditKeepsEmptyPeriod(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	for _, kind := range e.keyKinds() {
		path := kind.create(e, map[string]any{"token_budget": 5, "budget_period": "day"})
		resp, body := e.do("PATCH", path, e.OwnerKey, `{"token_budget":null,"budget_period":null}`)
		wantStatus(t, resp, body, http.StatusOK)
		id := path[strings.LastIndex(path, "/")+1:]
		events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: e.Org.ID, ResourceID: id}, store.Page{Limit: store.MaxLimit})
		if err != nil {
			t.Fatalf("ListAuditEvents = %v", err)
		}
		var found bool
		for _, ev := range events {
			if !strings.HasSuffix(ev.Action, ".update") {
				continue
			}
			found = true
			if c := ev.Changes["budget_period"]; c.Old != "day" || c.New != "" {
				t.Errorf("%s: %s budget_period change = %#v, want day to \"\"", kind.name, ev.Action, c)
			}
		}
		if !found {
			t.Errorf("%s: no update event among %d", kind.name, len(events))
		}
	}
	p := e.pjCreate(e.Org, e.OwnerKey, "no budget")
	k := e.pjAIKey(e.Org, e.OwnerKey, p.ID, map[string]any{"name": "k", "ai_type": "OPENAI"})
	events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: e.Org.ID, ResourceID: k.ID}, store.Page{Limit: store.MaxLimit})
	if err != nil || len(events) != 1 {
		t.Fatalf("ListAuditEvents(new AI key) = %d events, %v; want its create", len(events), err)
	}
	if c, ok := events[0].Changes["budget_period"]; !ok || c.Old != nil || c.New != "" {
		t.Errorf("ai_key.create budget_period change = %#v (recorded: %t), want none to \"\"", c, ok)
	}
}

// A platform key's create event records the limits it was made with, as
// an AI key's does.
func TestKeyCreateAuditRecordsLimits(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	resp, body := e.do("POST", "/api/v1/api-keys", e.OwnerKey, `{"name":"limited","permissions":["gateway:invoke"],"rate_limit_rpm":5,"token_budget":100,"budget_period":"day"}`)
	wantStatus(t, resp, body, http.StatusCreated)
	id := decodeAs[keyJSON](t, body).ID
	events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: e.Org.ID, ResourceID: id}, store.Page{Limit: store.MaxLimit})
	if err != nil || len(events) != 1 || events[0].Action != "api_key.create" {
		t.Fatalf("ListAuditEvents = %+v, %v; want the key's create", events, err)
	}
	ch := events[0].Changes
	for name, want := range map[string]any{"rate_limit_rpm": 5.0, "token_budget": 100.0, "budget_period": "day"} {
		if c, ok := ch[name]; !ok || c.Old != nil || fmt.Sprint(c.New) != fmt.Sprint(want) {
			t.Errorf("api_key.create %s change = %#v (recorded: %t), want none to %v", name, c, ok, want)
		}
	}
	if _, ok := ch["rate_limit_tpm"]; ok {
		t.Errorf("api_key.create records rate_limit_tpm, which the key does not have")
	}
}

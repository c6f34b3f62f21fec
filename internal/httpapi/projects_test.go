package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// Tests of projects and AI keys (SPEC §5). Helpers are prefixed "pj".

type pjProject struct {
	ID          string    `json:"id"`
	OrgID       string    `json:"org_id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

type pjAIKey struct {
	ID           string     `json:"id"`
	ProjectID    string     `json:"project_id"`
	OrgID        string     `json:"org_id"`
	Name         string     `json:"name"`
	AIType       string     `json:"ai_type"`
	Key          string     `json:"key"`
	CreatedBy    string     `json:"created_by"`
	CreatedAt    time.Time  `json:"created_at"`
	LastUsedAt   *time.Time `json:"last_used_at"`
	DeletedAt    *time.Time `json:"deleted_at"`
	RateLimitRPM int64      `json:"rate_limit_rpm"`
	RateLimitTPM int64      `json:"rate_limit_tpm"`
	TokenBudget  int64      `json:"token_budget"`
	BudgetPeriod string     `json:"budget_period"`
}

type pjList[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
}

// pjCreated is the create answer of an AI key, exactly SPEC §5's fields.
type pjCreated struct {
	Success bool   `json:"success"`
	ID      string `json:"id"`
	Key     string `json:"key"`
	Secret  string `json:"secret"`
}

func pjPath(org *keybridge.Org, rest string) string {
	return "/api/v1/orgs/" + org.Slug + "/projects" + rest
}

func (e *env) pjCreate(org *keybridge.Org, key, name string) pjProject {
	e.t.Helper()
	resp, body := e.do("POST", pjPath(org, ""), key, map[string]any{"name": name, "description": "the " + name + " service"})
	wantStatus(e.t, resp, body, http.StatusCreated)
	return decodeAs[pjProject](e.t, body)
}

func (e *env) pjAIKey(org *keybridge.Org, key, projectID string, body map[string]any) pjCreated {
	e.t.Helper()
	resp, out := e.do("POST", pjPath(org, "/"+projectID+"/ai-keys"), key, body)
	wantStatus(e.t, resp, out, http.StatusCreated)
	var got pjCreated
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		e.t.Fatalf("create AI key answer %s is not {success, id, key, secret}: %v", out, err)
	}
	return got
}

// pjVerifies reports whether secret authenticates as an AI key, waiting up
// to a second for a change to reach the cache (SPEC: "at once", and every
// replica within a second).
func (e *env) pjVerifies(secret string, want bool) bool {
	deadline := time.Now().Add(time.Second)
	for {
		_, err := e.Auth.VerifyAISecret(context.Background(), secret)
		if (err == nil) == want || time.Now().After(deadline) {
			return err == nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProjects(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		_, memberKey := e.addMember(keybridge.RoleMember)
		other := e.otherOrg()

		// Admins write.
		resp, body := e.do("POST", pjPath(e.Org, ""), adminKey, map[string]any{"name": "web", "description": "the shop"})
		wantStatus(t, resp, body, http.StatusCreated)
		web := decodeAs[pjProject](t, body)
		if web.ID == "" || web.OrgID != e.Org.ID || web.Name != "web" || web.Description != "the shop" || web.CreatedAt.IsZero() {
			t.Errorf("created project = %+v", web)
		}
		e.pjCreate(e.Org, e.OwnerKey, "api")
		foreign := e.pjCreate(other.Org, other.OwnerKey, "theirs")

		// Members read.
		resp, body = e.do("GET", pjPath(e.Org, ""), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjList[pjProject]](t, body); len(got.Items) != 2 || got.Items[0].Name != "api" || got.Items[1].Name != "web" {
			t.Errorf("list = %+v, want api and web by name", got.Items)
		}
		resp, body = e.do("GET", pjPath(e.Org, "/"+web.ID), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjProject](t, body); got != web {
			t.Errorf("get = %+v, want %+v", got, web)
		}
		resp, body = e.do("GET", pjPath(e.Org, "?limit=1"), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		page1 := decodeAs[pjList[pjProject]](t, body)
		resp, body = e.do("GET", pjPath(e.Org, "?limit=1&cursor="+page1.NextCursor), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		page2 := decodeAs[pjList[pjProject]](t, body)
		if len(page1.Items) != 1 || page1.NextCursor == "" || len(page2.Items) != 1 || page2.Items[0].Name != "web" || page2.NextCursor != "" {
			t.Errorf("pages = %+v then %+v, want api then web", page1, page2)
		}

		for _, tc := range []struct {
			name, method, path, key string
			body                    any
			code                    string
		}{
			{"member may not create", "POST", pjPath(e.Org, ""), memberKey, map[string]any{"name": "x"}, keybridge.EForbidden},
			{"member may not update", "PATCH", pjPath(e.Org, "/"+web.ID), memberKey, map[string]any{"name": "x"}, keybridge.EForbidden},
			{"member may not delete", "DELETE", pjPath(e.Org, "/"+web.ID), memberKey, nil, keybridge.EForbidden},
			{"no credentials", "GET", pjPath(e.Org, ""), "", nil, keybridge.EUnauthenticated},
			{"a wrong key", "GET", pjPath(e.Org, ""), "kb_not-a-key", nil, keybridge.EUnauthenticated},
			{"another org's caller", "GET", pjPath(e.Org, ""), other.OwnerKey, nil, keybridge.ENotFound},
			{"another org's caller writing", "POST", pjPath(e.Org, ""), other.OwnerKey, map[string]any{"name": "x"}, keybridge.ENotFound},
			{"another org", "GET", pjPath(other.Org, ""), e.OwnerKey, nil, keybridge.ENotFound},
			{"a project of another org", "GET", pjPath(e.Org, "/"+foreign.ID), e.OwnerKey, nil, keybridge.ENotFound},
			{"updating a project of another org", "PATCH", pjPath(e.Org, "/"+foreign.ID), e.OwnerKey, map[string]any{"name": "x"}, keybridge.ENotFound},
			{"deleting a project of another org", "DELETE", pjPath(e.Org, "/"+foreign.ID), e.OwnerKey, nil, keybridge.ENotFound},
			{"an unknown project", "GET", pjPath(e.Org, "/01900000-0000-7000-8000-000000000000"), e.OwnerKey, nil, keybridge.ENotFound},
			{"an unknown org", "GET", "/api/v1/orgs/nope/projects", e.OwnerKey, nil, keybridge.ENotFound},
			{"no name", "POST", pjPath(e.Org, ""), adminKey, map[string]any{"description": "x"}, keybridge.EInvalid},
			{"blank name", "POST", pjPath(e.Org, ""), adminKey, map[string]any{"name": "  "}, keybridge.EInvalid},
			{"long description", "POST", pjPath(e.Org, ""), adminKey, map[string]any{"name": "x", "description": strings.Repeat("d", 1001)}, keybridge.EInvalid},
			{"unknown field", "POST", pjPath(e.Org, ""), adminKey, map[string]any{"name": "x", "colour": "red"}, keybridge.EInvalid},
			{"not JSON", "POST", pjPath(e.Org, ""), adminKey, "{", keybridge.EInvalid},
			{"too large", "POST", pjPath(e.Org, ""), adminKey, `{"name": "x", "description": "` + strings.Repeat("d", 1<<20) + `"}`, keybridge.ETooLarge},
			{"a used name", "POST", pjPath(e.Org, ""), adminKey, map[string]any{"name": "web"}, keybridge.EConflict},
			{"renaming to a used name", "PATCH", pjPath(e.Org, "/"+web.ID), adminKey, map[string]any{"name": "api"}, keybridge.EConflict},
			{"an empty update", "PATCH", pjPath(e.Org, "/"+web.ID), adminKey, map[string]any{}, keybridge.EInvalid},
			{"a blank rename", "PATCH", pjPath(e.Org, "/"+web.ID), adminKey, map[string]any{"name": ""}, keybridge.EInvalid},
			{"a bad limit", "GET", pjPath(e.Org, "?limit=0"), adminKey, nil, keybridge.EInvalid},
			{"a bad cursor", "GET", pjPath(e.Org, "?cursor=zzz"), adminKey, nil, keybridge.EInvalid},
		} {
			resp, body := e.do(tc.method, tc.path, tc.key, tc.body)
			if got := wantError(t, resp, body, tc.code); t.Failed() {
				t.Logf("case %q: %+v", tc.name, got)
			}
		}

		// A session needs its CSRF token to write.
		s := e.login(e.Owner.Email, e.OwnerPassword)
		resp, body = e.send("POST", pjPath(e.Org, ""), map[string]any{"name": "csrf"}, func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: s.Cookie.Name, Value: s.Cookie.Value})
		})
		wantError(t, resp, body, keybridge.EForbidden)
		resp, body = s.do("POST", pjPath(e.Org, ""), map[string]any{"name": "from-the-ui"})
		wantStatus(t, resp, body, http.StatusCreated)

		resp, body = e.do("PATCH", pjPath(e.Org, "/"+web.ID), adminKey, map[string]any{"name": "storefront"})
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjProject](t, body); got.Name != "storefront" || got.Description != "the shop" || got.UpdatedAt.Before(web.UpdatedAt) {
			t.Errorf("updated project = %+v, want renamed with the description kept", got)
		}

		resp, body = e.do("DELETE", pjPath(e.Org, "/"+web.ID), adminKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		resp, body = e.do("GET", pjPath(e.Org, "/"+web.ID), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		resp, body = e.do("DELETE", pjPath(e.Org, "/"+web.ID), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		// The name is free again.
		e.pjCreate(e.Org, e.OwnerKey, "storefront")

		actions := e.auditActions(e.Org.ID)
		for _, want := range []string{"project.create", "project.update", "project.delete"} {
			if !slices.Contains(actions, want) {
				t.Errorf("audit actions %v lack %s", actions, want)
			}
		}
		if got := e.auditActions(other.Org.ID); slices.Contains(got, "project.update") {
			t.Errorf("the other org's log holds this org's events: %v", got)
		}
	})
}

func TestAIKeys(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		_, memberKey := e.addMember(keybridge.RoleMember)
		other := e.otherOrg()
		web := e.pjCreate(e.Org, e.OwnerKey, "web")
		api := e.pjCreate(e.Org, e.OwnerKey, "api")
		foreign := e.pjCreate(other.Org, other.OwnerKey, "theirs")
		keysOf := func(p pjProject, rest string) string { return pjPath(e.Org, "/"+p.ID+"/ai-keys"+rest) }

		created := e.pjAIKey(e.Org, adminKey, web.ID, map[string]any{"name": "ci", "ai_type": "OPENAI",
			"rate_limit_rpm": 60, "token_budget": 100000, "budget_period": "month"})
		if !created.Success || created.ID == "" || !apikey.Valid(created.Key, apikey.AIKeyPrefix) || !apikey.Valid(created.Secret, apikey.AISecretPrefix) {
			t.Fatalf("create answer = %+v, want success, an id, a kbk_ key and a kbs_ secret", created)
		}
		second := e.pjAIKey(e.Org, e.OwnerKey, web.ID, map[string]any{"name": "bot", "ai_type": "ANTHROPIC"})
		if second.Key == created.Key || second.Secret == created.Secret {
			t.Errorf("two keys share a key or a secret")
		}
		var bodies []string // every answer but the create ones
		do := func(method, path, key string, body any) (*http.Response, []byte) {
			resp, out := e.do(method, path, key, body)
			bodies = append(bodies, string(out))
			return resp, out
		}

		// Members read, without secrets.
		resp, body := do("GET", keysOf(web, ""), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		list := decodeAs[pjList[pjAIKey]](t, body)
		if len(list.Items) != 2 || list.Items[0].ID != second.ID || list.Items[1].ID != created.ID {
			t.Fatalf("list = %+v, want the two keys newest first", list.Items)
		}
		ci := list.Items[1]
		if ci.ProjectID != web.ID || ci.Name != "ci" || ci.AIType != "OPENAI" || ci.Key != created.Key || ci.CreatedBy == "" ||
			ci.RateLimitRPM != 60 || ci.TokenBudget != 100000 || ci.BudgetPeriod != "month" || ci.DeletedAt != nil {
			t.Errorf("listed key = %+v", ci)
		}
		var raw map[string]any
		json.Unmarshal(body, &raw)
		for _, k := range raw["items"].([]any) {
			for _, f := range []string{"id", "project_id", "name", "ai_type", "key", "created_by", "created_at", "last_used_at", "deleted_at"} {
				if _, ok := k.(map[string]any)[f]; !ok {
					t.Errorf("listed key lacks %q: %v", f, k)
				}
			}
			for _, f := range []string{"secret", "secret_hash", "hash"} {
				if _, ok := k.(map[string]any)[f]; ok {
					t.Errorf("listed key has %q: %v", f, k)
				}
			}
		}

		resp, body = do("PATCH", keysOf(web, "/"+created.ID), adminKey, map[string]any{"name": "ci-main", "rate_limit_tpm": 5000})
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjAIKey](t, body); got.Name != "ci-main" || got.RateLimitTPM != 5000 || got.RateLimitRPM != 60 {
			t.Errorf("updated key = %+v, want renamed, tpm set, rpm kept", got)
		}

		for _, tc := range []struct {
			name, method, path, key string
			body                    any
			code, field             string
		}{
			{"member may not create", "POST", keysOf(web, ""), memberKey, map[string]any{"name": "x", "ai_type": "OPENAI"}, keybridge.EForbidden, ""},
			{"member may not update", "PATCH", keysOf(web, "/"+created.ID), memberKey, map[string]any{"name": "x"}, keybridge.EForbidden, ""},
			{"member may not delete", "DELETE", keysOf(web, "/"+created.ID), memberKey, nil, keybridge.EForbidden, ""},
			{"no credentials", "POST", keysOf(web, ""), "", map[string]any{"name": "x", "ai_type": "OPENAI"}, keybridge.EUnauthenticated, ""},
			{"an AI secret is not a management credential", "GET", keysOf(web, ""), created.Secret, nil, keybridge.EUnauthenticated, ""},
			{"another org's caller", "GET", keysOf(web, ""), other.OwnerKey, nil, keybridge.ENotFound, ""},
			{"a project of another org", "GET", pjPath(e.Org, "/"+foreign.ID+"/ai-keys"), e.OwnerKey, nil, keybridge.ENotFound, ""},
			{"creating in a project of another org", "POST", pjPath(e.Org, "/"+foreign.ID+"/ai-keys"), e.OwnerKey, map[string]any{"name": "x", "ai_type": "OPENAI"}, keybridge.ENotFound, ""},
			{"a key of another project", "PATCH", keysOf(api, "/"+created.ID), e.OwnerKey, map[string]any{"name": "x"}, keybridge.ENotFound, ""},
			{"deleting a key of another project", "DELETE", keysOf(api, "/"+created.ID), e.OwnerKey, nil, keybridge.ENotFound, ""},
			{"an unknown key", "DELETE", keysOf(web, "/01900000-0000-7000-8000-000000000000"), e.OwnerKey, nil, keybridge.ENotFound, ""},
			{"lowercase ai_type", "POST", keysOf(web, ""), adminKey, map[string]any{"name": "x", "ai_type": "openai"}, keybridge.EInvalid, "ai_type"},
			{"unknown ai_type", "POST", keysOf(web, ""), adminKey, map[string]any{"name": "x", "ai_type": "AZURE"}, keybridge.EInvalid, "ai_type"},
			{"no ai_type", "POST", keysOf(web, ""), adminKey, map[string]any{"name": "x"}, keybridge.EInvalid, "ai_type"},
			{"no name", "POST", keysOf(web, ""), adminKey, map[string]any{"ai_type": "GOOGLE"}, keybridge.EInvalid, "name"},
			{"negative limit", "POST", keysOf(web, ""), adminKey, map[string]any{"name": "x", "ai_type": "AWS", "rate_limit_rpm": -1}, keybridge.EInvalid, "rate_limit_rpm"},
			{"budget without period", "POST", keysOf(web, ""), adminKey, map[string]any{"name": "x", "ai_type": "OTHER", "token_budget": 5}, keybridge.EInvalid, "budget_period"},
			{"a secret cannot be chosen", "POST", keysOf(web, ""), adminKey, map[string]any{"name": "x", "ai_type": "OTHER", "secret": "kbs_mine"}, keybridge.EInvalid, "secret"},
			{"an empty update", "PATCH", keysOf(web, "/"+created.ID), adminKey, map[string]any{}, keybridge.EInvalid, ""},
			{"a bad period", "PATCH", keysOf(web, "/"+created.ID), adminKey, map[string]any{"budget_period": "week"}, keybridge.EInvalid, "budget_period"},
			{"ai_type cannot change", "PATCH", keysOf(web, "/"+created.ID), adminKey, map[string]any{"ai_type": "GOOGLE"}, keybridge.EInvalid, "ai_type"},
			{"a bad include_deleted", "GET", keysOf(web, "?include_deleted=maybe"), adminKey, nil, keybridge.EInvalid, "include_deleted"},
		} {
			resp, body := do(tc.method, tc.path, tc.key, tc.body)
			got := wantError(t, resp, body, tc.code)
			if _, ok := got.Error.Fields[tc.field]; tc.field != "" && !ok {
				t.Errorf("case %q: fields %v, want one for %q", tc.name, got.Error.Fields, tc.field)
			}
		}

		// The secret works, until its key is deleted.
		if !e.pjVerifies(created.Secret, true) {
			t.Fatal("the new AI key's secret does not verify")
		}
		p, err := e.Auth.VerifyAISecret(context.Background(), created.Secret)
		if err == nil && (p.ProjectID != web.ID || p.AIType != keybridge.AIOpenAI || p.Type != keybridge.ActorAIKey) {
			t.Errorf("AI key principal = %+v, want project %s, OPENAI", p, web.ID)
		}
		resp, body = do("DELETE", keysOf(web, "/"+created.ID), adminKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		if e.pjVerifies(created.Secret, false) {
			t.Error("a deleted AI key's secret still verifies")
		}
		resp, body = do("DELETE", keysOf(web, "/"+created.ID), adminKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		resp, body = do("PATCH", keysOf(web, "/"+created.ID), adminKey, map[string]any{"name": "again"})
		wantError(t, resp, body, keybridge.ENotFound)
		resp, body = do("GET", keysOf(web, ""), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjList[pjAIKey]](t, body); len(got.Items) != 1 || got.Items[0].ID != second.ID {
			t.Errorf("list after delete = %+v, want only the live key", got.Items)
		}
		resp, body = do("GET", keysOf(web, "?include_deleted=true"), memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjList[pjAIKey]](t, body); len(got.Items) != 2 || got.Items[1].DeletedAt == nil {
			t.Errorf("list with deleted = %+v, want both, the deleted one with deleted_at", got.Items)
		}

		// Deleting the project stops its other keys at once.
		if !e.pjVerifies(second.Secret, true) {
			t.Fatal("the second key's secret does not verify")
		}
		resp, body = do("DELETE", pjPath(e.Org, "/"+web.ID), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		if e.pjVerifies(second.Secret, false) {
			t.Error("an AI key of a deleted project still verifies")
		}
		resp, body = do("GET", keysOf(web, ""), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)

		// The log has each change, with its actor and never a secret.
		events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: e.Org.ID, ResourceType: "ai_key"}, store.Page{Limit: store.MaxLimit})
		if err != nil {
			t.Fatalf("ListAuditEvents = %v", err)
		}
		var actions []string
		for _, ev := range events {
			actions = append(actions, ev.Action)
			if ev.Actor.ID == "" || ev.RequestID == "" {
				t.Errorf("event %s has actor %+v, request id %q", ev.Action, ev.Actor, ev.RequestID)
			}
		}
		slices.Sort(actions)
		if want := []string{"ai_key.create", "ai_key.create", "ai_key.delete", "ai_key.delete", "ai_key.update"}; !slices.Equal(actions, want) {
			t.Errorf("AI key events = %v, want %v", actions, want)
		}
		resp, body = do("GET", "/api/v1/orgs/"+e.Org.Slug+"/audit-events?limit=500", e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)

		// No secret anywhere but in its create answer.
		for _, secret := range []string{created.Secret, second.Secret} {
			for _, b := range bodies {
				if strings.Contains(b, secret) {
					t.Errorf("an answer other than the create one holds an AI key secret: %s", b)
				}
			}
			if strings.Contains(e.logs(), secret) {
				t.Error("the server's log holds an AI key secret")
			}
		}
	})
}

// TestAIKeySecretAtRest looks for an AI key secret in everything the
// database holds: the SQLite files byte for byte (WAL included), and every
// row of every table of the PostgreSQL schema. The public key is looked
// for too, so the search is known to see the data.
func TestAIKeySecretAtRest(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.pjCreate(e.Org, e.OwnerKey, "web")
		k := e.pjAIKey(e.Org, e.OwnerKey, p.ID, map[string]any{"name": "ci", "ai_type": "OPENAI"})
		resp, body := e.do("DELETE", pjPath(e.Org, "/"+p.ID+"/ai-keys/"+k.ID), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		dump := pjDump(t, e)
		if !strings.Contains(dump, k.Key) {
			t.Fatalf("the database dump (%d bytes) does not even hold the public key: the search sees nothing", len(dump))
		}
		if strings.Contains(dump, k.Secret) {
			t.Error("the database holds an AI key secret in plain text")
		}
		if strings.Contains(dump, k.Secret[len(apikey.AISecretPrefix):]) {
			t.Error("the database holds the body of an AI key secret")
		}
	})
}

// pjDump returns what the test's database holds, as text.
func pjDump(t *testing.T, e *env) string {
	t.Helper()
	db := storetest.RawOf(t, e.Store)
	var b strings.Builder
	if e.Engine == "sqlite" {
		var path string
		if err := db.DB.QueryRow(`SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&path); err != nil {
			t.Fatalf("find the SQLite file: %v", err)
		}
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			if data, err := os.ReadFile(f); err == nil {
				b.Write(data)
			} else if !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("read %s: %v", f, err)
			}
		}
		return b.String()
	}
	rows, err := db.DB.Query(`SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var tables []string
	for rows.Next() {
		var name string
		rows.Scan(&name)
		tables = append(tables, name)
	}
	rows.Close()
	for _, table := range tables {
		rows, err := db.DB.Query(`SELECT t::text FROM ` + table + ` t`)
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		for rows.Next() {
			var row string
			rows.Scan(&row)
			b.WriteString(row + "\n")
		}
		rows.Close()
	}
	return b.String()
}

// TestProjectsHiddenBeforeForbidden checks the order of the answers to a
// member who may read projects but not write them: what does not exist in
// the org (a project of another org, an unknown AI key) is 404, as for an
// admin; only what the member can see is 403.
func TestProjectsHiddenBeforeForbidden(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, memberKey := e.addMember(keybridge.RoleMember)
		other := e.otherOrg()
		web := e.pjCreate(e.Org, e.OwnerKey, "web")
		foreign := e.pjCreate(other.Org, other.OwnerKey, "theirs")
		unknown := "01900000-0000-7000-8000-000000000000"
		for _, tc := range []struct {
			method, path string
			body         any
			code         string
		}{
			{"PATCH", pjPath(e.Org, "/"+foreign.ID), map[string]any{"name": "x"}, keybridge.ENotFound},
			{"DELETE", pjPath(e.Org, "/"+foreign.ID), nil, keybridge.ENotFound},
			{"DELETE", pjPath(e.Org, "/"+unknown), nil, keybridge.ENotFound},
			{"POST", pjPath(e.Org, "/"+foreign.ID+"/ai-keys"), map[string]any{"name": "x", "ai_type": "OPENAI"}, keybridge.ENotFound},
			{"DELETE", pjPath(e.Org, "/"+unknown+"/ai-keys/"+unknown), nil, keybridge.ENotFound},
			{"PATCH", pjPath(e.Org, "/"+web.ID), map[string]any{"name": "x"}, keybridge.EForbidden},
			{"DELETE", pjPath(e.Org, "/"+web.ID), nil, keybridge.EForbidden},
			{"POST", pjPath(e.Org, "/"+web.ID+"/ai-keys"), map[string]any{"name": "x", "ai_type": "OPENAI"}, keybridge.EForbidden},
		} {
			resp, body := e.do(tc.method, tc.path, memberKey, tc.body)
			if resp.StatusCode != httpStatus(tc.code) {
				t.Errorf("member %s %s = %d %s, want %s", tc.method, tc.path, resp.StatusCode, body, tc.code)
			}
		}
	})
}

func httpStatus(code string) int {
	if code == keybridge.ENotFound {
		return http.StatusNotFound
	}
	return http.StatusForbidden
}

// An AWS key's secret is sealed bound to its row, for SigV4; every key's
// secret, AWS included, stays a bearer token.
func TestAWSAIKeySealsItsSecret(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		p := e.pjCreate(e.Org, e.OwnerKey, "bedrock")
		aws := e.pjAIKey(e.Org, e.OwnerKey, p.ID, map[string]any{"name": "sdk", "ai_type": "AWS"})
		other := e.pjAIKey(e.Org, e.OwnerKey, p.ID, map[string]any{"name": "openai", "ai_type": "OPENAI"})

		k, err := e.Store.AIKeyByKey(ctx, aws.Key)
		if err != nil {
			t.Fatalf("AIKeyByKey(AWS key) = %v", err)
		}
		if k.ID != aws.ID || len(k.SecretSealed) == 0 {
			t.Fatalf("stored AWS key %s has %d bytes of sealed secret, want key %s with some", k.ID, len(k.SecretSealed), aws.ID)
		}
		if strings.Contains(string(k.SecretSealed), aws.Secret) {
			t.Errorf("the sealed secret holds the plaintext")
		}
		plain, err := e.Ring.Open(k.SecretSealed, keybridge.SealedAIKeySecret.AD(k.ID))
		if err != nil || string(plain) != aws.Secret {
			t.Errorf("Open(sealed secret) = %v; want the secret the create answer showed", err)
		}
		if _, err := e.Ring.Open(k.SecretSealed, keybridge.SealedAIKeySecret.AD(other.ID)); err == nil {
			t.Errorf("the sealed secret opens bound to another row")
		}
		o, err := e.Store.AIKeyByKey(ctx, other.Key)
		if err != nil || len(o.SecretSealed) != 0 {
			t.Errorf("AIKeyByKey(OPENAI key) = %d bytes of sealed secret, %v; want none", len(o.SecretSealed), err)
		}
		if !e.pjVerifies(aws.Secret, true) || !e.pjVerifies(other.Secret, true) {
			t.Errorf("the AWS and OPENAI secrets must both work as bearer tokens")
		}
	})
}

// keyLimitsJSON is what a key of either kind shows of its name, limits and
// model allowlist.
type keyLimitsJSON struct {
	Name          string   `json:"name"`
	RateLimitRPM  int64    `json:"rate_limit_rpm"`
	RateLimitTPM  int64    `json:"rate_limit_tpm"`
	TokenBudget   int64    `json:"token_budget"`
	BudgetPeriod  *string  `json:"budget_period"`
	AllowedModels []string `json:"allowed_models"`
}

// keyKind is one kind of key, made and read through the API.
type keyKind struct {
	name string
	// createPath is where a key is created, with base and its limits as
	// the body; the key is then at createPath/{id}.
	createPath string
	base       map[string]any
	// read returns the key at path as the API then lists it.
	read func(path string) []byte
	// store writes lim onto the key at path behind the API's back, as
	// rows written by earlier versions may hold it.
	store func(path string, lim keybridge.Limits)
}

// body is a create body for this kind with limits.
func (k keyKind) body(limits map[string]any) map[string]any {
	body := map[string]any{}
	for _, m := range []map[string]any{k.base, limits} {
		for f, v := range m {
			body[f] = v
		}
	}
	return body
}

// create makes a key of this kind with limits and returns its path.
func (k keyKind) create(e *env, limits map[string]any) string {
	e.t.Helper()
	resp, body := e.do("POST", k.createPath, e.OwnerKey, k.body(limits))
	wantStatus(e.t, resp, body, http.StatusCreated)
	return k.createPath + "/" + decodeAs[struct{ ID string }](e.t, body).ID
}

// keyKinds are platform keys and AI keys, which take the same limits.
func (e *env) keyKinds() []keyKind {
	e.t.Helper()
	p := e.pjCreate(e.Org, e.OwnerKey, "limits")
	aiKeys := pjPath(e.Org, "/"+p.ID+"/ai-keys")
	return []keyKind{{
		name:       "platform key",
		createPath: "/api/v1/api-keys",
		base:       map[string]any{"name": "k", "permissions": []string{"gateway:invoke"}},
		read: func(path string) []byte {
			resp, body := e.do("GET", path, e.OwnerKey, nil)
			wantStatus(e.t, resp, body, http.StatusOK)
			return body
		},
		store: func(path string, lim keybridge.Limits) {
			k, err := e.Store.APIKey(context.Background(), path[strings.LastIndex(path, "/")+1:])
			if err != nil {
				e.t.Fatalf("APIKey = %v", err)
			}
			k.Limits = lim
			if err := e.Store.UpdateAPIKey(context.Background(), k); err != nil {
				e.t.Fatalf("UpdateAPIKey = %v", err)
			}
		},
	}, {
		name:       "AI key",
		createPath: aiKeys,
		base:       map[string]any{"name": "k", "ai_type": "OPENAI"},
		read: func(path string) []byte {
			resp, body := e.do("GET", aiKeys, e.OwnerKey, nil)
			wantStatus(e.t, resp, body, http.StatusOK)
			var list pjList[json.RawMessage]
			if err := json.Unmarshal(body, &list); err != nil {
				e.t.Fatalf("decode AI key list %s: %v", body, err)
			}
			for _, k := range list.Items {
				if id := decodeAs[pjAIKey](e.t, k).ID; strings.HasSuffix(path, "/"+id) {
					return k
				}
			}
			e.t.Fatalf("AI key %s is not listed: %s", path, body)
			return nil
		},
		store: func(path string, lim keybridge.Limits) {
			k, err := e.Store.AIKey(context.Background(), p.ID, path[strings.LastIndex(path, "/")+1:])
			if err != nil {
				e.t.Fatalf("AIKey = %v", err)
			}
			k.Limits = lim
			if err := e.Store.UpdateAIKey(context.Background(), k); err != nil {
				e.t.Fatalf("UpdateAIKey = %v", err)
			}
		},
	}}
}

// TestKeyPeriodNeedsBudget checks that neither kind of key is created
// with a budget period but no budget, which limits nothing and most
// likely forgot the budget, and that a key which holds one anyway is not
// stuck with it.
func TestKeyPeriodNeedsBudget(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	for _, kind := range e.keyKinds() {
		for _, limits := range []map[string]any{
			{"budget_period": "day"},
			{"token_budget": 0, "budget_period": "month"},
			{"token_budget": nil, "budget_period": "day", "rate_limit_rpm": 5},
		} {
			resp, body := e.do("POST", kind.createPath, e.OwnerKey, kind.body(limits))
			wantInvalidField(t, resp, body, "budget_period")
		}
		path := kind.create(e, map[string]any{"token_budget": 10, "budget_period": "day"})
		if got := decodeAs[keyLimitsJSON](t, kind.read(path)); got.TokenBudget != 10 || got.BudgetPeriod == nil || *got.BudgetPeriod != "day" {
			t.Errorf("%s with a budget and its period = %+v, want 10 a day", kind.name, got)
		}

		// A key that holds a period without a budget, as earlier versions
		// let one be made, can still be changed, and loses the period.
		kind.store(path, keybridge.Limits{RateLimitRPM: 5, BudgetPeriod: keybridge.BudgetDay})
		resp, body := e.do("PATCH", path, e.OwnerKey, map[string]any{"name": "renamed"})
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[keyLimitsJSON](t, kind.read(path)); got.Name != "renamed" || got.RateLimitRPM != 5 || got.BudgetPeriod != nil {
			t.Errorf("%s with a stray period, renamed = %+v, want renamed, rpm 5 and no period", kind.name, got)
		}
	}
}

// TestKeyPatchLimits checks that a PATCH of an AI key reads the limits and
// allowed_models as a PATCH of a platform key does: null sets a limit to 0
// and allows every model, omitted fields stay, and the same bodies are
// refused naming the same field.
func TestKeyPatchLimits(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	limits := map[string]any{"rate_limit_rpm": 60, "rate_limit_tpm": 6000, "token_budget": 1000, "budget_period": "day",
		"allowed_models": []string{"gpt-4o"}}
	day := "day"
	kept := keyLimitsJSON{RateLimitRPM: 60, RateLimitTPM: 6000, TokenBudget: 1000, BudgetPeriod: &day, AllowedModels: []string{"gpt-4o"}}
	with := func(change func(*keyLimitsJSON)) keyLimitsJSON {
		l := kept
		change(&l)
		return l
	}
	cases := []struct {
		name, body string
		want       keyLimitsJSON  // Name "": the key keeps its name
		field      string         // a 400 naming this field
		start      map[string]any // the key's limits before; nil: limits
	}{
		{"rpm null", `{"rate_limit_rpm":null}`, with(func(l *keyLimitsJSON) { l.RateLimitRPM = 0 }), "", nil},
		{"tpm null and a name", `{"rate_limit_tpm":null,"name":"renamed"}`, with(func(l *keyLimitsJSON) { l.RateLimitTPM, l.Name = 0, "renamed" }), "", nil},
		{"budget and period null", `{"token_budget":null,"budget_period":null}`, with(func(l *keyLimitsJSON) { l.TokenBudget, l.BudgetPeriod = 0, nil }), "", nil},
		{"allowed_models null", `{"allowed_models":null}`, with(func(l *keyLimitsJSON) { l.AllowedModels = []string{} }), "", nil},
		{"allowed_models empty", `{"allowed_models":[]}`, with(func(l *keyLimitsJSON) { l.AllowedModels = []string{} }), "", nil},
		{"limits 0", `{"rate_limit_rpm":0,"rate_limit_tpm":0}`, with(func(l *keyLimitsJSON) { l.RateLimitRPM, l.RateLimitTPM = 0, 0 }), "", nil},
		{"new values", `{"rate_limit_rpm":5,"token_budget":7,"budget_period":"month","allowed_models":["claude-*"]}`,
			with(func(l *keyLimitsJSON) {
				month := "month"
				l.RateLimitRPM, l.TokenBudget, l.BudgetPeriod, l.AllowedModels = 5, 7, &month, []string{"claude-*"}
			}), "", nil},
		{"the period of a budget null", `{"budget_period":null}`, keyLimitsJSON{}, "budget_period", nil},
		{"name null", `{"name":null,"rate_limit_rpm":5}`, keyLimitsJSON{}, "name", nil},
		{"a negative limit", `{"rate_limit_tpm":-1}`, keyLimitsJSON{}, "rate_limit_tpm", nil},
		{"a bad list", `{"allowed_models":["a*b"]}`, keyLimitsJSON{}, "allowed_models", nil},

		// A period belongs to its budget: clearing the budget clears it,
		// and a period without a budget is refused.
		{"budget null", `{"token_budget":null}`, with(func(l *keyLimitsJSON) { l.TokenBudget, l.BudgetPeriod = 0, nil }), "", nil},
		{"budget 0", `{"token_budget":0}`, with(func(l *keyLimitsJSON) { l.TokenBudget, l.BudgetPeriod = 0, nil }), "", nil},
		{"budget null, a period sent", `{"token_budget":null,"budget_period":"month"}`, keyLimitsJSON{}, "budget_period", nil},
		{"a period for a key without a budget", `{"budget_period":"day"}`, keyLimitsJSON{}, "budget_period", map[string]any{"rate_limit_rpm": 60}},
		{"a budget and its period for a key without one", `{"token_budget":9,"budget_period":"day"}`,
			keyLimitsJSON{RateLimitRPM: 60, TokenBudget: 9, BudgetPeriod: &day, AllowedModels: []string{}}, "", map[string]any{"rate_limit_rpm": 60}},
	}
	for _, kind := range e.keyKinds() {
		for _, tc := range cases {
			start := tc.start
			if start == nil {
				start = limits
			}
			path := kind.create(e, start)
			resp, body := e.do("PATCH", path, e.OwnerKey, tc.body)
			if tc.field != "" {
				wantInvalidField(t, resp, body, tc.field)
				continue
			}
			wantStatus(t, resp, body, http.StatusOK)
			for _, answer := range []struct {
				name string
				body []byte
			}{{"PATCH answer", body}, {"key read after", kind.read(path)}} {
				got := decodeAs[keyLimitsJSON](t, answer.body)
				if tc.want.Name == "" {
					got.Name = ""
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("%s, PATCH %s: %s = %s, want %+v", kind.name, tc.body, answer.name, answer.body, tc.want)
				}
			}
		}
	}
}

package httpapi_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// The management API's answers, field by field, as SPEC §2–§6 list them,
// with the extra fields the OpenAPI document adds, and every time in them
// RFC 3339 in UTC (SPEC §1).

// fieldsOf returns the sorted top-level field names of a JSON object.
func fieldsOf(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode object %s: %v", raw, err)
	}
	var names []string
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// wantFields fails unless the object raw has exactly the fields want, and
// every field named in times is null or an RFC 3339 time in UTC.
func wantFields(t *testing.T, what string, raw json.RawMessage, want []string) {
	t.Helper()
	want = slices.Clone(want)
	sort.Strings(want)
	if got := fieldsOf(t, raw); !slices.Equal(got, want) {
		t.Errorf("%s fields = %v, want %v", what, got, want)
	}
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m)
	for name, v := range m {
		if !strings.HasSuffix(name, "_at") && name != "cooldown_until" && name != "grace_until" && name != "invite_expires_at" {
			continue
		}
		if string(v) == "null" {
			continue
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			t.Errorf("%s.%s = %s, want a time string", what, name, v)
			continue
		}
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || !strings.HasSuffix(s, "Z") || tm.Location() != time.UTC {
			t.Errorf("%s.%s = %q, want RFC 3339 in UTC", what, name, s)
		}
	}
}

var (
	platformKeyFields = []string{"id", "org_id", "user_id", "name", "description", "prefix", "permissions", "status",
		"created_at", "updated_at", "last_used_at", "expires_at", "revoked_at",
		"rate_limit_rpm", "rate_limit_tpm", "token_budget", "budget_period", "allowed_models"}
	providerFields = []string{"id", "org_id", "name", "display_name", "type", "base_url", "enabled", "key_source",
		"settings", "key_count", "created_at", "updated_at"}
	providerKeyFields = []string{"id", "provider_id", "name", "hint", "priority", "enabled", "created_at",
		"updated_at", "last_used_at", "cooldown_until"}
	credentialFields = []string{"id", "org_id", "provider_id", "hint", "created_at", "updated_at", "last_used_at"}
	aiKeyFields      = []string{"id", "project_id", "org_id", "name", "ai_type", "key", "created_by", "created_at",
		"last_used_at", "deleted_at", "rate_limit_rpm", "rate_limit_tpm", "token_budget", "budget_period", "allowed_models"}
)

func TestAnswerFields(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		org := "/api/v1/orgs/" + e.Org.Slug
		call := func(method, path string, body any, want int) json.RawMessage {
			t.Helper()
			resp, raw := e.do(method, path, e.OwnerKey, body)
			wantStatus(t, resp, raw, want)
			return raw
		}
		item0 := func(raw json.RawMessage) json.RawMessage {
			t.Helper()
			l := decodeAs[struct{ Items []json.RawMessage }](t, raw)
			if len(l.Items) == 0 {
				t.Fatalf("empty list %s", raw)
			}
			return l.Items[0]
		}

		// §3: the plaintext only in the create and rotate answers.
		created := call("POST", "/api/v1/api-keys", map[string]any{"name": "ci", "permissions": []string{"gateway:invoke"}}, http.StatusCreated)
		wantFields(t, "created key", created, append(slices.Clone(platformKeyFields), "key"))
		id := decodeAs[struct{ ID string }](t, created).ID
		wantFields(t, "key", call("GET", "/api/v1/api-keys/"+id, nil, http.StatusOK), platformKeyFields)
		wantFields(t, "listed key", item0(call("GET", "/api/v1/api-keys", nil, http.StatusOK)), platformKeyFields)
		wantFields(t, "org's key", item0(call("GET", org+"/api-keys", nil, http.StatusOK)), platformKeyFields)
		wantFields(t, "patched key", call("PATCH", "/api/v1/api-keys/"+id, map[string]any{"description": "d"}, http.StatusOK), platformKeyFields)
		wantFields(t, "suspended key", call("POST", "/api/v1/api-keys/"+id+"/suspend", nil, http.StatusOK), platformKeyFields)
		wantFields(t, "reactivated key", call("POST", "/api/v1/api-keys/"+id+"/reactivate", nil, http.StatusOK), platformKeyFields)
		rotated := call("POST", "/api/v1/api-keys/"+id+"/rotate", map[string]any{"grace_period_seconds": 60}, http.StatusCreated)
		wantFields(t, "rotated key", rotated, append(slices.Clone(platformKeyFields), "key", "rotated_from"))
		wantFields(t, "replaced key", call("GET", "/api/v1/api-keys/"+id, nil, http.StatusOK), append(slices.Clone(platformKeyFields), "grace_until"))
		next := decodeAs[struct{ ID string }](t, rotated).ID
		wantFields(t, "revoked key", call("POST", "/api/v1/api-keys/"+next+"/revoke", nil, http.StatusOK), append(slices.Clone(platformKeyFields), "rotated_from"))

		// §4.
		prov := call("POST", org+"/providers", map[string]any{"name": "oa", "type": "openai"}, http.StatusCreated)
		wantFields(t, "created provider", prov, providerFields)
		wantFields(t, "provider", call("GET", org+"/providers/oa", nil, http.StatusOK), providerFields)
		wantFields(t, "listed provider", item0(call("GET", org+"/providers", nil, http.StatusOK)), providerFields)
		wantFields(t, "patched provider", call("PATCH", org+"/providers/oa", map[string]any{"display_name": "OA"}, http.StatusOK), providerFields)
		pk := call("POST", org+"/providers/oa/keys", map[string]any{"api_key": "sk-abcdefghijklmnopqrstuvwxyz"}, http.StatusCreated)
		wantFields(t, "created provider key", pk, providerKeyFields)
		pkID := decodeAs[struct{ ID string }](t, pk).ID
		wantFields(t, "listed provider key", item0(call("GET", org+"/providers/oa/keys", nil, http.StatusOK)), providerKeyFields)
		wantFields(t, "patched provider key", call("PATCH", org+"/providers/oa/keys/"+pkID, map[string]any{"priority": 3}, http.StatusOK), providerKeyFields)

		// §6.
		c := call("POST", "/api/v1/users/me/credentials", map[string]any{"org": e.Org.Slug, "provider": "oa", "api_key": "sk-personal-0123456789abcdef"}, http.StatusCreated)
		wantFields(t, "created credential", c, credentialFields)
		cID := decodeAs[struct{ ID string }](t, c).ID
		wantFields(t, "listed credential", item0(call("GET", "/api/v1/users/me/credentials", nil, http.StatusOK)), credentialFields)
		wantFields(t, "patched credential", call("PATCH", "/api/v1/users/me/credentials/"+cID, map[string]any{"api_key": "sk-personal-abcdef0123456789"}, http.StatusOK), credentialFields)

		// §5.
		proj := call("POST", org+"/projects", map[string]any{"name": "web"}, http.StatusCreated)
		projectFields := []string{"id", "org_id", "name", "description", "created_at", "updated_at"}
		wantFields(t, "created project", proj, projectFields)
		pID := decodeAs[struct{ ID string }](t, proj).ID
		wantFields(t, "project", call("GET", org+"/projects/"+pID, nil, http.StatusOK), projectFields)
		wantFields(t, "patched project", call("PATCH", org+"/projects/"+pID, map[string]any{"description": "d"}, http.StatusOK), projectFields)
		ak := call("POST", org+"/projects/"+pID+"/ai-keys", map[string]any{"name": "ci", "ai_type": "OPENAI"}, http.StatusCreated)
		wantFields(t, "created AI key", ak, []string{"success", "id", "key", "secret"})
		akID := decodeAs[struct{ ID string }](t, ak).ID
		wantFields(t, "listed AI key", item0(call("GET", org+"/projects/"+pID+"/ai-keys", nil, http.StatusOK)), aiKeyFields)
		wantFields(t, "patched AI key", call("PATCH", org+"/projects/"+pID+"/ai-keys/"+akID, map[string]any{"name": "cd"}, http.StatusOK), aiKeyFields)
		call("DELETE", org+"/projects/"+pID+"/ai-keys/"+akID, nil, http.StatusNoContent)
		wantFields(t, "deleted AI key", item0(call("GET", org+"/projects/"+pID+"/ai-keys?include_deleted=true", nil, http.StatusOK)), aiKeyFields)

		// §2.
		// An org answer adds the caller's role in it.
		orgFields := []string{"id", "slug", "name", "role", "created_at", "updated_at"}
		wantFields(t, "org", call("GET", org, nil, http.StatusOK), orgFields)
		wantFields(t, "patched org", call("PATCH", org, map[string]any{"name": "Acme Ltd"}, http.StatusOK), orgFields)
		inv := call("POST", org+"/members", map[string]any{"email": "new@acme.test", "name": "N", "role": "member"}, http.StatusCreated)
		wantFields(t, "invitation", inv, []string{"user_id", "email", "role", "invite_token", "invite_url"})
		for _, m := range decodeAs[struct{ Items []json.RawMessage }](t, call("GET", org+"/members", nil, http.StatusOK)).Items {
			wantFields(t, "member", m, fieldsOf(t, m)) // the times only
		}
	})
}

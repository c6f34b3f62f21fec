package httpapi_test

import (
	"net/http"
	"testing"

	"github.com/keybridge/keybridge/internal/store/storetest"
)

// TestOneTimeAnswersAreNotStored checks that every answer holding a secret
// shown only once (a key plaintext, an AI key secret, an invitation token,
// a session's CSRF token) tells browsers and proxies to keep no copy, and
// that ordinary reads do not.
func TestOneTimeAnswersAreNotStored(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	check := func(what string, resp *http.Response, body []byte, status int, want string) {
		t.Helper()
		wantStatus(t, resp, body, status)
		if got := resp.Header.Get("Cache-Control"); got != want {
			t.Errorf("%s: Cache-Control = %q, want %q", what, got, want)
		}
	}
	resp, body := e.do("POST", "/api/v1/api-keys", e.OwnerKey, map[string]any{"name": "ci", "permissions": []string{"gateway:invoke"}})
	check("create API key", resp, body, http.StatusCreated, "no-store")
	id := decodeAs[struct{ ID string }](t, body).ID
	resp, body = e.do("POST", "/api/v1/api-keys/"+id+"/rotate", e.OwnerKey, map[string]any{"grace_period_seconds": 0})
	check("rotate API key", resp, body, http.StatusCreated, "no-store")
	resp, body = e.do("POST", "/api/v1/orgs/"+e.Org.Slug+"/projects", e.OwnerKey, map[string]any{"name": "web"})
	check("create project", resp, body, http.StatusCreated, "")
	pid := decodeAs[struct{ ID string }](t, body).ID
	resp, body = e.do("POST", "/api/v1/orgs/"+e.Org.Slug+"/projects/"+pid+"/ai-keys", e.OwnerKey, map[string]any{"name": "ci", "ai_type": "OPENAI"})
	check("create AI key", resp, body, http.StatusCreated, "no-store")
	resp, body = e.do("POST", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, map[string]any{"email": "new@example.test", "name": "New", "role": "member"})
	check("invite member", resp, body, http.StatusCreated, "no-store")
	resp, body = e.do("GET", "/api/v1/api-keys", e.OwnerKey, nil)
	check("list API keys", resp, body, http.StatusOK, "")
}

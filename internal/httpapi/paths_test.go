package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// TestPathsNeverRedirect sends paths ServeMux would redirect — not clean
// (//, /./, /../) or missing a pattern's trailing slash — to every kind of
// route: each is a 404 in the error shape, never a 307 with an HTML body.
func TestPathsNeverRedirect(t *testing.T) {
	ui := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>ui</html>") })
	e := newEnvWith(t, storetest.Engines()[0].New(t), envOptions{Config: httpapi.Config{UI: ui, Metrics: http.NotFoundHandler()}})
	for _, path := range []string{
		"/api/v1/../x", "//api/v1/users/me", "/api/v1/./users/me", "/api/v1//users/me", "/api/v1/users/me/",
		"/api/v1/orgs/acme/../acme/providers", "/api", "/ui", "/./healthz", "/healthz/..", "//metrics",
		"/ui/../api/v1/users/me", "/%2e%2e/api/v1/users/me", "/api/v1/%2E/users/me", "//gateway/openai/v1/models",
	} {
		for _, method := range []string{"GET", "POST", "DELETE"} {
			resp, body := doNoRedirect(t, e, method, path)
			if loc := resp.Header.Get("Location"); loc != "" || resp.StatusCode/100 == 3 {
				t.Errorf("%s %s = %d, Location %q: want no redirect", method, path, resp.StatusCode, loc)
				continue
			}
			if resp.StatusCode == http.StatusNotFound || strings.HasPrefix(path, "/api/v1/users/me/") {
				wantJSONError(t, method, path, resp, body)
			}
		}
	}
	// The clean spellings still work.
	resp, body := e.do("GET", "/api/v1/users/me", e.OwnerKey, nil)
	wantStatus(t, resp, body, http.StatusOK)
	resp, body = e.do("GET", "/ui/", "", nil)
	wantStatus(t, resp, body, http.StatusOK)
}

func wantJSONError(t *testing.T, method, path string, resp *http.Response, body []byte) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") || json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		t.Errorf("%s %s = %d %s %q, want an error in the JSON shape", method, path, resp.StatusCode, ct, body)
		return
	}
	if e.Error.Code != keybridge.ENotFound || resp.StatusCode != http.StatusNotFound {
		t.Errorf("%s %s = %d %s, want 404 not_found", method, path, resp.StatusCode, e.Error.Code)
	}
}

// TestBaseURLLength checks the base_url cap: 2,048 characters pass, one
// more is a 400 naming base_url on create, update and test.
func TestBaseURLLength(t *testing.T) {
	e := newEnvWith(t, storetest.Engines()[0].New(t), envOptions{})
	base := "https://llm.example/"
	atCap := base + strings.Repeat("a", 2048-len(base))
	tooLong := atCap + "b"
	resp, body := e.do("POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "ok", "type": "openai-compatible", "base_url": atCap})
	wantStatus(t, resp, body, http.StatusCreated)
	resp, body = e.do("POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "long", "type": "openai-compatible", "base_url": tooLong})
	wantInvalidField(t, resp, body, "base_url")
	resp, body = e.do("PATCH", e.providersPath("/ok"), e.OwnerKey, map[string]any{"base_url": tooLong})
	wantInvalidField(t, resp, body, "base_url")
	resp, body = e.do("POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "openai-compatible", "base_url": tooLong})
	wantInvalidField(t, resp, body, "base_url")
}

// TestMetricsToken checks /metrics behind a bearer token: none or a wrong
// one is 401 in the error shape, the right one gets the metrics.
func TestMetricsToken(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "keybridge_up 1\n") })
	e := newEnvWith(t, storetest.Engines()[0].New(t), envOptions{Config: httpapi.Config{Metrics: metrics, MetricsToken: "metrics-token-0123456789"}})
	for _, key := range []string{"", "metrics-token-012345678", "metrics-token-0123456789x", e.OwnerKey} {
		resp, body := e.do("GET", "/metrics", key, nil)
		wantError(t, resp, body, keybridge.EUnauthenticated)
	}
	resp, body := e.do("GET", "/metrics", "metrics-token-0123456789", nil)
	wantStatus(t, resp, body, http.StatusOK)
	if string(body) != "keybridge_up 1\n" {
		t.Errorf("GET /metrics with the token = %q, want the metrics", body)
	}
}

// doNoRedirect sends a request as the owner and returns the answer as is:
// a redirect is not followed, so the test sees it.
func doNoRedirect(t *testing.T, e *env, method, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.Server.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.OwnerKey)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

package httpapi_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TestBadInput sends every write endpoint of SPEC §2 and §3 the bodies a
// careless or hostile client sends: each must be a 4xx in the SPEC's error
// shape, never a 500 or a dropped connection.
func TestBadInput(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		memberID, _ := e.addMember(keybridge.RoleMember)
		k := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
		org := "/api/v1/orgs/" + e.Org.Slug
		endpoints := []struct{ method, path string }{
			{"POST", "/api/v1/setup"},
			{"POST", "/api/v1/auth/login"},
			{"POST", "/api/v1/auth/accept-invite"},
			{"POST", "/api/v1/orgs"},
			{"PATCH", org},
			{"POST", org + "/members"},
			{"PATCH", org + "/members/" + memberID},
			{"POST", "/api/v1/api-keys"},
			{"PATCH", "/api/v1/api-keys/" + k.ID},
			{"POST", "/api/v1/api-keys/" + k.ID + "/rotate"},
			{"POST", "/api/v1/leaked-keys"},
		}
		huge := `{"name":"` + strings.Repeat("a", 1<<20) + `"}`
		bodies := []struct {
			name, body, contentType, code string
		}{
			{"unknown field", `{"bogus": 1}`, "", keybridge.EInvalid},
			{"malformed", `{"name": `, "", keybridge.EInvalid},
			{"not JSON", `name=x`, "", keybridge.EInvalid},
			{"empty", ``, "", keybridge.EInvalid},
			{"two values", `{} {}`, "", keybridge.EInvalid},
			{"wrong top-level type", `"a string"`, "", keybridge.EInvalid},
			{"wrong field types", `{"name": 5, "email": [], "role": {}, "permissions": "all", "slug": true, "grace_period_seconds": "x", "token": 1, "password": 2, "org": 3}`, "", keybridge.EInvalid},
			{"null", `null`, "", keybridge.EInvalid},
			{"NUL in strings", `{"name": "a\u0000b", "slug": "a\u0000", "email": "a@b\u0000.test", "token": "\u0000", "password": "pass\u0000word", "org": "\u0000", "role": "member\u0000", "description": "\u0000"}`, "", keybridge.EInvalid},
			{"NUL in free text", `{"name": "a\u0000b", "description": "c\u0000d"}`, "", keybridge.EInvalid},
			{"NUL in an array", `[{"token": "\u0000"}]`, "", keybridge.EInvalid},
			{"wrong content type", `{}`, "text/plain", keybridge.EInvalid},
			{"oversized", huge, "", keybridge.ETooLarge},
		}
		for _, ep := range endpoints {
			for _, b := range bodies {
				resp, raw := e.send(ep.method, ep.path, b.body, func(r *http.Request) {
					r.Header.Set("Authorization", "Bearer "+e.OwnerKey)
					if b.contentType != "" {
						r.Header.Set("Content-Type", b.contentType)
					}
				})
				if resp.StatusCode >= 500 || resp.StatusCode < 400 {
					t.Errorf("%s %s with %s: status %d %.200s", ep.method, ep.path, b.name, resp.StatusCode, raw)
					continue
				}
				// Setup answers 404 to any well-formed body once done;
				// "null" decodes to an empty request there.
				if ep.path == "/api/v1/setup" && resp.StatusCode == http.StatusNotFound && b.name == "null" {
					continue
				}
				// PATCH with null is "nothing to update" (400) or, for the
				// array of leak reports, an empty report: either is a 4xx
				// already checked above.
				if resp.StatusCode != http.StatusBadRequest && b.code == keybridge.EInvalid && b.name == "null" {
					continue
				}
				if resp.StatusCode != httpStatusOf(b.code) {
					t.Errorf("%s %s with %s: status %d %.200s, want %s", ep.method, ep.path, b.name, resp.StatusCode, raw, b.code)
					continue
				}
				wantError(t, resp, raw, b.code)
			}
		}
		if strings.Contains(e.logs(), `"level":"ERROR"`) {
			t.Errorf("bad input was logged as an error:\n%.2000s", e.logs())
		}
	})
}

func httpStatusOf(code string) int {
	switch code {
	case keybridge.ETooLarge:
		return http.StatusRequestEntityTooLarge
	case keybridge.EInvalid:
		return http.StatusBadRequest
	}
	return 0
}

// TestBadPaths checks IDs that are not there, or not IDs at all.
func TestBadPaths(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		for _, c := range []struct{ method, path string }{
			{"GET", "/api/v1/api-keys/not-a-uuid"},
			{"GET", "/api/v1/api-keys/01900000-0000-7000-8000-000000000000"},
			{"POST", "/api/v1/api-keys/'%20OR%201=1/suspend"},
			{"GET", "/api/v1/orgs/%00"},
			{"PATCH", "/api/v1/orgs/" + e.Org.Slug + "/members/nobody"},
			{"DELETE", "/api/v1/orgs/" + e.Org.Slug + "/members/nobody"},
			{"GET", "/api/v1/no-such-route"},
		} {
			var body any // only PATCH takes one here
			if c.method == "PATCH" {
				body = `{"role":"member"}`
			}
			resp, raw := e.do(c.method, c.path, e.OwnerKey, body)
			wantError(t, resp, raw, keybridge.ENotFound)
		}
		resp, raw := e.do("GET", "/api/v1/api-keys?limit=501", e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.EInvalid)
		resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/members?limit=zero", e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.EInvalid)
	})
}

// TestPastedKeyNotPrintableASCII sends provider and personal keys holding
// characters no provider key has (a mangled paste): each is a 400 naming
// api_key on every engine, never a 500 from a hint cut inside a character.
func TestPastedKeyNotPrintableASCII(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		prov := e.addProvider(map[string]any{"name": "oa", "type": "openai"})
		for _, key := range []string{
			"a" + strings.Repeat("é", 23), // the hint's first 4 bytes end inside "é"
			"sk-" + strings.Repeat("é", 5),
			"sk-abc\u0001defghijklmnopqrstuvwxyz",
			"sk-abcdefghijklmnop\u201cqrstuvwxyz\u201d",
		} {
			resp, raw := e.do("POST", e.providersPath("/"+prov.ID+"/keys"), e.OwnerKey, map[string]any{"api_key": key})
			if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["api_key"] == "" {
				t.Errorf("POST keys with %q: fields = %v, want api_key", key, got.Error.Fields)
			}
			resp, raw = e.do("POST", "/api/v1/users/me/credentials", e.OwnerKey,
				map[string]any{"org": e.Org.Slug, "provider": prov.ID, "api_key": key})
			if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["api_key"] == "" {
				t.Errorf("POST credentials with %q: fields = %v, want api_key", key, got.Error.Fields)
			}
		}
	})
}

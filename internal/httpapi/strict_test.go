package httpapi_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// TestStrictJSON sends bodies that encoding/json alone would accept or
// misreport: each must be a 400 whose fields name the value as the API
// spells it. Decoding does not touch the database, so one engine is
// enough.
func TestStrictJSON(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	k := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
	providers := e.providersPath("")
	keys := "/api/v1/api-keys"
	for _, c := range []struct {
		name, method, path, body string
		field                    string // the field the error must name
		why                      string // a part of its reason
	}{
		{"duplicate key", "POST", keys, `{"name":"a","name":"b","permissions":["gateway:invoke"]}`, "name", "more than once"},
		{"duplicate key, other spelling", "POST", keys, `{"name":"a","n\u0061me":"b","permissions":["gateway:invoke"]}`, "name", "more than once"},
		{"duplicate nested key", "POST", providers, `{"name":"b1","type":"bedrock","settings":{"region":"us-east-1","region":"us-west-2"}}`, "settings.region", "more than once"},
		{"duplicate key in an array element", "POST", "/api/v1/leaked-keys", `[{"token":"a","token":"b"}]`, "[0].token", "more than once"},
		{"duplicate optional", "PATCH", keys + "/" + k.ID, `{"name":"a","name":"b"}`, "name", "more than once"},
		{"name in capitals", "POST", keys, `{"NAME":"a","permissions":["gateway:invoke"]}`, "NAME", "unknown field"},
		{"secret setting in capitals", "POST", providers, `{"name":"b2","type":"bedrock","settings":{"region":"us-east-1","ACCESS_KEY":"AKIAEXAMPLE","access_key_secret":"s"}}`, "settings.ACCESS_KEY", "unknown field"},
		{"secret setting in capitals on test", "POST", providers + "/test", `{"type":"bedrock","settings":{"region":"us-east-1","Access_Key":"AKIAEXAMPLE"}}`, "settings.Access_Key", "unknown field"},
		{"field in capitals on PATCH", "PATCH", keys + "/" + k.ID, `{"Token_Budget":5}`, "Token_Budget", "unknown field"},
		{"invalid UTF-8", "POST", keys, "{\"name\":\"a\xffb\",\"permissions\":[\"gateway:invoke\"]}", "name", "UTF-8"},
		{"invalid UTF-8 in an array", "POST", keys, "{\"name\":\"a\",\"permissions\":[\"gateway:invoke\"],\"allowed_models\":[\"gpt-4o\",\"\xc3\"]}", "allowed_models[1]", "UTF-8"},
		{"unpaired surrogate", "POST", keys, `{"name":"a\ud800b","permissions":["gateway:invoke"]}`, "name", "surrogate"},
		{"unpaired low surrogate", "POST", "/api/v1/orgs", `{"slug":"x","name":"\udc00"}`, "name", "surrogate"},
		{"embedded limit, wrong type", "POST", keys, `{"name":"a","permissions":["gateway:invoke"],"token_budget":"lots"}`, "token_budget", "whole number"},
		{"limit out of range", "POST", keys, `{"name":"a","permissions":["gateway:invoke"],"rate_limit_rpm":1e30}`, "rate_limit_rpm", "whole number"},
		{"limit on PATCH, wrong type", "PATCH", keys + "/" + k.ID, `{"token_budget":true}`, "token_budget", "whole number"},
		{"array element, wrong type", "POST", keys, `{"name":"a","permissions":["gateway:invoke"],"allowed_models":["gpt-4o",5]}`, "allowed_models[1]", "string"},
		{"array element on PATCH, wrong type", "PATCH", keys + "/" + k.ID, `{"allowed_models":[{}]}`, "allowed_models[0]", "string"},
		{"nested setting, wrong type", "POST", providers, `{"name":"b3","type":"bedrock","settings":{"region":7}}`, "settings.region", "string"},
		{"nested secret, wrong type", "POST", providers, `{"name":"b4","type":"bedrock","settings":{"region":"us-east-1","access_key":7}}`, "settings.access_key", "string"},
		{"settings not an object", "POST", providers, `{"name":"b5","type":"bedrock","settings":"flat"}`, "settings", "object"},
		{"bad time", "POST", keys, `{"name":"a","permissions":["gateway:invoke"],"expires_at":"tomorrow"}`, "expires_at", "RFC 3339"},
		{"time of the wrong type", "POST", keys, `{"name":"a","permissions":["gateway:invoke"],"expires_at":12}`, "expires_at", "RFC 3339"},
		{"bad time on PATCH", "PATCH", keys + "/" + k.ID, `{"expires_at":"2026-13-01T00:00:00Z"}`, "expires_at", "RFC 3339"},
		{"NUL", "POST", "/api/v1/orgs", `{"slug":"x","name":"a\u0000"}`, "name", "NUL"},
		{"leak report, wrong type", "POST", "/api/v1/leaked-keys", `[{"token":"x"},{"token":5}]`, "[1].token", "string"},
	} {
		resp, raw := e.do(c.method, c.path, e.OwnerKey, c.body)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s %s %s = %d %s, want 400", c.name, c.method, c.path, c.body, resp.StatusCode, raw)
			continue
		}
		got := wantError(t, resp, raw, keybridge.EInvalid)
		if why := got.Error.Fields[c.field]; !strings.Contains(why, c.why) {
			t.Errorf("%s: fields = %v, want %q saying %q", c.name, got.Error.Fields, c.field, c.why)
		}
		if !strings.Contains(got.Error.Message, c.field) {
			t.Errorf("%s: message %q does not name %q", c.name, got.Error.Message, c.field)
		}
		for f := range got.Error.Fields {
			if strings.ContainsAny(f[:1], "ABCDEFGHIJKLMNOPQRSTUVWXYZ") && f != c.field {
				t.Errorf("%s: field %q looks like a Go name", c.name, f)
			}
		}
	}
	if strings.Contains(e.logs(), `"level":"ERROR"`) {
		t.Errorf("bad bodies were logged as errors:\n%.2000s", e.logs())
	}
}

// TestStrictJSONStillAccepts checks the strict decoder takes what it must:
// escapes, surrogate pairs, non-ASCII text, nulls where encoding/json took
// them.
func TestStrictJSONStillAccepts(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	resp, raw := e.do("POST", "/api/v1/api-keys", e.OwnerKey,
		`{"name":"caf\u00e9 \ud83d\ude00 ünï","description":null,"permissions":["gateway:invoke"],"token_budget":1000,"budget_period":"day","allowed_models":["gpt-4o"],"expires_at":null}`)
	wantStatus(t, resp, raw, http.StatusCreated)
	k := decodeAs[keyJSON](t, raw)
	if want := "café 😀 ünï"; k.Name != want || k.Budget != 1000 {
		t.Errorf("created %q with budget %d, want %q with 1000", k.Name, k.Budget, want)
	}
	resp, raw = e.do("PATCH", "/api/v1/api-keys/"+k.ID, e.OwnerKey, `{"token_budget":null,"budget_period":null}`)
	wantStatus(t, resp, raw, http.StatusOK)
	if got := decodeAs[keyJSON](t, raw); got.Budget != 0 {
		t.Errorf("PATCH token_budget null: budget %d, want 0", got.Budget)
	}
	resp, raw = e.do("POST", e.providersPath(""), e.OwnerKey,
		`{"name":"bedrock","type":"bedrock","settings":{"region":"us-east-1","access_key":"AKIAEXAMPLE","access_key_secret":"s3cret"}}`)
	wantStatus(t, resp, raw, http.StatusCreated)
}

// TestBodyContentType pins the one Content-Type rule: a body is sent as
// application/json (any charset parameter utf-8), on every route, or the
// answer is 400; a request without a body needs none.
func TestBodyContentType(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	k := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
	body := `{"name":"ct","permissions":["gateway:invoke"]}`
	for _, c := range []struct {
		contentType string // "-" sends none
		status      int
	}{
		{"application/json", http.StatusCreated},
		{"application/json; charset=utf-8", http.StatusCreated},
		{"application/json;charset=UTF-8", http.StatusCreated},
		{"Application/JSON", http.StatusCreated},
		{"-", http.StatusBadRequest},
		{"", http.StatusBadRequest},
		{"text/plain", http.StatusBadRequest},
		{"application/x-www-form-urlencoded", http.StatusBadRequest},
		{"application/jsonx", http.StatusBadRequest},
		{"application/json-patch+json", http.StatusBadRequest},
		{"application/json; charset=latin1", http.StatusBadRequest},
		{"application/json; charset", http.StatusBadRequest},
	} {
		resp, raw := e.send("POST", "/api/v1/api-keys", body, func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+e.OwnerKey)
			if c.contentType == "-" {
				r.Header.Del("Content-Type")
			} else {
				r.Header.Set("Content-Type", c.contentType)
			}
		})
		if resp.StatusCode != c.status {
			t.Errorf("POST with Content-Type %q = %d %s, want %d", c.contentType, resp.StatusCode, raw, c.status)
		}
		if c.status == http.StatusBadRequest {
			wantError(t, resp, raw, keybridge.EInvalid)
		}
	}
	// The same rule on a route that reads no body, and before
	// authentication.
	for _, c := range []struct{ method, path, key string }{
		{"POST", "/api/v1/api-keys/" + k.ID + "/suspend", e.OwnerKey},
		{"POST", "/api/v1/auth/logout", ""},
		{"DELETE", "/api/v1/api-keys/" + k.ID, ""},
	} {
		resp, raw := e.send(c.method, c.path, `{}`, func(r *http.Request) {
			if c.key != "" {
				r.Header.Set("Authorization", "Bearer "+c.key)
			}
			r.Header.Set("Content-Type", "text/plain")
		})
		wantError(t, resp, raw, keybridge.EInvalid)
	}
	// Without a body, no Content-Type is needed.
	resp, raw := e.send("POST", "/api/v1/api-keys/"+k.ID+"/suspend", nil, func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+e.OwnerKey)
	})
	wantStatus(t, resp, raw, http.StatusOK)
}

// TestBaseURLNeedsHost: a base URL with a port and no host would dial this
// machine; creating or testing a provider with one is a 400 on base_url.
func TestBaseURLNeedsHost(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	for _, c := range []struct{ path, body string }{
		{e.providersPath(""), `{"name":"nohost","type":"openai-compatible","base_url":"https://:443/v1"}`},
		{e.providersPath("/test"), `{"type":"openai-compatible","base_url":"http://:8080","api_key":"sk-x"}`},
	} {
		resp, raw := e.do("POST", c.path, e.OwnerKey, c.body)
		if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["base_url"] == "" {
			t.Errorf("POST %s %s: fields = %v, want base_url", c.path, c.body, got.Error.Fields)
		}
	}
}

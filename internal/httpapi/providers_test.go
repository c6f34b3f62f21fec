package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// providerJSON is a provider as the API answers it.
type providerJSON struct {
	ID          string         `json:"id"`
	OrgID       string         `json:"org_id"`
	Name        string         `json:"name"`
	DisplayName string         `json:"display_name"`
	Type        string         `json:"type"`
	BaseURL     string         `json:"base_url"`
	Enabled     bool           `json:"enabled"`
	KeySource   string         `json:"key_source"`
	Settings    map[string]any `json:"settings"`
	KeyCount    int            `json:"key_count"`
	CreatedAt   string         `json:"created_at"`
	UpdatedAt   string         `json:"updated_at"`
}

// providerKeyJSON is an upstream key as the API answers it.
type providerKeyJSON struct {
	ID            string  `json:"id"`
	ProviderID    string  `json:"provider_id"`
	Name          string  `json:"name"`
	Hint          string  `json:"hint"`
	Priority      int     `json:"priority"`
	Enabled       bool    `json:"enabled"`
	CreatedAt     string  `json:"created_at"`
	UpdatedAt     string  `json:"updated_at"`
	LastUsedAt    *string `json:"last_used_at"`
	CooldownUntil *string `json:"cooldown_until"`
}

func (e *env) providersPath(rest string) string {
	return "/api/v1/orgs/" + e.Org.Slug + "/providers" + rest
}

// addProvider creates a provider through the API as the owner.
func (e *env) addProvider(body map[string]any) providerJSON {
	e.t.Helper()
	resp, b := e.do("POST", e.providersPath(""), e.OwnerKey, body)
	wantStatus(e.t, resp, b, http.StatusCreated)
	return decodeExact[providerJSON](e.t, b)
}

// addProviderKey adds an upstream key through the API as the owner.
func (e *env) addProviderKey(providerID string, body map[string]any) providerKeyJSON {
	e.t.Helper()
	resp, b := e.do("POST", e.providersPath("/"+providerID+"/keys"), e.OwnerKey, body)
	wantStatus(e.t, resp, b, http.StatusCreated)
	return decodeExact[providerKeyJSON](e.t, b)
}

// decodeExact decodes an answer that must have exactly T's fields: a
// field the API should not send (a key, a ciphertext) fails the test.
func decodeExact[T any](t testing.TB, body []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, body, err)
	}
	return v
}

// wantInvalidField checks an invalid_argument answer that names field.
func wantInvalidField(t testing.TB, resp *http.Response, body []byte, field string) {
	t.Helper()
	got := wantError(t, resp, body, keybridge.EInvalid)
	if field != "" {
		if _, ok := got.Error.Fields[field]; !ok {
			t.Errorf("%s %s: error fields = %v, want one for %q", resp.Request.Method, resp.Request.URL.Path, got.Error.Fields, field)
		}
	}
}

func TestCreateProviderValidation(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		e.addProvider(map[string]any{"name": "taken", "type": "openai"})
		cases := []struct {
			name  string
			body  any
			code  string
			field string
		}{
			{"no name", map[string]any{"type": "openai"}, keybridge.EInvalid, "name"},
			{"upper case", map[string]any{"name": "OpenAI", "type": "openai"}, keybridge.EInvalid, "name"},
			{"underscore", map[string]any{"name": "open_ai", "type": "openai"}, keybridge.EInvalid, "name"},
			{"leading hyphen", map[string]any{"name": "-openai", "type": "openai"}, keybridge.EInvalid, "name"},
			{"double hyphen", map[string]any{"name": "open--ai", "type": "openai"}, keybridge.EInvalid, "name"},
			{"64 characters", map[string]any{"name": strings.Repeat("a", 64), "type": "openai"}, keybridge.EInvalid, "name"},
			{"shaped like an ID", map[string]any{"name": "0190f0f0-0000-7000-8000-000000000001", "type": "openai"}, keybridge.EInvalid, "name"},
			{"used name", map[string]any{"name": "taken", "type": "anthropic"}, keybridge.EConflict, "name"},
			{"no type", map[string]any{"name": "x"}, keybridge.EInvalid, "type"},
			{"unknown type", map[string]any{"name": "x", "type": "cohere"}, keybridge.EInvalid, "type"},
			{"relative base_url", map[string]any{"name": "x", "type": "openai", "base_url": "/v1"}, keybridge.EInvalid, "base_url"},
			{"ftp base_url", map[string]any{"name": "x", "type": "openai", "base_url": "ftp://files.example/v1"}, keybridge.EInvalid, "base_url"},
			{"base_url with user info", map[string]any{"name": "x", "type": "openai", "base_url": "https://u:p@api.example/v1"}, keybridge.EInvalid, "base_url"},
			{"base_url with a query", map[string]any{"name": "x", "type": "openai", "base_url": "https://api.example/v1?a=b"}, keybridge.EInvalid, "base_url"},
			{"azure needs base_url", map[string]any{"name": "x", "type": "azure-openai"}, keybridge.EInvalid, "base_url"},
			{"compatible needs base_url", map[string]any{"name": "x", "type": "openai-compatible"}, keybridge.EInvalid, "base_url"},
			{"bad key_source", map[string]any{"name": "x", "type": "openai", "key_source": "team"}, keybridge.EInvalid, "key_source"},
			{"display_name too long", map[string]any{"name": "x", "type": "openai", "display_name": strings.Repeat("d", 201)}, keybridge.EInvalid, "display_name"},
			{"enabled not a boolean", map[string]any{"name": "x", "type": "openai", "enabled": "yes"}, keybridge.EInvalid, "enabled"},
			{"unknown field", map[string]any{"name": "x", "type": "openai", "api_key": "sk-x"}, keybridge.EInvalid, "api_key"},
			{"bedrock needs a region", map[string]any{"name": "x", "type": "bedrock"}, keybridge.EInvalid, "settings.region"},
			{"bedrock region shape", map[string]any{"name": "x", "type": "bedrock", "settings": map[string]any{"region": "Mars"}}, keybridge.EInvalid, "settings.region"},
			{"bedrock half an access key", map[string]any{"name": "x", "type": "bedrock", "settings": map[string]any{"region": "us-east-1", "access_key": "AKIA0000"}}, keybridge.EInvalid, "settings.access_key_secret"},
			{"bedrock region not a string", map[string]any{"name": "x", "type": "bedrock", "settings": map[string]any{"region": 1}}, keybridge.EInvalid, "settings.region"},
			{"unknown setting", map[string]any{"name": "x", "type": "bedrock", "settings": map[string]any{"region": "us-east-1", "profile": "p"}}, keybridge.EInvalid, "settings.profile"},
			{"setting of another type", map[string]any{"name": "x", "type": "openai", "settings": map[string]any{"region": "us-east-1"}}, keybridge.EInvalid, "settings.region"},
			{"settings not an object", map[string]any{"name": "x", "type": "openai", "settings": "region=us-east-1"}, keybridge.EInvalid, "settings"},
			{"azure api_version shape", map[string]any{"name": "x", "type": "azure-openai", "base_url": "https://r.openai.azure.com", "settings": map[string]any{"api_version": "newest"}}, keybridge.EInvalid, "settings.api_version"},
			{"not JSON", "{", keybridge.EInvalid, ""},
		}
		for _, reserved := range keybridge.ReservedProviderNames {
			cases = append(cases, struct {
				name  string
				body  any
				code  string
				field string
			}{"reserved " + reserved, map[string]any{"name": reserved, "type": "openai"}, keybridge.EInvalid, "name"})
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				resp, body := e.do("POST", e.providersPath(""), e.OwnerKey, c.body)
				got := wantError(t, resp, body, c.code)
				if _, ok := got.Error.Fields[c.field]; c.field != "" && !ok {
					t.Errorf("error fields = %v, want one for %q", got.Error.Fields, c.field)
				}
			})
		}
		resp, body := e.do("GET", e.providersPath(""), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if l := decodeAs[provList[providerJSON]](t, body); len(l.Items) != 1 {
			t.Errorf("after only invalid creates, the org has %d providers, want 1", len(l.Items))
		}
	})
}

// provList is the envelope of list answers.
type provList[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
}

func TestCreateProviderDefaults(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		for _, c := range []struct {
			body         map[string]any
			wantBase     string
			wantSettings string
		}{
			{map[string]any{"name": "openai", "type": "openai"}, "https://api.openai.com/v1", `{}`},
			{map[string]any{"name": "anthropic", "type": "anthropic"}, "https://api.anthropic.com", `{}`},
			{map[string]any{"name": "gemini", "type": "google"}, "https://generativelanguage.googleapis.com", `{}`},
			{map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{"region": "eu-west-1", "model": "anthropic.claude-sonnet-4"}},
				"https://bedrock-runtime.eu-west-1.amazonaws.com",
				`{"access_key_secret_set":false,"access_key_set":false,"model":"anthropic.claude-sonnet-4","region":"eu-west-1","small_fast_model":""}`},
			{map[string]any{"name": "azure", "type": "azure-openai", "base_url": "https://acme.openai.azure.com/"}, "https://acme.openai.azure.com", `{"api_version":"2024-10-21"}`},
			{map[string]any{"name": "local", "type": "openai-compatible", "base_url": "http://127.0.0.1:11434/team/v1/"}, "http://127.0.0.1:11434/team/v1", `{}`},
			{map[string]any{"name": strings.Repeat("a", 63), "type": "openai", "base_url": "https://proxy.example/openai/v1"}, "https://proxy.example/openai/v1", `{}`},
		} {
			p := e.addProvider(c.body)
			settings, _ := json.Marshal(p.Settings)
			if p.ID == "" || p.OrgID != e.Org.ID || p.Name != c.body["name"] || p.DisplayName != p.Name || p.Type != c.body["type"] ||
				p.BaseURL != c.wantBase || !p.Enabled || p.KeySource != "org" || string(settings) != c.wantSettings || p.KeyCount != 0 ||
				p.CreatedAt == "" || p.UpdatedAt != p.CreatedAt {
				t.Errorf("POST %v = %+v, want base_url %s, settings %s, display_name = name, enabled, key_source org", c.body, p, c.wantBase, settings)
			}
		}
		p := e.addProvider(map[string]any{"name": "own", "type": "anthropic", "display_name": "Claude (team)", "enabled": false, "key_source": "user_or_org"})
		if p.DisplayName != "Claude (team)" || p.Enabled || p.KeySource != "user_or_org" {
			t.Errorf("POST with display_name, enabled, key_source = %+v", p)
		}

		// Get by ID and by name; list sorted by name.
		for _, ref := range []string{p.ID, "own"} {
			resp, body := e.do("GET", e.providersPath("/"+ref), e.OwnerKey, nil)
			wantStatus(t, resp, body, http.StatusOK)
			if got := decodeExact[providerJSON](t, body); got.comparable() != p.comparable() {
				t.Errorf("GET %s = %+v, want %+v", ref, got, p)
			}
		}
		resp, body := e.do("GET", e.providersPath("?limit=3"), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		var names []string
		page := decodeAs[provList[providerJSON]](t, body)
		for {
			for _, p := range page.Items {
				names = append(names, p.Name)
			}
			if page.NextCursor == "" {
				break
			}
			resp, body = e.do("GET", e.providersPath("?limit=3&cursor="+page.NextCursor), e.OwnerKey, nil)
			wantStatus(t, resp, body, http.StatusOK)
			page = decodeAs[provList[providerJSON]](t, body)
		}
		if len(names) != 8 || !slices.IsSorted(names) {
			t.Errorf("GET providers pages = %v, want 8 names sorted", names)
		}
	})
}

// comparable returns p as JSON, to compare providers whose settings map
// makes == impossible.
func (p providerJSON) comparable() string {
	b, _ := json.Marshal(p)
	return string(b)
}

func TestUpdateProvider(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "openai", "type": "openai"})
		e.addProvider(map[string]any{"name": "taken", "type": "openai"})
		azure := e.addProvider(map[string]any{"name": "azure", "type": "azure-openai", "base_url": "https://acme.openai.azure.com"})
		for _, c := range []struct {
			name  string
			path  string
			body  any
			code  string
			field string
		}{
			{"empty body", p.ID, map[string]any{}, keybridge.EInvalid, ""},
			{"no body", p.ID, nil, keybridge.EInvalid, ""},
			{"type change", p.ID, map[string]any{"type": "anthropic"}, keybridge.EInvalid, "type"},
			{"used name", p.ID, map[string]any{"name": "taken"}, keybridge.EConflict, "name"},
			{"reserved name", p.ID, map[string]any{"name": "gateway"}, keybridge.EInvalid, "name"},
			{"bad name", p.ID, map[string]any{"name": "Bad Name"}, keybridge.EInvalid, "name"},
			{"bad base_url", p.ID, map[string]any{"base_url": "api.openai.com"}, keybridge.EInvalid, "base_url"},
			{"bad key_source", p.ID, map[string]any{"key_source": "everyone"}, keybridge.EInvalid, "key_source"},
			{"setting of another type", p.ID, map[string]any{"settings": map[string]any{"api_version": "2024-10-21"}}, keybridge.EInvalid, "settings.api_version"},
			{"unknown field", p.ID, map[string]any{"models": []string{"x"}}, keybridge.EInvalid, "models"},
			{"azure base_url cleared", azure.ID, map[string]any{"base_url": ""}, keybridge.EInvalid, "base_url"},
			{"missing provider", "nope", map[string]any{"enabled": false}, keybridge.ENotFound, ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp, body := e.do("PATCH", e.providersPath("/"+c.path), e.OwnerKey, c.body)
				got := wantError(t, resp, body, c.code)
				if _, ok := got.Error.Fields[c.field]; c.field != "" && !ok {
					t.Errorf("error fields = %v, want one for %q", got.Error.Fields, c.field)
				}
			})
		}

		patch := func(ref string, body any) providerJSON {
			t.Helper()
			resp, b := e.do("PATCH", e.providersPath("/"+ref), e.OwnerKey, body)
			wantStatus(t, resp, b, http.StatusOK)
			return decodeExact[providerJSON](t, b)
		}
		// The same type is no change; nothing else moves.
		if got := patch(p.ID, map[string]any{"type": "openai"}); got.comparable() != p.comparable() {
			t.Errorf("PATCH {type: same} = %+v, want unchanged %+v", got, p)
		}
		got := patch("openai", map[string]any{"display_name": "OpenAI prod", "enabled": false, "key_source": "user",
			"base_url": "https://eu.api.openai.com/v1/"})
		if got.DisplayName != "OpenAI prod" || got.Enabled || got.KeySource != "user" || got.BaseURL != "https://eu.api.openai.com/v1" ||
			got.Name != "openai" || got.UpdatedAt == p.UpdatedAt {
			t.Errorf("PATCH = %+v", got)
		}
		if got = patch(p.ID, map[string]any{"base_url": ""}); got.BaseURL != "https://api.openai.com/v1" {
			t.Errorf("PATCH {base_url: \"\"} base_url = %s, want the default", got.BaseURL)
		}
		if got = patch(p.ID, map[string]any{"name": "renamed"}); got.Name != "renamed" || got.DisplayName != "OpenAI prod" {
			t.Errorf("PATCH {name} = %+v", got)
		}
		resp, body := e.do("GET", e.providersPath("/openai"), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		resp, body = e.do("GET", e.providersPath("/renamed"), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got = patch(azure.ID, map[string]any{"settings": map[string]any{"api_version": "2025-04-01-preview"}}); got.Settings["api_version"] != "2025-04-01-preview" {
			t.Errorf("PATCH azure api_version: settings = %v", got.Settings)
		}

		// A default bedrock base URL follows its region; a custom one stays.
		b := e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{"region": "us-east-1"}})
		if got = patch(b.ID, map[string]any{"settings": map[string]any{"region": "eu-central-1"}}); got.BaseURL != "https://bedrock-runtime.eu-central-1.amazonaws.com" {
			t.Errorf("bedrock base_url after a region change = %s", got.BaseURL)
		}
		patch(b.ID, map[string]any{"base_url": "https://vpce-1.bedrock-runtime.eu-central-1.vpce.amazonaws.com"})
		if got = patch(b.ID, map[string]any{"settings": map[string]any{"region": "eu-west-1"}}); got.BaseURL != "https://vpce-1.bedrock-runtime.eu-central-1.vpce.amazonaws.com" {
			t.Errorf("custom bedrock base_url after a region change = %s, want it kept", got.BaseURL)
		}
		resp, body = e.do("PATCH", e.providersPath("/"+b.ID), e.OwnerKey, map[string]any{"settings": map[string]any{"region": ""}})
		wantInvalidField(t, resp, body, "settings.region")

		resp, body = e.do("DELETE", e.providersPath("/renamed"), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		resp, body = e.do("DELETE", e.providersPath("/"+p.ID), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		resp, body = e.do("GET", e.providersPath("/"+p.ID), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
	})
}

// TestProviderSecretSettings: secret settings are write-only, and a PATCH
// that omits one, or sends it empty, keeps the stored value.
func TestProviderSecretSettings(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{
			"region": "us-west-2", "access_key": "AKIAFIRSTACCESSKEY01", "access_key_secret": "first-secret-access-key-0000000000000000"}})
		if p.Settings["access_key_set"] != true || p.Settings["access_key_secret_set"] != true {
			t.Errorf("settings = %v, want both _set true", p.Settings)
		}
		stored := func() keybridge.ProviderSettings {
			t.Helper()
			sp, err := e.Store.Provider(context.Background(), e.Org.ID, p.ID)
			if err != nil {
				t.Fatal(err)
			}
			plain, err := e.Ring.Open(sp.SettingsSealed, keybridge.SealedProviderSettings.AD(p.ID))
			if err != nil {
				t.Fatalf("open stored settings: %v", err)
			}
			if strings.Contains(string(sp.SettingsSealed), "first-secret") {
				t.Errorf("stored settings hold the secret in the clear")
			}
			var s keybridge.ProviderSettings
			if err := s.UnmarshalSealed(plain); err != nil {
				t.Fatal(err)
			}
			return s
		}
		for _, c := range []struct {
			name       string
			settings   map[string]any
			wantRegion string
			wantKey    string
			wantSecret string
		}{
			{"omitted secrets stay", map[string]any{"model": "m1"}, "us-west-2", "AKIAFIRSTACCESSKEY01", "first-secret-access-key-0000000000000000"},
			{"empty secrets stay", map[string]any{"access_key": "", "access_key_secret": ""}, "us-west-2", "AKIAFIRSTACCESSKEY01", "first-secret-access-key-0000000000000000"},
			{"rotate one secret", map[string]any{"access_key_secret": "second-secret-access-key-000000000000000"}, "us-west-2", "AKIAFIRSTACCESSKEY01", "second-secret-access-key-000000000000000"},
			{"region only", map[string]any{"region": "ap-southeast-2"}, "ap-southeast-2", "AKIAFIRSTACCESSKEY01", "second-secret-access-key-000000000000000"},
		} {
			resp, body := e.do("PATCH", e.providersPath("/bedrock"), e.OwnerKey, map[string]any{"settings": c.settings})
			wantStatus(t, resp, body, http.StatusOK)
			got := decodeExact[providerJSON](t, body)
			if got.Settings["access_key_set"] != true || got.Settings["access_key_secret_set"] != true || got.Settings["region"] != c.wantRegion {
				t.Errorf("%s: settings = %v", c.name, got.Settings)
			}
			s := stored()
			if s.Region != c.wantRegion || s.AccessKey.Reveal() != c.wantKey || s.AccessKeySecret.Reveal() != c.wantSecret {
				t.Errorf("%s: stored region %s, access key %s, secret changed %v; want %s, %s, %s", c.name, s.Region,
					s.AccessKey.Reveal(), s.AccessKeySecret.Reveal() != c.wantSecret, c.wantRegion, c.wantKey, "the sent secret")
			}
		}
		if s := stored(); s.Model != "m1" {
			t.Errorf("stored model = %q, want m1", s.Model)
		}
	})
}

func TestProviderPermissions(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		// Port 9 on loopback: the usage probe below fails fast and
		// never leaves the machine.
		p := e.addProvider(map[string]any{"name": "openai", "type": "openai", "base_url": "http://127.0.0.1:9/v1"})
		k := e.addProviderKey(p.ID, map[string]any{"api_key": "sk-permissions-test-000000000001"})
		_, memberKey := e.addMember(keybridge.RoleMember)
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		other := e.otherOrg()

		provPath := e.providersPath("/" + p.ID)
		for _, c := range []struct {
			method, path string
			body         any
			member       int // status for a member; admins always get success
			success      int
		}{
			{"GET", e.providersPath(""), nil, 200, 200},
			{"GET", provPath, nil, 200, 200},
			{"GET", e.providersPath("/openai"), nil, 200, 200},
			{"POST", e.providersPath(""), map[string]any{"name": "new-one", "type": "openai"}, 403, 201},
			{"PATCH", provPath, map[string]any{"display_name": "x"}, 403, 200},
			{"PATCH", e.providersPath("/nope"), map[string]any{"display_name": "x"}, 404, 404},
			{"GET", provPath + "/keys", nil, 403, 200},
			{"POST", provPath + "/keys", map[string]any{"api_key": "sk-another-permissions-key-0002"}, 403, 201},
			{"PATCH", provPath + "/keys/" + k.ID, map[string]any{"name": "main"}, 403, 200},
			{"POST", e.providersPath("/test"), map[string]any{"type": "openai", "base_url": "http://127.0.0.1:9/v1"}, 403, 200},
			{"GET", provPath + "/usage", nil, 403, 200},
			{"DELETE", provPath + "/keys/" + k.ID, nil, 403, 204},
			{"DELETE", provPath, nil, 403, 204},
		} {
			name := c.method + " " + strings.TrimPrefix(c.path, "/api/v1/orgs/"+e.Org.Slug)
			resp, body := e.do(c.method, c.path, memberKey, c.body)
			if resp.StatusCode != c.member {
				t.Errorf("member %s = %d %s, want %d", name, resp.StatusCode, body, c.member)
			} else if c.member >= 400 {
				wantError(t, resp, body, map[int]string{403: keybridge.EForbidden, 404: keybridge.ENotFound}[c.member])
			}
			// Another org's owner sees nothing: 404 before any 403.
			resp, body = e.do(c.method, c.path, other.OwnerKey, c.body)
			wantError(t, resp, body, keybridge.ENotFound)
			resp, body = e.do(c.method, c.path, adminKey, c.body)
			if resp.StatusCode != c.success {
				t.Errorf("admin %s = %d %s, want %d", name, resp.StatusCode, body, c.success)
			}
		}

		// A provider of another org, addressed under our org, is 404.
		theirs := e.otherProvider(other)
		for _, path := range []string{"/" + theirs.ID, "/" + theirs.ID + "/keys"} {
			resp, body := e.do("GET", e.providersPath(path), e.OwnerKey, nil)
			wantError(t, resp, body, keybridge.ENotFound)
		}
		resp, body := e.do("DELETE", e.providersPath("/"+theirs.ID), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)

		resp, body = e.do("GET", e.providersPath(""), "", nil)
		wantError(t, resp, body, keybridge.EUnauthenticated)
	})
}

// otherProvider creates a provider in another org, through the API as
// that org's owner.
func (e *env) otherProvider(other tenant) providerJSON {
	e.t.Helper()
	resp, b := e.do("POST", "/api/v1/orgs/"+other.Org.ID+"/providers", other.OwnerKey, map[string]any{"name": "theirs", "type": "openai"})
	wantStatus(e.t, resp, b, http.StatusCreated)
	return decodeExact[providerJSON](e.t, b)
}

func TestProviderKeys(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "openai", "type": "openai"})
		q := e.addProvider(map[string]any{"name": "backup", "type": "openai"})
		e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{"region": "us-east-1"}})
		keys := e.providersPath("/" + p.ID + "/keys")

		for _, c := range []struct {
			name  string
			path  string
			body  any
			code  string
			field string
		}{
			{"no key", keys, map[string]any{"name": "x"}, keybridge.EInvalid, "api_key"},
			{"blank key", keys, map[string]any{"api_key": "   "}, keybridge.EInvalid, "api_key"},
			{"key with a space", keys, map[string]any{"api_key": "sk-abc def"}, keybridge.EInvalid, "api_key"},
			{"key not a string", keys, map[string]any{"api_key": 12345}, keybridge.EInvalid, ""},
			{"huge key", keys, map[string]any{"api_key": strings.Repeat("k", 4097)}, keybridge.EInvalid, "api_key"},
			{"negative priority", keys, map[string]any{"api_key": "sk-valid-key-000000000000000", "priority": -1}, keybridge.EInvalid, "priority"},
			{"long name", keys, map[string]any{"api_key": "sk-valid-key-000000000000000", "name": strings.Repeat("n", 201)}, keybridge.EInvalid, "name"},
			{"unknown field", keys, map[string]any{"api_key": "sk-valid-key-000000000000000", "enabled": false}, keybridge.EInvalid, "enabled"},
			{"bedrock takes no keys", e.providersPath("/bedrock/keys"), map[string]any{"api_key": "sk-valid-key-000000000000000"}, keybridge.EInvalid, "api_key"},
			{"missing provider", e.providersPath("/nope/keys"), map[string]any{"api_key": "sk-valid-key-000000000000000"}, keybridge.ENotFound, ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp, body := e.do("POST", c.path, e.OwnerKey, c.body)
				got := wantError(t, resp, body, c.code)
				if _, ok := got.Error.Fields[c.field]; c.field != "" && !ok {
					t.Errorf("error fields = %v, want one for %q", got.Error.Fields, c.field)
				}
			})
		}

		// Hints as SPEC §4 defines them; priorities default to last.
		for i, c := range []struct{ key, hint string }{
			{"sk-proj-abcdefghijklmnopqrstuvwxyz0123", "sk-p...0123"},
			{"  sk-0123456789abcdefWXYZ\n", "sk-0...WXYZ"}, // 20 once trimmed
			{"short-key-123", "...-123"},
			{"abcdefgh", "...efgh"},
			{"tiny", "..."},
		} {
			k := e.addProviderKey(p.ID, map[string]any{"api_key": c.key, "name": fmt.Sprint("k", i)})
			if k.Hint != c.hint || k.Priority != i || !k.Enabled || k.ProviderID != p.ID || k.LastUsedAt != nil || k.CooldownUntil != nil {
				t.Errorf("POST key %d = %+v, want hint %q, priority %d, enabled", i, k, c.hint, i)
			}
		}
		first := e.addProviderKey(q.ID, map[string]any{"api_key": "sk-proj-abcdefghijklmnopqrstuvwxyz0123", "priority": 7})
		if first.Priority != 7 {
			t.Errorf("POST key with priority 7 = %d", first.Priority)
		}
		// The same key again on the same provider is 409, also with
		// surrounding whitespace; on another provider it was fine.
		resp, body := e.do("POST", keys, e.OwnerKey, map[string]any{"api_key": " sk-proj-abcdefghijklmnopqrstuvwxyz0123 "})
		wantError(t, resp, body, keybridge.EConflict)

		resp, body = e.do("GET", keys, e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		listed := decodeExact[provList[providerKeyJSON]](t, body)
		if len(listed.Items) != 5 || listed.Items[0].Name != "k0" || listed.Items[4].Name != "k4" {
			t.Errorf("GET keys = %+v, want k0..k4 in priority order", listed.Items)
		}
		resp, body = e.do("GET", e.providersPath("/"+p.ID), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeExact[providerJSON](t, body); got.KeyCount != 5 {
			t.Errorf("provider key_count = %d, want 5", got.KeyCount)
		}

		// The key is sealed bound to its row.
		k0 := listed.Items[0]
		stored, err := e.Store.ProviderKey(context.Background(), p.ID, k0.ID)
		if err != nil {
			t.Fatal(err)
		}
		if plain, err := e.Ring.Open(stored.Sealed, keybridge.SealedProviderKey.AD(k0.ID)); err != nil || string(plain) != "sk-proj-abcdefghijklmnopqrstuvwxyz0123" {
			t.Errorf("stored key opens to %q, %v; want the key", plain, err)
		}
		if _, err := e.Ring.Open(stored.Sealed, keybridge.SealedProviderKey.AD(listed.Items[1].ID)); err == nil {
			t.Errorf("a key's ciphertext opened as another row's")
		}

		// PATCH name, priority, enabled.
		keyPath := keys + "/" + k0.ID
		for _, c := range []struct {
			name  string
			path  string
			body  any
			code  string
			field string
		}{
			{"empty", keyPath, map[string]any{}, keybridge.EInvalid, ""},
			{"the key itself", keyPath, map[string]any{"api_key": "sk-new"}, keybridge.EInvalid, "api_key"},
			{"priority too big", keyPath, map[string]any{"priority": 1_000_001}, keybridge.EInvalid, "priority"},
			{"another provider's key", e.providersPath("/" + p.ID + "/keys/" + first.ID), map[string]any{"name": "x"}, keybridge.ENotFound, ""},
			{"missing key", keys + "/0190f0f0-0000-7000-8000-0000000000ff", map[string]any{"name": "x"}, keybridge.ENotFound, ""},
		} {
			t.Run("patch "+c.name, func(t *testing.T) {
				resp, body := e.do("PATCH", c.path, e.OwnerKey, c.body)
				got := wantError(t, resp, body, c.code)
				if _, ok := got.Error.Fields[c.field]; c.field != "" && !ok {
					t.Errorf("error fields = %v, want one for %q", got.Error.Fields, c.field)
				}
			})
		}
		// The gateway put the key in a cooldown: the edit keeps it, and shows it.
		cooldown := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
		if err := e.Store.SetProviderKeyCooldowns(context.Background(), map[string]time.Time{k0.ID: cooldown}); err != nil {
			t.Fatal(err)
		}
		resp, body = e.do("PATCH", keyPath, e.OwnerKey, map[string]any{"name": "primary", "priority": 9, "enabled": false})
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeExact[providerKeyJSON](t, body); got.Name != "primary" || got.Priority != 9 || got.Enabled || got.Hint != k0.Hint ||
			got.CooldownUntil == nil || *got.CooldownUntil != "2031-05-06T07:08:09Z" {
			t.Errorf("PATCH key = %+v, want the edit and cooldown_until 2031-05-06T07:08:09Z", got)
		}
		if stored, err := e.Store.ProviderKey(context.Background(), p.ID, k0.ID); err != nil || stored.CooldownUntil == nil || !stored.CooldownUntil.Equal(cooldown) {
			t.Errorf("after PATCH, stored key = %+v, %v; want cooldown_until %v kept", stored, err, cooldown)
		}

		// DELETE: a key that exists under another provider is 404 and stays.
		resp, body = e.do("DELETE", e.providersPath("/"+p.ID+"/keys/"+first.ID), e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		if _, err := e.Store.ProviderKey(context.Background(), q.ID, first.ID); err != nil {
			t.Errorf("the key addressed under the wrong provider was deleted: %v", err)
		}
		resp, body = e.do("DELETE", keyPath, e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		resp, body = e.do("DELETE", keyPath, e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)

		// Deleting the provider takes its keys along.
		resp, body = e.do("DELETE", e.providersPath("/"+p.ID), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		if left, err := e.Store.ProviderKeys(context.Background(), p.ID); err != nil || len(left) != 0 {
			t.Errorf("keys of a deleted provider: %d left, %v", len(left), err)
		}
		resp, body = e.do("GET", keys, e.OwnerKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
	})
}

func TestProviderKeyLimit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "openai", "type": "openai"})
		for i := range keybridge.MaxProviderKeys {
			e.addProviderKey(p.ID, map[string]any{"api_key": fmt.Sprintf("sk-limit-test-key-%04d-abcdef", i)})
		}
		resp, body := e.do("POST", e.providersPath("/"+p.ID+"/keys"), e.OwnerKey, map[string]any{"api_key": "sk-limit-test-key-extra-abcdef"})
		wantError(t, resp, body, keybridge.EConflict)
	})
}

func TestProviderAudit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{
			"region": "us-east-1", "access_key": "AKIAAUDITACCESSKEY01", "access_key_secret": "audit-secret-access-key-000000000000000"}})
		resp, body := e.do("PATCH", e.providersPath("/bedrock"), e.OwnerKey, map[string]any{"display_name": "AWS",
			"settings": map[string]any{"access_key_secret": "audit-secret-access-key-rotated-00000000"}})
		wantStatus(t, resp, body, http.StatusOK)
		o := e.addProvider(map[string]any{"name": "openai", "type": "openai"})
		k := e.addProviderKey(o.ID, map[string]any{"api_key": "sk-audit-provider-key-000000000000"})
		resp, body = e.do("PATCH", e.providersPath("/openai/keys/"+k.ID), e.OwnerKey, map[string]any{"enabled": false})
		wantStatus(t, resp, body, http.StatusOK)
		// A PATCH that changes nothing records nothing.
		resp, body = e.do("PATCH", e.providersPath("/openai/keys/"+k.ID), e.OwnerKey, map[string]any{"enabled": false})
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = e.do("DELETE", e.providersPath("/openai/keys/"+k.ID), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		resp, body = e.do("DELETE", e.providersPath("/"+p.ID), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)

		want := []string{"provider.delete", "provider_key.delete", "provider_key.update", "provider_key.create", "provider.create", "provider.update", "provider.create"}
		if got := e.auditActions(e.Org.ID); !slices.Equal(got, want) {
			t.Errorf("audit actions = %v, want %v", got, want)
		}
		events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: e.Org.ID}, store.Page{Limit: store.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		all, _ := json.Marshal(events)
		for _, secret := range []string{"AKIAAUDITACCESSKEY01", "audit-secret-access-key", "sk-audit-provider-key"} {
			if strings.Contains(string(all), secret) {
				t.Errorf("audit events hold %q", secret)
			}
		}
		for _, ev := range events {
			if ev.Action == "provider.update" {
				c, ok := ev.Changes["settings.access_key_secret"]
				if !ok || c.Old != keybridge.Redacted || c.New != keybridge.Redacted {
					t.Errorf("provider.update changes = %v, want settings.access_key_secret redacted on both sides", ev.Changes)
				}
				if _, ok := ev.Changes["settings.access_key"]; ok {
					t.Errorf("provider.update records an access_key change that did not happen")
				}
				if d := ev.Changes["display_name"]; d.Old != "bedrock" || d.New != "AWS" {
					t.Errorf("provider.update display_name change = %v", d)
				}
			}
			if ev.Action == "provider_key.create" && ev.Changes["api_key"].New != keybridge.Redacted {
				t.Errorf("provider_key.create api_key change = %v, want redacted", ev.Changes["api_key"])
			}
			if ev.Actor.ID == "" || ev.RequestID == "" {
				t.Errorf("%s event has no actor or request id: %+v", ev.Action, ev)
			}
		}
	})
}

// TestProviderConcurrentSecretRotation: two admins rotating different
// secrets of one provider at the same time both keep their change; the
// read-merge-write of the settings is serialized per provider.
func TestProviderConcurrentSecretRotation(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{
			"region": "us-east-1", "access_key": "AKIAROTATE0000000000", "access_key_secret": "rotate-secret-000"}})
		const rounds = 8
		var wg sync.WaitGroup
		for _, field := range []string{"access_key", "access_key_secret"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range rounds {
					resp, body := e.do("PATCH", e.providersPath("/"+p.ID), e.OwnerKey,
						map[string]any{"settings": map[string]any{field: fmt.Sprintf("%s-%d", field, i)}})
					if resp.StatusCode != http.StatusOK {
						t.Errorf("PATCH %s = %d %s", field, resp.StatusCode, body)
					}
				}
			}()
		}
		wg.Wait()
		sp, err := e.Store.Provider(context.Background(), e.Org.ID, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := e.Ring.Open(sp.SettingsSealed, keybridge.SealedProviderSettings.AD(p.ID))
		if err != nil {
			t.Fatal(err)
		}
		var s keybridge.ProviderSettings
		if err := s.UnmarshalSealed(plain); err != nil {
			t.Fatal(err)
		}
		last := fmt.Sprint(rounds - 1)
		if s.AccessKey.Reveal() != "access_key-"+last || s.AccessKeySecret.Reveal() != "access_key_secret-"+last {
			t.Errorf("after concurrent rotations: access_key %q, access_key_secret %q; want both last values (-%s)",
				s.AccessKey.Reveal(), s.AccessKeySecret.Reveal(), last)
		}
	})
}

package gateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// recorder is an upstream that records the last request it got.
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	last *http.Request
	n    int
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		rec.mu.Lock()
		rec.last, rec.n = r.Clone(r.Context()), rec.n+1
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "must not pass")
		w.Header().Set("Anthropic-Ratelimit-Requests-Remaining", "41")
		io.WriteString(w, `{}`)
	}))
	t.Cleanup(rec.Close)
	return rec
}

func (rec *recorder) lastRequest() (*http.Request, int) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.last, rec.n
}

func TestCallerCredentialsNeverForwarded(t *testing.T) {
	e := newEnv(t)
	up := newRecorder(t)
	upKey := canary(t, "sk-ant-")
	e.provider(map[string]any{"name": "ant", "type": "anthropic", "base_url": up.URL})
	e.addKey("ant", upKey, 0)
	for _, place := range []string{"Authorization", "x-api-key", "api-key", "x-goog-api-key", "query"} {
		t.Run(place, func(t *testing.T) {
			path := "/gateway/ant/v1/messages?beta=true"
			if place == "query" {
				path = "/gateway/ant/v1/messages?key=" + e.OwnerKey + "&beta=true"
			}
			req := e.post(path, "", `{"model":"claude"}`)
			switch place {
			case "query":
			case "Authorization":
				req.Header.Set(place, "Bearer "+e.OwnerKey)
			default:
				req.Header.Set(place, e.OwnerKey)
			}
			req.Header.Set("anthropic-version", "2023-06-01")
			req.Header.Set("anthropic-beta", "tools-2024")
			req.Header.Set("Connection", "keep-alive, X-Drop-Me")
			req.Header.Set("X-Drop-Me", "hop")
			req.Header.Set("Proxy-Authorization", "Basic secret")
			resp, body := e.do(req)
			if resp.StatusCode != 200 {
				t.Fatalf("= %d %s", resp.StatusCode, body)
			}
			got, _ := up.lastRequest()
			if got.RequestURI != "/v1/messages?beta=true" {
				t.Errorf("upstream URI = %q, want the key parameter gone and the rest kept", got.RequestURI)
			}
			if got.Header.Get("X-Api-Key") != upKey {
				t.Error("the upstream key did not arrive as x-api-key")
			}
			for name, vv := range got.Header {
				for _, v := range vv {
					if strings.Contains(v, e.OwnerKey) {
						t.Errorf("upstream header %s holds the Keybridge key", name)
					}
				}
			}
			for _, h := range []string{"Authorization", "Api-Key", "X-Goog-Api-Key", "X-Drop-Me", "Proxy-Authorization"} {
				if got.Header.Get(h) != "" {
					t.Errorf("upstream got %s", h)
				}
			}
			if got.Header.Get("Anthropic-Version") != "2023-06-01" || got.Header.Get("Anthropic-Beta") != "tools-2024" {
				t.Errorf("provider headers did not pass: %v", got.Header)
			}
			if resp.Header.Get("X-Hop") != "" {
				t.Error("a header the upstream's Connection named reached the client")
			}
			if resp.Header.Get("Anthropic-Ratelimit-Requests-Remaining") != "41" {
				t.Error("the provider's rate-limit header did not pass")
			}
		})
	}
	noCanary(t, upKey, e.logs())
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	up := newRecorder(t)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	e.provider(map[string]any{"name": "off", "type": "openai", "base_url": up.URL + "/v1", "enabled": false})
	e.addKey("off", canary(t, "sk-"), 0)
	_, noInvoke := e.addMember(keybridge.PermProvidersRead)
	revokedID, revoked := "", ""
	{
		out := e.api("POST", "/api/v1/api-keys", e.OwnerKey, map[string]any{"name": "soon revoked", "permissions": []string{"gateway:invoke"}}, 201)
		revokedID, revoked = out["id"].(string), out["key"].(string)
		e.api("POST", "/api/v1/api-keys/"+revokedID+"/revoke", e.OwnerKey, nil, 200)
	}
	for _, tc := range []struct {
		name, path, key string
		status          int
		code            string
	}{
		{"no key", "/gateway/oai/chat/completions", "", 401, "unauthenticated"},
		{"provider's own key", "/gateway/oai/chat/completions", "sk-real-looking", 401, "unauthenticated"},
		{"malformed kb key", "/gateway/oai/chat/completions", "kb_nope", 401, "unauthenticated"},
		{"revoked key", "/gateway/oai/chat/completions", revoked, 401, "unauthenticated"},
		{"no gateway:invoke", "/gateway/oai/chat/completions", noInvoke, 403, "permission_denied"},
		{"unknown provider", "/gateway/nope/chat/completions", e.OwnerKey, 404, "not_found"},
		{"disabled provider", "/gateway/off/chat/completions", e.OwnerKey, 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do(e.post(tc.path, tc.key, `{}`))
			if resp.StatusCode != tc.status || resp.Header.Get("X-Keybridge-Error") != tc.code {
				t.Fatalf("= %d (%s) %s, want %d %s", resp.StatusCode, resp.Header.Get("X-Keybridge-Error"), body, tc.status, tc.code)
			}
			var v map[string]map[string]any
			if err := json.Unmarshal(body, &v); err != nil || v["error"]["message"] == "" {
				t.Errorf("body = %s", body)
			}
			if tc.status == 404 {
				if v["error"]["code"] != "not_found" {
					t.Errorf("an unknown provider answers the §1 shape: %s", body)
				}
			} else if v["error"]["code"] != tc.code || v["error"]["type"] == nil {
				t.Errorf("body = %s, want OpenAI's shape with code %s", body, tc.code)
			}
		})
	}
	if _, n := up.lastRequest(); n != 0 {
		t.Errorf("the upstream got %d requests", n)
	}
}

func TestAIKeyTypesAndKeySources(t *testing.T) {
	e := newEnv(t)
	up := newRecorder(t)
	orgKey, personalKey := canary(t, "sk-org-"), canary(t, "sk-mine-")
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", orgKey, 0)
	e.provider(map[string]any{"name": "ant", "type": "anthropic", "base_url": up.URL})
	e.addKey("ant", canary(t, "sk-ant-"), 0)
	e.provider(map[string]any{"name": "mine", "type": "openai", "base_url": up.URL + "/v1", "key_source": "user"})
	e.provider(map[string]any{"name": "either", "type": "openai", "base_url": up.URL + "/v1", "key_source": "user_or_org"})
	e.addKey("either", orgKey, 0)
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "ci"}, 201)["id"].(string)
	aiSecret := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey,
		map[string]any{"name": "ci", "ai_type": "OPENAI"}, 201)["secret"].(string)

	sentKey := func() string {
		got, _ := up.lastRequest()
		return strings.TrimPrefix(got.Header.Get("Authorization"), "Bearer ")
	}
	call := func(provider, key string) (*http.Response, []byte) {
		return e.do(e.post("/gateway/"+provider+"/chat/completions", key, `{}`))
	}

	if resp, body := call("oai", aiSecret); resp.StatusCode != 200 || sentKey() != orgKey {
		t.Errorf("OPENAI AI key on openai: %d %s", resp.StatusCode, body)
	}
	if resp, body := call("ant", aiSecret); resp.StatusCode != 403 {
		t.Errorf("OPENAI AI key on anthropic: %d %s, want 403", resp.StatusCode, body)
	}
	resp, body := call("mine", e.OwnerKey)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "/api/v1/users/me/credentials") {
		t.Errorf("user provider without a personal key: %d %s, want 403 saying how to add one", resp.StatusCode, body)
	}
	if resp, body := call("either", e.OwnerKey); resp.StatusCode != 200 || sentKey() != orgKey {
		t.Errorf("user_or_org without a personal key: %d %s, want the org's key", resp.StatusCode, body)
	}
	e.api("POST", "/api/v1/users/me/credentials", e.OwnerKey, map[string]any{"org": "acme", "provider": "mine", "api_key": personalKey}, 201)
	e.api("POST", "/api/v1/users/me/credentials", e.OwnerKey, map[string]any{"org": "acme", "provider": "either", "api_key": personalKey}, 201)
	if resp, body := call("mine", e.OwnerKey); resp.StatusCode != 200 || sentKey() != personalKey {
		t.Errorf("user provider with a personal key: %d %s", resp.StatusCode, body)
	}
	if resp, body := call("either", e.OwnerKey); resp.StatusCode != 200 || sentKey() != personalKey {
		t.Errorf("user_or_org with a personal key: %d %s, want the personal key", resp.StatusCode, body)
	}
	if resp, body := call("mine", aiSecret); resp.StatusCode != 403 {
		t.Errorf("AI key on a user provider: %d %s, want 403", resp.StatusCode, body)
	}
	if resp, body := call("either", aiSecret); resp.StatusCode != 200 || sentKey() != orgKey {
		t.Errorf("AI key on user_or_org: %d %s, want the org's key", resp.StatusCode, body)
	}
	noCanary(t, orgKey, e.logs())
	noCanary(t, personalKey, e.logs())
}

// A path with a dot segment, as sent or percent-encoded, is refused for
// every key before anything is sent: the path goes byte for byte, and a
// provider that resolves it would serve what lies outside its base URL's
// path with the provider's own credential.
func TestDotSegmentsAreRefused(t *testing.T) {
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	restricted := restrictedKey(e, "gpt-4o-mini")
	for _, path := range []string{
		"/gateway/oa/../../admin",
		"/gateway/oa/models/../chat/completions",
		"/gateway/oa/./chat/completions",
		"/gateway/oa/%2e%2E/admin",
		"/gateway/oa/chat/completions/..",
	} {
		for _, key := range []string{e.OwnerKey, restricted} {
			before := len(mock.Requests())
			resp, body := e.do(e.post(path, key, `{"model":"gpt-4o-mini","messages":[]}`))
			var v struct {
				Error struct{ Type, Code, Message string } `json:"error"`
			}
			json.Unmarshal(body, &v)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Keybridge-Error") != keybridge.EInvalid ||
				v.Error.Type != "invalid_request_error" || v.Error.Code != keybridge.EInvalid || !strings.Contains(v.Error.Message, "segment") {
				t.Errorf("%s: %d %s, want 400 %s in OpenAI's shape", path, resp.StatusCode, body, keybridge.EInvalid)
			}
			if n := len(mock.Requests()) - before; n != 0 {
				t.Errorf("%s: refused, but reached the provider", path)
			}
		}
	}
	// Dots inside a segment are no dot segment.
	if resp, body := e.do(e.post("/gateway/oa/chat/completions.v2", e.OwnerKey, `{"model":"gpt-4o","messages":[]}`)); resp.Header.Get("X-Keybridge-Error") != "" {
		t.Errorf("a dot inside a segment: %d %s", resp.StatusCode, body)
	}
}

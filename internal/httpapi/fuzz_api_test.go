package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/upstream"
)

// bodyRoutes lists the routes of routes.go (the list the OpenAPI test
// keeps in step with the document) whose operation takes a request body in
// the OpenAPI document, sorted.
func bodyRoutes(t testing.TB) []string {
	t.Helper()
	var doc openapiDoc
	if err := json.Unmarshal(fetchOpenAPI(t), &doc); err != nil {
		t.Fatalf("decode document: %v", err)
	}
	var out []string
	for route := range routesInSource(t) {
		method, path, _ := strings.Cut(route, " ")
		raw, ok := doc.Paths[path][strings.ToLower(method)]
		if !ok {
			t.Fatalf("%s is not in the OpenAPI document", route)
		}
		var op struct {
			RequestBody json.RawMessage `json:"requestBody"`
		}
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Fatalf("%s: %v", route, err)
		}
		if op.RequestBody != nil {
			out = append(out, route)
		}
	}
	sort.Strings(out)
	if len(out) < 20 {
		t.Fatalf("only %d routes take a body; the document lost requestBody", len(out))
	}
	return out
}

// fuzzSeeds are well-formed bodies, one or more per route, for the fuzzer
// to start from; routes without a seed start from {}.
var fuzzSeeds = map[string][]string{
	"POST /api/v1/setup":                                         {`{"token":"kbs_x","org":"o","email":"a@b.test","name":"A","password":"pass-word-1234"}`},
	"POST /api/v1/auth/login":                                    {`{"email":"admin@acme.test","password":"wrong-password"}`},
	"POST /api/v1/auth/accept-invite":                            {`{"token":"kbi_x","password":"pass-word-1234","name":"N"}`},
	"POST /api/v1/orgs":                                          {`{"slug":"fuzz-org","name":"Fuzz"}`},
	"PATCH /api/v1/orgs/{org}":                                   {`{"name":"Acme"}`},
	"POST /api/v1/orgs/{org}/members":                            {`{"email":"new@acme.test","name":"New","role":"member"}`},
	"PATCH /api/v1/orgs/{org}/members/{userID}":                  {`{"role":"admin"}`},
	"POST /api/v1/api-keys":                                      {`{"name":"k","permissions":["gateway:invoke"],"expires_at":"2030-01-01T00:00:00Z","rate_limit_rpm":5,"token_budget":9,"budget_period":"day","allowed_models":["gpt-*"]}`},
	"PATCH /api/v1/api-keys/{id}":                                {`{"name":"k2","token_budget":null,"allowed_models":[]}`},
	"POST /api/v1/api-keys/{id}/rotate":                          {`{"grace_period_seconds":0}`},
	"POST /api/v1/leaked-keys":                                   {`[{"token":"kb_x","type":"t","url":"https://example.test/x","source":"scan"}]`},
	"POST /api/v1/orgs/{org}/providers":                          {`{"name":"b","type":"bedrock","settings":{"region":"us-east-1","access_key":"AKIAEXAMPLE","access_key_secret":"s"}}`, `{"name":"o","type":"openai","base_url":"https://api.openai.com/v1"}`},
	"POST /api/v1/orgs/{org}/providers/test":                     {`{"type":"openai","base_url":"https://127.0.0.1:1/v1","api_key":"sk-test"}`},
	"PATCH /api/v1/orgs/{org}/providers/{provider}":              {`{"display_name":"OpenAI","enabled":false,"settings":null}`},
	"POST /api/v1/orgs/{org}/providers/{provider}/keys":          {`{"api_key":"sk-fuzz-0000000000000000000000"}`},
	"PATCH /api/v1/orgs/{org}/providers/{provider}/keys/{keyID}": {`{"enabled":false}`},
	"POST /api/v1/users/me/password":                             {`{"current_password":"wrong-password","new_password":"new-password-1234"}`},
	"POST /api/v1/users/me/credentials":                          {`{"org":"acme","provider":"openai","api_key":"sk-fuzz-1111111111111111111111"}`},
	"PATCH /api/v1/users/me/credentials/{id}":                    {`{"api_key":"sk-fuzz-2222222222222222222222"}`},
	"POST /api/v1/orgs/{org}/projects":                           {`{"name":"p","description":"d"}`},
	"PATCH /api/v1/orgs/{org}/projects/{projectID}":              {`{"description":"d2"}`},
	"POST /api/v1/orgs/{org}/projects/{projectID}/ai-keys":       {`{"name":"a","ai_type":"OPENAI","rate_limit_tpm":100}`},
	"PATCH /api/v1/orgs/{org}/projects/{projectID}/ai-keys/{id}": {`{"name":"a2"}`},
}

const debugFuzz = false

// FuzzManagementAPI sends arbitrary bodies to every management route that
// takes one, through the real handler over SQLite: no answer may be a 5xx
// or a panic, and every error must be in SPEC §1's one shape with the
// status of its code. Run it with scripts/fuzz.sh (docs/testing.md).
func FuzzManagementAPI(f *testing.F) {
	routes := bodyRoutes(f)
	for route := range fuzzSeeds {
		if !slices.Contains(routes, route) {
			f.Errorf("fuzzSeeds has %q, which is not a route taking a body", route)
		}
	}
	for i, route := range routes {
		seeds, ok := fuzzSeeds[route]
		if !ok {
			seeds = []string{`{}`}
		}
		for _, s := range seeds {
			f.Add(uint8(i), []byte(s))
		}
	}
	// No probe leaves the machine: every address is denied and no name
	// resolves.
	noDNS := &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no DNS in the fuzzer")
	}}
	up := upstream.New(upstream.Options{Timeout: time.Second, Resolver: noDNS,
		DenyCIDRs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}})
	e := newEnvWith(f, storetest.SQLite(f), envOptions{Config: httpapi.Config{Upstream: up}})
	memberID, _ := e.addMember(keybridge.RoleMember)
	prov := e.addProvider(map[string]any{"name": "openai", "type": "openai", "key_source": "user_or_org"})
	pkey := e.addProviderKey(prov.ID, map[string]any{"api_key": "sk-fuzz-3333333333333333333333"})
	key := e.newKey(e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}})
	created := func(method, path, body string) string {
		resp, raw := e.do(method, path, e.OwnerKey, body)
		wantStatus(f, resp, raw, http.StatusCreated)
		return decodeAs[struct {
			ID string `json:"id"`
		}](f, raw).ID
	}
	orgPath := "/api/v1/orgs/" + e.Org.ID
	project := created("POST", orgPath+"/projects", `{"name":"fuzz"}`)
	aiKey := created("POST", orgPath+"/projects/"+project+"/ai-keys", `{"name":"fuzz","ai_type":"OPENAI"}`)
	cred := created("POST", "/api/v1/users/me/credentials", `{"org":"`+e.Org.ID+`","provider":"`+prov.ID+`","api_key":"sk-fuzz-4444444444444444444444"}`)
	path := func(route string) (string, string) {
		method, p, _ := strings.Cut(route, " ")
		id := key.ID
		switch {
		case strings.Contains(p, "/ai-keys/"):
			id = aiKey
		case strings.Contains(p, "/credentials/"):
			id = cred
		}
		// IDs, not slugs or names: a fuzzed PATCH may rename anything.
		return method, strings.NewReplacer("{org}", e.Org.ID, "{userID}", memberID, "{provider}", prov.ID,
			"{keyID}", pkey.ID, "{projectID}", project, "{id}", id).Replace(p)
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		route := routes[int(which)%len(routes)]
		method, p := path(route)
		r := httptest.NewRequest(method, p, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer "+e.OwnerKey)
		w := httptest.NewRecorder()
		e.API.ServeHTTP(w, r)
		if debugFuzz {
			t.Logf("%s %.80s = %d %.200s", route, body, w.Code, w.Body)
		}
		if w.Code >= 500 {
			t.Fatalf("%s %q = %d %s", route, body, w.Code, w.Body)
		}
		if w.Code < 400 {
			return
		}
		var got struct {
			Error struct {
				Code    string            `json:"code"`
				Message string            `json:"message"`
				Fields  map[string]string `json:"fields"`
			} `json:"error"`
		}
		dec := json.NewDecoder(w.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil || got.Error.Code == "" || got.Error.Message == "" {
			t.Fatalf("%s %q = %d with a body not in the error shape (%v): %s", route, body, w.Code, err, w.Body)
		}
		if want := httpapi.Status(got.Error.Code); want != w.Code {
			t.Fatalf("%s %q = %d with code %s, whose status is %d", route, body, w.Code, got.Error.Code, want)
		}
		for field, why := range got.Error.Fields {
			if field == "" || why == "" {
				t.Fatalf("%s %q: error field %q: %q, want both named", route, body, field, why)
			}
		}
	})
}

package httpapi_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/httpapi"
)

var update = flag.Bool("update", false, "rewrite golden files")

// routesInSource is the API's route list, as a set.
func routesInSource(t testing.TB) map[string]bool {
	t.Helper()
	routes := map[string]bool{}
	for _, r := range httpapi.Routes() {
		routes[r] = true
	}
	if len(routes) < 10 {
		t.Fatalf("httpapi.Routes lists only %d routes", len(routes))
	}
	return routes
}

type openapiDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components map[string]map[string]any             `json:"components"`
}

type operation struct {
	OperationID string                     `json:"operationId"`
	Parameters  []map[string]any           `json:"parameters"`
	Responses   map[string]json.RawMessage `json:"responses"`
}

var httpMethods = map[string]bool{"get": true, "put": true, "post": true, "delete": true, "options": true, "head": true, "patch": true, "trace": true}

func fetchOpenAPI(t testing.TB) []byte {
	t.Helper()
	srv := httpapi.New(httpapi.Config{})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /api/v1/openapi.json = %d %s, want 200", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return rec.Body.Bytes()
}

// TestOpenAPIMatchesRoutes keeps the document true: every route of
// routes.go is documented with its method, and every documented operation
// is routed.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	raw := fetchOpenAPI(t)
	var doc openapiDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("decode document: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	routes := routesInSource(t)
	documented := map[string]bool{}
	ids := map[string]string{}
	for path, item := range doc.Paths {
		var pathParams []map[string]any
		if p, ok := item["parameters"]; ok {
			if err := json.Unmarshal(p, &pathParams); err != nil {
				t.Errorf("%s: parameters: %v", path, err)
			}
		}
		for method, rawOp := range item {
			if method == "parameters" || method == "summary" || method == "description" {
				continue
			}
			if !httpMethods[method] {
				t.Errorf("%s: %q is not an HTTP method", path, method)
				continue
			}
			route := strings.ToUpper(method) + " " + path
			documented[route] = true
			var op operation
			if err := json.Unmarshal(rawOp, &op); err != nil {
				t.Errorf("%s: %v", route, err)
				continue
			}
			if op.OperationID == "" {
				t.Errorf("%s has no operationId", route)
			} else if other, dup := ids[op.OperationID]; dup {
				t.Errorf("operationId %q is used by %s and %s", op.OperationID, other, route)
			}
			ids[op.OperationID] = route
			if len(op.Responses) == 0 {
				t.Errorf("%s documents no responses", route)
			}
			checkPathParams(t, doc, route, path, append(pathParams, op.Parameters...))
		}
	}
	for r := range routes {
		if !documented[r] {
			t.Errorf("route %s is not in the OpenAPI document", r)
		}
	}
	for r := range documented {
		if !routes[r] {
			t.Errorf("the OpenAPI document has %s, which routes.go does not route", r)
		}
	}
	checkRefs(t, raw, doc)
}

var pathParam = regexp.MustCompile(`\{([^}.]+)(\.\.\.)?\}`)

// checkPathParams checks that each {name} of path is a declared path parameter.
func checkPathParams(t *testing.T, doc openapiDoc, route, path string, params []map[string]any) {
	t.Helper()
	declared := map[string]bool{}
	for _, p := range params {
		if ref, ok := p["$ref"].(string); ok {
			name := strings.TrimPrefix(ref, "#/components/parameters/")
			if c, ok := doc.Components["parameters"][name].(map[string]any); ok {
				p = c
			}
		}
		if p["in"] == "path" {
			declared[p["name"].(string)] = true
		}
	}
	for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
		if !declared[m[1]] {
			t.Errorf("%s: path parameter %q is not declared", route, m[1])
		}
	}
}

var refPattern = regexp.MustCompile(`"\$ref":\s*"#/components/([^/"]+)/([^"]+)"`)

// checkRefs checks that every $ref names a component that exists.
func checkRefs(t *testing.T, raw []byte, doc openapiDoc) {
	t.Helper()
	for _, m := range refPattern.FindAllSubmatch(raw, -1) {
		kind, name := string(m[1]), string(m[2])
		if _, ok := doc.Components[kind][name]; !ok {
			t.Errorf("$ref #/components/%s/%s names nothing", kind, name)
		}
	}
}

// TestOpenAPIGolden pins the document: a change shows up in review as a
// diff of testdata/openapi.json. Run with -update after editing a fragment.
func TestOpenAPIGolden(t *testing.T) {
	got := fetchOpenAPI(t)
	golden := filepath.Join("testdata", "openapi.json")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden file (create it with -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("GET /api/v1/openapi.json differs from %s; rerun with -update if the change is meant", golden)
	}
}

// TestOpenAPIFragmentsDoNotOverlap checks that each fragment is valid JSON of
// the expected shape; the merge itself refuses two fragments defining the
// same operation, which fetchOpenAPI would report as a 500.
func TestOpenAPIFragmentsDoNotOverlap(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("openapi", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fragments: %v", err)
	}
	sort.Strings(files)
	if filepath.Base(files[0]) != "00_base.json" {
		t.Errorf("first fragment = %s, want 00_base.json", files[0])
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var frag map[string]json.RawMessage
		if err := json.Unmarshal(b, &frag); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for k := range frag {
			if filepath.Base(f) != "00_base.json" && k != "paths" && k != "components" {
				t.Errorf("%s: top-level key %q; fragments hold only paths and components", f, k)
			}
		}
	}
}

package httpapi_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// queryRoutes lists the operations of the OpenAPI document that take query
// parameters, with the names of those parameters, so that a route gaining
// one is covered by the tests below without editing them.
func queryRoutes(t testing.TB) map[string][]string {
	t.Helper()
	var doc openapiDoc
	if err := json.Unmarshal(fetchOpenAPI(t), &doc); err != nil {
		t.Fatalf("decode document: %v", err)
	}
	params, _ := doc.Components["parameters"]
	out := map[string][]string{}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			if !httpMethods[method] {
				continue
			}
			var op operation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			for _, p := range op.Parameters {
				if ref, ok := p["$ref"].(string); ok {
					p, _ = params[ref[strings.LastIndex(ref, "/")+1:]].(map[string]any)
				}
				if p["in"] == "query" {
					route := strings.ToUpper(method) + " " + path
					out[route] = append(out[route], p["name"].(string))
				}
			}
		}
	}
	if len(out) < 5 {
		t.Fatalf("only %d operations take query parameters; the document lost them", len(out))
	}
	return out
}

// TestMalformedQuery walks every operation that reads a query: a query
// that does not decode (a bad % escape, a ';' separator), a parameter sent
// twice, is a 400 in the error shape naming the parameter, never an answer
// computed as if the parameter had not been sent. An unknown parameter is
// ignored and an empty value is the parameter left out, as documented.
func TestMalformedQuery(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		prov := e.addProvider(map[string]any{"name": "oa", "type": "openai"})
		resp, raw := e.do("POST", auPath(e.Org, "/projects"), e.OwnerKey, `{"name":"q"}`)
		wantStatus(t, resp, raw, http.StatusCreated)
		project := decodeAs[struct {
			ID string `json:"id"`
		}](t, raw).ID
		fill := strings.NewReplacer("{org}", e.Org.Slug, "{provider}", prov.ID, "{projectID}", project)
		// A valid value for each parameter, for the cases that need one.
		valid := map[string]string{
			"limit": "10", "cursor": "", "since": time.Now().UTC().Add(-time.Hour).Format(time.RFC3339),
			"until": "", "group_by": "model", "bucket": "day", "refresh": "false", "include_deleted": "true",
			"action": "provider.create", "actor": e.Owner.ID, "resource_type": "provider", "resource_id": prov.ID,
		}
		routes := queryRoutes(t)
		names := make([]string, 0, len(routes))
		for route := range routes {
			names = append(names, route)
		}
		sort.Strings(names)
		for _, route := range names {
			method, path, _ := strings.Cut(route, " ")
			path = fill.Replace(path)
			get := func(query string) (*http.Response, []byte) {
				t.Helper()
				return e.do(method, path+"?"+query, e.OwnerKey, nil)
			}
			refused := func(query, field, why string) {
				t.Helper()
				resp, raw := get(query)
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("%s ?%s = %d %.300s, want 400", route, query, resp.StatusCode, raw)
					return
				}
				got := wantError(t, resp, raw, keybridge.EInvalid)
				if field == "" {
					if !strings.Contains(got.Error.Message, "query") {
						t.Errorf("%s ?%s: message %q does not name the query", route, query, got.Error.Message)
					}
					return
				}
				if w := got.Error.Fields[field]; !strings.Contains(w, why) {
					t.Errorf("%s ?%s: fields = %v, want %q saying %q", route, query, got.Error.Fields, field, why)
				}
			}
			accepted := func(query string) {
				t.Helper()
				resp, raw := get(query)
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%s ?%s = %d %.300s, want 200", route, query, resp.StatusCode, raw)
				}
			}
			accepted("")
			accepted("no_such_parameter=1")
			refused("%ZZ=1", "", "")
			refused("a=1;b=2", "", "")
			for _, p := range routes[route] {
				accepted(p + "=")
				accepted(p + "=" + valid[p])
				refused(p+"=%ZZ", p, "URL")
				refused(p+"=%", p, "URL")
				refused(p+"=%e", p, "URL")
				refused(p+"=1;x", "", "")
				refused(p+"="+valid[p]+"&"+p+"="+valid[p], p, "more than once")
				refused(p+"=&"+p+"=", p, "more than once")
				// Any text, however long or odd, is a value or a 400 naming
				// the parameter; never a 500 from the database.
				for _, v := range []string{strings.Repeat("a", 8000), "%C3%A9%E2%80%AE", "'%20OR%201=1--", "%25", "%2B", "a%20b", "%0A"} {
					resp, raw := get(p + "=" + v)
					if resp.StatusCode == http.StatusOK {
						continue
					}
					if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields[p] == "" {
						t.Errorf("%s ?%s=%.40s: fields = %v, want %s", route, p, v, got.Error.Fields, p)
					}
				}
			}
		}

		// Pages: limit is a whole number from 1 to 500; a cursor is one a
		// previous page of that list gave.
		lists := []string{}
		for route, ps := range routes {
			for _, p := range ps {
				if p == "cursor" {
					lists = append(lists, fill.Replace(strings.TrimPrefix(route, "GET ")))
				}
			}
		}
		cursorOf := func(parts ...string) string {
			b, _ := json.Marshal(parts)
			return base64.RawURLEncoding.EncodeToString(b)
		}
		for _, path := range lists {
			for _, l := range []string{"0", "-1", "501", "1.5", "1e2", "ten", "+5", " 5", "99999999999999999999"} {
				resp, raw := e.do("GET", path+"?limit="+strings.ReplaceAll(l, " ", "%20"), e.OwnerKey, nil)
				if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["limit"] == "" {
					t.Errorf("GET %s?limit=%s: fields = %v, want limit", path, l, got.Error.Fields)
				}
			}
			for _, l := range []string{"1", "500"} {
				resp, raw := e.do("GET", path+"?limit="+l, e.OwnerKey, nil)
				wantStatus(t, resp, raw, http.StatusOK)
			}
			for _, c := range []string{"garbage", "AAAA", cursorOf("a"), cursorOf("\x00", "\x00"), cursorOf("\x00", "\x00", "\x00"),
				cursorOf("2026-01-01T00:00:00Z", "\x00"), cursorOf("9223372036854775807", "x"),
				cursorOf("-9223372036854775808", "x"), cursorOf("1e3", "x"), strings.Repeat("A", 4096)} {
				resp, raw := e.do("GET", path+"?cursor="+c, e.OwnerKey, nil)
				if resp.StatusCode == http.StatusOK {
					continue // a cursor of the right shape: a page, maybe empty
				}
				if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["cursor"] == "" {
					t.Errorf("GET %s?cursor=%s: fields = %v, want cursor", path, c, got.Error.Fields)
				}
			}
		}
		if strings.Contains(e.logs(), `"level":"ERROR"`) {
			t.Errorf("bad queries were logged as errors:\n%.2000s", e.logs())
		}
	})
}

package httpapi_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// dbSnapshot returns, per table, a digest of every row of st's database,
// so a test can tell that a refused request changed nothing.
func dbSnapshot(t testing.TB, st store.Store) map[string]string {
	t.Helper()
	db := st.(interface{ DB() *sqlstore.DB }).DB()
	ctx := context.Background()
	list := `SELECT name FROM sqlite_master WHERE type = 'table'`
	if db.Dialect.Name == "postgres" {
		list = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`
	}
	rows, err := db.Write.QueryContext(ctx, list)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	out := map[string]string{}
	if db.Dialect.Name == "postgres" {
		// One round trip: the rows of every table as text, digested there.
		var parts []string
		for _, table := range tables {
			parts = append(parts, fmt.Sprintf(`SELECT '%s', count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM %s x`, table, table))
		}
		rows, err := db.Write.QueryContext(ctx, strings.Join(parts, " UNION ALL "))
		if err != nil {
			t.Fatalf("digest tables: %v", err)
		}
		defer rows.Close()
		for rows.Next() {
			var table, sum string
			var n int
			if err := rows.Scan(&table, &n, &sum); err != nil {
				t.Fatal(err)
			}
			out[table] = fmt.Sprintf("%d rows %s", n, sum)
		}
		return out
	}
	for _, table := range tables {
		rows, err := db.Write.QueryContext(ctx, `SELECT * FROM `+table)
		if err != nil {
			t.Fatalf("read %s: %v", table, err)
		}
		cols, _ := rows.Columns()
		var lines []string
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			lines = append(lines, fmt.Sprintf("%q", vals))
		}
		rows.Close()
		sort.Strings(lines)
		sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
		out[table] = fmt.Sprintf("%d rows %s", len(lines), hex.EncodeToString(sum[:8]))
	}
	return out
}

// changedTables names the tables whose rows differ between two snapshots.
func changedTables(before, after map[string]string) []string {
	var out []string
	for table, sum := range after {
		if before[table] != sum {
			out = append(out, table)
		}
	}
	sort.Strings(out)
	return out
}

// bodySchema is what the sweep needs of an operation's request body in the
// OpenAPI document: its top-level type, and its properties' types (of the
// items, for an array of objects), required ones marked.
type bodySchema struct {
	array    bool
	props    map[string]string // name → JSON type ("" when a union)
	required []string
}

func requestBodySchemas(t testing.TB) map[string]bodySchema {
	t.Helper()
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(fetchOpenAPI(t), &doc); err != nil {
		t.Fatal(err)
	}
	resolve := func(s map[string]any) map[string]any {
		for s != nil {
			ref, ok := s["$ref"].(string)
			if !ok {
				break
			}
			s = doc.Components.Schemas[ref[strings.LastIndex(ref, "/")+1:]]
		}
		return s
	}
	out := map[string]bodySchema{}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			var op struct {
				RequestBody struct {
					Content map[string]struct {
						Schema map[string]any `json:"schema"`
					} `json:"content"`
				} `json:"requestBody"`
			}
			if !httpMethods[method] || json.Unmarshal(raw, &op) != nil {
				continue
			}
			c, ok := op.RequestBody.Content["application/json"]
			if !ok {
				continue
			}
			s := resolve(c.Schema)
			bs := bodySchema{props: map[string]string{}}
			if s["type"] == "array" {
				bs.array = true
				items, _ := s["items"].(map[string]any)
				s = resolve(items)
			}
			var walk func(s map[string]any)
			walk = func(s map[string]any) {
				s = resolve(s)
				if all, ok := s["allOf"].([]any); ok {
					for _, a := range all {
						walk(a.(map[string]any))
					}
				}
				props, _ := s["properties"].(map[string]any)
				for name, p := range props {
					typ, _ := resolve(p.(map[string]any))["type"].(string)
					bs.props[name] = typ
				}
				for _, r := range anySlice(s["required"]) {
					bs.required = append(bs.required, r.(string))
				}
			}
			walk(s)
			out[strings.ToUpper(method)+" "+path] = bs
		}
	}
	return out
}

func anySlice(v any) []any { s, _ := v.([]any); return s }

// sweepFixture is an org with one object behind every path parameter of
// the API, and another org with its own, for the sweeps below.
type sweepFixture struct {
	ids   map[string]string // path parameter → an ID in e.Org (or of the caller)
	other map[string]string // path parameter → an ID in another org (or of another user)
}

func newSweepFixture(t *testing.T, e *env) sweepFixture {
	t.Helper()
	created := func(key, method, path, body string) string {
		t.Helper()
		resp, raw := e.do(method, path, key, body)
		wantStatus(t, resp, raw, http.StatusCreated)
		return decodeAs[struct {
			ID string `json:"id"`
		}](t, raw).ID
	}
	build := func(orgID, ownerKey string) map[string]string {
		orgPath := "/api/v1/orgs/" + orgID
		prov := created(ownerKey, "POST", orgPath+"/providers", `{"name":"openai","type":"openai","key_source":"user_or_org"}`)
		project := created(ownerKey, "POST", orgPath+"/projects", `{"name":"sweep"}`)
		return map[string]string{
			"{org}":       orgID,
			"{provider}":  prov,
			"{keyID}":     created(ownerKey, "POST", orgPath+"/providers/"+prov+"/keys", `{"api_key":"sk-sweep-`+hex.EncodeToString(randomBytes(t, 12))+`"}`),
			"{projectID}": project,
			"ai-keys":     created(ownerKey, "POST", orgPath+"/projects/"+project+"/ai-keys", `{"name":"sweep","ai_type":"OPENAI"}`),
			"credentials": created(ownerKey, "POST", "/api/v1/users/me/credentials", `{"org":"`+orgID+`","provider":"`+prov+`","api_key":"sk-sweep-`+hex.EncodeToString(randomBytes(t, 12))+`"}`),
			"api-keys":    created(ownerKey, "POST", "/api/v1/api-keys", `{"name":"sweep","permissions":["gateway:invoke"]}`),
		}
	}
	f := sweepFixture{ids: build(e.Org.ID, e.OwnerKey)}
	f.ids["{userID}"], _ = e.addMember(keybridge.RoleMember)
	o := e.otherOrg()
	f.other = build(o.Org.ID, o.OwnerKey)
	f.other["{userID}"] = o.Owner.ID
	return f
}

// path fills route's parameters from ids; {id} is the object the route's
// path names before it.
func (f sweepFixture) path(route string, ids map[string]string) (method, path string) {
	method, p, _ := strings.Cut(route, " ")
	id := ids["api-keys"]
	switch {
	case strings.Contains(p, "/ai-keys/"):
		id = ids["ai-keys"]
	case strings.Contains(p, "/credentials/"):
		id = ids["credentials"]
	}
	return method, strings.NewReplacer("{org}", ids["{org}"], "{userID}", ids["{userID}"], "{provider}", ids["{provider}"],
		"{keyID}", ids["{keyID}"], "{projectID}", ids["{projectID}"], "{id}", id).Replace(p)
}

// wantRefused checks an answer is a 4xx in SPEC §1's error shape with the
// status of its code (a 5xx, a success or another body fails), and returns
// its code.
func wantRefused(t *testing.T, what string, resp *http.Response, raw []byte) string {
	t.Helper()
	if resp.StatusCode < 400 || resp.StatusCode >= 500 {
		t.Errorf("%s = %d %.300s, want a 4xx", what, resp.StatusCode, raw)
		return ""
	}
	var got apiError
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil || got.Error.Code == "" || got.Error.Message == "" {
		t.Errorf("%s = %d with a body not in the error shape (%v): %.300s", what, resp.StatusCode, err, raw)
		return ""
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s: Content-Type %q, X-Request-Id %q", what, resp.Header.Get("Content-Type"), resp.Header.Get("X-Request-Id"))
	}
	if resp.StatusCode != statusOfCode(got.Error.Code) {
		t.Errorf("%s = %d with code %s", what, resp.StatusCode, got.Error.Code)
	}
	return got.Error.Code
}

func statusOfCode(code string) int {
	return map[string]int{
		keybridge.EInvalid: 400, keybridge.EUnauthenticated: 401, keybridge.EForbidden: 403, keybridge.ENotFound: 404,
		keybridge.EConflict: 409, keybridge.ETooLarge: 413, keybridge.ERateLimited: 429,
	}[code]
}

// TestEveryBodyRouteRefusesBadBodies sends every operation of the OpenAPI
// document that takes a body the bodies a careless or hostile client
// sends — malformed, of the wrong JSON type, with trailing bytes, over the
// cap, of another Content-Type, with a key twice, an unknown field, each
// documented field of the wrong type or null, very long, holding NUL or
// invalid UTF-8 — on every engine. Each answer must be a 4xx in the error
// shape, and the database must be exactly as it was before. A secret sent
// in a refused body never comes back in the answer.
func TestEveryBodyRouteRefusesBadBodies(t *testing.T) {
	schemas := requestBodySchemas(t)
	forEachEngine(t, func(t *testing.T, e *env) {
		f := newSweepFixture(t, e)
		canary := "sk-canary-" + hex.EncodeToString(randomBytes(t, 12))
		long := strings.Repeat("x", 200_000)
		state := dbSnapshot(t, e.Store)
		for _, route := range bodyRoutes(t) {
			bs, ok := schemas[route]
			if !ok {
				t.Fatalf("%s: no request body schema", route)
			}
			method, path := f.path(route, f.ids)
			seed := `{}`
			if s := fuzzSeeds[route]; len(s) > 0 {
				seed = s[0]
			}
			open := "{"
			if bs.array {
				open = "[{"
				seed = strings.TrimSuffix(strings.TrimPrefix(seed, "["), "]")
			}
			wrap := func(obj string) string {
				if bs.array {
					return "[" + obj + "]"
				}
				return obj
			}
			// with returns the seed with field set to the raw JSON value.
			with := func(field, value string) string {
				m := map[string]json.RawMessage{}
				if err := json.Unmarshal([]byte(seed), &m); err != nil {
					t.Fatalf("%s: seed %s: %v", route, seed, err)
				}
				m[field] = json.RawMessage(value)
				b, err := json.Marshal(m)
				if err != nil {
					// Not valid JSON on purpose (invalid UTF-8): splice it.
					delete(m, field)
					b, _ = json.Marshal(m)
					sep := ","
					if len(m) == 0 {
						sep = ""
					}
					return wrap(`{"` + field + `":` + value + sep + string(b[1:]))
				}
				return wrap(string(b))
			}
			type badBody struct {
				name, body, contentType string
				code                    string // "" any 4xx
			}
			bodies := []badBody{
				{"malformed", open + `"a":`, "", keybridge.EInvalid},
				{"trailing garbage", wrap(seed) + ` x`, "", keybridge.EInvalid},
				{"two values", wrap(seed) + wrap(seed), "", keybridge.EInvalid},
				{"string", `"` + seed + `"`, "", keybridge.EInvalid},
				{"number", `12`, "", keybridge.EInvalid},
				{"boolean", `true`, "", keybridge.EInvalid},
				{"empty", ``, "", ""},
				{"spaces", "  \n", "", keybridge.EInvalid},
				{"deep", strings.Repeat("[", 100) + strings.Repeat("]", 100), "", keybridge.EInvalid},
				{"oversized", wrap(`{"x":"` + strings.Repeat("a", 1<<20) + `"}`), "", keybridge.ETooLarge},
				{"text/plain", wrap(seed), "text/plain", keybridge.EInvalid},
				{"form", "a=1", "application/x-www-form-urlencoded", keybridge.EInvalid},
				{"latin1", wrap(seed), "application/json; charset=iso-8859-1", keybridge.EInvalid},
				{"unknown field", with("no_such_field", `1`), "", keybridge.EInvalid},
				{"unknown field in capitals", with("NAME", `"x"`), "", keybridge.EInvalid},
				{"invalid UTF-8 key", with("\xff", `1`), "", keybridge.EInvalid},
				{"NUL key", with("a\u0000", `1`), "", keybridge.EInvalid},
			}
			if bs.array {
				bodies = append(bodies, badBody{"object", seed, "", keybridge.EInvalid})
			} else {
				bodies = append(bodies, badBody{"array", `[` + seed + `]`, "", keybridge.EInvalid})
			}
			names := make([]string, 0, len(bs.props))
			for n := range bs.props {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				wrong := `{}`
				switch bs.props[n] {
				case "string":
					wrong = `12345`
				case "object":
					wrong = `"x"`
				}
				bodies = append(bodies,
					badBody{n + " twice", strings.Replace(with(n, `"a"`), `"`+n+`":`, `"`+n+`":"b","`+n+`":`, 1), "", keybridge.EInvalid},
					badBody{n + " of the wrong type", with(n, wrong), "", keybridge.EInvalid},
					badBody{n + " with invalid UTF-8", with(n, "\"a\xffb\""), "", keybridge.EInvalid},
					badBody{n + " with NUL", with(n, `"a\u0000b"`), "", keybridge.EInvalid},
				)
				if bs.props[n] == "string" || bs.props[n] == "" {
					bodies = append(bodies, badBody{n + " very long", with(n, `"`+long+`"`), "", ""})
				}
				if secretFields[n] {
					// Refused as a whole and for its content: the answer
					// says why without the value.
					bodies = append(bodies,
						badBody{n + " holding a secret, misplaced", with(n, `{"k":"`+canary+`"}`), "", keybridge.EInvalid},
						badBody{n + " holding a secret with a line break", with(n, `"`+canary+`\n"`), "", ""},
						badBody{n + " holding a secret with a NUL", with(n, `"`+canary+`\u0000"`), "", keybridge.EInvalid},
						badBody{n + " holding a secret with a quote mark", with(n, `"`+canary+`\u201d"`), "", ""},
						badBody{n + " holding a long secret", with(n, `"`+canary+strings.Repeat("k", 100_000)+`"`), "", ""})
				}
				if slices.Contains(bs.required, n) {
					bodies = append(bodies, badBody{n + " null", with(n, `null`), "", ""})
				}
			}
			for _, b := range bodies {
				resp, raw := e.send(method, path, b.body, func(r *http.Request) {
					r.Header.Set("Authorization", "Bearer "+e.OwnerKey)
					if b.contentType != "" {
						r.Header.Set("Content-Type", b.contentType)
					}
				})
				what := fmt.Sprintf("%s with %s", route, b.name)
				before, after := state, dbSnapshot(t, e.Store)
				state = after
				if resp.StatusCode < 300 && b.code == "" {
					// Accepted: a long free-text field may be, and then it
					// is a change like any other.
					t.Logf("%s: accepted (%d)", what, resp.StatusCode)
					continue
				}
				code := wantRefused(t, what, resp, raw)
				if b.code != "" && code != "" && code != b.code && code != keybridge.ERateLimited {
					t.Errorf("%s: code %s %.200s, want %s", what, code, raw, b.code)
				}
				if strings.Contains(string(raw), canary) {
					t.Errorf("%s: the answer echoes the secret sent: %.300s", what, raw)
				}
				if ch := changedTables(before, after); len(ch) > 0 && !refusalMayWrite(route, code) {
					t.Errorf("%s = %d %.200s changed %v", what, resp.StatusCode, raw, ch)
				}
			}
		}
		if strings.Contains(e.logs(), canary) {
			t.Errorf("a refused secret reached the log")
		}
	})
}

// secretFields are the body fields that carry a secret: a password, a
// provider key, a token.
var secretFields = map[string]bool{"api_key": true, "password": true, "current_password": true, "new_password": true, "token": true}

// refusalMayWrite reports whether a refusal of route with code records
// something by design: a failed login (or password check) is audited and
// counted against the account's rate limit.
func refusalMayWrite(route, code string) bool {
	switch route {
	case "POST /api/v1/auth/login", "POST /api/v1/users/me/password", "POST /api/v1/auth/accept-invite":
		return code == keybridge.EUnauthenticated || code == keybridge.EForbidden || code == keybridge.ERateLimited
	}
	return false
}

// TestEveryPathIDRefusesBadIDs sends every operation with a path parameter
// an ID that names nothing, one of another org (or another user), and ones
// with odd bytes, each in turn in place of one parameter, the rest naming
// real objects and any body well formed: each answer is a 404 (or, for
// odd bytes, a 400 or 404) in the error shape, on every engine, and the
// database is as it was.
func TestEveryPathIDRefusesBadIDs(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		f := newSweepFixture(t, e)
		params := []string{"{org}", "{provider}", "{keyID}", "{projectID}", "{userID}", "{id}"}
		before := dbSnapshot(t, e.Store)
		for _, route := range httpapi.Routes() {
			for _, param := range params {
				if !strings.Contains(route, param) {
					continue
				}
				var body any
				if s := fuzzSeeds[route]; len(s) > 0 {
					body = s[0]
				}
				key := param
				if param == "{id}" {
					key = "api-keys"
					switch {
					case strings.Contains(route, "/ai-keys/"):
						key = "ai-keys"
					case strings.Contains(route, "/credentials/"):
						key = "credentials"
					}
				}
				for _, bad := range []struct {
					name, id string
					notFound bool // exactly 404
				}{
					{"missing", "01900000-0000-7000-8000-000000000000", true},
					{"missing slug", "no-such-thing", true},
					{"of another org", f.other[key], true},
					{"NUL", "%00", false},
					{"dot dot", "..", false},
					{"escaped dot dot", "%2e%2e", false},
					{"escaped slash", "a%2Fb", false},
					{"invalid UTF-8", "%ff", false},
					{"quote", "'%20OR%201=1--", true},
					{"very long", strings.Repeat("a", 8000), true},
				} {
					ids := maps.Clone(f.ids)
					ids[key] = bad.id
					method, path := f.path(route, ids)
					resp, raw := e.do(method, path, e.OwnerKey, body)
					what := fmt.Sprintf("%s with %s %s", route, param, bad.name)
					code := wantRefused(t, what, resp, raw)
					if bad.notFound && code != keybridge.ENotFound {
						t.Errorf("%s = %d %.200s, want 404", what, resp.StatusCode, raw)
					}
					if after := dbSnapshot(t, e.Store); !maps.Equal(before, after) {
						t.Errorf("%s = %d %.200s changed %v", what, resp.StatusCode, raw, changedTables(before, after))
						before = after
					}
				}
			}
		}
	})
}

// TestBodylessRoutesRefuseBodies: an operation the OpenAPI document gives
// no request body refuses one with content — an unknown field, another
// JSON type, not JSON — with a 400 in the error shape, before anything
// changes; an empty body, {} and null are taken.
func TestBodylessRoutesRefuseBodies(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	f := newSweepFixture(t, e)
	withBody := map[string]bool{}
	for _, r := range bodyRoutes(t) {
		withBody[r] = true
	}
	before := dbSnapshot(t, e.Store)
	n := 0
	for _, route := range httpapi.Routes() {
		if withBody[route] {
			continue
		}
		n++
		method, path := f.path(route, f.ids)
		for _, body := range []string{`{"reason":"leaked"}`, `[1]`, `"x"`, `not json`, `{} {}`} {
			resp, raw := e.do(method, path, e.OwnerKey, body)
			got := wantError(t, resp, raw, keybridge.EInvalid)
			if body[0] == '{' && body[1] == '"' && got.Error.Fields["reason"] == "" {
				t.Errorf("%s with %s: fields = %v, want reason", route, body, got.Error.Fields)
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d operations without a body", n)
	}
	if after := dbSnapshot(t, e.Store); !maps.Equal(before, after) {
		t.Errorf("refused bodies changed %v", changedTables(before, after))
	}
	suspend := "/api/v1/api-keys/" + f.ids["api-keys"] + "/suspend"
	for _, body := range []any{nil, ``, `{}`, ` { } `, `null`} {
		resp, raw := e.do("POST", suspend, e.OwnerKey, body)
		wantStatus(t, resp, raw, http.StatusOK)
	}
}

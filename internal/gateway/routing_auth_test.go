package gateway_test

// Routing and the caller's key seen from outside (SPEC §7.1, §7.2): the
// bytes of the path and query that reach the provider, every place and
// spelling of the caller's key, and the headers that pass and those that
// stay behind, each over a raw HTTP/1.1 connection so that nothing
// between the test and the gateway tidies the request.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// seenUpstream is an upstream that records the requests it gets, target
// and headers as they arrived.
type seenUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
	body []string
}

func newSeenUpstream(t *testing.T, answer func(w http.ResponseWriter)) *seenUpstream {
	u := &seenUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Clone(r.Context()))
		u.body = append(u.body, string(b))
		u.mu.Unlock()
		if answer != nil {
			answer(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{}`)
	}))
	t.Cleanup(u.Close)
	return u
}

// take returns the requests received since the last call.
func (u *seenUpstream) take() ([]*http.Request, []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r, b := u.reqs, u.body
	u.reqs, u.body = nil, nil
	return r, b
}

// rawDo sends head (request line and header lines, each ending in CRLF,
// without the blank line) and body on a connection of its own, and reads
// the answer.
func rawDo(t *testing.T, e *env, head, body string) (*http.Response, string) {
	t.Helper()
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	defer c.Close()
	if body != "" || strings.HasPrefix(head, "POST ") {
		head += fmt.Sprintf("Content-Length: %d\r\n", len(body))
	}
	if _, err := io.WriteString(c, head+"\r\n"+body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the answer to %q: %v", strings.SplitN(head, "\r\n", 2)[0], err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// The provider gets its base URL's path, then the path's bytes as sent,
// then the query as sent without the key parameter, whatever the base
// URL's trailing slash and however odd the path.
func TestPathAndQueryBytesReachProvider(t *testing.T) {
	e := newEnv(t)
	up := newSeenUpstream(t, nil)
	bases := []struct{ base, path string }{
		{up.URL, ""},
		{up.URL + "/", ""},
		{up.URL + "/v1", "/v1"},
		{up.URL + "/v1/", "/v1"},
		{up.URL + "/openai/v1%2Fx", "/openai/v1%2Fx"},
	}
	for i, b := range bases {
		e.provider(map[string]any{"name": fmt.Sprintf("p%d", i), "type": "openai-compatible", "base_url": b.base})
		e.addKey(fmt.Sprintf("p%d", i), canary(t, "sk-"), 0)
	}
	paths := []string{
		"",
		"/",
		"/chat/completions",
		"/model/anthropic.claude-3-5-sonnet-20240620-v1:0/invoke",
		"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aapplication-inference-profile%2Fabc/invoke",
		"/v1beta/models/gemini-2.5-pro:streamGenerateContent",
		"//double//slashes/",
		"/trailing/",
		"/%7Euser/%41b%2fc%20d%25",
		"/a;b=c/@x/$y,z+",
	}
	queries := []struct{ sent, want string }{
		{"", ""},
		{"?", ""},
		{"?alt=sse&b=%2F&c", "alt=sse&b=%2F&c"},
		{"?&a=%20", "&a=%20"},
		{"?a=1&&b=2", "a=1&&b=2"},
		{"?x=1&key=KEY&y=%41", "x=1&y=%41"},
		{"?key=KEY", ""},
		{"?key=KEY&alt=sse", "alt=sse"},
		{"?x=1&%6Bey=KEY&y", "x=1&y"},
		{"?a=1&&b=2&key=KEY", "a=1&&b=2"},
	}
	for i, b := range bases {
		for _, p := range paths {
			for _, q := range queries {
				name := fmt.Sprintf("p%d", i)
				head := "POST /gateway/" + name + p + strings.ReplaceAll(q.sent, "KEY", e.OwnerKey) + " HTTP/1.1\r\nHost: kb.test\r\nContent-Type: application/json\r\n"
				if !strings.Contains(q.sent, "KEY") {
					head += "Authorization: Bearer " + e.OwnerKey + "\r\n"
				}
				resp, body := rawDo(t, e, head, `{"model":"m"}`)
				got, _ := up.take()
				if resp.StatusCode != 200 || len(got) != 1 {
					t.Errorf("%s%s%s = %d %s, %d upstream requests; want 200, one", name, p, q.sent, resp.StatusCode, body, len(got))
					continue
				}
				want := b.path + p
				if want == "" {
					want = "/"
				}
				if q.want != "" {
					want += "?" + q.want
				}
				if got[0].RequestURI != want {
					t.Errorf("base %q, path %q, query %q: the provider got %q, want %q", b.base, p, q.sent, got[0].RequestURI, want)
				}
			}
		}
	}
}

// The caller's key is found in each place and spelling a client uses,
// and whichever place held it, no Keybridge credential reaches the
// provider.
func TestCallerKeyPlacesAndSpellings(t *testing.T) {
	e := newEnv(t)
	up := newSeenUpstream(t, nil)
	upKey := canary(t, "sk-")
	e.provider(map[string]any{"name": "compat", "type": "openai-compatible", "base_url": up.URL + "/v1"})
	e.addKey("compat", upKey, 0)
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "ci"}, 201)["id"].(string)
	aiSecret := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey,
		map[string]any{"name": "ci", "ai_type": "OTHER"}, 201)["secret"].(string)
	revokedID, revoked := wsKey(e, nil)
	e.api("POST", "/api/v1/api-keys/"+revokedID+"/revoke", e.OwnerKey, nil, 200)

	for _, key := range []struct{ name, key string }{{"platform key", e.OwnerKey}, {"AI key secret", aiSecret}} {
		k := key.key
		for _, tc := range []struct {
			name, headers, query string
			status               int
			msg                  string
		}{
			{"Bearer", "Authorization: Bearer " + k, "", 200, ""},
			{"bearer in lower case", "Authorization: bearer " + k, "", 200, ""},
			{"BEARER in upper case", "Authorization: BEARER " + k, "", 200, ""},
			{"spaces around the key", "Authorization: Bearer    " + k + "   ", "", 200, ""},
			{"no scheme", "Authorization: " + k, "", 200, ""},
			{"x-api-key", "x-api-key: " + k, "", 200, ""},
			{"X-API-KEY in upper case", "X-API-KEY: " + k, "", 200, ""},
			{"api-key", "api-key: " + k, "", 200, ""},
			{"x-goog-api-key", "x-goog-api-key: " + k, "", 200, ""},
			{"key query parameter", "", "?key=" + k + "&alt=sse", 200, ""},
			{"escaped key query parameter", "", "?alt=sse&%6Bey=" + k, 200, ""},
			{"empty Bearer, key in x-api-key", "Authorization: Bearer \r\nx-api-key: " + k, "", 200, ""},
			{"empty Bearer, key in the query", "Authorization: Bearer", "?key=" + k, 200, ""},
			{"empty Authorization, key in api-key", "Authorization: \r\napi-key: " + k, "", 200, ""},
			{"two places, the first decides", "Authorization: Bearer " + k + "\r\nx-api-key: " + revoked, "?key=" + revoked, 200, ""},
			{"two places, a revoked first decides", "Authorization: Bearer " + revoked + "\r\nx-api-key: " + k, "", 401, "invalid"},
			{"Basic", "Authorization: Basic " + k, "", 401, "never a provider's own key"},
			{"empty Bearer alone", "Authorization: Bearer ", "", 401, "missing credentials"},
			{"Bearer with a tab alone", "Authorization: Bearer\t", "", 401, "missing credentials"},
		} {
			t.Run(key.name+"/"+tc.name, func(t *testing.T) {
				head := "POST /gateway/compat/chat/completions" + tc.query + " HTTP/1.1\r\nHost: kb.test\r\nContent-Type: application/json\r\n"
				if tc.headers != "" {
					head += tc.headers + "\r\n"
				}
				resp, body := rawDo(t, e, head, `{"model":"m"}`)
				got, bodies := up.take()
				if resp.StatusCode != tc.status {
					t.Fatalf("= %d %s, want %d", resp.StatusCode, body, tc.status)
				}
				if tc.status != 200 {
					if len(got) != 0 {
						t.Errorf("a refused request reached the provider")
					}
					if resp.Header.Get("X-Keybridge-Error") != "unauthenticated" {
						t.Errorf("X-Keybridge-Error = %q, want unauthenticated", resp.Header.Get("X-Keybridge-Error"))
					}
					if tc.msg != "" && !strings.Contains(body, tc.msg) {
						t.Errorf("body = %s, want it to say %q", body, tc.msg)
					}
					return
				}
				if len(got) != 1 {
					t.Fatalf("the provider got %d requests, want 1", len(got))
				}
				r := got[0]
				if a := r.Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer "+upKey {
					t.Errorf("upstream Authorization = %q, want only the upstream key", a)
				}
				want := "/v1/chat/completions"
				if strings.Contains(tc.query, "alt=sse") {
					want += "?alt=sse"
				}
				if r.RequestURI != want {
					t.Errorf("upstream URI = %q, want %q", r.RequestURI, want)
				}
				all := r.RequestURI + bodies[0]
				for name, vv := range r.Header {
					all += name + ": " + strings.Join(vv, ", ") + "\n"
				}
				for _, s := range []string{k, revoked, "kb_", "kbs_"} {
					if strings.Contains(all, s) {
						t.Errorf("the provider's request holds a Keybridge credential (%.6s...):\n%s", s, all)
					}
				}
			})
		}
	}
	noCanary(t, upKey, e.logs())
}

// Hop-by-hop headers stay behind both ways, every other header passes
// unchanged (repeated ones too, in order), and the body passes byte for
// byte, a chunked one included.
func TestHopByHopHeadersStayBehindBothWays(t *testing.T) {
	e := newEnv(t)
	up := newRawUpstream(t)
	upKey := canary(t, "sk-")
	e.provider(map[string]any{"name": "compat", "type": "openai-compatible", "base_url": up.URL + "/v1"})
	e.addKey("compat", upKey, 0)
	var mu sync.Mutex
	var got *http.Request
	var gotBody []byte
	answer := `{"id":"x"}`
	up.on(upKey, func(c *rawConn, req *http.Request) bool {
		mu.Lock()
		got = req
		gotBody, _ = io.ReadAll(req.Body)
		mu.Unlock()
		_, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
			"Connection: X-Resp-Named\r\nX-Resp-Named: drop\r\nKeep-Alive: timeout=5\r\n"+
			"Proxy-Authenticate: Basic\r\nProxy-Foo: x\r\nUpgrade: h2c\r\nTE: trailers\r\n"+
			"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Request-Id: req_up\r\nOpenai-Processing-Ms: 12\r\n"+
			"x-ratelimit-remaining-requests: 99\r\nanthropic-ratelimit-tokens-remaining: 5\r\n\r\n%s", len(answer), answer)
		return err == nil
	})
	body := `{"model":"m","messages":[{"role":"user","content":"h\u00e9 \"x\""}]}  ` + "\n"
	common := "Host: kb.test\r\nAuthorization: Bearer " + e.OwnerKey + "\r\nContent-Type: application/json\r\n" +
		"Connection: keep-alive, X-Conn-Named\r\nX-Conn-Named: drop\r\nKeep-Alive: timeout=5\r\n" +
		"Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n" +
		"OpenAI-Beta: responses=v1\r\nX-Multi: one\r\nX-Multi: two\r\nX-Stainless-Lang: go\r\n" +
		"anthropic-beta: a,b\r\nUser-Agent: test/1\r\nAccept: application/json\r\nX-Request-Id: client-req-1\r\n"
	chunked := fmt.Sprintf("%x\r\n%s\r\n%x\r\n%s\r\n0\r\nX-T: t\r\n\r\n", 10, body[:10], len(body)-10, body[10:])
	for _, tc := range []struct{ name, head, body string }{
		{"with Content-Length", "POST /gateway/compat/chat/completions HTTP/1.1\r\n" + common, body},
		{"chunked, with a trailer", "POST /gateway/compat/chat/completions HTTP/1.1\r\n" + common +
			"Transfer-Encoding: chunked\r\nTrailer: X-T\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			var rb string
			if tc.body != "" {
				resp, rb = rawDo(t, e, tc.head, tc.body)
			} else {
				c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
				io.WriteString(c, tc.head+"\r\n"+chunked)
				var err error
				resp, err = http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				rb = string(b)
			}
			if resp.StatusCode != 200 || rb != answer {
				t.Fatalf("= %d %s", resp.StatusCode, rb)
			}
			mu.Lock()
			r, gotBody := got, gotBody
			mu.Unlock()
			for _, h := range []string{"Connection", "X-Conn-Named", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Upgrade", "Trailer", "Transfer-Encoding"} {
				if v, ok := r.Header[h]; ok {
					t.Errorf("the provider got %s: %q", h, v)
				}
			}
			if len(r.TransferEncoding) != 0 || r.ContentLength != int64(len(body)) {
				t.Errorf("the provider got Transfer-Encoding %q, Content-Length %d; want the body's length, %d", r.TransferEncoding, r.ContentLength, len(body))
			}
			if b := string(gotBody); b != body {
				t.Errorf("the provider got the body %q, want %q", b, body)
			}
			for h, want := range map[string][]string{
				"Openai-Beta": {"responses=v1"}, "X-Multi": {"one", "two"}, "X-Stainless-Lang": {"go"},
				"Anthropic-Beta": {"a,b"}, "User-Agent": {"test/1"}, "Accept": {"application/json"},
				"X-Request-Id": {"client-req-1"}, "Content-Type": {"application/json"},
				"Authorization": {"Bearer " + upKey},
			} {
				if v := r.Header[h]; strings.Join(v, "\n") != strings.Join(want, "\n") {
					t.Errorf("the provider got %s: %q, want %q", h, v, want)
				}
			}
			for _, h := range []string{"X-Resp-Named", "Keep-Alive", "Proxy-Authenticate", "Proxy-Foo", "Upgrade", "Te"} {
				if v, ok := resp.Header[h]; ok {
					t.Errorf("the client got %s: %q", h, v)
				}
			}
			for h, want := range map[string][]string{
				"Set-Cookie": {"a=1", "b=2"}, "X-Request-Id": {"req_up"}, "Openai-Processing-Ms": {"12"},
				"X-Ratelimit-Remaining-Requests": {"99"}, "Anthropic-Ratelimit-Tokens-Remaining": {"5"},
			} {
				if v := resp.Header[h]; strings.Join(v, "\n") != strings.Join(want, "\n") {
					t.Errorf("the client got %s: %q, want %q", h, v, want)
				}
			}
		})
	}
}

// A key's suspension, revocation, deletion or loss of gateway:invoke
// through the management API refuses the gateway's very next request,
// however warm the key's cache entry, in every place a key is sent; a
// reactivated key works again at once.
func TestKeyChangesReachTheNextGatewayRequest(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			testKeyChangesReachTheNextGatewayRequest(t, newEnvWith(t, eng.New(t), envOptions{}))
		})
	}
}

func testKeyChangesReachTheNextGatewayRequest(t *testing.T, e *env) {
	up := newSeenUpstream(t, nil)
	e.provider(map[string]any{"name": "compat", "type": "openai-compatible", "base_url": up.URL + "/v1"})
	e.addKey("compat", canary(t, "sk-"), 0)
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "ci"}, 201)["id"].(string)
	newAIKey := func() (id, secret string) {
		out := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey, map[string]any{"name": "ci", "ai_type": "OTHER"}, 201)
		return out["id"].(string), out["secret"].(string)
	}
	places := []func(req *http.Request, key string){
		func(req *http.Request, key string) { req.Header.Set("Authorization", "Bearer "+key) },
		func(req *http.Request, key string) { req.Header.Set("X-Api-Key", key) },
		func(req *http.Request, key string) { req.Header.Set("Api-Key", key) },
		func(req *http.Request, key string) { req.Header.Set("X-Goog-Api-Key", key) },
		func(req *http.Request, key string) { req.URL.RawQuery = "key=" + key },
	}
	call := func(key string) []int {
		var got []int
		for _, place := range places {
			req := e.post("/gateway/compat/chat/completions", "", `{"model":"m"}`)
			place(req, key)
			resp, _ := e.do(req)
			got = append(got, resp.StatusCode)
		}
		return got
	}
	want := func(what, key string, status int) {
		t.Helper()
		for _, s := range call(key) {
			if s != status {
				t.Errorf("%s: the places answered %v, want %d in each", what, call(key), status)
				return
			}
		}
	}

	id, key := wsKey(e, nil)
	for range 3 {
		want("active key", key, 200)
	}
	e.api("POST", "/api/v1/api-keys/"+id+"/suspend", e.OwnerKey, nil, 200)
	want("suspended key", key, 401)
	e.api("POST", "/api/v1/api-keys/"+id+"/reactivate", e.OwnerKey, nil, 200)
	want("reactivated key", key, 200)
	e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"permissions": []string{"providers:read"}}, 200)
	want("key without gateway:invoke", key, 403)
	e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"permissions": []string{"gateway:invoke"}}, 200)
	want("key with gateway:invoke again", key, 200)
	e.api("POST", "/api/v1/api-keys/"+id+"/revoke", e.OwnerKey, nil, 200)
	want("revoked key", key, 401)

	id, key = wsKey(e, nil)
	want("second key", key, 200)
	e.api("DELETE", "/api/v1/api-keys/"+id, e.OwnerKey, nil, 204)
	want("deleted key", key, 401)

	id, secret := newAIKey()
	want("AI key", secret, 200)
	e.api("DELETE", "/api/v1/orgs/acme/projects/"+project+"/ai-keys/"+id, e.OwnerKey, nil, 204)
	want("deleted AI key", secret, 401)

	// A member removed from the org: their key goes with the membership.
	userID, memberKey := e.addMember(keybridge.PermGatewayInvoke)
	want("member's key", memberKey, 200)
	e.api("DELETE", "/api/v1/orgs/acme/members/"+userID, e.OwnerKey, nil, 204)
	if got := call(memberKey); got[0] < 401 || got[0] > 403 {
		t.Errorf("removed member's key: %v, want refused", got)
	}
}

// Each AI key type reaches exactly the provider types SPEC §5 gives it;
// any other is 403 and reaches nothing.
func TestAIKeyTypeMatrix(t *testing.T) {
	e := newEnv(t)
	up := newSeenUpstream(t, nil)
	types := map[string]string{
		"openai": "/chat/completions", "azure-openai": "/openai/deployments/d/chat/completions",
		"anthropic": "/v1/messages", "google": "/v1beta/models/gemini-2.5-pro:generateContent",
		"bedrock": "/model/m/converse", "openai-compatible": "/chat/completions",
	}
	for typ := range types {
		fields := map[string]any{"name": typ, "type": typ, "base_url": up.URL}
		if typ == "bedrock" {
			fields["settings"] = map[string]any{"region": "us-east-1", "access_key": "AKIAEXAMPLE0000", "access_key_secret": canary(t, "")}
		}
		e.provider(fields)
		if typ != "bedrock" {
			e.addKey(typ, canary(t, "sk-"), 0)
		}
	}
	allowed := map[string]map[string]bool{
		"OPENAI": {"openai": true, "azure-openai": true}, "ANTHROPIC": {"anthropic": true},
		"GOOGLE": {"google": true}, "AWS": {"bedrock": true}, "OTHER": {"openai-compatible": true},
	}
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "ci"}, 201)["id"].(string)
	for aiType, ok := range allowed {
		secret := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey,
			map[string]any{"name": aiType, "ai_type": aiType}, 201)["secret"].(string)
		for typ, path := range types {
			resp, body := e.do(e.post("/gateway/"+typ+path, secret, `{"model":"m"}`))
			reached, _ := up.take()
			want := 403
			if ok[typ] {
				want = 200
			}
			if resp.StatusCode != want || (want == 200) != (len(reached) == 1) {
				t.Errorf("%s AI key on %s: %d %s, %d upstream requests; want %d", aiType, typ, resp.StatusCode, body, len(reached), want)
			}
			if want == 403 && resp.Header.Get("X-Keybridge-Error") != "permission_denied" {
				t.Errorf("%s AI key on %s: X-Keybridge-Error %q", aiType, typ, resp.Header.Get("X-Keybridge-Error"))
			}
		}
	}
}

// A path that names no provider is answered as an unknown provider is:
// 404 in the §1 shape, whatever SDK's request it looks like.
func TestNoProviderInPathIsSection1NotFound(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ target, header string }{
		{"/gateway/", "Authorization: Bearer " + e.OwnerKey},
		{"/gateway//v1/messages", "x-api-key: " + e.OwnerKey},
		{"/gateway/?key=" + e.OwnerKey, "anthropic-version: 2023-06-01"},
		{"/gateway//v1beta/models/g:generateContent", "x-goog-api-key: " + e.OwnerKey},
		{"/gateway//model/m/converse", "api-key: " + e.OwnerKey},
	} {
		resp, body := rawDo(t, e, "POST "+tc.target+" HTTP/1.1\r\nHost: kb.test\r\n"+tc.header+"\r\n", "{}")
		var v struct {
			Error struct{ Code, Message string } `json:"error"`
			Type  *string                        `json:"type"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil || resp.StatusCode != 404 || v.Error.Code != "not_found" ||
			v.Error.Message == "" || v.Type != nil || resp.Header.Get("X-Keybridge-Error") != "not_found" {
			t.Errorf("%s = %d %s, want 404 in the §1 shape", tc.target, resp.StatusCode, body)
		}
	}
}

// Over HTTP/2 with prior knowledge, which net/http serves, the path's
// bytes, the query and the removal of the caller's key are the same as
// over HTTP/1.1.
func TestHTTP2PathQueryAndKey(t *testing.T) {
	e := newEnv(t)
	up := newSeenUpstream(t, nil)
	upKey := canary(t, "sk-")
	e.provider(map[string]any{"name": "compat", "type": "openai-compatible", "base_url": up.URL + "/v1/"})
	e.addKey("compat", upKey, 0)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &protocols}}
	for _, tc := range []struct{ target, header, want string }{
		{"/gateway/compat/model/arn%3Aaws%3Ax%2Fy:0//invoke/?&a=%20&key=" + e.OwnerKey + "&b", "", "/v1/model/arn%3Aaws%3Ax%2Fy:0//invoke/?&a=%20&b"},
		{"/gateway/compat/chat/completions", "X-Goog-Api-Key", "/v1/chat/completions"},
		{"/gateway/compat/chat/completions?alt=sse", "X-Api-Key", "/v1/chat/completions?alt=sse"},
	} {
		req, err := http.NewRequest("POST", e.URL+"/", strings.NewReader(`{"model":"m"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = tc.target[:strings.IndexByte(tc.target+"?", '?')]
		if i := strings.IndexByte(tc.target, '?'); i >= 0 {
			req.URL.RawQuery = tc.target[i+1:]
		}
		if tc.header != "" {
			req.Header.Set(tc.header, e.OwnerKey)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got, _ := up.take()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 || len(got) != 1 {
			t.Fatalf("%s = HTTP/%d %d %s", tc.target, resp.ProtoMajor, resp.StatusCode, b)
		}
		if got[0].RequestURI != tc.want {
			t.Errorf("%s: the provider got %q, want %q", tc.target, got[0].RequestURI, tc.want)
		}
		if a := got[0].Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer "+upKey {
			t.Errorf("%s: upstream Authorization %q", tc.target, a)
		}
		for name, vv := range got[0].Header {
			if strings.Contains(strings.Join(vv, ","), e.OwnerKey) {
				t.Errorf("%s: the caller's key reached the provider in %s", tc.target, name)
			}
		}
	}
}

// A provider of another org is, to a key of this one, unknown: 404 in
// the §1 shape, and nothing reaches it.
func TestOtherOrgsProviderIsNotFound(t *testing.T) {
	e := newEnv(t)
	up := newSeenUpstream(t, nil)
	_, _, betaKey := e.newOrg("beta", "admin@beta.test")
	e.api("POST", "/api/v1/orgs/beta/providers", betaKey, map[string]any{"name": "theirs", "type": "openai", "base_url": up.URL + "/v1"}, 201)
	e.api("POST", "/api/v1/orgs/beta/providers/theirs/keys", betaKey, map[string]any{"api_key": canary(t, "sk-")}, 201)
	if resp, body := e.do(e.post("/gateway/theirs/chat/completions", betaKey, `{}`)); resp.StatusCode != 200 {
		t.Fatalf("beta's own key: %d %s", resp.StatusCode, body)
	}
	up.take()
	resp, body := e.do(e.post("/gateway/theirs/chat/completions", e.OwnerKey, `{}`))
	var v struct {
		Error struct{ Code, Type string } `json:"error"`
	}
	json.Unmarshal(body, &v)
	if resp.StatusCode != 404 || v.Error.Code != "not_found" || v.Error.Type != "" {
		t.Errorf("acme's key on beta's provider: %d %s, want 404 in the §1 shape", resp.StatusCode, body)
	}
	if got, _ := up.take(); len(got) != 0 {
		t.Errorf("the other org's provider got %d requests", len(got))
	}
}

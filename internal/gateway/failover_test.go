package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// keyedUpstream answers per upstream key: behave[key] decides, else 200.
type keyedUpstream struct {
	*httptest.Server
	mu     sync.Mutex
	behave map[string]func(w http.ResponseWriter, r *http.Request)
	seen   []string // keys in arrival order
}

func newKeyedUpstream(t *testing.T) *keyedUpstream {
	u := &keyedUpstream{behave: map[string]func(http.ResponseWriter, *http.Request){}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.seen = append(u.seen, key)
		f := u.behave[key]
		u.mu.Unlock()
		if f != nil {
			f(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q}`, key)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *keyedUpstream) on(key string, f func(w http.ResponseWriter, r *http.Request)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.behave[key] = f
}

func (u *keyedUpstream) keys() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

func status(code int, headers ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		// Providers echo part of the key in auth failures.
		fmt.Fprintf(w, `{"error":{"message":"Incorrect API key provided: %s"}}`, r.Header.Get("Authorization"))
	}
}

func reset(w http.ResponseWriter, r *http.Request) {
	c, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

type errorShape struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	} `json:"error"`
}

func TestFailover(t *testing.T) {
	e := newEnv(t)
	up := newKeyedUpstream(t)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	k1, k2, k3 := canary(t, "sk-one-"), canary(t, "sk-two-"), canary(t, "sk-three-")
	id1 := e.addKey("oai", k1, 0)
	e.addKey("oai", k2, 1)
	e.addKey("oai", k3, 2)
	call := func() (*http.Response, []byte) {
		return e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"m"}`))
	}
	servedBy := func(body []byte) string {
		var v struct {
			ServedBy string `json:"served_by"`
		}
		json.Unmarshal(body, &v)
		return v.ServedBy
	}

	t.Run("each failing status moves on", func(t *testing.T) {
		for _, code := range []int{500, 502, 503, 529} {
			up.on(k1, status(code))
			resp, body := call()
			if resp.StatusCode != 200 || servedBy(body) != k2 {
				t.Errorf("k1 answering %d: got %d served by %.12s, want 200 from the second key", code, resp.StatusCode, servedBy(body))
			}
		}
		up.on(k1, reset)
		resp, body := call()
		if resp.StatusCode != 200 || servedBy(body) != k2 {
			t.Errorf("k1 resetting: %d %s", resp.StatusCode, body)
		}
		up.on(k1, nil)
	})

	t.Run("a 400 is the provider's answer", func(t *testing.T) {
		up.on(k1, status(400))
		resp, body := call()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "Incorrect") {
			t.Errorf("= %d %s, want the upstream's 400", resp.StatusCode, body)
		}
		up.on(k1, nil)
	})

	t.Run("429 cools the key down for Retry-After", func(t *testing.T) {
		up.on(k1, status(429, "Retry-After", "30"))
		before := len(up.keys())
		resp, body := call()
		if resp.StatusCode != 200 || servedBy(body) != k2 {
			t.Fatalf("= %d %s", resp.StatusCode, body)
		}
		// k1 rests now: the next call goes straight to k2.
		_, body = call()
		if servedBy(body) != k2 {
			t.Fatalf("second call served by %.12s", servedBy(body))
		}
		seen := up.keys()[before:]
		if len(seen) != 3 || seen[0] != k1 || seen[1] != k2 || seen[2] != k2 {
			t.Errorf("keys tried = %d, want k1, k2, then k2 alone", len(seen))
		}
		// cooldown_until shows on the keys list.
		deadline := time.Now().Add(2 * time.Second)
		for {
			out := e.api("GET", "/api/v1/orgs/acme/providers/oai/keys", e.OwnerKey, nil, 200)
			var until string
			for _, it := range out["items"].([]any) {
				if m := it.(map[string]any); m["id"] == id1 && m["cooldown_until"] != nil {
					until = m["cooldown_until"].(string)
				}
			}
			if until != "" {
				ts, err := time.Parse(time.RFC3339Nano, until)
				if err != nil || time.Until(ts) < 20*time.Second || time.Until(ts) > 31*time.Second {
					t.Errorf("cooldown_until = %s, want about 30 s from now", until)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("cooldown_until is not shown on the keys list")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("exhausted by 429s answers 429 with the shortest Retry-After", func(t *testing.T) {
		up.on(k2, status(429, "Retry-After", "7"))
		up.on(k3, status(429, "retry-after-ms", "2500"))
		resp, body := call()
		if resp.StatusCode != 429 {
			t.Fatalf("= %d %s, want 429", resp.StatusCode, body)
		}
		if ra := resp.Header.Get("Retry-After"); ra != "3" {
			t.Errorf("Retry-After = %q, want 3 (k3's 2.5 s, rounded up)", ra)
		}
		if resp.Header.Get("X-Keybridge-Error") != "rate_limited" {
			t.Errorf("X-Keybridge-Error = %q", resp.Header.Get("X-Keybridge-Error"))
		}
		var v errorShape
		if json.Unmarshal(body, &v) != nil || v.Error.Type != "rate_limit_error" || v.Error.Code != "rate_limited" {
			t.Errorf("body = %s, want OpenAI's error shape", body)
		}
	})

	noCanary(t, k1, e.logs())
	noCanary(t, k2, e.logs())
	noCanary(t, k3, e.logs())
}

func TestExhaustedByRefusalsIs502WithoutTheirBodies(t *testing.T) {
	e, up, k1, k2, _ := twoKeys(t)
	up.on(k1, status(401))
	up.on(k2, status(500))
	resp, body := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	if resp.StatusCode != 502 || resp.Header.Get("X-Keybridge-Error") != "bad_gateway" {
		t.Fatalf("= %d %s", resp.StatusCode, body)
	}
	var v errorShape
	json.Unmarshal(body, &v)
	if !strings.Contains(v.Error.Message, "401, 500") || !strings.Contains(v.Error.Message, `"oai"`) {
		t.Errorf("body = %s, want the provider and the statuses named", body)
	}
	// The 401 put k1 to rest for five minutes: now only k2 is tried.
	before := len(up.keys())
	up.on(k2, nil)
	resp, _ = e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	if resp.StatusCode != 200 || len(up.keys()) != before+1 {
		t.Errorf("= %d after %d upstream calls, want 200 after one", resp.StatusCode, len(up.keys())-before)
	}
	noCanary(t, k1, string(body), e.waitLog(2))
	noCanary(t, k2, string(body), e.logs())
}

func TestTooLargeIs413BeforeAnythingIsSent(t *testing.T) {
	e := newEnv(t)
	up := newKeyedUpstream(t)
	e.provider(map[string]any{"name": "ant", "type": "anthropic", "base_url": up.URL})
	e.addKey("ant", canary(t, "sk-ant-"), 0)
	big := strings.Repeat("x", 32<<20+1)
	req := e.post("/gateway/ant/v1/messages", e.OwnerKey, big)
	resp, body := e.do(req)
	if resp.StatusCode != 413 || !strings.Contains(string(body), `"request_too_large"`) {
		t.Errorf("= %d %s, want 413 in Anthropic's shape", resp.StatusCode, body)
	}
	if n := len(up.keys()); n != 0 {
		t.Errorf("upstream got %d requests", n)
	}
}

func TestConnectionErrorsFailOverThen502(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": "http://" + addr + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	e.addKey("oai", canary(t, "sk-"), 1)
	resp, body := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	var v errorShape
	json.Unmarshal(body, &v)
	if resp.StatusCode != 502 || !strings.Contains(v.Error.Message, "connection error, connection error") {
		t.Errorf("= %d %s, want 502 after trying both keys", resp.StatusCode, body)
	}
}

func TestAdminEditEndsARest(t *testing.T) {
	e, up, k1, _, id1 := twoKeys(t)
	up.on(k1, status(401))
	e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`)) // k1 refused: it rests 5 minutes
	up.on(k1, nil)                                                  // the admin fixed the account
	e.api("PATCH", "/api/v1/orgs/acme/providers/oai/keys/"+id1, e.OwnerKey, map[string]any{"name": "fixed"}, 200)
	deadline := time.Now().Add(2 * time.Second)
	for {
		before := len(up.keys())
		e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
		if seen := up.keys()[before:]; len(seen) == 1 && seen[0] == k1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the edited key is still resting")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A Retry-After of 0 is the shortest wait there is: with another key
// asking for two minutes, the client is told to retry after a second
// (the least Keybridge sends), not two minutes.
func TestExhaustedByRateLimitsTakesARetryAfterOfZero(t *testing.T) {
	e, up, k1, k2, _ := twoKeys(t)
	up.on(k1, status(429, "Retry-After", "0"))
	up.on(k2, status(429, "Retry-After", "120"))
	resp, body := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	if resp.StatusCode != 429 {
		t.Fatalf("= %d %s, want 429", resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1 (k1's 0, at least 1)", ra)
	}
}

// counterValue reads an unlabelled counter from reg (0 when it has not
// been gathered yet).
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// keybridge_gateway_cooldowns_total counts keys put to rest: a personal
// credential's 429 and a bedrock provider's, whose one credential is
// never rested, are not counted; an org key's is.
func TestCooldownsCountOnlyRests(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := newBrEnv(t, envOptions{Gateway: gateway.Options{Registerer: reg}})
	up := newKeyedUpstream(t)
	personal, orgKey := canary(t, "sk-mine-"), canary(t, "sk-org-")
	b.provider(map[string]any{"name": "mine", "type": "openai", "base_url": up.URL + "/v1", "key_source": "user"})
	b.api("POST", "/api/v1/users/me/credentials", b.OwnerKey, map[string]any{"org": "acme", "provider": "mine", "api_key": personal}, http.StatusCreated)
	b.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	b.addKey("oai", orgKey, 0)
	up.on(personal, status(429, "Retry-After", "30"))
	up.on(orgKey, status(429, "Retry-After", "30"))
	const cooldowns = "keybridge_gateway_cooldowns_total"

	if resp, body := b.do(b.post("/gateway/mine/chat/completions", b.OwnerKey, `{}`)); resp.StatusCode != 429 {
		t.Fatalf("personal credential answering 429: %d %s, want 429", resp.StatusCode, body)
	}
	b.mock.Fault(b.upAK, providertest.Fault{Status: 429, RetryAfter: "30", Times: 1})
	if _, err := b.client("br", b.awsKey, b.awsSecr).Converse(context.Background(), brConverse(brModel)); err == nil {
		t.Fatal("bedrock answering 429: no error")
	}
	b.waitLog(2)
	if n := counterValue(t, reg, cooldowns); n != 0 {
		t.Errorf("%s = %v after 429s of credentials that are never rested, want 0", cooldowns, n)
	}
	if resp, body := b.do(b.post("/gateway/oai/chat/completions", b.OwnerKey, `{}`)); resp.StatusCode != 429 {
		t.Fatalf("org key answering 429: %d %s, want 429", resp.StatusCode, body)
	}
	b.waitLog(3)
	if n := counterValue(t, reg, cooldowns); n != 1 {
		t.Errorf("%s = %v after an org key's 429, want 1", cooldowns, n)
	}
}

// twoKeys is an env with provider oai on a keyed upstream and two canary
// keys, k1 tried first; id1 is k1's id.
func twoKeys(t *testing.T) (e *env, up *keyedUpstream, k1, k2, id1 string) {
	e = newEnv(t)
	up = newKeyedUpstream(t)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	k1, k2 = canary(t, "sk-"), canary(t, "sk-")
	id1 = e.addKey("oai", k1, 0)
	e.addKey("oai", k2, 1)
	return e, up, k1, k2, id1
}

// Keys are tried by priority, then in the order they were created
// (whatever order their secrets sort in); a disabled key is never tried.
func TestFailoverOrderByPriorityThenCreation(t *testing.T) {
	e := newEnv(t)
	up := newKeyedUpstream(t)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	// Secrets that sort against their creation order.
	kz, ky, kx, kw, kv := "sk-z-"+canary(t, ""), "sk-y-"+canary(t, ""), "sk-x-"+canary(t, ""), "sk-w-"+canary(t, ""), "sk-v-"+canary(t, "")
	e.addKey("oai", kz, 5)
	e.addKey("oai", ky, 1)
	e.addKey("oai", kx, 5)
	off := e.addKey("oai", kw, 0)
	e.addKey("oai", kv, 5)
	e.api("PATCH", "/api/v1/orgs/acme/providers/oai/keys/"+off, e.OwnerKey, map[string]any{"enabled": false}, http.StatusOK)
	for _, k := range []string{kz, ky, kx, kw, kv} {
		up.on(k, status(500))
	}
	resp, body := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	if resp.StatusCode != 502 || !strings.Contains(string(body), "(500, 500, 500, 500)") {
		t.Errorf("= %d %s, want 502 after four 500s", resp.StatusCode, body)
	}
	got := up.keys()
	want := []string{ky, kz, kx, kv}
	if len(got) != len(want) {
		t.Fatalf("tried %d keys, want %d (the disabled one skipped)", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("key %d tried = %.6s, want %.6s", i, got[i], want[i])
		}
	}
}

// A body of no declared length (chunked, or HTTP/2 without
// Content-Length) over --gateway-max-body is refused with 413 once the
// limit is passed, before anything is sent upstream.
func TestTooLargeChunkedIs413BeforeAnythingIsSent(t *testing.T) {
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{MaxBody: 100}})
	up := newKeyedUpstream(t)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	for name, c := range map[string]*http.Client{
		"HTTP/1.1": {Transport: &http.Transport{}},
		"HTTP/2":   {Transport: &http.Transport{Protocols: &h2c}},
	} {
		for _, n := range []int{100, 101, 1 << 20} {
			req := e.post("/gateway/oai/chat/completions", e.OwnerKey, "")
			req.Body = io.NopCloser(io.MultiReader(strings.NewReader(strings.Repeat("x", n))))
			req.ContentLength = -1
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s, %d bytes: %v", name, n, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := 413
			if n <= 100 {
				want = 200
			}
			if resp.StatusCode != want {
				t.Errorf("%s, %d bytes: %d %s, want %d", name, n, resp.StatusCode, body, want)
			}
			if want == 413 && (resp.Header.Get("X-Keybridge-Error") != "payload_too_large" || !strings.Contains(string(body), `"invalid_request_error"`)) {
				t.Errorf("%s, %d bytes: %v %s, want OpenAI's shape and X-Keybridge-Error", name, n, resp.Header, body)
			}
		}
	}
	if n := len(up.keys()); n != 2 {
		t.Errorf("upstream got %d requests, want the 2 within the limit", n)
	}
}

// A key skipped while it rests after a 429 counts as rate limited: with
// the other key failing with a 500, the answer is 429 with the rest that
// is left, not 502. A key resting after a 401 does not count.
func TestExhaustedWithAKeyRestingAfter429Is429(t *testing.T) {
	e, up, k1, k2, _ := twoKeys(t)
	up.on(k1, status(429, "Retry-After", "30"))
	if resp, body := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`)); resp.StatusCode != 200 {
		t.Fatalf("k1 429, k2 200: %d %s", resp.StatusCode, body)
	}
	up.on(k2, status(500))
	resp, body := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	if resp.StatusCode != 429 || resp.Header.Get("X-Keybridge-Error") != "rate_limited" {
		t.Fatalf("k1 resting after a 429, k2 500: %d %s, want 429", resp.StatusCode, body)
	}
	checkRetryAfter(t, resp.Header, 25, 30)

	e, up, k1, k2, _ = twoKeys(t)
	up.on(k1, status(401))
	e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	up.on(k2, status(500))
	resp, body = e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`))
	if resp.StatusCode != 502 || !strings.Contains(string(body), "(500)") {
		t.Errorf("k1 resting after a 401, k2 500: %d %s, want 502 naming the 500", resp.StatusCode, body)
	}
}

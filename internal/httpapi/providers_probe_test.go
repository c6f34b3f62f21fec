package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// probeResult is the answer of the test endpoint and of each usage item.
type probeResult struct {
	KeyID      string                `json:"key_id"`
	Cached     bool                  `json:"cached"`
	Reachable  bool                  `json:"reachable"`
	Error      string                `json:"error"`
	StatusCode int                   `json:"status_code"`
	LatencyMS  int64                 `json:"latency_ms"`
	Models     []string              `json:"models"`
	RateLimits map[string]rateWindow `json:"rate_limits"`
	CheckedAt  time.Time             `json:"checked_at"`
}

type rateWindow struct {
	Limit     *int64     `json:"limit"`
	Remaining *int64     `json:"remaining"`
	ResetAt   *time.Time `json:"reset_at"`
}

// fakeUpstream is a loopback provider: OpenAI's model list with the
// rate-limit headers of OpenAI's documentation when the bearer key is
// good, and OpenAI's 401 (which echoes part of the key) otherwise; or
// Anthropic's, with its documented headers, for x-api-key.
type fakeUpstream struct {
	*httptest.Server
	calls atomic.Int32
}

const (
	goodUpstreamKey  = "sk-good-upstream-key-0000000000000001"
	good2UpstreamKey = "sk-good-upstream-key-0000000000000002"
	badUpstreamKey   = "sk-wrong-upstream-key-000000000000009"
)

func newFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/v1/models" && r.Header.Get("Authorization") != "":
			key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			if key != goodUpstreamKey && key != good2UpstreamKey {
				w.WriteHeader(http.StatusUnauthorized)
				w.Write([]byte(`{"error":{"message":"Incorrect API key provided: ` + key[:6] + `***` + key[len(key)-4:] +
					`. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`))
				return
			}
			h := w.Header()
			h.Set("x-ratelimit-limit-requests", "60")
			h.Set("x-ratelimit-limit-tokens", "150000")
			h.Set("x-ratelimit-remaining-requests", "59")
			h.Set("x-ratelimit-remaining-tokens", "149984")
			h.Set("x-ratelimit-reset-requests", "1s")
			h.Set("x-ratelimit-reset-tokens", "6m0s")
			w.Write([]byte(`{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"},{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"}]}`))
		case r.URL.Path == "/v1/models" && r.Header.Get("x-api-key") != "":
			if r.Header.Get("x-api-key") != goodUpstreamKey || r.Header.Get("anthropic-version") == "" {
				w.WriteHeader(http.StatusUnauthorized)
				w.Write([]byte(`{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`))
				return
			}
			reset := time.Now().UTC().Add(30 * time.Second).Truncate(time.Second).Format(time.RFC3339)
			h := w.Header()
			h.Set("anthropic-ratelimit-requests-limit", "50")
			h.Set("anthropic-ratelimit-requests-remaining", "49")
			h.Set("anthropic-ratelimit-requests-reset", reset)
			h.Set("anthropic-ratelimit-tokens-limit", "120000")
			h.Set("anthropic-ratelimit-tokens-remaining", "119000")
			h.Set("anthropic-ratelimit-tokens-reset", reset)
			h.Set("anthropic-ratelimit-input-tokens-limit", "100000")
			h.Set("anthropic-ratelimit-input-tokens-remaining", "99500")
			h.Set("anthropic-ratelimit-input-tokens-reset", reset)
			h.Set("anthropic-ratelimit-output-tokens-limit", "20000")
			h.Set("anthropic-ratelimit-output-tokens-remaining", "19500")
			h.Set("anthropic-ratelimit-output-tokens-reset", reset)
			w.Write([]byte(`{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-sonnet-4-5-20250929"}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"message":"not found"}}`))
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func TestProviderTestEndpoint(t *testing.T) {
	up := newFakeUpstream(t)
	forEachEngine(t, func(t *testing.T, e *env) {
		path := e.providersPath("/test")
		for _, c := range []struct {
			name  string
			body  any
			field string
		}{
			{"no type", map[string]any{"api_key": goodUpstreamKey}, "type"},
			{"unknown type", map[string]any{"type": "mistral"}, "type"},
			{"bad base_url", map[string]any{"type": "openai", "base_url": "file:///etc/passwd"}, "base_url"},
			{"azure needs base_url", map[string]any{"type": "azure-openai", "api_key": "k"}, "base_url"},
			{"bedrock needs a region", map[string]any{"type": "bedrock"}, "settings.region"},
			{"bedrock takes no api_key", map[string]any{"type": "bedrock", "api_key": "k", "settings": map[string]any{"region": "us-east-1"}}, "api_key"},
			{"unknown setting", map[string]any{"type": "openai", "settings": map[string]any{"org": "x"}}, "settings.org"},
			{"unknown field", map[string]any{"type": "openai", "name": "x"}, "name"},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp, body := e.do("POST", path, e.OwnerKey, c.body)
				wantInvalidField(t, resp, body, c.field)
			})
		}

		probe := func(body map[string]any) probeResult {
			t.Helper()
			resp, b := e.do("POST", path, e.OwnerKey, body)
			wantStatus(t, resp, b, http.StatusOK)
			if key, ok := body["api_key"].(string); ok && strings.Contains(string(b), key[len(key)-8:]) {
				t.Errorf("test answer %s holds part of the key", b)
			}
			return decodeAs[probeResult](t, b)
		}

		before := time.Now()
		res := probe(map[string]any{"type": "openai", "base_url": up.URL + "/v1", "api_key": goodUpstreamKey})
		if !res.Reachable || res.Error != "" || res.StatusCode != 200 || !slices.Equal(res.Models, []string{"gpt-4o", "gpt-4o-mini"}) {
			t.Errorf("test openai = %+v, want reachable with two models", res)
		}
		req, tok := res.RateLimits["requests"], res.RateLimits["tokens"]
		if req.Limit == nil || *req.Limit != 60 || *req.Remaining != 59 || tok.Limit == nil || *tok.Limit != 150000 || *tok.Remaining != 149984 {
			t.Errorf("openai rate limits = %+v", res.RateLimits)
		}
		if tok.ResetAt == nil || tok.ResetAt.Before(before.Add(6*time.Minute-time.Second)) || tok.ResetAt.After(time.Now().Add(6*time.Minute+time.Second)) {
			t.Errorf("openai tokens reset_at = %v, want about 6 minutes from now", tok.ResetAt)
		}
		if req.ResetAt == nil || req.ResetAt.After(time.Now().Add(2*time.Second)) {
			t.Errorf("openai requests reset_at = %v, want about 1 s from now", req.ResetAt)
		}

		res = probe(map[string]any{"type": "anthropic", "base_url": up.URL, "api_key": goodUpstreamKey})
		if !res.Reachable || !slices.Equal(res.Models, []string{"claude-sonnet-4-5-20250929"}) || len(res.RateLimits) != 4 {
			t.Errorf("test anthropic = %+v, want reachable with the model and four limits", res)
		}
		if in := res.RateLimits["input_tokens"]; in.Limit == nil || *in.Limit != 100000 || *in.Remaining != 99500 || in.ResetAt == nil {
			t.Errorf("anthropic input_tokens = %+v", in)
		}

		res = probe(map[string]any{"type": "openai", "base_url": up.URL + "/v1", "api_key": badUpstreamKey})
		if res.Reachable || res.StatusCode != 401 || !strings.Contains(res.Error, "unauthorized") || !strings.Contains(res.Error, "invalid_api_key") {
			t.Errorf("test with a wrong key = %+v, want unreachable, 401, unauthorized (invalid_api_key)", res)
		}
		res = probe(map[string]any{"type": "anthropic", "base_url": up.URL, "api_key": badUpstreamKey})
		if res.Reachable || res.StatusCode != 401 || !strings.Contains(res.Error, "authentication_error") {
			t.Errorf("test anthropic with a wrong key = %+v", res)
		}

		// Refused at dial time: nothing is sent to the metadata address.
		for _, base := range []string{"http://169.254.169.254/latest/meta-data", "http://[fe80::1]:8080/v1"} {
			res = probe(map[string]any{"type": "openai", "base_url": base, "api_key": goodUpstreamKey})
			if res.Reachable || res.StatusCode != 0 || !strings.HasPrefix(res.Error, "egress refused") {
				t.Errorf("test %s = %+v, want unreachable with an egress error", base, res)
			}
		}
		// Nothing listening.
		res = probe(map[string]any{"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": goodUpstreamKey})
		if res.Reachable || res.Error == "" || res.Models == nil {
			t.Errorf("test of a closed port = %+v, want unreachable with an error and an empty model list", res)
		}
		if strings.Contains(e.logs(), goodUpstreamKey) || strings.Contains(e.logs(), badUpstreamKey) {
			t.Errorf("the log holds a key")
		}
	})
}

func TestProviderUsage(t *testing.T) {
	up := newFakeUpstream(t)
	forEachEngine(t, func(t *testing.T, e *env) {
		p := e.addProvider(map[string]any{"name": "openai", "type": "openai", "base_url": up.URL + "/v1"})
		k1 := e.addProviderKey(p.ID, map[string]any{"api_key": goodUpstreamKey})
		k2 := e.addProviderKey(p.ID, map[string]any{"api_key": badUpstreamKey})
		k3 := e.addProviderKey(p.ID, map[string]any{"api_key": good2UpstreamKey, "name": "disabled"})
		resp, body := e.do("PATCH", e.providersPath("/openai/keys/"+k3.ID), e.OwnerKey, map[string]any{"enabled": false})
		wantStatus(t, resp, body, http.StatusOK)

		usage := func(query string) []probeResult {
			t.Helper()
			resp, b := e.do("GET", e.providersPath("/openai/usage"+query), e.OwnerKey, nil)
			wantStatus(t, resp, b, http.StatusOK)
			for _, k := range []string{goodUpstreamKey, badUpstreamKey, good2UpstreamKey} {
				if strings.Contains(string(b), k[len(k)-8:]) {
					t.Errorf("usage answer holds part of a key: %s", b)
				}
			}
			l := decodeAs[provList[probeResult]](t, b)
			return l.Items
		}
		check := func(step string, items []probeResult, wantCached bool, wantCalls int32) {
			t.Helper()
			var ids []string
			for _, it := range items {
				ids = append(ids, it.KeyID)
				if it.Cached != wantCached {
					t.Errorf("%s: key %s cached = %v, want %v", step, it.KeyID, it.Cached, wantCached)
				}
			}
			if want := []string{k1.ID, k2.ID, k3.ID}; !slices.Equal(ids, want) {
				t.Errorf("%s: usage key ids = %v, want %v (priority order)", step, ids, want)
			}
			if got := up.calls.Load(); got != wantCalls {
				t.Errorf("%s: the provider was called %d times in all, want %d", step, got, wantCalls)
			}
			if len(items) != 3 {
				return
			}
			good, bad := items[0], items[1]
			if !good.Reachable || good.RateLimits["requests"].Limit == nil || *good.RateLimits["tokens"].Remaining != 149984 {
				t.Errorf("%s: good key usage = %+v", step, good)
			}
			if bad.Reachable || bad.StatusCode != 401 || !strings.Contains(bad.Error, "unauthorized") {
				t.Errorf("%s: wrong key usage = %+v, want unreachable 401", step, bad)
			}
			if !items[2].Reachable {
				t.Errorf("%s: a disabled key is probed too: %+v", step, items[2])
			}
		}
		start := up.calls.Load()
		first := usage("")
		check("first", first, false, start+3)
		second := usage("")
		check("second", second, true, start+3)
		if !second[0].CheckedAt.Equal(first[0].CheckedAt) {
			t.Errorf("cached checked_at = %v, want the first probe's %v", second[0].CheckedAt, first[0].CheckedAt)
		}
		check("refresh", usage("?refresh=true"), false, start+6)
		check("after refresh", usage(""), true, start+6)

		// A change to the provider is never answered from before it.
		resp, body = e.do("PATCH", e.providersPath("/openai"), e.OwnerKey, map[string]any{"display_name": "OpenAI"})
		wantStatus(t, resp, body, http.StatusOK)
		check("after a provider change", usage(""), false, start+9)

		resp, body = e.do("GET", e.providersPath("/openai/usage?refresh=maybe"), e.OwnerKey, nil)
		wantInvalidField(t, resp, body, "refresh")

		b := e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{"region": "us-east-1"}})
		resp, body = e.do("GET", e.providersPath("/"+b.ID+"/usage"), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if l := decodeAs[provList[probeResult]](t, body); len(l.Items) != 0 {
			t.Errorf("bedrock usage = %+v, want no items (it has no stored keys)", l.Items)
		}
	})
}

package gateway_test

// Edges of keys' own limits (SPEC §7.6) and their refusals (§7.3) that
// the SDK tests of limits_test.go do not reach: each provider type's 429
// shape, the reservation of each kind of declared output cap, and
// Keybridge's x-ratelimit-* headers against a provider that sends its own
// in lower case.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
)

// checkShape checks that body is e's error in the shape of provider type
// st (SPEC §7.3), with msg in its message.
func checkShape(t *testing.T, st string, resp *http.Response, body []byte, status int, code, msg string) {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get("X-Keybridge-Error") != code {
		t.Fatalf("%s: got %d (X-Keybridge-Error %q) %s, want %d %s", st, resp.StatusCode, resp.Header.Get("X-Keybridge-Error"), body, status, code)
	}
	var v struct {
		Type  string `json:"type"`
		Msg   string `json:"message"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
			Code    any    `json:"code"`
			Status  string `json:"status"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s: body %s: %v", st, body, err)
	}
	oaType := map[int]string{403: "permission_error", 429: "rate_limit_error"}[status]
	antType := oaType
	gStatus := map[int]string{403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}[status]
	var ok bool
	switch st {
	case "openai", "azure-openai", "openai-compatible":
		ok = v.Error.Type == oaType && v.Error.Code == code
	case "anthropic":
		ok = v.Type == "error" && v.Error.Type == antType
	case "bedrock":
		aws := map[int]string{403: "AccessDeniedException", 429: "ThrottlingException"}[status]
		ok = v.Type == "error" && v.Error.Type == antType && v.Msg == v.Error.Message && resp.Header.Get("X-Amzn-Errortype") == aws
	case "google":
		ok = v.Error.Code == float64(status) && v.Error.Status == gStatus
	}
	if !ok || !strings.Contains(v.Error.Message, msg) {
		t.Errorf("%s: error %s (X-Amzn-Errortype %q), want the provider's shape for %d with %q", st, body, resp.Header.Get("X-Amzn-Errortype"), status, msg)
	}
}

// A key at its RPM limit is refused in each provider's own shape, with a
// Retry-After of at most the window and Keybridge's request headers; the
// model allowlist's 403 too.
func TestLimitRefusalEachProvider(t *testing.T) {
	e := newEnv(t)
	oaUpstream(t, e, "az", "azure-openai", "", nil)
	oaUpstream(t, e, "compat", "openai-compatible", "/v1", nil)
	gemUpstream(t, e, "gem")
	br := providertest.NewBedrock(t, brRegion, "AKIAUPSTREAMKEY00000", "upstream-secret")
	e.provider(map[string]any{"name": "br", "type": "bedrock", "base_url": br.URL,
		"settings": map[string]any{"region": brRegion, "access_key": "AKIAUPSTREAMKEY00000", "access_key_secret": "upstream-secret"}})

	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		typ, path, body, model string
	}{
		{"azure-openai", "/gateway/az/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", chat, "gpt-4o-mini"},
		{"openai-compatible", "/gateway/compat/chat/completions", chat, "gpt-4o-mini"},
		{"google", "/gateway/gem/v1beta/models/" + gemModel + ":generateContent", `{"contents":[{"parts":[{"text":"hi"}]}]}`, gemModel},
		{"bedrock", "/gateway/br" + brModelPath + "/invoke", `{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}`, brModel},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			_, key := limitKey(e, map[string]any{"rate_limit_rpm": 1})
			// The first request may fail upstream (the Bedrock mock has
			// no key of the caller's): it is admitted all the same.
			resp, body := e.do(e.post(tc.path, key, tc.body))
			if resp.Header.Get("X-Keybridge-Error") == keybridge.ERateLimited {
				t.Fatalf("first request refused: %s", body)
			}
			checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Requests", "0")
			resp, body = e.do(e.post(tc.path, key, tc.body))
			checkShape(t, tc.typ, resp, body, http.StatusTooManyRequests, keybridge.ERateLimited, "limit of 1 requests per minute")
			checkRetryAfter(t, resp.Header, 59, 60)
			checkHeader(t, resp.Header, "X-Ratelimit-Limit-Requests", "1")
			checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Requests", "0")

			other := restrictedKey(e, tc.model+"-not")
			resp, body = e.do(e.post(tc.path, other, tc.body))
			checkShape(t, tc.typ, resp, body, http.StatusForbidden, keybridge.EForbidden, "is not allowed for this key")
		})
	}
}

// Each kind of declared output cap is reserved at admission: the answer's
// remaining tokens are the limit less the cap.
func TestLimitReservesEachCap(t *testing.T) {
	e := newEnv(t)
	oaUpstream(t, e, "oa", "openai", "/v1", nil)
	gemUpstream(t, e, "gem")
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, tc := range []struct {
		name, path, body string
		reserved         int
	}{
		{"max_tokens", "/gateway/oa/chat/completions", `{"model":"gpt-4o",` + msgs + `,"max_tokens":70}`, 70},
		{"max_completion_tokens", "/gateway/oa/chat/completions", `{"model":"gpt-4o",` + msgs + `,"max_completion_tokens":80}`, 80},
		{"max_output_tokens", "/gateway/oa/responses", `{"model":"gpt-4o","input":"hi","max_output_tokens":90}`, 90},
		{"two answers of max_completion_tokens", "/gateway/oa/chat/completions", `{"model":"gpt-4o",` + msgs + `,"max_completion_tokens":80,"n":2}`, 160},
		{"Gemini's maxOutputTokens", "/gateway/gem/v1beta/models/" + gemModel + ":generateContent",
			`{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":60}}`, 60},
		{"no cap", "/gateway/oa/chat/completions", `{"model":"gpt-4o",` + msgs + `}`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, key := limitKey(e, map[string]any{"rate_limit_tpm": 1000})
			resp, body := e.do(e.post(tc.path, key, tc.body))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			checkHeader(t, resp.Header, "X-Ratelimit-Limit-Tokens", "1000")
			checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Tokens", strconv.Itoa(1000-tc.reserved))
		})
	}
}

// A monthly budget, spent, refuses until the month ends (UTC): Retry-After
// is the seconds until then.
func TestLimitBudgetMonthRetryAfter(t *testing.T) {
	now := time.Now().UTC()
	next := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	if next.Sub(now) < time.Minute {
		t.Skip("the UTC month ends within the test")
	}
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 100, Output: 50}
	_, key := limitKey(e, map[string]any{"token_budget": 100, "budget_period": "month"})
	chat := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	if resp, body := e.do(e.post("/gateway/oa/chat/completions", key, chat)); resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d %s", resp.StatusCode, body)
	}
	e.waitLog(1)
	before := time.Now()
	resp, body := e.do(e.post("/gateway/oa/chat/completions", key, chat))
	after := time.Now()
	checkShape(t, "openai", resp, body, http.StatusTooManyRequests, keybridge.ERateLimited, "budget of 100 tokens this month")
	checkRetryAfter(t, resp.Header, int(next.Sub(after)/time.Second), int((next.Sub(before)+time.Second-1)/time.Second))
	checkHeader(t, resp.Header, "X-Ratelimit-Limit-Tokens", "100")
	checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Tokens", "0")
}

// A provider that sends its x-ratelimit-* headers in lower case, as
// OpenAI's servers do: for a key with limits Keybridge's values replace
// them, one value each, and only those of the limits the key has; for a
// key without, the provider's pass untouched.
func TestLimitHeadersReplaceLowerCase(t *testing.T) {
	own := map[string]string{
		"x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
		"x-ratelimit-limit-tokens": "30000000", "x-ratelimit-remaining-tokens": "29999000",
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for name, v := range own {
			w.Header()[name] = []string{v} // not canonicalised: sent in lower case
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	}))
	t.Cleanup(up.Close)
	e := newEnv(t)
	e.provider(map[string]any{"name": "raw", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("raw", "sk-upstream", 0)
	chat := `{"model":"gpt-4o","messages":[]}`

	values := func(h http.Header, name string) []string {
		var got []string
		for n, vv := range h {
			if strings.EqualFold(n, name) {
				got = append(got, vv...)
			}
		}
		return got
	}
	for _, tc := range []struct {
		name   string
		limits map[string]any
		want   map[string]string // by header name; "" the provider's
	}{
		{"no limits", nil, map[string]string{}},
		{"rpm only", map[string]any{"rate_limit_rpm": 5},
			map[string]string{"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4"}},
		{"tpm only", map[string]any{"rate_limit_tpm": 500},
			map[string]string{"x-ratelimit-limit-tokens": "500", "x-ratelimit-remaining-tokens": "500"}},
		{"all", map[string]any{"rate_limit_rpm": 5, "token_budget": 300, "budget_period": "day", "rate_limit_tpm": 500},
			map[string]string{"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4",
				"x-ratelimit-limit-tokens": "300", "x-ratelimit-remaining-tokens": "300"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := e.OwnerKey
			if tc.limits != nil {
				_, key = limitKey(e, tc.limits)
			}
			resp, body := e.do(e.post("/gateway/raw/chat/completions", key, chat))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			for name, provider := range own {
				want := provider
				if v, ok := tc.want[name]; ok {
					want = v
				}
				if got := values(resp.Header, name); len(got) != 1 || got[0] != want {
					t.Errorf("%s: got %q, want [%q]", name, got, want)
				}
			}
		})
	}
}

// A PATCH of a key's limits applies to its next request: lower limits
// count what was already admitted and nothing more (under Redis too,
// where the key's requests so far, far from the old limits, were
// admitted from a lease), and a key whose limits are cleared sees the
// provider's own headers again.
func TestLimitPatchAppliesAtOnce(t *testing.T) {
	checkPatchApplies(t, newEnv(t))
}

func TestLimitPatchAppliesAtOnceRedis(t *testing.T) {
	checkPatchApplies(t, limitEnv(t))
}

func checkPatchApplies(t *testing.T, e *env) {
	t.Helper()
	oaUpstream(t, e, "oa", "openai", "/v1", nil) // answers report no tokens
	own := providertest.OpenAIRateLimitHeaders()
	id, key := limitKey(e, map[string]any{"rate_limit_rpm": 1000, "rate_limit_tpm": 100000})
	chat := `{"model":"gpt-4o","messages":[],"max_tokens":100}`
	send := func() *http.Response {
		t.Helper()
		resp, _ := e.do(e.post("/gateway/oa/chat/completions", key, chat))
		return resp
	}
	logged := 0
	for i := range 4 {
		if resp := send(); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d", i+1, resp.StatusCode)
		}
		logged++
		e.waitLog(logged)
	}
	e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"rate_limit_rpm": 6, "rate_limit_tpm": 1000}, http.StatusOK)
	for i, want := range []string{"1", "0"} {
		resp := send()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d of the 6 a minute: %d (Retry-After %s)", 5+i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Requests", want)
		checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Tokens", "900")
		logged++
		e.waitLog(logged)
	}
	resp := send()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("X-Keybridge-Error") != keybridge.ERateLimited {
		t.Fatalf("request 7 of 6 a minute: %d, want 429", resp.StatusCode)
	}
	checkRetryAfter(t, resp.Header, 1, 60)
	checkHeader(t, resp.Header, "X-Ratelimit-Limit-Requests", "6")
	checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Requests", "0")

	e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"rate_limit_rpm": nil, "rate_limit_tpm": nil}, http.StatusOK)
	if resp = send(); resp.StatusCode != http.StatusOK {
		t.Fatalf("after clearing the limits: %d", resp.StatusCode)
	}
	for name, vv := range own {
		checkHeader(t, resp.Header, name, vv[0])
	}
}

package gateway_test

// Keys' own limits (SPEC §7.6) end to end: limits set through the
// management API on platform keys and AI keys, requests made with the
// official SDKs through the gateway to the provider-faithful mocks, and
// refusals seen as each SDK sees its provider's own 429. The counters are
// in process, in Redis when KEYBRIDGE_TEST_REDIS_URL is set, and in a
// Redis that cannot be reached.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	aoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// limitKey creates a platform key with gateway:invoke and limits (the
// fields of SPEC §7.6), checks that the answer shows them, and returns the
// key's ID and plaintext.
func limitKey(e *env, limits map[string]any) (id, key string) {
	e.t.Helper()
	out := newInvokeKey(e, limits)
	checkLimitFields(e.t, out, limits)
	return out["id"].(string), out["key"].(string)
}

// newInvokeKey creates a platform key of the owner's with gateway:invoke
// and fields, and returns the API's answer.
func newInvokeKey(e *env, fields map[string]any) map[string]any {
	e.t.Helper()
	body := map[string]any{"org": "acme", "name": "limited", "permissions": []string{"gateway:invoke"}}
	maps.Copy(body, fields)
	return e.api("POST", "/api/v1/api-keys", e.OwnerKey, body, http.StatusCreated)
}

// checkLimitFields checks that a key as the API shows it has limits.
func checkLimitFields(t testing.TB, out, limits map[string]any) {
	t.Helper()
	for name, want := range limits {
		if got := fmt.Sprint(out[name]); got != fmt.Sprint(want) {
			t.Errorf("key's %s: got %v, want %v", name, out[name], want)
		}
	}
}

// checkHeader checks that h holds name once, with value want: Keybridge's
// value replaces the provider's, it is not added beside it.
func checkHeader(t *testing.T, h http.Header, name, want string) {
	t.Helper()
	if got := h.Values(name); !slices.Equal(got, []string{want}) {
		t.Errorf("%s: got %q, want [%q]", name, got, want)
	}
}

// checkRetryAfter checks that a refusal's Retry-After is whole seconds in
// [lo, hi].
func checkRetryAfter(t *testing.T, h http.Header, lo, hi int) {
	t.Helper()
	got, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || got < lo || got > hi {
		t.Errorf("Retry-After: got %q, want seconds in [%d, %d]", h.Get("Retry-After"), lo, hi)
	}
}

// limitEnv is a Keybridge whose limit counters are in Redis, skipping t
// without KEYBRIDGE_TEST_REDIS_URL. Each test's keys are new, and the
// counters are per key ID, so runs on one Redis never meet.
func limitEnv(t *testing.T) *env {
	t.Helper()
	return limitEnvPolicy(t, gateway.LimitsLocal)
}

// limitEnvPolicy is limitEnv with whenDown as --limits-when-redis-down.
func limitEnvPolicy(t *testing.T, whenDown string) *env {
	t.Helper()
	return newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{Redis: needRedis(t), LimitsWhenRedisDown: whenDown}})
}

// needRedis is a client of KEYBRIDGE_TEST_REDIS_URL, closed when t ends;
// without it, t is skipped.
func needRedis(t *testing.T) *redis.Client {
	t.Helper()
	url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("KEYBRIDGE_TEST_REDIS_URL is not set")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("KEYBRIDGE_TEST_REDIS_URL: %v", err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// unreachableRedis is a client of a port nothing listens on.
func unreachableRedis(t *testing.T) *redis.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// checkRPM sends n+1 chat completions with a key limited to n requests a
// minute: n pass, each with Keybridge's x-ratelimit-*-requests counting
// down in place of the provider's own, and the next is refused with 429
// in OpenAI's shape before anything reaches the provider.
func checkRPM(t *testing.T, e *env, n int) {
	t.Helper()
	ctx := context.Background()
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	_, key := limitKey(e, map[string]any{"rate_limit_rpm": n})
	c := oaClient(e, "oa", key)
	for i := range n {
		var resp *http.Response
		if _, err := c.Chat.Completions.New(ctx, oaChat(), option.WithResponseInto(&resp)); err != nil {
			t.Fatalf("request %d of %d: %v", i+1, n, err)
		}
		checkHeader(t, resp.Header, "X-Ratelimit-Limit-Requests", strconv.Itoa(n))
		checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Requests", strconv.Itoa(n-1-i))
	}
	_, err := c.Chat.Completions.New(ctx, oaChat())
	apiErr := checkOAError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error",
		fmt.Sprintf("limit of %d requests per minute", n))
	checkRetryAfter(t, apiErr.Response.Header, 1, 60)
	checkHeader(t, apiErr.Response.Header, "X-Ratelimit-Remaining-Requests", "0")
	if got := len(mock.Requests()); got != n {
		t.Errorf("requests that reached the provider: got %d, want %d", got, n)
	}
}

func TestLimitRPMOpenAI(t *testing.T) {
	checkRPM(t, newEnv(t), 3)
}

func TestLimitRPMRedis(t *testing.T) {
	checkRPM(t, limitEnv(t), 3)
}

// An AI key's limit, set by PATCH, refused as the Anthropic SDK sees
// Anthropic's own 429.
func TestLimitRPMAnthropicAIKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mock, _ := antUpstream(t, e, "ant")
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "p"}, http.StatusCreated)["id"].(string)
	created := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey,
		map[string]any{"name": "k", "ai_type": "ANTHROPIC", "rate_limit_rpm": 5}, http.StatusCreated)
	patched := e.api("PATCH", "/api/v1/orgs/acme/projects/"+project+"/ai-keys/"+created["id"].(string), e.OwnerKey,
		map[string]any{"rate_limit_rpm": 2}, http.StatusOK)
	checkLimitFields(t, patched, map[string]any{"rate_limit_rpm": 2})

	c := antClient(e, "ant", created["secret"].(string), false)
	for i := range 2 {
		var resp *http.Response
		if _, err := c.Messages.New(ctx, antMessage(), aoption.WithResponseInto(&resp)); err != nil {
			t.Fatalf("request %d of 2: %v", i+1, err)
		}
		checkHeader(t, resp.Header, "X-Ratelimit-Limit-Requests", "2")
		checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Requests", strconv.Itoa(1-i))
	}
	_, err := c.Messages.New(ctx, antMessage())
	apiErr := checkAntError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error", "limit of 2 requests per minute")
	checkRetryAfter(t, apiErr.Response.Header, 1, 60)
	if got := len(mock.Requests()); got != 2 {
		t.Errorf("requests that reached the provider: got %d, want 2", got)
	}
}

// Keybridge's x-ratelimit-*-tokens show the tighter of TPM and the budget,
// after this request's reservation; a key without limits gets the
// provider's own headers untouched.
func TestLimitHeaders(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 100, Output: 50} // 150 tokens an answer
	own := providertest.OpenAIRateLimitHeaders()

	var resp *http.Response
	if _, err := oaClient(e, "oa", e.OwnerKey).Chat.Completions.New(ctx, oaChat(), option.WithResponseInto(&resp)); err != nil {
		t.Fatal(err)
	}
	for name, vv := range own {
		if got := resp.Header.Values(name); !slices.Equal(got, vv) {
			t.Errorf("key without limits, %s: got %q, want the provider's %q", name, got, vv)
		}
	}
	logged := 1
	e.waitLog(logged)

	chat := oaChat()
	chat.MaxTokens = openai.Int(50) // reserved at admission
	for _, tc := range []struct {
		name   string
		limits map[string]any
		want   [][2]string // limit, remaining: one per request, each after the last settled
	}{
		{"budget tighter", map[string]any{"rate_limit_tpm": 1000, "token_budget": 400, "budget_period": "day"},
			[][2]string{{"400", "350"}, {"400", "200"}, {"400", "50"}}},
		{"tpm tighter", map[string]any{"rate_limit_tpm": 500, "token_budget": 100000, "budget_period": "month"},
			[][2]string{{"500", "450"}, {"500", "300"}, {"500", "150"}}},
		{"tpm only", map[string]any{"rate_limit_tpm": 200},
			[][2]string{{"200", "150"}, {"200", "0"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, key := limitKey(e, tc.limits)
			c := oaClient(e, "oa", key)
			for i, want := range tc.want {
				var resp *http.Response
				if _, err := c.Chat.Completions.New(ctx, chat, option.WithResponseInto(&resp)); err != nil {
					t.Fatalf("request %d: %v", i+1, err)
				}
				checkHeader(t, resp.Header, "X-Ratelimit-Limit-Tokens", want[0])
				checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Tokens", want[1])
				// Headers of other names pass as always.
				checkHeader(t, resp.Header, "X-Ratelimit-Reset-Tokens", own.Get("X-Ratelimit-Reset-Tokens"))
				logged++
				e.waitLog(logged) // settled: the answer's tokens count
			}
		})
	}
}

// TPM counts the tokens answers report, streamed ones included (through
// the usage chunk the gateway asks for and hides): once they reach the
// limit, the next request is refused.
func TestLimitTPM(t *testing.T) {
	checkTPM(t, newEnv(t))
}

func TestLimitTPMRedis(t *testing.T) {
	checkTPM(t, limitEnv(t))
}

func checkTPM(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 100, CacheRead: 20, Output: 30} // 150 tokens an answer
	_, key := limitKey(e, map[string]any{"rate_limit_tpm": 300})
	c := oaClient(e, "oa", key)

	if _, err := c.Chat.Completions.New(ctx, oaChat()); err != nil {
		t.Fatal(err)
	}
	e.waitLog(1)
	st := c.Chat.Completions.NewStreaming(ctx, oaChat())
	for st.Next() {
	}
	if err := st.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	e.waitLog(2)
	_, err := c.Chat.Completions.New(ctx, oaChat())
	apiErr := checkOAError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error", "limit of 300 tokens per minute")
	checkRetryAfter(t, apiErr.Response.Header, 1, 60)
	checkHeader(t, apiErr.Response.Header, "X-Ratelimit-Remaining-Tokens", "0")
	if got := len(mock.Requests()); got != 2 {
		t.Errorf("requests that reached the provider: got %d, want 2", got)
	}
}

// A daily budget refuses exactly when the tokens spent reach it, until the
// end of the UTC day.
func TestLimitBudgetDayEdge(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC()
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	if midnight.Sub(now) < time.Minute {
		t.Skip("the UTC day ends within the test")
	}
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 100, Output: 50} // 150 tokens an answer
	logged := 0
	for _, tc := range []struct{ budget, admitted int }{{300, 2}, {301, 3}} {
		_, key := limitKey(e, map[string]any{"token_budget": tc.budget, "budget_period": "day"})
		c := oaClient(e, "oa", key)
		for i := range tc.admitted {
			if _, err := c.Chat.Completions.New(ctx, oaChat()); err != nil {
				t.Fatalf("budget %d, request %d: %v", tc.budget, i+1, err)
			}
			logged++
			e.waitLog(logged)
		}
		before := time.Now()
		_, err := c.Chat.Completions.New(ctx, oaChat())
		after := time.Now()
		apiErr := checkOAError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error",
			fmt.Sprintf("budget of %d tokens this day", tc.budget))
		checkRetryAfter(t, apiErr.Response.Header, int(midnight.Sub(after)/time.Second), int((midnight.Sub(before)+time.Second-1)/time.Second))
		checkHeader(t, apiErr.Response.Header, "X-Ratelimit-Limit-Tokens", strconv.Itoa(tc.budget))
		logged++
	}
}

// usageOf polls the usage API until the key's group has n requests, and
// returns it.
func usageOf(e *env, keyID string, n int64) keybridge.UsageGroup {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := e.api("GET", "/api/v1/orgs/acme/usage?group_by=api_key", e.OwnerKey, nil, http.StatusOK)
		items, _ := out["items"].([]any)
		for _, it := range items {
			m, _ := it.(map[string]any)
			if m["key"] != keyID {
				continue
			}
			g := keybridge.UsageGroup{Key: keyID}
			num := func(f string) int64 { v, _ := m[f].(float64); return int64(v) }
			g.Requests, g.Errors = num("requests"), num("errors")
			g.InputTokens, g.OutputTokens = num("input_tokens"), num("output_tokens")
			g.CacheReadTokens, g.CacheWriteTokens = num("cache_read_tokens"), num("cache_write_tokens")
			if g.Requests >= n {
				return g
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("usage of key %s: %v, want %d requests", keyID, items, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Concurrent requests overshoot a budget by no more than their
// reservations: 50 at once, each declaring max_tokens, against a budget
// far below what they would spend together.
func TestLimitReservationsBoundConcurrentOvershoot(t *testing.T) {
	const (
		n       = 50
		budget  = 1000 // tokens a day
		reserve = 100  // each request's max_tokens
		used    = 60   // each answer's tokens: no more than its reservation
	)
	ctx := context.Background()
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 20, Output: 40}
	// Answers are held a moment, so that the requests are in flight
	// together: without reservations every one would be admitted.
	mock.Fault("", providertest.Fault{StallBefore: 100 * time.Millisecond})
	keyID, key := limitKey(e, map[string]any{"token_budget": budget, "budget_period": "day"})
	c := oaClient(e, "oa", key)
	chat := oaChat()
	chat.MaxTokens = openai.Int(reserve)

	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := c.Chat.Completions.New(ctx, chat)
			var apiErr *openai.Error
			switch {
			case err == nil:
				admitted.Add(1)
			case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusTooManyRequests && apiErr.Code == keybridge.ERateLimited:
				refused.Add(1)
			default:
				t.Errorf("request: %v", err)
			}
		})
	}
	wg.Wait()
	k := admitted.Load()
	// A request is admitted only while the settled tokens plus the open
	// reservations are below the budget, and no answer spends more than
	// its reservation: every request admitted before the last one spent
	// less than the budget together, and the last one at most its own.
	// And a refusal needs the reservations to reach the budget, so at
	// least budget/reserve were admitted.
	if k*used > budget-1+used || k < budget/reserve || k+refused.Load() != n {
		t.Fatalf("admitted %d (spending %d tokens) and refused %d of %d; want %d to %d admitted, the rest refused",
			k, k*used, refused.Load(), n, budget/reserve, (budget-1+used)/used)
	}
	t.Logf("admitted %d of %d, spending %d tokens of a budget of %d", k, n, k*used, budget)

	// The recorded usage agrees, and so does the limiter: with every
	// request settled, the next one sees the budget less what was spent.
	e.waitLog(n)
	g := usageOf(e, keyID, n)
	if g.Requests != n || g.Errors != n-k || g.InputTokens != 20*k || g.OutputTokens != 40*k {
		t.Errorf("recorded usage: got %+v, want %d requests, %d errors, %d input and %d output tokens", g, n, n-k, 20*k, 40*k)
	}
	mock.ClearFaults()
	var resp *http.Response
	_, err := c.Chat.Completions.New(ctx, chat, option.WithResponseInto(&resp))
	if k*used >= budget {
		checkOAError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error", "budget")
		return
	}
	if err != nil {
		t.Fatalf("request after the others settled: %v", err)
	}
	checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Tokens", strconv.FormatInt(budget-k*used-reserve, 10))
}

// A stream the client abandons is charged the tokens seen until then: a
// cancel is never free.
func TestLimitCanceledStreamIsCharged(t *testing.T) {
	e := newEnv(t)
	mock, _ := antUpstream(t, e, "ant")
	// message_start reports the input and 1 output token; the stream then
	// stalls until the client leaves.
	mock.Usage = providertest.Usage{Input: 100, Output: 40}
	mock.Fault("", providertest.Fault{StallAfter: 4, StallFor: time.Minute, Times: 1})
	keyID, key := limitKey(e, map[string]any{"rate_limit_tpm": 101})
	c := antClient(e, "ant", key, false)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := c.Messages.NewStreaming(ctx, antMessage())
	for range 3 { // message_start, content_block_start, the first delta (the SDK keeps ping)
		if !st.Next() {
			t.Fatal(st.Err())
		}
	}
	cancel()
	mock.WaitCanceled(t, 1)
	e.waitLog(1)
	g := usageOf(e, keyID, 1)
	if g.InputTokens != 100 || g.OutputTokens != 1 {
		t.Errorf("recorded usage of the abandoned stream: got %d input, %d output tokens, want 100 and 1", g.InputTokens, g.OutputTokens)
	}
	_, err := c.Messages.New(context.Background(), antMessage())
	apiErr := checkAntError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error", "limit of 101 tokens per minute")
	checkRetryAfter(t, apiErr.Response.Header, 1, 60)
}

// With Redis unreachable, "refuse" answers limited keys 503 in the
// provider's shape (keys without limits need no Redis), and "local" keeps
// serving on this replica's own counters.
func TestLimitsWhenRedisDown(t *testing.T) {
	ctx := context.Background()
	t.Run("refuse", func(t *testing.T) {
		e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{
			Redis: unreachableRedis(t), LimitsWhenRedisDown: gateway.LimitsRefuse}})
		mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
		antUpstream(t, e, "ant")
		_, key := limitKey(e, map[string]any{"rate_limit_rpm": 10})

		_, err := oaClient(e, "oa", key).Chat.Completions.New(ctx, oaChat())
		checkOAError(t, err, http.StatusServiceUnavailable, keybridge.EUnavailable, "server_error", "Redis is unreachable")
		_, err = antClient(e, "ant", key, false).Messages.New(ctx, antMessage())
		checkAntError(t, err, http.StatusServiceUnavailable, keybridge.EUnavailable, "overloaded_error", "Redis is unreachable")
		resp, body := e.do(e.post("/gateway/oa/chat/completions", key, `{"model":"gpt-4o","messages":[]}`))
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
			t.Errorf("raw request: %d, Retry-After %q, want 503 and 1: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if got := len(mock.Requests()); got != 0 {
			t.Errorf("requests that reached the provider: got %d, want 0", got)
		}
		if _, err := oaClient(e, "oa", e.OwnerKey).Chat.Completions.New(ctx, oaChat()); err != nil {
			t.Errorf("key without limits: %v", err)
		}
	})
	t.Run("local", func(t *testing.T) {
		e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{
			Redis: unreachableRedis(t), LimitsWhenRedisDown: gateway.LimitsLocal}})
		checkRPM(t, e, 2)
	})
}

// A declared output cap far above the key's limits reserves the tightest
// of them and no more: while that request runs the key is at its limit,
// and once it ends its tokens count as any others. Neither an overflow
// in process nor a number Redis's scripts cannot take switches the
// limits off or passes for an outage (the Redis runs refuse while Redis
// is down, so an outage would answer 503).
func TestLimitHugeOutputCap(t *testing.T) {
	checkHugeCap(t, newEnv(t))
}

func TestLimitHugeOutputCapRedis(t *testing.T) {
	checkHugeCap(t, limitEnvPolicy(t, gateway.LimitsRefuse))
}

func checkHugeCap(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 100, Output: 50} // 150 tokens an answer
	withCap := func(n int64) openai.ChatCompletionNewParams {
		p := oaChat()
		p.MaxTokens = openai.Int(n)
		return p
	}
	logged := 0
	for _, huge := range []int64{math.MaxInt64, 1e17, 1e14} {
		_, key := limitKey(e, map[string]any{"rate_limit_tpm": 1000, "token_budget": 5000, "budget_period": "month"})
		c := oaClient(e, "oa", key)
		// 150 tokens are counted already.
		if _, err := c.Chat.Completions.New(ctx, oaChat()); err != nil {
			t.Fatal(err)
		}
		logged++
		e.waitLog(logged)
		// The huge request is held until the others have been tried.
		seen := len(mock.Requests())
		mock.Fault("", providertest.Fault{StallBefore: 300 * time.Millisecond, Times: 1})
		done := make(chan http.Header, 1)
		go func() {
			var resp *http.Response
			if _, err := c.Chat.Completions.New(ctx, withCap(huge), option.WithResponseInto(&resp)); err != nil {
				t.Errorf("max_tokens %d: %v", huge, err)
				done <- nil
				return
			}
			done <- resp.Header
		}()
		for deadline := time.Now().Add(5 * time.Second); len(mock.Requests()) == seen; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("max_tokens %d never reached the provider", huge)
			}
		}
		// It reserved the whole minute: the key is at its limit until it ends.
		for range 3 {
			_, err := c.Chat.Completions.New(ctx, withCap(900))
			apiErr := checkOAError(t, err, http.StatusTooManyRequests, keybridge.ERateLimited, "rate_limit_error", "limit of 1000 tokens per minute")
			checkHeader(t, apiErr.Response.Header, "X-Ratelimit-Remaining-Tokens", "0")
			checkHeader(t, apiErr.Response.Header, "Retry-After", "1")
		}
		h := <-done
		if h == nil {
			t.FailNow()
		}
		checkHeader(t, h, "X-Ratelimit-Limit-Tokens", "1000")
		checkHeader(t, h, "X-Ratelimit-Remaining-Tokens", "0")
		logged += 4
		e.waitLog(logged)
		// It settled its 150 tokens: 700 of the minute are left, and a
		// request reserving 500 leaves 200.
		var resp *http.Response
		if _, err := c.Chat.Completions.New(ctx, withCap(500), option.WithResponseInto(&resp)); err != nil {
			t.Fatalf("after max_tokens %d ended: %v", huge, err)
		}
		checkHeader(t, resp.Header, "X-Ratelimit-Remaining-Tokens", "200")
		logged++
		if t.Failed() {
			t.Fatalf("max_tokens %d: see above", huge)
		}
	}
}

// replyHeld holds the answers to limit scripts: each waits hold after
// Redis ran it, and ends early with the context's error if the caller's
// context ends meanwhile, as go-redis does when a context ends while it
// waits for an answer (with ContextTimeoutEnabled, or between retries).
type replyHeld struct {
	hold time.Duration
	ran  chan struct{} // one send per script that ran, if anyone listens
}

func (h replyHeld) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h replyHeld) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h replyHeld) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() != "evalsha" && cmd.Name() != "eval" {
			return err
		}
		select {
		case h.ran <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			cmd.SetErr(ctx.Err())
			return ctx.Err()
		case <-time.After(h.hold):
			return err
		}
	}
}

// A client that leaves while its admission is on its way to Redis leaves
// nothing counted there: Redis counted the request and its reservation,
// so the admission is seen through and the request settled.
func TestLimitClientGoneDuringAdmission(t *testing.T) {
	rdb := needRedis(t)
	held := replyHeld{hold: 300 * time.Millisecond, ran: make(chan struct{})}
	rdb.AddHook(held)
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{Redis: rdb}})
	oaUpstream(t, e, "oa", "openai", "/v1", nil)
	// A TPM of 150 and a cap of 100: too near the limit for a lease, so
	// the request's own reservation is the only one.
	keyID, key := limitKey(e, map[string]any{"rate_limit_tpm": 150})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-held.ran; cancel() }()
	chat := oaChat()
	chat.MaxTokens = openai.Int(100)
	if _, err := oaClient(e, "oa", key).Chat.Completions.New(ctx, chat); !errors.Is(err, context.Canceled) {
		t.Fatalf("request = %v, want it canceled", err)
	}
	res := "{kb:" + keyID + "}:res"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, err := rdb.ZCard(context.Background(), res).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after the client left, Redis holds reservations %v", rdb.ZRange(context.Background(), res, 0, -1).Val())
		}
	}
}

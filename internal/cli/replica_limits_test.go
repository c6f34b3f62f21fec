package cli_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// limitReplicas starts n serve replicas on one PostgreSQL schema and
// the test's Redis, gives them provider oai (an upstream that reports 4
// tokens, 3 in and 1 out, for every completion) and returns them with the
// owner's key.
func limitReplicas(t *testing.T, n int) (reps []*server, owner string, up *recordingUpstream) {
	t.Helper()
	reps, owner = redisReplicas(t, n, testRedisURL(t))
	up = newRecordingUpstream(t)
	if resp, out := reps[0].call(t, "POST", "/api/v1/orgs/acme/providers", owner,
		map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create provider = %d %s", resp.StatusCode, out)
	}
	if resp, out := reps[0].call(t, "POST", "/api/v1/orgs/acme/providers/oai/keys", owner,
		map[string]any{"api_key": "sk-replica-token-limits-upstream-AAAAAAAA"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("add upstream key = %d %s", resp.StatusCode, out)
	}
	return reps, owner, up
}

// newLimitedKey creates, through s, a platform key of owner's with the
// given limits, and returns its id and plaintext.
func newLimitedKey(t *testing.T, base, owner string, limits map[string]any) (id, key string) {
	t.Helper()
	body := map[string]any{"org": "acme", "name": "limited", "permissions": []string{"gateway:invoke"}}
	for k, v := range limits {
		body[k] = v
	}
	resp, out := call(t, base, "POST", "/api/v1/api-keys", owner, body)
	var v struct{ ID, Key string }
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(out, &v) != nil || v.Key == "" {
		t.Fatalf("create key = %d %s", resp.StatusCode, out)
	}
	return v.ID, v.Key
}

// gatewayAnswer is what one chat completion through the gateway got.
type gatewayAnswer struct {
	status     int
	limitReqs  string // x-ratelimit-limit-requests
	keybridge  string // X-Keybridge-Error
	retryAfter string
	body       []byte
	err        error
}

// chatOnce sends one chat completion through base's gateway with key;
// safe off the test's goroutine.
func chatOnce(base, key, body string) gatewayAnswer {
	req, _ := http.NewRequest("POST", base+"/gateway/oai/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return gatewayAnswer{err: err}
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return gatewayAnswer{status: resp.StatusCode, limitReqs: resp.Header.Get("X-Ratelimit-Limit-Requests"),
		keybridge: resp.Header.Get("X-Keybridge-Error"), retryAfter: resp.Header.Get("Retry-After"), body: out}
}

// redisReplicas starts n serve replicas on one PostgreSQL schema and the
// Redis at redisURL, and returns them with the owner's key.
func redisReplicas(t *testing.T, n int, redisURL string) (reps []*server, owner string) {
	t.Helper()
	env, owner := setupReplicas(t, postgresURL(t))
	for range n {
		reps = append(reps, startServeEnv(t, env, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--redis-url", redisURL))
	}
	return reps, owner
}

// spread sends n chat completions, request i through bases[i%len(bases)],
// workers at a time, and returns how many got each status.
func spread(t *testing.T, bases []string, key, body string, n, workers int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	statuses := map[int]int{}
	fanOut(n, workers, func(i int) bool {
		a := chatOnce(bases[i%len(bases)], key, body)
		if a.err != nil {
			t.Errorf("request %d: %v", i, a.err)
			return false
		}
		if a.status == http.StatusTooManyRequests && (a.keybridge != "rate_limited" || a.retryAfter == "") {
			t.Errorf("429 with X-Keybridge-Error %q and Retry-After %q, want rate_limited and a wait: %s", a.keybridge, a.retryAfter, a.body)
		}
		mu.Lock()
		statuses[a.status]++
		mu.Unlock()
		return true
	})
	return statuses
}

// fanOut runs do(0) to do(n-1), workers at a time, each worker taking the
// next i as it finishes one, so that requests to several replicas
// interleave. A worker whose do reports false stops.
func fanOut(n, workers int, do func(i int) bool) {
	var (
		mu   sync.Mutex
		next int
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n || !do(i) {
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestGatewayTokenLimitsAcrossReplicas: a TPM limit and a token budget
// are one limit for three replicas on one Redis (SPEC §7.6), as the RPM
// limit is (TestGatewayLimitsAcrossReplicas). A request that declares a
// max_tokens equal to the tokens its answer reports reserves exactly what
// it uses, so the limit admits exactly limit/4 requests however the
// replicas interleave; without a cap, concurrent requests may overshoot by
// what they use, at most one each (the replicas' leases of the key's
// tokens once admitted such requests until each replica's own answers made
// half the limit: one and a half times the limit for three).
func TestGatewayTokenLimitsAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers on PostgreSQL and Redis; skipped with -short")
	}
	reps, owner, up := limitReplicas(t, 3)
	bases := []string{reps[0].url, reps[1].url, reps[2].url}
	const limit, perRequest, workers = 1000, 4, 6
	want := limit / perRequest
	capped := `{"model":"gpt-4o-mini","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`
	uncapped := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	for _, c := range []struct {
		name     string
		limits   map[string]any
		body     string
		overshot int // admissions allowed past want
	}{
		{"tpm", map[string]any{"rate_limit_tpm": limit}, capped, 0},
		{"budget", map[string]any{"token_budget": limit, "budget_period": "day"}, capped, 0},
		{"tpm without a cap", map[string]any{"rate_limit_tpm": limit}, uncapped, workers},
		{"budget without a cap", map[string]any{"token_budget": limit, "budget_period": "month"}, uncapped, workers},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, key := newLimitedKey(t, reps[0].url, owner, c.limits)
			before := up.count()
			got := spread(t, bases, key, c.body, want+want/5, workers)
			admitted := got[http.StatusOK]
			if admitted < want || admitted > want+c.overshot || admitted+got[http.StatusTooManyRequests] != want+want/5 {
				t.Errorf("%d requests of %d tokens over three replicas, one limit of %d tokens: %v, want %d to %d of 200, the rest 429",
					want+want/5, perRequest, limit, got, want, want+c.overshot)
			}
			if n := up.count() - before; n != admitted {
				t.Errorf("requests that reached the provider: %d, want the %d admitted", n, admitted)
			}
		})
	}
}

// TestGatewayLimitPatchedAcrossReplicas changes a key's RPM limit through
// one replica while the other serves it: the other applies the new limit
// within a second (docs/gateway.md: a change reaches every replica within
// a second, and ends the key's leases), and the count carries over:
// raised, the two replicas together admit exactly the difference; lowered
// below what the window holds, neither admits any.
func TestGatewayLimitPatchedAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers on PostgreSQL and Redis; skipped with -short")
	}
	reps, owner, up := limitReplicas(t, 2)
	a, b := reps[0], reps[1]
	bases := []string{a.url, b.url}
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	const first, raised, lowered = 300, 360, 100
	id, key := newLimitedKey(t, a.url, owner, map[string]any{"rate_limit_rpm": first})

	// Far from the limit, both replicas take leases of it; the key is
	// then used up.
	got := spread(t, bases, key, body, first+20, 4)
	if got[http.StatusOK] != first {
		t.Fatalf("before the change: %v, want %d of 200", got, first)
	}
	patch := func(rpm int) {
		t.Helper()
		if resp, out := a.call(t, "PATCH", "/api/v1/api-keys/"+id, owner, map[string]any{"rate_limit_rpm": rpm}); resp.StatusCode != http.StatusOK {
			t.Fatalf("PATCH rate_limit_rpm %d through replica 1 = %d %s", rpm, resp.StatusCode, out)
		}
	}
	// seen polls replica 2 until its answers carry the limit rpm, and
	// returns how many of the polls it admitted.
	seen := func(rpm int) int {
		t.Helper()
		admitted := 0
		start := time.Now()
		for {
			ans := chatOnce(b.url, key, body)
			if ans.status == http.StatusOK {
				admitted++
			}
			if ans.limitReqs == strconv.Itoa(rpm) {
				t.Logf("replica 2 applied rate_limit_rpm %d after %v", rpm, time.Since(start).Round(time.Millisecond))
				return admitted
			}
			if time.Since(start) > propagation {
				t.Fatalf("replica 2 still answers with x-ratelimit-limit-requests %q %v after the PATCH, want %d", ans.limitReqs, propagation, rpm)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	before := up.count()
	patch(raised)
	polled := seen(raised)
	got = spread(t, bases, key, body, 2*(raised-first), 4)
	if n := polled + got[http.StatusOK]; n != raised-first {
		t.Errorf("after raising the limit from %d to %d: %d admitted (%d while polling, then %v), want %d",
			first, raised, n, polled, got, raised-first)
	}
	if n := up.count() - before; n != raised-first {
		t.Errorf("requests that reached the provider after the raise: %d, want %d", n, raised-first)
	}

	patch(lowered)
	if n := seen(lowered); n != 0 {
		t.Errorf("replica 2 admitted %d requests after the limit was lowered below the window's count", n)
	}
	if got := spread(t, bases, key, body, 40, 4); got[http.StatusOK] != 0 {
		t.Errorf("after lowering the limit to %d under a window of %d: %v, want every request 429", lowered, raised, got)
	}
}

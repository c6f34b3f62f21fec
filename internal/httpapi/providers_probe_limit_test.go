package httpapi_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/upstream"
)

// TestProviderProbesRateLimited checks that an org's provider tests and
// usage probes share one budget: with 4 a minute, the fifth call is 429
// rate_limited with Retry-After, in the error shape, and calls nothing;
// answers from the usage cache cost nothing; another org keeps its own
// budget. Without a limit the endpoint was a free port scanner.
func TestProviderProbesRateLimited(t *testing.T) {
	up := newFakeUpstream(t)
	eng := storetest.Engines()[0]
	e := newEnvWith(t, eng.New(t), envOptions{Config: httpapi.Config{ProbesPerMinute: 4}})
	test := map[string]any{"type": "openai", "base_url": up.URL + "/v1", "api_key": goodUpstreamKey}

	p := e.addProvider(map[string]any{"name": "openai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addProviderKey(p.ID, map[string]any{"api_key": goodUpstreamKey})
	resp, body := e.do("GET", e.providersPath("/openai/usage"), e.OwnerKey, nil) // 1: probes
	wantStatus(t, resp, body, http.StatusOK)
	resp, body = e.do("GET", e.providersPath("/openai/usage"), e.OwnerKey, nil) // cached: free
	wantStatus(t, resp, body, http.StatusOK)
	if l := decodeAs[provList[probeResult]](t, body); len(l.Items) != 1 || !l.Items[0].Cached {
		t.Fatalf("second usage = %s, want one cached item", body)
	}
	for i := 2; i <= 4; i++ {
		resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey, test)
		wantStatus(t, resp, body, http.StatusOK)
	}
	calls := up.calls.Load()
	resp, body = e.do("POST", e.providersPath("/test"), e.OwnerKey, test)
	wantError(t, resp, body, keybridge.ERateLimited)
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
		t.Errorf("Retry-After = %q, want 1 to 60 seconds", resp.Header.Get("Retry-After"))
	}
	resp, body = e.do("GET", e.providersPath("/openai/usage?refresh=true"), e.OwnerKey, nil)
	wantError(t, resp, body, keybridge.ERateLimited)
	if got := up.calls.Load(); got != calls {
		t.Errorf("refused probes called the provider %d times, want 0", got-calls)
	}
	// A request that is wrong is 400 before it counts, and still 400.
	resp, body = e.do("POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "nope"})
	wantInvalidField(t, resp, body, "type")

	other := e.otherOrg()
	resp, body = e.do("POST", "/api/v1/orgs/"+other.Org.Slug+"/providers/test", other.OwnerKey, test)
	wantStatus(t, resp, body, http.StatusOK)
}

// TestProviderTestUnreachableIsUniform checks, through the API, that a
// closed port and a service that is not HTTP answer alike, and that the
// reason is in the server's log under the request's id.
func TestProviderTestUnreachableIsUniform(t *testing.T) {
	eng := storetest.Engines()[0]
	e := newEnvWith(t, eng.New(t), envOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String()
	ln.Close()
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 smtp.internal ESMTP ready\r\n"))
			c.Close()
		}
	}()
	var answers []string
	for _, base := range []string{closedURL, "http://" + ln.Addr().String()} {
		resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "openai-compatible", "base_url": base})
		wantStatus(t, resp, body, http.StatusOK)
		res := decodeAs[probeResult](t, body)
		if res.Reachable || res.Error != upstream.ErrUnreachable || res.StatusCode != 0 || res.LatencyMS != 0 {
			t.Errorf("test of %s = %s, want unreachable with %q and no status or latency", base, body, upstream.ErrUnreachable)
		}
		answers = append(answers, res.Error)
		if id := resp.Header.Get("X-Request-Id"); !strings.Contains(e.logs(), id) || !strings.Contains(e.logs(), "upstream unreachable") {
			t.Errorf("the log has no line on the unreachable probe of request %s", id)
		}
	}
	if answers[0] != answers[1] {
		t.Errorf("a closed port answers %q and an SMTP server %q, want the same", answers[0], answers[1])
	}
}

// TestProviderProbesSharedInRedis runs two API servers on one store and
// one Redis, as two replicas: the org's budget of 4 is one for both.
// Skipped without KEYBRIDGE_TEST_REDIS_URL.
func TestProviderProbesSharedInRedis(t *testing.T) {
	url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("KEYBRIDGE_TEST_REDIS_URL not set")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("KEYBRIDGE_TEST_REDIS_URL: %v", err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	up := newFakeUpstream(t)
	e := newEnvWith(t, storetest.Engines()[0].New(t), envOptions{Config: httpapi.Config{ProbesPerMinute: 4, Redis: rdb}})
	other := httptest.NewServer(httpapi.New(httpapi.Config{Store: e.Store, Ring: e.Ring, Auth: e.Auth,
		Upstream: upstream.New(upstream.Options{}), ProbesPerMinute: 4, Redis: rdb}))
	defer other.Close()
	test := `{"type":"openai","base_url":"` + up.URL + `/v1","api_key":"` + goodUpstreamKey + `"}`
	probe := func(base string) int {
		req, _ := http.NewRequest("POST", base+e.providersPath("/test"), strings.NewReader(test))
		req.Header.Set("Authorization", "Bearer "+e.OwnerKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i, base := range []string{e.Server.URL, other.URL, e.Server.URL, other.URL} {
		if got := probe(base); got != http.StatusOK {
			t.Fatalf("probe %d = %d, want 200", i+1, got)
		}
	}
	for _, base := range []string{other.URL, e.Server.URL} {
		if got := probe(base); got != http.StatusTooManyRequests {
			t.Errorf("probe past the shared budget on %s = %d, want 429", base, got)
		}
	}
}

// TestProviderProbesRedisDown checks the fallback: with Redis configured
// but not answering, the budget is counted in the process (still 429 past
// it) and a warning is logged.
func TestProviderProbesRedisDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	up := newFakeUpstream(t)
	e := newEnvWith(t, storetest.Engines()[0].New(t), envOptions{Config: httpapi.Config{ProbesPerMinute: 2, Redis: rdb}})
	test := map[string]any{"type": "openai", "base_url": up.URL + "/v1", "api_key": goodUpstreamKey}
	for range 2 {
		resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey, test)
		wantStatus(t, resp, body, http.StatusOK)
	}
	resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey, test)
	wantError(t, resp, body, keybridge.ERateLimited)
	if !strings.Contains(e.logs(), "counting in this process") {
		t.Errorf("no warning that the probes are counted in the process")
	}
}

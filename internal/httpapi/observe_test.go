package httpapi_test

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

type logLine struct {
	Level     string  `json:"level"`
	Msg       string  `json:"msg"`
	RequestID string  `json:"request_id"`
	Method    string  `json:"method"`
	Route     string  `json:"route"`
	Path      string  `json:"path"`
	Status    int     `json:"status"`
	Duration  float64 `json:"duration_ms"`
}

func requestLogs(t *testing.T, e *env) map[string]logLine {
	t.Helper()
	out := map[string]logLine{}
	sc := bufio.NewScanner(strings.NewReader(e.logs()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Bytes())
		}
		if l.Msg == "request" {
			out[l.RequestID] = l
		}
	}
	return out
}

// TestRequestLogAndMetrics checks that every request gets an id, one JSON
// log line under that id with its route pattern, and a count in the
// metrics; and that the line holds no query string or credential.
func TestRequestLogAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Config: httpapi.Config{
		Registerer: reg, Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}})
	cases := []struct {
		method, path, route string
		status              int
	}{
		{"GET", "/api/v1/orgs/" + e.Org.Slug + "?secret=query-canary", "GET /api/v1/orgs/{org}", 200},
		{"GET", "/api/v1/users/me", "GET /api/v1/users/me", 200},
		{"GET", "/api/v1/nothing-here", "/api/", 404},
		{"GET", "/nothing-at-all", "unmatched", 404},
		{"GET", "/healthz", "GET /healthz", 200},
	}
	ids := map[string]int{}
	for i, c := range cases {
		resp, raw := e.do(c.method, c.path, e.OwnerKey, nil)
		if resp.StatusCode != c.status {
			t.Fatalf("%s %s = %d %s, want %d", c.method, c.path, resp.StatusCode, raw, c.status)
		}
		id := resp.Header.Get("X-Request-Id")
		if id == "" {
			t.Fatalf("%s %s: no X-Request-Id", c.method, c.path)
		}
		ids[id] = i
	}
	logs := requestLogs(t, e)
	for id, i := range ids {
		c := cases[i]
		l, ok := logs[id]
		if !ok {
			t.Errorf("%s %s: no log line with request_id %s", c.method, c.path, id)
			continue
		}
		if l.Route != c.route || l.Status != c.status || l.Method != c.method || l.Duration <= 0 {
			t.Errorf("%s %s: log line %+v, want route %q status %d", c.method, c.path, l, c.route, c.status)
		}
	}
	all := e.logs()
	for _, secret := range []string{"query-canary", e.OwnerKey, "Bearer"} {
		if strings.Contains(all, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}

	resp, raw := e.do("GET", "/metrics", "", nil)
	wantStatus(t, resp, raw, http.StatusOK)
	for _, want := range []string{
		`keybridge_http_requests_total{route="GET /api/v1/users/me",status="200"} 1`,
		`keybridge_http_requests_total{route="unmatched",status="404"} 1`,
		`keybridge_http_request_duration_seconds_count{route="GET /api/v1/orgs/{org}",status="200"} 1`,
	} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestOpsEndpoints checks the probes: alive always, ready only when the
// Ready check passes, and /metrics absent when metrics are off.
func TestOpsEndpoints(t *testing.T) {
	ready := func(r *http.Request) error { return keybridge.Errorf(keybridge.EUnavailable, "database down") }
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Config: httpapi.Config{Ready: ready}})
	resp, raw := e.do("GET", "/healthz", "", nil)
	wantStatus(t, resp, raw, http.StatusOK)
	resp, raw = e.do("GET", "/readyz", "", nil)
	wantError(t, resp, raw, keybridge.EUnavailable)
	// Metrics are off in this env.
	resp, raw = e.do("GET", "/metrics", "", nil)
	wantError(t, resp, raw, keybridge.ENotFound)
}

// BenchmarkRequestOverhead measures what every request pays for the
// request id, the JSON log line and the metrics ("bare": logs discarded
// unformatted, no metrics):
//
//	go test ./internal/httpapi -run '^$' -bench RequestOverhead -benchmem
func BenchmarkRequestOverhead(b *testing.B) {
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	for _, c := range []struct {
		name string
		cfg  func() httpapi.Config
	}{
		{"bare", func() httpapi.Config { return httpapi.Config{} }},
		{"log", func() httpapi.Config { return httpapi.Config{Logger: logger} }},
		{"log+metrics", func() httpapi.Config { return httpapi.Config{Logger: logger, Registerer: prometheus.NewRegistry()} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			srv := httpapi.New(c.cfg())
			// A 404 under /api/: logged at info, with a small body.
			req := httptest.NewRequest("GET", "/api/v1/nothing", nil)
			b.ReportAllocs()
			for b.Loop() {
				srv.ServeHTTP(httptest.NewRecorder(), req)
			}
		})
	}
}

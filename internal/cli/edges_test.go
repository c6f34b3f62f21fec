package cli_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestServePathsNeverRedirect sends unclean paths, of the management API
// and of the gateway, over HTTP/1.1 (the gateway's own server takes the
// /gateway/ ones) and over HTTP/2 with prior knowledge (net/http takes
// them all): none is answered with a redirect or an HTML page; each is an
// error in JSON.
func TestServePathsNeverRedirect(t *testing.T) {
	srv := startServe(t, t.TempDir())
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	// Redirects are not followed: the test must see them.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	clients := map[string]*http.Client{
		"HTTP/1.1": {Transport: &http.Transport{}, CheckRedirect: noRedirect},
		"HTTP/2":   {Transport: &http.Transport{Protocols: &h2}, CheckRedirect: noRedirect},
	}
	for proto, client := range clients {
		for _, path := range []string{
			"/api/v1/../x", "//api/v1/users/me", "/api/v1/./users/me", "/api", "/ui", "/nothing",
			"/gateway/../api/v1/users/me", "//gateway/openai/v1/models", "/gateway//v1/models",
			"/gateway/./openai/v1/models", "/gateway/openai/../../api/v1/users/me", "/gateway/openai//v1/models",
		} {
			req, err := http.NewRequest("GET", srv.url+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("%s GET %s: %v", proto, path, err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != map[string]int{"HTTP/1.1": 1, "HTTP/2": 2}[proto] {
				t.Errorf("%s GET %s was answered in %s", proto, path, resp.Proto)
			}
			ct := resp.Header.Get("Content-Type")
			if resp.StatusCode/100 == 3 || resp.Header.Get("Location") != "" || strings.Contains(ct, "html") {
				t.Errorf("%s GET %s = %d %s Location %q: want no redirect and no HTML", proto, path, resp.StatusCode, ct, resp.Header.Get("Location"))
			}
			if resp.StatusCode < 400 || !json.Valid(body) {
				t.Errorf("%s GET %s = %d %q, want a JSON error", proto, path, resp.StatusCode, body)
			}
		}
	}
}

// TestServeMetricsListener checks --metrics-listen and the metrics token:
// /metrics leaves the main port (404 there), and on its own address needs
// the token (KEYBRIDGE_METRICS_TOKEN) — 401 in the error shape without it
// — and serves nothing else.
func TestServeMetricsListener(t *testing.T) {
	const token = "metrics-token-for-the-test-0001"
	env := envOf(map[string]string{"KEYBRIDGE_METRICS_TOKEN": token})
	srv := startServeEnv(t, env, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--metrics-listen", "127.0.0.1:0")
	var metricsURL string
	sc := bufio.NewScanner(strings.NewReader(srv.stderr.String()))
	for sc.Scan() {
		var l struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "metrics listening" {
			metricsURL = "http://" + l.Addr
		}
	}
	if metricsURL == "" {
		t.Fatalf("serve did not log the metrics address:\n%s", srv.stderr)
	}
	wantCode := func(what string, resp *http.Response, body []byte, status int, code string) {
		t.Helper()
		var e struct{ Error struct{ Code string } }
		if resp.StatusCode != status || json.Unmarshal(body, &e) != nil || e.Error.Code != code {
			t.Errorf("%s = %d %s, want %d %s", what, resp.StatusCode, body, status, code)
		}
	}
	resp, body := srv.call(t, "GET", "/metrics", token, nil)
	wantCode("GET /metrics on the main port", resp, body, 404, "not_found")
	resp, body = call(t, metricsURL, "GET", "/metrics", "", nil)
	wantCode("GET /metrics without the token", resp, body, 401, "unauthenticated")
	resp, body = call(t, metricsURL, "GET", "/metrics", "not-"+token, nil)
	wantCode("GET /metrics with a wrong token", resp, body, 401, "unauthenticated")
	resp, body = call(t, metricsURL, "GET", "/api/v1/users/me", token, nil)
	wantCode("GET /api/v1/users/me on the metrics port", resp, body, 404, "not_found")
	resp, body = call(t, metricsURL, "GET", "/metrics", token, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "keybridge_http_requests_total") {
		t.Errorf("GET /metrics with the token = %d, want 200 with the metrics", resp.StatusCode)
	}
}

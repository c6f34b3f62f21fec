package gateway_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A plain loopback upstream: the credential reaches it the provider's
// way, the path bytes and query pass as sent, and the caller's key does not.
func TestForwardsWithUpstreamCredential(t *testing.T) {
	e := newEnv(t)
	upKey := canary(t, "sk-")
	var got *http.Request
	var gotBody string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(r.Context())
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "req_upstream")
		// A provider that is itself a Keybridge: its own headers do not
		// stand for this gateway's.
		w.Header().Set("X-Keybridge-Request-Id", "req_upstream_keybridge")
		w.Header().Set("X-Keybridge-Error", "rate_limited")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", upKey, 0)

	resp, body := e.do(e.post("/gateway/oai/chat/completions?x=%2F1", e.OwnerKey, `{"model":"gpt"}`))
	if resp.StatusCode != 200 || string(body) != `{"ok":true}` {
		t.Fatalf("= %d %s", resp.StatusCode, body)
	}
	if got.RequestURI != "/v1/chat/completions?x=%2F1" {
		t.Errorf("upstream URI = %q", got.RequestURI)
	}
	if a := got.Header.Get("Authorization"); a != "Bearer "+upKey {
		t.Errorf("upstream Authorization = %q", a)
	}
	if gotBody != `{"model":"gpt"}` {
		t.Errorf("upstream body = %q", gotBody)
	}
	if ids := resp.Header.Values("X-Keybridge-Request-Id"); resp.Header.Get("X-Request-Id") != "req_upstream" ||
		len(ids) != 1 || ids[0] == "" || ids[0] == "req_upstream_keybridge" {
		t.Errorf("ids = %q, %q", resp.Header.Get("X-Request-Id"), ids)
	}
	if v, ok := resp.Header["X-Keybridge-Error"]; ok {
		t.Errorf("the provider's X-Keybridge-Error passed: %q", v)
	}
	if st := resp.Header.Get("Server-Timing"); !strings.HasPrefix(st, "keybridge;dur=") || !strings.Contains(st, "upstream;dur=") {
		t.Errorf("Server-Timing = %q", st)
	}
	t.Log(resp.Header.Get("Server-Timing"))
	logs := e.waitLog(1)
	noCanary(t, upKey, string(body), logs)
	var line map[string]any
	for l := range strings.SplitSeq(logs, "\n") {
		if strings.Contains(l, `"msg":"gateway request"`) {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("log line %s: %v", l, err)
			}
		}
	}
	for k, want := range map[string]any{"level": "INFO", "status": 200.0, "provider": "oai", "path": "/chat/completions",
		"method": "POST", "request_id": resp.Header.Get("X-Keybridge-Request-Id"), "upstream_status": 200.0} {
		if line[k] != want {
			t.Errorf("log line %s = %v, want %v", k, line[k], want)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(line["time"])); err != nil {
		t.Errorf("log line time: %v", err)
	}
	if h, ok := line["headers"].(map[string]any); !ok || h["Authorization"] != "[redacted]" {
		t.Errorf("debug log line headers = %v, want Authorization redacted", line["headers"])
	}
}

// The debug log line's headers never hold a key, not even one a browser
// client put in its WebSocket subprotocols.
func TestDebugLogRedactsKeyProtocols(t *testing.T) {
	e := newEnv(t)
	okProvider(t, e)
	req := e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"gpt"}`)
	req.Header.Set("Sec-WebSocket-Protocol", "realtime, OpenAI-Insecure-API-Key."+e.OwnerKey+", openai-beta.realtime-v1, "+e.OwnerKey)
	if resp, body := e.do(req); resp.StatusCode != 200 {
		t.Fatalf("= %d %s", resp.StatusCode, body)
	}
	logs := e.waitLog(1)
	noCanary(t, e.OwnerKey, logs)
	if !strings.Contains(logs, `"Sec-Websocket-Protocol":"realtime, openai-insecure-api-key.[redacted], openai-beta.realtime-v1, [redacted]"`) {
		t.Errorf("debug log line does not show the protocols redacted:\n%s", logs)
	}
}

// okProvider gives e provider oai, an openai upstream answering every
// request 200 {"ok":true}, with one canary key.
func okProvider(t *testing.T, e *env) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
}

package gateway_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
	if resp.Header.Get("X-Request-Id") != "req_upstream" || resp.Header.Get("X-Keybridge-Request-Id") == "" {
		t.Errorf("ids = %q, %q", resp.Header.Get("X-Request-Id"), resp.Header.Get("X-Keybridge-Request-Id"))
	}
	if st := resp.Header.Get("Server-Timing"); !strings.HasPrefix(st, "keybridge;dur=") || !strings.Contains(st, "upstream;dur=") {
		t.Errorf("Server-Timing = %q", st)
	}
	t.Log(resp.Header.Get("Server-Timing"))
	noCanary(t, upKey, string(body), e.waitLog(1))
}

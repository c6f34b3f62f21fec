package gateway_test

// The OpenAI Responses API over WebSocket (SPEC §7.1), with openai-go's
// Responses.Connect pointed at the gateway: the upgrade is authenticated
// and given the upstream credential, then frames pass both ways.

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
)

func wsCreate() responses.ResponsesClientEventResponseCreateParam {
	return responses.ResponsesClientEventResponseCreateParam{
		Model: "gpt-4o",
		Input: responses.ResponsesClientEventResponseCreateInputUnionParam{OfString: openai.String("hi")},
	}
}

// wsTurn sends one response.create and reads its events up to
// response.completed, returning the streamed text.
func wsTurn(t *testing.T, conn *responses.ResponseConnection) string {
	t.Helper()
	ctx := context.Background()
	if err := conn.Create(ctx, wsCreate()); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for {
		ev, err := conn.Recv(ctx)
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.AsResponseOutputTextDelta().Delta)
		case "response.completed":
			if u := ev.AsResponseCompleted().Response.Usage; u.OutputTokens != 40 {
				t.Errorf("usage: got %+v", u)
			}
			return text.String()
		}
	}
}

func TestResponsesWebSocketThroughGateway(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 10, Output: 40}
	secret := aiSecret(e, "OPENAI")
	for _, key := range []string{e.OwnerKey, secret} {
		mock.Forget()
		conn, err := oaClient(e, "oai", key).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for turn := range 2 {
			if got := wsTurn(t, conn); got != oaText(5) {
				t.Errorf("turn %d: got %q, want %q", turn, got, oaText(5))
			}
		}
		if err := conn.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		reqs := mock.Requests()
		if len(reqs) != 3 {
			t.Fatalf("upstream saw %d requests, want the upgrade and two response.create", len(reqs))
		}
		up := reqs[0]
		if up.Method != http.MethodGet || up.URI != "/v1/responses" || up.Key != upKey {
			t.Errorf("upgrade: got %s %s with key %.12q", up.Method, up.URI, up.Key)
		}
		if !strings.EqualFold(up.Header.Get("Upgrade"), "websocket") || up.Header.Get("Sec-Websocket-Key") == "" {
			t.Errorf("upgrade headers did not pass: %v", up.Header)
		}
		if b := string(reqs[1].Body); !strings.Contains(b, `"type":"response.create"`) || !strings.Contains(b, `"model":"gpt-4o"`) {
			t.Errorf("the client's message did not pass as sent: %s", b)
		}
		noKeybridgeKeyUpstream(t, reqs, e.OwnerKey, secret)
	}
	noCanary(t, upKey, e.waitLog(2))
}

func TestResponsesWebSocketRefusedAndFailover(t *testing.T) {
	e := newEnv(t)
	mock, k1 := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	ctx := context.Background()

	// The SDK reports a refused upgrade as a failed handshake; the answer
	// itself is Keybridge's, seen with a plain WebSocket client.
	if _, err := oaClient(e, "oai", "sk-not-ours").Responses.Connect(ctx, responses.ResponseConnectionOptions{}); err == nil {
		t.Error("connect with a provider's key: got no error")
	}
	for _, tc := range []struct {
		name, path, key string
		status          int
		code            string
	}{
		{"no key", "/gateway/oai/responses", "", 401, keybridge.EUnauthenticated},
		{"provider's own key", "/gateway/oai/responses", "sk-not-ours", 401, keybridge.EUnauthenticated},
		{"AI key of another type", "/gateway/oai/responses", aiSecret(e, "ANTHROPIC"), 403, keybridge.EForbidden},
		{"unknown provider", "/gateway/nope/responses", e.OwnerKey, 404, keybridge.ENotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.key != "" {
				h.Set("Authorization", "Bearer "+tc.key)
			}
			conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.URL, "http")+tc.path, &websocket.DialOptions{HTTPHeader: h})
			if err == nil {
				conn.CloseNow()
				t.Fatal("the upgrade succeeded")
			}
			if resp == nil || resp.StatusCode != tc.status || resp.Header.Get("X-Keybridge-Error") != tc.code {
				t.Fatalf("answer: got %v, want %d with X-Keybridge-Error %s", resp, tc.status, tc.code)
			}
		})
	}
	if n := len(mock.Requests()); n != 0 {
		t.Errorf("refused upgrades sent %d requests upstream", n)
	}

	// An upgrade refused upstream moves to the next key, before the 101.
	k2 := canary(t, "sk-proj-")
	mock.AddKey(k2)
	e.addKey("oai", k2, 1)
	mock.Fault(k1, providertest.Fault{Status: 429, RetryAfter: "30"})
	mock.Usage = providertest.Usage{Output: 40}
	conn, err := oaClient(e, "oai", e.OwnerKey).Responses.Connect(ctx, responses.ResponseConnectionOptions{})
	if err != nil {
		t.Fatalf("connect after a 429: %v", err)
	}
	if got := wsTurn(t, conn); got != oaText(5) {
		t.Errorf("turn: got %q", got)
	}
	conn.Close() // the tunnel's log line is written when it ends
	if reqs := mock.Requests(); len(reqs) != 3 || reqs[0].Key != k1 || reqs[1].Key != k2 {
		t.Errorf("upstream requests: got %d, want k1's refused upgrade, then k2's and its message", len(reqs))
	}
	noCanary(t, k1, e.waitLog(6))
	noCanary(t, k2, e.logs())
}

func TestResponsesWebSocketCutAndCancel(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	ctx := context.Background()

	t.Run("cut", func(t *testing.T) {
		mock.Fault("", providertest.Fault{CutAfter: 3, Times: 1})
		conn, err := oaClient(e, "oai", e.OwnerKey).Responses.Connect(ctx, responses.ResponseConnectionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Abort()
		if err := conn.Create(ctx, wsCreate()); err != nil {
			t.Fatal(err)
		}
		events := 0
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for {
			ev, err := conn.Recv(rctx)
			if err != nil {
				if rctx.Err() != nil {
					t.Fatal("the cut did not reach the client")
				}
				break
			}
			if ev.Type == "response.completed" {
				t.Fatal("a cut response completed")
			}
			events++
		}
		if events != 3 {
			t.Errorf("events before the cut: got %d, want 3", events)
		}
	})

	t.Run("client leaves", func(t *testing.T) {
		mock.Forget()
		mock.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Minute})
		conn, err := oaClient(e, "oai", e.OwnerKey).Responses.Connect(ctx, responses.ResponseConnectionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.Create(ctx, wsCreate()); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := conn.Recv(ctx); err != nil {
				t.Fatal(err)
			}
		}
		conn.Abort()
		mock.WaitCanceled(t, 1)
		if reqs := mock.Requests(); reqs[0].Canceled || !reqs[1].Canceled {
			t.Errorf("canceled: upgrade %v, response %v; want the response only", reqs[0].Canceled, reqs[1].Canceled)
		}
	})
	noCanary(t, upKey, e.waitLog(2))
}

// The 101 that opens a tunnel for a key with limits carries Keybridge's
// x-ratelimit-* headers, like every other answer of such a key (SPEC §7.6).
func TestWebSocketUpgradeCarriesLimitHeaders(t *testing.T) {
	e := newEnv(t)
	oaUpstream(t, e, "oai", "openai", "/v1", nil)
	key := e.api("POST", "/api/v1/api-keys", e.OwnerKey, map[string]any{"name": "limited",
		"permissions": []string{"gateway:invoke"}, "rate_limit_rpm": 5}, 201)["key"].(string)
	h := http.Header{}
	h.Set("Authorization", "Bearer "+key)
	conn, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(e.URL, "http")+"/gateway/oai/responses",
		&websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	defer conn.CloseNow()
	if got := resp.Header.Get("X-Ratelimit-Limit-Requests"); got != "5" {
		t.Errorf("x-ratelimit-limit-requests = %q, want 5", got)
	}
	if got := resp.Header.Get("X-Ratelimit-Remaining-Requests"); got != "4" {
		t.Errorf("x-ratelimit-remaining-requests = %q, want 4", got)
	}
}

// A provider that is itself a Keybridge answers the upgrade with its own
// X-Keybridge-* headers: the 101 the client gets carries this gateway's,
// and its Server-Timing first.
func TestWebSocketUpgradeKeepsKeybridgeHeaders(t *testing.T) {
	e := newEnv(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Keybridge-Request-Id", "req_upstream_keybridge")
		w.Header().Set("X-Keybridge-Error", "rate_limited")
		w.Header().Set("Server-Timing", "upstream-edge;dur=1")
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.Close(websocket.StatusNormalClosure, "")
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", "sk-upstream-ws", 0)
	h := http.Header{}
	h.Set("Authorization", "Bearer "+e.OwnerKey)
	conn, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(e.URL, "http")+"/gateway/oai/responses",
		&websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	defer conn.CloseNow()
	if ids := resp.Header.Values("X-Keybridge-Request-Id"); len(ids) != 1 || ids[0] == "" || ids[0] == "req_upstream_keybridge" {
		t.Errorf("X-Keybridge-Request-Id = %q, want this gateway's", ids)
	}
	if v, ok := resp.Header["X-Keybridge-Error"]; ok {
		t.Errorf("the provider's X-Keybridge-Error passed: %q", v)
	}
	// Server-Timing is Keybridge's, then the provider's own.
	if st := resp.Header.Values("Server-Timing"); len(st) != 2 || !strings.HasPrefix(st[0], "keybridge;dur=") || st[1] != "upstream-edge;dur=1" {
		t.Errorf("Server-Timing = %q, want Keybridge's, then the provider's", st)
	}
}

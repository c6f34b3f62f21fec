package gateway_test

// An open WebSocket tunnel lasts only while its caller could open it
// again (SPEC §3: a suspended, revoked or expired key is refused
// everywhere within one second), and a database outage does not end it.

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/openai/openai-go/v3/responses"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// wsKey creates a platform key of the owner's with fields, and returns its
// id and plaintext.
func wsKey(e *env, fields map[string]any) (id, key string) {
	e.t.Helper()
	out := newInvokeKey(e, fields)
	return out["id"].(string), out["key"].(string)
}

// firstKeyID is the id of provider's first upstream key.
func firstKeyID(e *env, provider string) string {
	e.t.Helper()
	items := e.api("GET", "/api/v1/orgs/acme/providers/"+provider+"/keys", e.OwnerKey, nil, http.StatusOK)["items"].([]any)
	return items[0].(map[string]any)["id"].(string)
}

// wsEnded waits up to within for conn to be closed by the gateway and
// reports how long that took; it fails the test if the connection still
// answers.
func wsEnded(t *testing.T, conn *responses.ResponseConnection, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		_, err := conn.Recv(ctx)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			t.Fatalf("the WebSocket was still open %v after its caller lost access", within)
		}
		return time.Since(start)
	}
}

func TestWebSocketEndsWhenItsCallerLosesAccess(t *testing.T) {
	for _, tc := range []struct {
		name string
		// open sets up the provider "oai" and returns the key the socket
		// opens with and what takes its access away.
		open func(e *env, mock *providertest.Server) (key string, lose func())
	}{
		{"platform key revoked", func(e *env, _ *providertest.Server) (string, func()) {
			id, key := wsKey(e, nil)
			return key, func() { e.api("POST", "/api/v1/api-keys/"+id+"/revoke", e.OwnerKey, nil, http.StatusOK) }
		}},
		{"platform key suspended", func(e *env, _ *providertest.Server) (string, func()) {
			id, key := wsKey(e, nil)
			return key, func() { e.api("POST", "/api/v1/api-keys/"+id+"/suspend", e.OwnerKey, nil, http.StatusOK) }
		}},
		{"platform key expired", func(e *env, _ *providertest.Server) (string, func()) {
			at := time.Now().Add(2 * time.Second)
			_, key := wsKey(e, map[string]any{"expires_at": at.UTC().Format(time.RFC3339Nano)})
			return key, func() { time.Sleep(time.Until(at)) }
		}},
		{"gateway:invoke removed", func(e *env, _ *providertest.Server) (string, func()) {
			id, key := wsKey(e, nil)
			return key, func() {
				e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"permissions": []string{"providers:read"}}, http.StatusOK)
			}
		}},
		{"model allowlist added", func(e *env, _ *providertest.Server) (string, func()) {
			id, key := wsKey(e, nil)
			return key, func() {
				e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"allowed_models": []string{"gpt-4o"}}, http.StatusOK)
			}
		}},
		{"key owner removed from the org", func(e *env, _ *providertest.Server) (string, func()) {
			user, key := e.addMember(keybridge.PermGatewayInvoke)
			return key, func() { e.api("DELETE", "/api/v1/orgs/acme/members/"+user, e.OwnerKey, nil, http.StatusNoContent) }
		}},
		{"AI key deleted", func(e *env, _ *providertest.Server) (string, func()) {
			project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "ws"}, 201)["id"].(string)
			out := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey, map[string]any{"name": "k", "ai_type": "OPENAI"}, 201)
			return out["secret"].(string), func() {
				e.api("DELETE", "/api/v1/orgs/acme/projects/"+project+"/ai-keys/"+out["id"].(string), e.OwnerKey, nil, http.StatusNoContent)
			}
		}},
		{"provider disabled", func(e *env, _ *providertest.Server) (string, func()) {
			return e.OwnerKey, func() {
				e.api("PATCH", "/api/v1/orgs/acme/providers/oai", e.OwnerKey, map[string]any{"enabled": false}, http.StatusOK)
			}
		}},
		{"provider deleted", func(e *env, _ *providertest.Server) (string, func()) {
			return e.OwnerKey, func() { e.api("DELETE", "/api/v1/orgs/acme/providers/oai", e.OwnerKey, nil, http.StatusNoContent) }
		}},
		{"upstream key disabled", func(e *env, _ *providertest.Server) (string, func()) {
			id := firstKeyID(e, "oai")
			return e.OwnerKey, func() {
				e.api("PATCH", "/api/v1/orgs/acme/providers/oai/keys/"+id, e.OwnerKey, map[string]any{"enabled": false}, http.StatusOK)
			}
		}},
		{"personal credential deleted", func(e *env, mock *providertest.Server) (string, func()) {
			e.api("PATCH", "/api/v1/orgs/acme/providers/oai", e.OwnerKey, map[string]any{"key_source": "user"}, http.StatusOK)
			mine := canary(t, "sk-proj-")
			mock.AddKey(mine)
			id := e.api("POST", "/api/v1/users/me/credentials", e.OwnerKey,
				map[string]any{"org": "acme", "provider": "oai", "api_key": mine}, http.StatusCreated)["id"].(string)
			return e.OwnerKey, func() { e.api("DELETE", "/api/v1/users/me/credentials/"+id, e.OwnerKey, nil, http.StatusNoContent) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
			mock.Usage = providertest.Usage{Input: 10, Output: 40}
			key, lose := tc.open(e, mock)
			conn, err := oaClient(e, "oai", key).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Abort()
			wsTurn(t, conn)
			lose()
			took := wsEnded(t, conn, 3*time.Second)
			t.Logf("the tunnel ended %v after the change", took.Round(time.Millisecond))
			seen := len(mock.Requests())
			if err := conn.Create(context.Background(), wsCreate()); err == nil {
				// The write may land in a buffer; it must not reach the provider.
				time.Sleep(100 * time.Millisecond)
			}
			if n := len(mock.Requests()); n != seen {
				t.Errorf("after the tunnel ended, %d more messages reached the provider", n-seen)
			}
			if n := len(mock.Requests()); n != 2 {
				t.Errorf("the provider saw %d requests, want the upgrade and one response.create", n)
			}
			logs := e.waitLog(1)
			if !strings.Contains(logs, "its caller lost access") {
				t.Errorf("no log line says why the tunnel ended:\n%s", logs)
			}
			noCanary(t, upKey, logs)
		})
	}

	// Changes that leave the caller its access leave the tunnel open.
	t.Run("unrelated changes", func(t *testing.T) {
		e := newEnv(t)
		mock, _ := oaUpstream(t, e, "oai", "openai", "/v1", nil)
		mock.Usage = providertest.Usage{Input: 10, Output: 40}
		id, key := wsKey(e, nil)
		conn, err := oaClient(e, "oai", key).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Abort()
		wsTurn(t, conn)
		e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"name": "renamed", "rate_limit_rpm": 100}, http.StatusOK)
		e.api("PATCH", "/api/v1/orgs/acme/providers/oai", e.OwnerKey, map[string]any{"display_name": "OpenAI"}, http.StatusOK)
		e.addKey("oai", canary(t, "sk-proj-"), 5)
		otherID, _ := wsKey(e, nil)
		e.api("POST", "/api/v1/api-keys/"+otherID+"/revoke", e.OwnerKey, nil, http.StatusOK)
		time.Sleep(3 * tunnelRecheckForTest)
		if got := wsTurn(t, conn); got != oaText(5) {
			t.Errorf("a turn after unrelated changes: got %q", got)
		}
	})
}

// tunnelRecheckForTest is at least the gateway's recheck interval.
const tunnelRecheckForTest = 500 * time.Millisecond

// A tunnel whose store goes away stays open through the outage and past
// its grace: nothing refused its caller, and requests opened before keep
// working too.
func TestWebSocketStaysOpenWhileStoreDown(t *testing.T) {
	const grace = 500 * time.Millisecond
	st := &downStore{relayStore: &relayStore{Store: storetest.SQLite(t)}}
	e := newEnvWith(t, st, envOptions{Gateway: gateway.Options{OutageGrace: grace}, Auth: auth.Options{OutageGrace: grace}})
	mock, _ := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 10, Output: 40}
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	conn, err := oaClient(e, "oai", e.OwnerKey).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Abort()
	wsTurn(t, conn)
	st.down.Store(true)
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateDeaf})
	time.Sleep(grace + 3*tunnelRecheckForTest)
	if got := wsTurn(t, conn); got != oaText(5) {
		t.Errorf("a turn %v into the outage: got %q", grace+3*tunnelRecheckForTest, got)
	}
	st.down.Store(false)
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	time.Sleep(2 * tunnelRecheckForTest)
	if got := wsTurn(t, conn); got != oaText(5) {
		t.Errorf("a turn after the outage: got %q", got)
	}
}

// A WebSocket's responses are admitted as requests are: each response's
// end admits the next, and a key at a limit has its tunnel closed once
// that response has passed, before the client can start another.
func TestWebSocketEndsAtItsKeysLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       func(t *testing.T) *env
		limits    map[string]any
		responses int // served before the tunnel ends
		reason    string
	}{
		// 50 tokens a response: the budget is spent by the second.
		{"budget", newEnvT, map[string]any{"token_budget": 100, "budget_period": "day"}, 2, "spent its budget of 100 tokens"},
		{"budget in Redis", limitEnv, map[string]any{"token_budget": 100, "budget_period": "day"}, 2, "spent its budget of 100 tokens"},
		// The upgrade admits the first response, its end the second.
		{"rpm", newEnvT, map[string]any{"rate_limit_rpm": 2}, 2, "limit of 2 requests per minute"},
		{"tpm", newEnvT, map[string]any{"rate_limit_tpm": 150}, 3, "limit of 150 tokens per minute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.env(t)
			mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
			mock.Usage = providertest.Usage{Input: 10, Output: 40}
			_, key := limitKey(e, tc.limits)
			conn, err := oaClient(e, "oai", key).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Abort()
			for i := range tc.responses {
				if got := wsTurn(t, conn); got != oaText(5) {
					t.Fatalf("response %d: got %q", i+1, got)
				}
			}
			wsEnded(t, conn, 3*time.Second)
			conn.Create(context.Background(), wsCreate())
			time.Sleep(100 * time.Millisecond)
			if n := len(mock.Requests()); n != 1+tc.responses {
				t.Errorf("the provider saw %d requests, want the upgrade and %d responses", n, tc.responses)
			}
			logs := e.waitLog(1)
			if !strings.Contains(logs, "WebSocket ended: its key is at a limit") || !strings.Contains(logs, tc.reason) {
				t.Errorf("no log line says the tunnel ended at the key's limit (%s):\n%s", tc.reason, logs)
			}
			if !strings.Contains(logs, `"error":"rate_limited"`) {
				t.Errorf("the request line does not carry rate_limited:\n%s", logs)
			}
			noCanary(t, upKey, logs)
			// The key is refused a new socket, as it would be a request.
			if _, err := oaClient(e, "oai", key).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{}); err == nil {
				t.Error("a new socket of a key at its limit was opened")
			}
		})
	}

	// Under its limits a socket serves on.
	t.Run("under the limits", func(t *testing.T) {
		e := newEnv(t)
		mock, _ := oaUpstream(t, e, "oai", "openai", "/v1", nil)
		mock.Usage = providertest.Usage{Input: 10, Output: 40}
		_, key := limitKey(e, map[string]any{"token_budget": 1000, "budget_period": "day", "rate_limit_rpm": 50})
		conn, err := oaClient(e, "oai", key).Responses.Connect(context.Background(), responses.ResponseConnectionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Abort()
		for i := range 5 {
			if got := wsTurn(t, conn); got != oaText(5) {
				t.Fatalf("response %d: got %q", i+1, got)
			}
		}
	})
}

func newEnvT(t *testing.T) *env { return newEnv(t) }

// A key a browser-style client puts in a WebSocket subprotocol
// ("openai-insecure-api-key.<key>", in any letter case, or a Keybridge
// key alone) never reaches the provider; the other subprotocols pass as
// sent.
func TestWebSocketKeySubprotocolStaysBehind(t *testing.T) {
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	h := http.Header{}
	h.Set("Authorization", "Bearer "+e.OwnerKey)
	conn, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(e.URL, "http")+"/gateway/oai/responses",
		&websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{"realtime", "openai-insecure-api-key." + e.OwnerKey, "openai-beta.realtime-v1",
			"OpenAI-Insecure-API-Key." + e.OwnerKey, e.OwnerKey}})
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	conn.CloseNow()
	reqs := mock.Requests()
	if len(reqs) != 1 {
		t.Fatalf("the provider saw %d requests, want the upgrade", len(reqs))
	}
	if got := reqs[0].Header.Get("Sec-Websocket-Protocol"); got != "realtime, openai-beta.realtime-v1" {
		t.Errorf("Sec-WebSocket-Protocol upstream = %q, want the two subprotocols without the key", got)
	}
	noKeybridgeKeyUpstream(t, reqs, e.OwnerKey)
}

// A stream already flowing ends when its key is revoked: within the
// recheck interval of the provider's next bytes, with an error event in
// the provider's shape, and the provider's connection let go.
func TestStreamEndsWhenItsCallerLosesAccess(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	id, key := wsKey(e, nil)
	// Two events, a pause longer than the recheck interval, the rest.
	mock.Fault("", providertest.Fault{StallAfter: 2, StallFor: 3 * tunnelRecheckForTest})
	st := oaClient(e, "oai", key).Chat.Completions.NewStreaming(context.Background(), oaChat())
	var text strings.Builder
	for i := 0; st.Next(); i++ {
		if i == 0 {
			e.api("POST", "/api/v1/api-keys/"+id+"/revoke", e.OwnerKey, nil, http.StatusOK)
		}
		if len(st.Current().Choices) > 0 {
			text.WriteString(st.Current().Choices[0].Delta.Content)
		}
	}
	if err := st.Err(); err == nil || !strings.Contains(err.Error(), "Keybridge: ") {
		t.Fatalf("stream error = %v, want Keybridge's error event", err)
	}
	if got := text.String(); got == oaText(5) || !strings.HasPrefix(oaText(5), got) {
		t.Errorf("the client got %q: want the start of %q, cut", got, oaText(5))
	}
	logs := e.waitLog(1)
	if !strings.Contains(logs, "stream ended: its caller lost access") || !strings.Contains(logs, `"error":"unauthenticated"`) {
		t.Errorf("no log line says the stream ended for its revoked key:\n%s", logs)
	}
	if !strings.Contains(logs, `"status":401`) {
		t.Errorf("the request is not recorded with the refusal's 401:\n%s", logs)
	}
	noCanary(t, upKey, logs)

	// A stream whose key keeps its access runs to its end through the
	// same pause.
	_, other := wsKey(e, nil)
	st = oaClient(e, "oai", other).Chat.Completions.NewStreaming(context.Background(), oaChat())
	text.Reset()
	for st.Next() {
		if len(st.Current().Choices) > 0 {
			text.WriteString(st.Current().Choices[0].Delta.Content)
		}
	}
	if err := st.Err(); err != nil || text.String() != oaText(5) {
		t.Errorf("a stream of a key in good standing: %q, %v; want %q", text.String(), err, oaText(5))
	}
}

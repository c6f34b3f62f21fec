package gateway_test

// The Anthropic SDK (anthropic-sdk-go) through the gateway to the
// provider-faithful mock, with the Keybridge key as ANTHROPIC_API_KEY
// (x-api-key) or ANTHROPIC_AUTH_TOKEN (Authorization: Bearer) would send it.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	aoption "github.com/anthropics/anthropic-sdk-go/option"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// antUpstream starts an Anthropic mock behind provider name with one
// canary upstream key.
func antUpstream(t *testing.T, e *env, name string) (*providertest.Server, string) {
	t.Helper()
	mock := providertest.NewAnthropic(t)
	mock.Usage = providertest.Usage{Input: 100, Output: 40, CacheRead: 20, CacheWrite: 30}
	key := canary(t, "sk-ant-api03-")
	mock.AddKey(key)
	e.provider(map[string]any{"name": name, "type": "anthropic", "base_url": mock.URL})
	e.addKey(name, key, 0)
	return mock, key
}

// antClient is the Anthropic SDK pointed at the gateway, with key sent as
// x-api-key, or as a bearer token when bearer is set.
func antClient(e *env, name, key string, bearer bool, opts ...aoption.RequestOption) *anthropic.Client {
	auth := aoption.WithAPIKey(key)
	if bearer {
		auth = aoption.WithAuthToken(key)
	}
	c := anthropic.NewClient(append([]aoption.RequestOption{
		aoption.WithBaseURL(e.URL + "/gateway/" + name), auth, aoption.WithMaxRetries(0),
	}, opts...)...)
	return &c
}

func antMessage() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 256,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	}
}

func TestAnthropicSDKThroughGateway(t *testing.T) {
	e := newEnv(t)
	mock, upKey := antUpstream(t, e, "ant")
	secret := aiSecret(e, "ANTHROPIC")
	ctx := context.Background()
	var clientSaw []string
	lines := 0
	for _, tc := range []struct {
		name   string
		key    string
		bearer bool
	}{
		{"platform key as x-api-key", e.OwnerKey, false},
		{"platform key as bearer", e.OwnerKey, true},
		{"ANTHROPIC AI key as x-api-key", secret, false},
		{"ANTHROPIC AI key as bearer", secret, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr http.Header
			capture := aoption.WithMiddleware(func(r *http.Request, next aoption.MiddlewareNext) (*http.Response, error) {
				resp, err := next(r)
				if resp != nil {
					hdr = resp.Header.Clone()
				}
				return resp, err
			})
			c := antClient(e, "ant", tc.key, tc.bearer, capture,
				aoption.WithHeader("anthropic-beta", "prompt-caching-2024-07-31,context-1m-2025-08-07"))
			check := func(what, wantURI string) {
				t.Helper()
				lines++
				last := mock.Last()
				if last.Key != upKey {
					t.Errorf("%s: the provider's key did not arrive as x-api-key", what)
				}
				if last.Header.Get("Authorization") != "" {
					t.Errorf("%s: an Authorization header reached the provider", what)
				}
				if last.URI != wantURI {
					t.Errorf("%s: upstream URI: got %q, want %q", what, last.URI, wantURI)
				}
				if got := last.Header.Get("Anthropic-Beta"); got != "prompt-caching-2024-07-31,context-1m-2025-08-07" {
					t.Errorf("%s: anthropic-beta: got %q", what, got)
				}
				if last.Header.Get("Anthropic-Version") == "" {
					t.Errorf("%s: anthropic-version did not pass", what)
				}
				if hdr.Get("Request-Id") == "" {
					t.Errorf("%s: the provider's request-id did not reach the client", what)
				}
				checkGatewayHeaders(t, hdr)
				clientSaw = append(clientSaw, headerText(hdr))
			}

			msg, err := c.Messages.New(ctx, antMessage())
			if err != nil {
				t.Fatal(err)
			}
			u := msg.Usage
			if msg.Content[0].Text != oaText(5) || u.InputTokens != 100 || u.OutputTokens != 40 || u.CacheReadInputTokens != 20 || u.CacheCreationInputTokens != 30 {
				t.Errorf("message: got %q usage %+v", msg.Content[0].Text, u)
			}
			check("messages", "/v1/messages")
			clientSaw = append(clientSaw, msg.RawJSON())

			st := c.Messages.NewStreaming(ctx, antMessage())
			var acc anthropic.Message
			stopped := false
			for st.Next() {
				ev := st.Current()
				if err := acc.Accumulate(ev); err != nil {
					t.Fatal(err)
				}
				stopped = stopped || ev.Type == "message_stop"
				clientSaw = append(clientSaw, ev.RawJSON())
			}
			if err := st.Err(); err != nil {
				t.Fatalf("stream: %v", err)
			}
			if !stopped || acc.Content[0].Text != oaText(5) || acc.Usage.OutputTokens != 40 {
				t.Errorf("stream: stopped %v, got %q usage %+v", stopped, acc.Content[0].Text, acc.Usage)
			}
			check("stream", "/v1/messages")
			if hdr.Get("X-Accel-Buffering") != "no" {
				t.Errorf("stream: X-Accel-Buffering: got %q", hdr.Get("X-Accel-Buffering"))
			}

			n, err := c.Messages.CountTokens(ctx, anthropic.MessageCountTokensParams{
				Model:    "claude-sonnet-4-5",
				Messages: antMessage().Messages,
			})
			if err != nil || n.InputTokens != 100 {
				t.Errorf("count_tokens: got %v, %v", n, err)
			}
			check("count_tokens", "/v1/messages/count_tokens")

			page, err := c.Models.List(ctx, anthropic.ModelListParams{})
			if err != nil || len(page.Data) != 2 {
				t.Fatalf("models: got %v, %v", page, err)
			}
			check("models", "/v1/models")
			m, err := c.Models.Get(ctx, "claude-haiku-4-5-20251001", anthropic.ModelGetParams{})
			if err != nil || m.ID != "claude-haiku-4-5-20251001" {
				t.Errorf("model: got %v, %v", m, err)
			}
			check("model", "/v1/models/claude-haiku-4-5-20251001")
		})
	}
	noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey, secret)
	noCanary(t, upKey, append(clientSaw, e.waitLog(lines))...)
}

// checkAntError checks a refusal Keybridge answered itself, as the SDK
// sees it: its typed error, with Anthropic's error type and Keybridge's
// message.
func checkAntError(t *testing.T, err error, status int, code string, typ, msgPart string) *anthropic.Error {
	t.Helper()
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("error: got %v, want *anthropic.Error", err)
	}
	var body struct {
		Type  string
		Error struct{ Type, Message string }
	}
	json.Unmarshal([]byte(apiErr.RawJSON()), &body)
	if apiErr.StatusCode != status || string(apiErr.Type()) != typ || body.Type != "error" {
		t.Errorf("error: got %d type %q (%s), want %d %q", apiErr.StatusCode, apiErr.Type(), apiErr.RawJSON(), status, typ)
	}
	if !strings.Contains(body.Error.Message, msgPart) {
		t.Errorf("message: got %q, want it to say %q", body.Error.Message, msgPart)
	}
	if got := apiErr.Response.Header.Get("X-Keybridge-Error"); got != code {
		t.Errorf("X-Keybridge-Error: got %q, want %q", got, code)
	}
	checkGatewayHeaders(t, apiErr.Response.Header)
	return apiErr
}

func TestAnthropicSDKGatewayErrors(t *testing.T) {
	e := newEnv(t)
	mock, upKey := antUpstream(t, e, "ant")
	_, noInvoke := e.addMember(keybridge.PermProvidersRead)
	openaiSecret := aiSecret(e, "OPENAI")
	ctx := context.Background()

	t.Run("refused before the upstream", func(t *testing.T) {
		for _, tc := range []struct {
			name, provider, key string
			bearer              bool
			status              int
			code, typ, msg      string
		}{
			{"missing key", "ant", "", false, 401, keybridge.EUnauthenticated, "authentication_error", "missing credentials"},
			{"provider's own key", "ant", "sk-ant-api03-not-ours", false, 401, keybridge.EUnauthenticated, "authentication_error", "invalid Keybridge key"},
			{"provider's own key as bearer", "ant", "sk-ant-oat01-not-ours", true, 401, keybridge.EUnauthenticated, "authentication_error", "invalid Keybridge key"},
			{"no gateway:invoke", "ant", noInvoke, false, 403, keybridge.EForbidden, "permission_error", "gateway:invoke"},
			{"OPENAI AI key", "ant", openaiSecret, false, 403, keybridge.EForbidden, "permission_error", "cannot reach anthropic providers"},
			{"OPENAI AI key as bearer", "ant", openaiSecret, true, 403, keybridge.EForbidden, "permission_error", "cannot reach anthropic providers"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var opts []aoption.RequestOption
				if tc.key == "" {
					// The SDK will not send without a key: take it off the wire.
					tc.key = "placeholder"
					opts = append(opts, aoption.WithMiddleware(func(r *http.Request, next aoption.MiddlewareNext) (*http.Response, error) {
						r.Header.Del("X-Api-Key")
						return next(r)
					}))
				}
				c := antClient(e, tc.provider, tc.key, tc.bearer, opts...)
				_, err := c.Messages.New(ctx, antMessage())
				checkAntError(t, err, tc.status, tc.code, tc.typ, tc.msg)
				st := c.Messages.NewStreaming(ctx, antMessage())
				for st.Next() {
					t.Error("a refused stream has events")
				}
				checkAntError(t, st.Err(), tc.status, tc.code, tc.typ, tc.msg)
			})
		}
		// An unknown provider cannot be told apart: the §1 shape.
		_, err := antClient(e, "nope", e.OwnerKey, false).Messages.New(ctx, antMessage())
		var apiErr *anthropic.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Response.Header.Get("X-Keybridge-Error") != keybridge.ENotFound ||
			!strings.Contains(apiErr.RawJSON(), `provider \"nope\" not found`) {
			t.Errorf("unknown provider: got %v", err)
		}
		if n := len(mock.Requests()); n != 0 {
			t.Errorf("the upstream got %d requests", n)
		}
	})

	t.Run("503 without upstream keys", func(t *testing.T) {
		e.provider(map[string]any{"name": "empty", "type": "anthropic", "base_url": mock.URL})
		_, err := antClient(e, "empty", e.OwnerKey, false).Messages.New(ctx, antMessage())
		checkAntError(t, err, 503, keybridge.EUnavailable, "overloaded_error", "no enabled upstream keys")
	})

	t.Run("502 when every key fails, without their bodies", func(t *testing.T) {
		wrong := canary(t, "sk-ant-api03-")
		e.provider(map[string]any{"name": "wrong", "type": "anthropic", "base_url": mock.URL})
		e.addKey("wrong", wrong, 0) // the mock answers 401 echoing a fragment of it
		other := canary(t, "sk-ant-api03-")
		mock.AddKey(other)
		e.addKey("wrong", other, 1)
		mock.Fault(other, providertest.Fault{Status: 529})
		_, err := antClient(e, "wrong", e.OwnerKey, false).Messages.New(ctx, antMessage())
		apiErr := checkAntError(t, err, 502, keybridge.EBadGateway, "api_error", `provider "wrong": every upstream key failed (401, 529)`)
		if raw := apiErr.RawJSON(); strings.Contains(raw, "invalid x-api-key") || strings.Contains(raw, "***") {
			t.Errorf("the upstream's 401 body reached the client: %s", raw)
		}
	})

	t.Run("429 when every key is rate limited", func(t *testing.T) {
		e2 := newEnv(t)
		mock2, k1 := antUpstream(t, e2, "ant")
		k2 := canary(t, "sk-ant-api03-")
		mock2.AddKey(k2)
		e2.addKey("ant", k2, 1)
		mock2.Fault(k1, providertest.Fault{Status: 429, RetryAfter: "4"})
		mock2.Fault(k2, providertest.Fault{Status: 429, RetryAfter: "9"})
		_, err := antClient(e2, "ant", e2.OwnerKey, true).Messages.New(ctx, antMessage())
		apiErr := checkAntError(t, err, 429, keybridge.ERateLimited, "rate_limit_error", "rate limited")
		if got := apiErr.Response.Header.Get("Retry-After"); got != "4" {
			t.Errorf("Retry-After: got %q, want 4", got)
		}
	})

	t.Run("413 and 504", func(t *testing.T) {
		e2 := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{MaxBody: 200, HeaderTimeout: 100 * time.Millisecond}})
		mock2, _ := antUpstream(t, e2, "ant")
		c := antClient(e2, "ant", e2.OwnerKey, false)
		big := antMessage()
		big.Messages = []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(strings.Repeat("x", 300)))}
		_, err := c.Messages.New(ctx, big)
		checkAntError(t, err, 413, keybridge.ETooLarge, "request_too_large", "limit of 200 bytes")
		if n := len(mock2.Requests()); n != 0 {
			t.Errorf("a 413 sent %d requests upstream", n)
		}
		mock2.Fault("", providertest.Fault{StallBefore: time.Minute})
		_, err = c.Messages.New(ctx, antMessage())
		checkAntError(t, err, 504, "gateway_timeout", "api_error", "no response headers within 100ms")
	})
	noCanary(t, upKey, e.waitLog(1))
}

func TestAnthropicSDKFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		f1, f2 providertest.Fault
	}{
		{"529 then 429", providertest.Fault{Status: 529}, providertest.Fault{Status: 429, RetryAfter: "30"}},
		{"401 then reset", providertest.Fault{Status: 401}, providertest.Fault{Reset: true}},
		{"500 then 403", providertest.Fault{Status: 500}, providertest.Fault{Status: 403}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mock, k1 := antUpstream(t, e, "ant")
			k2, k3 := canary(t, "sk-ant-api03-"), canary(t, "sk-ant-api03-")
			mock.AddKey(k2)
			mock.AddKey(k3)
			e.addKey("ant", k2, 1)
			e.addKey("ant", k3, 2)
			mock.Fault(k1, tc.f1)
			mock.Fault(k2, tc.f2)
			c := antClient(e, "ant", e.OwnerKey, false)
			msg, err := c.Messages.New(context.Background(), antMessage())
			if err != nil {
				t.Fatalf("messages: %v, want the third key's answer", err)
			}
			if msg.Content[0].Text != oaText(5) || mock.Last().Key != k3 {
				t.Errorf("messages: got %q", msg.Content[0].Text)
			}
			st := c.Messages.NewStreaming(context.Background(), antMessage())
			var acc anthropic.Message
			for st.Next() {
				acc.Accumulate(st.Current())
			}
			if err := st.Err(); err != nil || acc.Content[0].Text != oaText(5) || mock.Last().Key != k3 {
				t.Errorf("stream: got %+v, %v", acc.Content, err)
			}
			noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey)
			for _, k := range []string{k1, k2, k3} {
				noCanary(t, k, msg.RawJSON(), e.waitLog(2))
			}
		})
	}
}

func TestAnthropicSDKStreamCutAndCancel(t *testing.T) {
	e := newEnv(t)
	mock, upKey := antUpstream(t, e, "ant")
	c := antClient(e, "ant", e.OwnerKey, false)

	mock.Fault("", providertest.Fault{CutAfter: 4, Times: 1})
	st := c.Messages.NewStreaming(context.Background(), antMessage())
	events := 0
	for st.Next() {
		if st.Current().Type == "message_stop" {
			t.Error("a cut stream has message_stop")
		}
		events++
	}
	// The gateway's error event comes before the abort: the SDK reports it
	// as its typed error.
	var apiErr *anthropic.Error
	if err := st.Err(); !errors.As(err, &apiErr) || !strings.Contains(apiErr.RawJSON(), "cut short") {
		t.Errorf("cut stream: got %v, want the gateway's error event", err)
	}
	if events != 3 {
		t.Errorf("events before the cut: got %d, want 3 (the SDK keeps ping to itself)", events)
	}

	mock.Forget()
	mock.Fault("", providertest.Fault{StallAfter: 4, StallFor: time.Minute}) // ping is the third, unseen
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st = c.Messages.NewStreaming(ctx, antMessage())
	for range 3 {
		if !st.Next() {
			t.Fatal(st.Err())
		}
	}
	cancel()
	mock.WaitCanceled(t, 1)
	noCanary(t, upKey, e.waitLog(2))
}

package gateway_test

// Keybridge's own refusals that the per-provider tests leave out, as each
// official SDK sees them (SPEC §7.3): a key at its own rate limit (429),
// a provider without upstream keys (503) and a disabled provider (404),
// for the provider types whose SDKs the other tests do not drive there.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/smithy-go"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"google.golang.org/genai"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func TestGeminiSDKOwnRefusals(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 1)
	ctx := context.Background()
	generate := func(provider, key string) error {
		_, err := g.client(provider, key).Models.GenerateContent(ctx, gemModel, genai.Text("hi"), nil)
		return err
	}
	t.Run("429 at the key's own limit", func(t *testing.T) {
		_, key := limitKey(g.env, map[string]any{"rate_limit_rpm": 1})
		if err := generate("gem", key); err != nil {
			t.Fatalf("first request: %v", err)
		}
		gemAPIError(t, generate("gem", key), 429, "RESOURCE_EXHAUSTED", "limit of 1 requests per minute")
		h := g.seen.last()
		if h.Get("X-Keybridge-Error") != keybridge.ERateLimited || h.Get("Retry-After") == "" {
			t.Errorf("headers = %v, want X-Keybridge-Error rate_limited and a Retry-After", h)
		}
	})
	t.Run("503 without upstream keys", func(t *testing.T) {
		g.provider(map[string]any{"name": "empty", "type": "google", "base_url": g.mock.URL})
		gemAPIError(t, generate("empty", g.OwnerKey), 503, "UNAVAILABLE", `provider "empty" has no enabled upstream keys`)
		if got := g.seen.last().Get("X-Keybridge-Error"); got != keybridge.EUnavailable {
			t.Errorf("X-Keybridge-Error = %q", got)
		}
	})
	t.Run("404 for a disabled provider", func(t *testing.T) {
		g.api("PATCH", "/api/v1/orgs/acme/providers/empty", g.OwnerKey, map[string]any{"enabled": false}, http.StatusOK)
		err := generate("empty", g.OwnerKey)
		var ae genai.APIError
		if !errors.As(err, &ae) || ae.Code != 404 || !strings.Contains(ae.Message, `provider \"empty\" not found`) {
			t.Errorf("err = %v, want a 404 with Keybridge's message", err)
		}
		if got := g.seen.last().Get("X-Keybridge-Error"); got != keybridge.ENotFound {
			t.Errorf("X-Keybridge-Error = %q", got)
		}
	})
	if n := len(g.mock.Requests()); n != 1 {
		t.Errorf("the provider got %d requests, want the one the limit let through", n)
	}
	g.noKeybridgeSecrets(t)
}

func TestBedrockSDKOwnRefusals(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	ctx := context.Background()
	t.Run("429 at the AI key's own limit", func(t *testing.T) {
		project := b.api("POST", "/api/v1/orgs/acme/projects", b.OwnerKey, map[string]any{"name": "limited"}, http.StatusCreated)["id"].(string)
		out := b.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", b.OwnerKey,
			map[string]any{"name": "k", "ai_type": "AWS", "rate_limit_rpm": 1}, http.StatusCreated)
		c := b.client("br", out["key"].(string), out["secret"].(string))
		if _, err := c.Converse(ctx, brConverse(brModel)); err != nil {
			t.Fatalf("first request: %v", err)
		}
		_, err := c.Converse(ctx, brConverse(brModel))
		re := brAPIError(t, err, 429, "ThrottlingException", keybridge.ERateLimited, "limit of 1 requests per minute")
		if re.Response.Header.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
	})
	t.Run("503 without an access key", func(t *testing.T) {
		b.provider(map[string]any{"name": "nokey", "type": "bedrock", "base_url": b.mock.URL,
			"settings": map[string]any{"region": brRegion}})
		_, err := b.client("nokey", b.awsKey, b.awsSecr).Converse(ctx, brConverse(brModel))
		brAPIError(t, err, 503, "ServiceUnavailableException", keybridge.EUnavailable, `provider "nokey" has no AWS access key`)
	})
	t.Run("403 for a model the key may not use", func(t *testing.T) {
		project := b.api("POST", "/api/v1/orgs/acme/projects", b.OwnerKey, map[string]any{"name": "allow"}, http.StatusCreated)["id"].(string)
		out := b.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", b.OwnerKey,
			map[string]any{"name": "k", "ai_type": "AWS", "allowed_models": []string{"amazon.nova-*"}}, http.StatusCreated)
		_, err := b.client("br", out["key"].(string), out["secret"].(string)).Converse(ctx, brConverse(brModel))
		var ae smithy.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("err = %v", err)
		}
		brAPIError(t, err, 403, "AccessDeniedException", keybridge.EForbidden, brModel)
	})
	if n := len(b.mock.Requests()); n != 1 {
		t.Errorf("the provider got %d requests, want the one the limit let through", n)
	}
	b.noKeybridgeSecrets(t)
}

// Azure OpenAI and OpenAI-compatible providers answer OpenAI's shape; the
// Azure client reads it too.
func TestAzureAndCompatibleSDKOwnRefusals(t *testing.T) {
	e := newEnv(t)
	azMock, _ := oaUpstream(t, e, "az", "azure-openai", "", map[string]any{"api_version": "2024-06-01"})
	compatMock, _ := oaUpstream(t, e, "compat", "openai-compatible", "/v1", nil)
	e.provider(map[string]any{"name": "az-empty", "type": "azure-openai", "base_url": azMock.URL})
	e.provider(map[string]any{"name": "compat-empty", "type": "openai-compatible", "base_url": compatMock.URL + "/v1"})
	ctx := context.Background()
	azClient := func(provider, key string) *openai.Client {
		c := openai.NewClient(azure.WithEndpoint(e.URL+"/gateway/"+provider, "2024-10-21"), azure.WithAPIKey(key),
			azure.WithUnsafeAllowHTTP(), option.WithMaxRetries(0))
		return &c
	}
	clients := map[string]func(provider, key string) *openai.Client{
		"az":     azClient,
		"compat": func(provider, key string) *openai.Client { return oaClient(e, provider, key) },
	}
	for _, name := range []string{"az", "compat"} {
		t.Run(name, func(t *testing.T) {
			client := clients[name]
			_, key := limitKey(e, map[string]any{"rate_limit_rpm": 1})
			if _, err := client(name, key).Chat.Completions.New(ctx, oaChat()); err != nil {
				t.Fatalf("first request: %v", err)
			}
			_, err := client(name, key).Chat.Completions.New(ctx, oaChat())
			apiErr := checkOAError(t, err, 429, keybridge.ERateLimited, "rate_limit_error", "limit of 1 requests per minute")
			checkRetryAfter(t, apiErr.Response.Header, 1, 60)
			_, err = client(name+"-empty", e.OwnerKey).Chat.Completions.New(ctx, oaChat())
			checkOAError(t, err, 503, keybridge.EUnavailable, "server_error", "no enabled upstream keys")
			_, err = client(name, "kb_0000000000000000000000000000000000000000").Chat.Completions.New(ctx, oaChat())
			checkOAError(t, err, 401, keybridge.EUnauthenticated, "authentication_error", "")
		})
	}
	if n := len(azMock.Requests()); n != 1 {
		t.Errorf("the Azure provider got %d requests, want 1", n)
	}
	if n := len(compatMock.Requests()); n != 1 {
		t.Errorf("the compatible provider got %d requests, want 1", n)
	}
}

// A key in the query parameter is Gemini's REST style: a request refused
// before its provider is known answers Google's shape, whatever its path.
func TestQueryKeyRefusalHasGoogleShape(t *testing.T) {
	e := newEnv(t)
	for _, target := range []string{
		"/gateway/gem/v1/models?key=kb_notakey",
		"/gateway/gem/v1/models/gemini-2.5-flash:countTokens?alt=json&key=kb_notakey",
		"/gateway/gem/v1/models/gemini-2.5-flash:embedContent?key=AIzaSyOwnKey",
	} {
		req, err := http.NewRequest("POST", e.URL+target, strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp, body := e.do(req)
		var v struct {
			Error struct {
				Code    int    `json:"code"`
				Status  string `json:"status"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != 401 || v.Error.Code != 401 || v.Error.Status != "UNAUTHENTICATED" ||
			v.Error.Message == "" || resp.Header.Get("X-Keybridge-Error") != keybridge.EUnauthenticated {
			t.Errorf("%s: %d %s, want 401 in Google's shape", target, resp.StatusCode, body)
		}
	}
}

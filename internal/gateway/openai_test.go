package gateway_test

// The OpenAI SDK (openai-go) through the gateway to the provider-faithful
// mock, for openai, azure-openai and openai-compatible providers: the
// client changes its base URL and key and nothing else (SPEC §7.1), and
// sees every answer, Keybridge's own refusals included, as it would see
// OpenAI's.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// oaUpstream starts an OpenAI mock behind provider name (type typ, base
// URL the mock's plus path) with one canary upstream key, and returns the
// mock and the key.
func oaUpstream(t *testing.T, e *env, name, typ, path string, settings map[string]any) (*providertest.Server, string) {
	t.Helper()
	mock := providertest.NewOpenAI(t)
	key := canary(t, "sk-proj-")
	mock.AddKey(key)
	p := map[string]any{"name": name, "type": typ, "base_url": mock.URL + path}
	if settings != nil {
		p["settings"] = settings
	}
	e.provider(p)
	e.addKey(name, key, 0)
	return mock, key
}

// oaClient is the OpenAI SDK pointed at the gateway's provider name with a
// Keybridge key, retries off so that every answer is seen as it came.
func oaClient(e *env, name, key string, opts ...option.RequestOption) *openai.Client {
	c := openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(e.URL + "/gateway/" + name + "/"), option.WithAPIKey(key), option.WithMaxRetries(0),
	}, opts...)...)
	return &c
}

// aiSecret creates a project with an AI key of aiType and returns its
// secret.
func aiSecret(e *env, aiType string) string {
	e.t.Helper()
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey,
		map[string]any{"name": "p-" + strings.ToLower(aiType) + "-" + fmt.Sprint(time.Now().UnixNano())}, 201)["id"].(string)
	return e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey,
		map[string]any{"name": "k", "ai_type": aiType}, 201)["secret"].(string)
}

// noKeybridgeKeyUpstream fails if any recorded request holds one of the
// Keybridge keys in a header, its URI or its body.
func noKeybridgeKeyUpstream(t *testing.T, reqs []providertest.Request, keys ...string) {
	t.Helper()
	for i, r := range reqs {
		for _, k := range keys {
			if strings.Contains(r.URI, k) || bytes.Contains(r.Body, []byte(k)) {
				t.Errorf("upstream request %d (%s) holds a Keybridge key in its URI or body", i, r.URI)
			}
			for name, vv := range r.Header {
				for _, v := range vv {
					if strings.Contains(v, k) {
						t.Errorf("upstream request %d header %s holds a Keybridge key", i, name)
					}
				}
			}
		}
	}
}

// seen is what the client sent and got, captured by a middleware outside
// the SDK's own processing: the request's URI and body as sent, and the
// answer's headers and status.
type seen struct {
	uri    string
	body   []byte
	header http.Header
	status int
	proto  int
}

func (s *seen) middleware() option.RequestOption {
	return option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		s.uri = r.URL.RequestURI()
		s.body = nil
		if r.GetBody != nil {
			if b, err := r.GetBody(); err == nil {
				s.body, _ = io.ReadAll(b)
			}
		}
		resp, err := next(r)
		if resp != nil {
			s.header, s.status, s.proto = resp.Header.Clone(), resp.StatusCode, resp.ProtoMajor
		}
		return resp, err
	})
}

// headerText is every header name and value, for canary checks.
func headerText(h http.Header) string {
	var b strings.Builder
	h.Write(&b)
	return b.String()
}

// checkGatewayHeaders checks what SPEC §7.8 puts on every gateway answer.
func checkGatewayHeaders(t *testing.T, h http.Header) {
	t.Helper()
	if h.Get("X-Keybridge-Request-Id") == "" {
		t.Error("no X-Keybridge-Request-Id")
	}
	if st := h.Get("Server-Timing"); !strings.HasPrefix(st, "keybridge;dur=") || !strings.Contains(st, ", upstream;dur=") {
		t.Errorf("Server-Timing: got %q, want keybridge;dur=..., upstream;dur=...", st)
	}
}

func oaChat() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
}

// oaText is what the mock answers with for n events.
func oaText(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "word%d ", i+1)
	}
	return b.String()
}

func TestOpenAISDKThroughGateway(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 100, Output: 40, CacheRead: 20}
	secret := aiSecret(e, "OPENAI")
	ctx := context.Background()
	var clientSaw []string

	for _, caller := range []struct{ name, key string }{{"platform key", e.OwnerKey}, {"OPENAI AI key", secret}} {
		t.Run(caller.name, func(t *testing.T) {
			var s seen
			c := oaClient(e, "oai", caller.key, s.middleware(), option.WithHeader("OpenAI-Beta", "responses=v1"))
			check := func(what, wantURI string) {
				t.Helper()
				last := mock.Last()
				if last.Key != upKey {
					t.Errorf("%s: upstream key: got %.16q, want the provider's key", what, last.Key)
				}
				if got := last.Header.Get("Authorization"); got != "Bearer "+upKey {
					t.Errorf("%s: upstream Authorization is not the provider's key", what)
				}
				if last.URI != wantURI {
					t.Errorf("%s: upstream URI: got %q, want %q", what, last.URI, wantURI)
				}
				if got, want := "/gateway/oai"+strings.TrimPrefix(last.URI, "/v1"), s.uri; got != want {
					t.Errorf("%s: upstream got %q, client sent %q", what, got, want)
				}
				if last.Header.Get("Openai-Beta") != "responses=v1" {
					t.Errorf("%s: OpenAI-Beta did not pass: %q", what, last.Header.Get("Openai-Beta"))
				}
				if s.header.Get("X-Request-Id") == "" {
					t.Errorf("%s: the provider's X-Request-Id did not reach the client", what)
				}
				checkGatewayHeaders(t, s.header)
				clientSaw = append(clientSaw, headerText(s.header))
			}

			// Chat, with a query and a path whose bytes must pass as sent.
			got, err := c.Chat.Completions.New(ctx, oaChat(), option.WithQuery("trace", "a/b c"))
			if err != nil {
				t.Fatal(err)
			}
			if got.Choices[0].Message.Content != oaText(5) || got.Usage.PromptTokens != 120 || got.Usage.PromptTokensDetails.CachedTokens != 20 {
				t.Errorf("chat: got %q usage %+v", got.Choices[0].Message.Content, got.Usage)
			}
			check("chat", "/v1/chat/completions?trace=a%2Fb+c")
			if !bytes.Equal(mock.Last().Body, s.body) {
				t.Errorf("chat body: upstream got %s, client sent %s", mock.Last().Body, s.body)
			}
			clientSaw = append(clientSaw, got.RawJSON())

			// Streaming chat.
			st := c.Chat.Completions.NewStreaming(ctx, oaChat())
			var acc openai.ChatCompletionAccumulator
			for st.Next() {
				acc.AddChunk(st.Current())
				clientSaw = append(clientSaw, st.Current().RawJSON())
			}
			if err := st.Err(); err != nil {
				t.Fatalf("chat stream: %v", err)
			}
			if acc.Choices[0].Message.Content != oaText(5) || acc.Choices[0].FinishReason != "stop" {
				t.Errorf("chat stream: got %+v", acc.Choices)
			}
			check("chat stream", "/v1/chat/completions")
			if s.header.Get("X-Accel-Buffering") != "no" {
				t.Errorf("chat stream: X-Accel-Buffering: got %q, want no", s.header.Get("X-Accel-Buffering"))
			}

			// Responses, whole and streamed.
			rp := responses.ResponseNewParams{Model: "gpt-4o", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}
			r, err := c.Responses.New(ctx, rp)
			if err != nil {
				t.Fatal(err)
			}
			if r.OutputText() != oaText(5) || r.Usage.InputTokens != 120 {
				t.Errorf("responses: got %q usage %+v", r.OutputText(), r.Usage)
			}
			check("responses", "/v1/responses")
			rs := c.Responses.NewStreaming(ctx, rp)
			var text strings.Builder
			completed := false
			for rs.Next() {
				ev := rs.Current()
				switch ev.Type {
				case "response.output_text.delta":
					text.WriteString(ev.AsResponseOutputTextDelta().Delta)
				case "response.completed":
					completed = ev.AsResponseCompleted().Response.Usage.OutputTokens == 40
				}
			}
			if err := rs.Err(); err != nil {
				t.Fatalf("responses stream: %v", err)
			}
			if text.String() != oaText(5) || !completed {
				t.Errorf("responses stream: got %q, completed with usage %v", text.String(), completed)
			}
			check("responses stream", "/v1/responses")

			// Embeddings and models.
			emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{
				Model: openai.EmbeddingModelTextEmbedding3Small,
				Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(emb.Data) != 2 || len(emb.Data[0].Embedding) != 8 {
				t.Errorf("embeddings: got %d vectors", len(emb.Data))
			}
			check("embeddings", "/v1/embeddings")
			page, err := c.Models.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Data) != 3 || page.Data[0].ID != "gpt-4o" {
				t.Errorf("models: got %+v", page.Data)
			}
			check("models", "/v1/models")
			m, err := c.Models.Get(ctx, "ft:gpt-4o:acme:x y")
			if err != nil {
				t.Fatal(err)
			}
			if m.ID != "ft:gpt-4o:acme:x y" {
				t.Errorf("model: got %q", m.ID)
			}
			check("model", "/v1/models/ft:gpt-4o:acme:x%20y")
		})
	}
	noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey, secret)
	noCanary(t, upKey, append(clientSaw, e.waitLog(14))...)
}

// oaAPIError is the SDK's typed error, or a test failure.
func oaAPIError(t *testing.T, err error) *openai.Error {
	t.Helper()
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("error: got %v, want *openai.Error", err)
	}
	return apiErr
}

// checkOAError checks a refusal Keybridge answered itself, as the SDK
// sees it.
func checkOAError(t *testing.T, err error, status int, code, typ, msgPart string) *openai.Error {
	t.Helper()
	apiErr := oaAPIError(t, err)
	if apiErr.StatusCode != status || apiErr.Code != code || apiErr.Type != typ {
		t.Errorf("error: got %d code %q type %q, want %d %q %q", apiErr.StatusCode, apiErr.Code, apiErr.Type, status, code, typ)
	}
	if !strings.Contains(apiErr.Message, msgPart) {
		t.Errorf("message: got %q, want it to say %q", apiErr.Message, msgPart)
	}
	if got := apiErr.Response.Header.Get("X-Keybridge-Error"); got != code {
		t.Errorf("X-Keybridge-Error: got %q, want %q", got, code)
	}
	checkGatewayHeaders(t, apiErr.Response.Header)
	return apiErr
}

func TestOpenAISDKGatewayErrors(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	_, noInvoke := e.addMember(keybridge.PermProvidersRead)
	other := aiSecret(e, "OTHER")
	ctx := context.Background()

	t.Run("refused before the upstream", func(t *testing.T) {
		for _, tc := range []struct {
			name, provider, key string
			status              int
			code, typ, msg      string
		}{
			{"missing key", "oai", "", 401, keybridge.EUnauthenticated, "authentication_error", "missing credentials"},
			{"provider's own key", "oai", "sk-proj-not-a-keybridge-key", 401, keybridge.EUnauthenticated, "authentication_error", "invalid Keybridge key"},
			{"unknown kb key", "oai", "kb_0000000000000000000000000000000000000000", 401, keybridge.EUnauthenticated, "authentication_error", ""},
			{"no gateway:invoke", "oai", noInvoke, 403, keybridge.EForbidden, "permission_error", "gateway:invoke"},
			{"AI key of another type", "oai", other, 403, keybridge.EForbidden, "permission_error", "cannot reach openai providers"},
			{"unknown provider", "nope", e.OwnerKey, 404, keybridge.ENotFound, "", `provider "nope" not found`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				opts := []option.RequestOption{}
				if tc.key == "" {
					opts = append(opts, option.WithHeaderDel("Authorization"))
				}
				c := oaClient(e, tc.provider, tc.key, opts...)
				_, err := c.Chat.Completions.New(ctx, oaChat())
				checkOAError(t, err, tc.status, tc.code, tc.typ, tc.msg)
				// A stream is refused the same way, before it begins.
				st := c.Chat.Completions.NewStreaming(ctx, oaChat())
				for st.Next() {
					t.Error("a refused stream has chunks")
				}
				checkOAError(t, st.Err(), tc.status, tc.code, tc.typ, tc.msg)
			})
		}
		if n := len(mock.Requests()); n != 0 {
			t.Errorf("the upstream got %d requests", n)
		}
	})

	t.Run("503 without upstream keys", func(t *testing.T) {
		e.provider(map[string]any{"name": "empty", "type": "openai", "base_url": mock.URL + "/v1"})
		_, err := oaClient(e, "empty", e.OwnerKey).Chat.Completions.New(ctx, oaChat())
		checkOAError(t, err, 503, keybridge.EUnavailable, "server_error", "no enabled upstream keys")
	})

	t.Run("502 when every key fails, without their bodies", func(t *testing.T) {
		second := canary(t, "sk-proj-")
		mock.AddKey(second)
		e.addKey("oai", second, 1)
		mock.Fault(upKey, providertest.Fault{Status: 401, Times: 1})
		mock.Fault(second, providertest.Fault{Status: 500, Times: 1})
		wrongKey := canary(t, "sk-proj-")
		e.provider(map[string]any{"name": "wrong", "type": "openai", "base_url": mock.URL + "/v1"})
		e.addKey("wrong", wrongKey, 0) // the mock answers 401 with a fragment of it
		_, err := oaClient(e, "oai", e.OwnerKey).Chat.Completions.New(ctx, oaChat())
		apiErr := checkOAError(t, err, 502, keybridge.EBadGateway, "server_error", `provider "oai": every upstream key failed (401, 500)`)
		_, err = oaClient(e, "wrong", e.OwnerKey).Chat.Completions.New(ctx, oaChat())
		wrongErr := checkOAError(t, err, 502, keybridge.EBadGateway, "server_error", "(401)")
		for _, raw := range []string{apiErr.RawJSON(), wrongErr.RawJSON()} {
			if strings.Contains(raw, "Incorrect API key") || strings.Contains(raw, "***") {
				t.Errorf("the upstream's 401 body reached the client: %s", raw)
			}
		}
		noCanary(t, wrongKey[:5]+"***"+wrongKey[len(wrongKey)-4:], wrongErr.RawJSON())
	})

	t.Run("429 when every key is rate limited", func(t *testing.T) {
		e2 := newEnv(t)
		mock2, k1 := oaUpstream(t, e2, "oai", "openai", "/v1", nil)
		k2 := canary(t, "sk-proj-")
		mock2.AddKey(k2)
		e2.addKey("oai", k2, 1)
		mock2.Fault(k1, providertest.Fault{Status: 429, RetryAfter: "20"})
		mock2.Fault(k2, providertest.Fault{Status: 429, RetryAfterMS: "6500"})
		_, err := oaClient(e2, "oai", e2.OwnerKey).Chat.Completions.New(ctx, oaChat())
		apiErr := checkOAError(t, err, 429, keybridge.ERateLimited, "rate_limit_error", "rate limited")
		if got := apiErr.Response.Header.Get("Retry-After"); got != "7" {
			t.Errorf("Retry-After: got %q, want 7 (the second key's 6.5 s, rounded up)", got)
		}
		// Both rest now: the next call is refused without trying them.
		n := len(mock2.Requests())
		_, err = oaClient(e2, "oai", e2.OwnerKey).Chat.Completions.New(ctx, oaChat())
		checkOAError(t, err, 429, keybridge.ERateLimited, "rate_limit_error", "rate limited")
		if got := len(mock2.Requests()); got != n {
			t.Errorf("resting keys were tried: %d more requests", got-n)
		}
	})

	t.Run("413 and 504", func(t *testing.T) {
		e2 := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{MaxBody: 200, HeaderTimeout: 100 * time.Millisecond}})
		mock2, _ := oaUpstream(t, e2, "oai", "openai", "/v1", nil)
		c := oaClient(e2, "oai", e2.OwnerKey)
		big := oaChat()
		big.Messages = []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("x", 300))}
		_, err := c.Chat.Completions.New(ctx, big)
		checkOAError(t, err, 413, keybridge.ETooLarge, "invalid_request_error", "limit of 200 bytes")
		if n := len(mock2.Requests()); n != 0 {
			t.Errorf("a 413 sent %d requests upstream", n)
		}
		mock2.Fault("", providertest.Fault{StallBefore: time.Minute})
		_, err = c.Chat.Completions.New(ctx, oaChat())
		checkOAError(t, err, 504, "gateway_timeout", "server_error", "no response headers within 100ms")
	})
	noCanary(t, upKey, e.waitLog(1))
}

func TestOpenAISDKFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		f1, f2 providertest.Fault
	}{
		{"429 then 401", providertest.Fault{Status: 429, RetryAfter: "30"}, providertest.Fault{Status: 401}},
		{"500 then 529", providertest.Fault{Status: 500}, providertest.Fault{Status: 529}},
		{"reset then 403", providertest.Fault{Reset: true}, providertest.Fault{Status: 403}},
		{"503 then reset", providertest.Fault{Status: 503}, providertest.Fault{Reset: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mock, k1 := oaUpstream(t, e, "oai", "openai", "/v1", nil)
			k2, k3 := canary(t, "sk-proj-"), canary(t, "sk-proj-")
			mock.AddKey(k2)
			mock.AddKey(k3)
			e.addKey("oai", k2, 1)
			e.addKey("oai", k3, 2)
			mock.Fault(k1, tc.f1)
			mock.Fault(k2, tc.f2)
			var s seen
			c := oaClient(e, "oai", e.OwnerKey, s.middleware())
			got, err := c.Chat.Completions.New(context.Background(), oaChat())
			if err != nil {
				t.Fatalf("chat: %v, want the third key's answer", err)
			}
			if got.Choices[0].Message.Content != oaText(5) {
				t.Errorf("chat: got %q", got.Choices[0].Message.Content)
			}
			// A reset on a reused connection is sent once more on a fresh
			// one, as net/http does: count each key once.
			var keys []string
			for _, r := range mock.Requests() {
				if len(keys) == 0 || keys[len(keys)-1] != r.Key {
					keys = append(keys, r.Key)
				}
			}
			if len(keys) != 3 || keys[0] != k1 || keys[1] != k2 || keys[2] != k3 {
				t.Errorf("keys tried: got %d (%v), want k1, k2, k3", len(keys), len(keys) == 3)
			}
			// A stream fails over the same way, before its first byte.
			mock.Forget()
			st := c.Chat.Completions.NewStreaming(context.Background(), oaChat())
			var acc openai.ChatCompletionAccumulator
			for st.Next() {
				acc.AddChunk(st.Current())
			}
			if err := st.Err(); err != nil || acc.Choices[0].Message.Content != oaText(5) {
				t.Errorf("stream: got %+v, %v", acc.Choices, err)
			}
			if mock.Last().Key != k3 {
				t.Error("the stream was not served by the third key")
			}
			noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey)
			for _, k := range []string{k1, k2, k3} {
				noCanary(t, k, got.RawJSON(), headerText(s.header), e.waitLog(2))
			}
		})
	}
}

func TestOpenAISDKStreamCutAndCancel(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	c := oaClient(e, "oai", e.OwnerKey)
	ctx := context.Background()

	t.Run("cut chat", func(t *testing.T) {
		mock.Fault("", providertest.Fault{CutAfter: 3, Times: 1})
		st := c.Chat.Completions.NewStreaming(ctx, oaChat())
		chunks := 0
		for st.Next() {
			chunks++
		}
		if st.Err() == nil {
			t.Error("a cut stream ended without an error")
		}
		if chunks != 3 {
			t.Errorf("chunks before the cut: got %d, want 3", chunks)
		}
	})
	t.Run("cut responses", func(t *testing.T) {
		mock.Fault("", providertest.Fault{CutAfter: 4, Times: 1})
		rs := c.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "gpt-4o"})
		events := 0
		for rs.Next() {
			if rs.Current().Type == "response.completed" {
				t.Error("a cut response completed")
			}
			events++
		}
		if rs.Err() == nil {
			t.Error("a cut Responses stream ended without an error")
		}
		if events != 4 {
			t.Errorf("events before the cut: got %d, want 4", events)
		}
	})
	t.Run("cut, raw", func(t *testing.T) {
		// What the SDK saw as an error is the gateway's error event, then
		// an abort without [DONE].
		mock.Fault("", providertest.Fault{CutAfter: 2, Times: 1})
		body := `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`
		resp, err := http.DefaultClient.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("reading a cut stream: got %v, want an unexpected EOF", err)
		}
		events := strings.Split(strings.TrimSpace(string(b)), "\n\n")
		last := strings.TrimPrefix(events[len(events)-1], "data: ")
		var v struct {
			Error struct{ Code, Message string }
		}
		if len(events) != 3 || json.Unmarshal([]byte(last), &v) != nil || v.Error.Code != keybridge.EBadGateway {
			t.Errorf("stream: got %q, want two chunks and an error event", b)
		}
		if strings.Contains(string(b), "[DONE]") {
			t.Error("a cut stream has [DONE]")
		}
	})
	t.Run("client cancel", func(t *testing.T) {
		mock.Forget()
		mock.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Minute})
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st := c.Chat.Completions.NewStreaming(cctx, oaChat())
		for range 2 {
			if !st.Next() {
				t.Fatal(st.Err())
			}
		}
		cancel()
		mock.WaitCanceled(t, 1)
		mock.ClearFaults()
	})
	t.Run("client cancel before headers", func(t *testing.T) {
		mock.Forget()
		mock.Fault("", providertest.Fault{StallBefore: time.Minute})
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.Chat.Completions.New(cctx, oaChat())
			done <- err
		}()
		deadline := time.Now().Add(5 * time.Second)
		for len(mock.Requests()) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("canceled call: got %v", err)
		}
		mock.WaitCanceled(t, 1)
		mock.ClearFaults()
	})
	noCanary(t, upKey, e.waitLog(5))
}

func TestAzureOpenAISDKThroughGateway(t *testing.T) {
	e := newEnv(t)
	// The provider's api_version differs from the default, so that its
	// use is seen.
	mock, upKey := oaUpstream(t, e, "az", "azure-openai", "", map[string]any{"api_version": "2024-06-01"})
	secret := aiSecret(e, "OPENAI")
	ctx := context.Background()
	azClient := func(key string, opts ...option.RequestOption) *openai.Client {
		c := openai.NewClient(append([]option.RequestOption{
			azure.WithEndpoint(e.URL+"/gateway/az", "2024-10-21"), azure.WithAPIKey(key), azure.WithUnsafeAllowHTTP(),
			option.WithMaxRetries(0),
		}, opts...)...)
		return &c
	}
	var clientSaw []string
	for _, caller := range []struct{ name, key string }{{"platform key", e.OwnerKey}, {"OPENAI AI key", secret}} {
		t.Run(caller.name, func(t *testing.T) {
			var s seen
			c := azClient(caller.key, s.middleware())
			check := func(what, wantURI string) {
				t.Helper()
				last := mock.Last()
				if last.Key != upKey || last.Header.Get("Api-Key") != upKey {
					t.Errorf("%s: the provider's key did not arrive as api-key", what)
				}
				if last.URI != wantURI {
					t.Errorf("%s: upstream URI: got %q, want %q", what, last.URI, wantURI)
				}
				if s.header.Get("Apim-Request-Id") == "" && s.header.Get("X-Request-Id") == "" {
					t.Errorf("%s: the provider's request id did not pass", what)
				}
				checkGatewayHeaders(t, s.header)
				clientSaw = append(clientSaw, headerText(s.header))
			}
			got, err := c.Chat.Completions.New(ctx, oaChat())
			if err != nil {
				t.Fatal(err)
			}
			if got.Choices[0].Message.Content != oaText(5) {
				t.Errorf("chat: got %q", got.Choices[0].Message.Content)
			}
			check("chat", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")
			clientSaw = append(clientSaw, got.RawJSON())

			st := c.Chat.Completions.NewStreaming(ctx, oaChat())
			var acc openai.ChatCompletionAccumulator
			for st.Next() {
				acc.AddChunk(st.Current())
			}
			if err := st.Err(); err != nil || acc.Choices[0].Message.Content != oaText(5) {
				t.Errorf("chat stream: got %+v, %v", acc.Choices, err)
			}
			check("chat stream", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")

			emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{
				Model: "text-embedding-3-small", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("a")},
			})
			if err != nil || len(emb.Data) != 1 {
				t.Errorf("embeddings: got %v, %v", emb, err)
			}
			check("embeddings", "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21")

			r, err := c.Responses.New(ctx, responses.ResponseNewParams{Model: "gpt-4o"})
			if err != nil || r.OutputText() != oaText(5) {
				t.Errorf("responses: got %v, %v", r, err)
			}
			check("responses", "/openai/responses?api-version=2024-10-21")

			// Without api-version, the provider's settings supply it.
			_, err = c.Chat.Completions.New(ctx, oaChat(), option.WithQueryDel("api-version"))
			if err != nil {
				t.Fatalf("chat without api-version: %v", err)
			}
			if !strings.HasPrefix(s.uri, "/gateway/az/openai/deployments/gpt-4o/chat/completions") || strings.Contains(s.uri, "api-version") {
				t.Errorf("the client sent %q, want no api-version", s.uri)
			}
			check("chat without api-version", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01")
		})
	}

	t.Run("refusals", func(t *testing.T) {
		n := len(mock.Requests())
		_, err := azClient("not-a-keybridge-key").Chat.Completions.New(ctx, oaChat())
		checkOAError(t, err, 401, keybridge.EUnauthenticated, "authentication_error", "invalid Keybridge key")
		_, err = azClient(aiSecret(e, "ANTHROPIC")).Chat.Completions.New(ctx, oaChat())
		checkOAError(t, err, 403, keybridge.EForbidden, "permission_error", "cannot reach azure-openai providers")
		if got := len(mock.Requests()); got != n {
			t.Errorf("refusals sent %d requests upstream", got-n)
		}
	})

	t.Run("failover", func(t *testing.T) {
		k2 := canary(t, "az-")
		mock.AddKey(k2)
		e.addKey("az", k2, 1)
		mock.Fault(upKey, providertest.Fault{Status: 429, RetryAfter: "1", Times: 1})
		got, err := azClient(e.OwnerKey).Chat.Completions.New(ctx, oaChat())
		if err != nil || got.Choices[0].Message.Content != oaText(5) {
			t.Fatalf("chat after a 429: %v", err)
		}
		if mock.Last().Key != k2 {
			t.Error("the second key did not answer")
		}
	})
	noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey, secret)
	noCanary(t, upKey, append(clientSaw, e.waitLog(10))...)
}

func TestOpenAICompatibleSDKThroughGateway(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "local", "openai-compatible", "/v1", nil)
	other, openaiKey := aiSecret(e, "OTHER"), aiSecret(e, "OPENAI")
	ctx := context.Background()
	for _, key := range []string{e.OwnerKey, other} {
		c := oaClient(e, "local", key)
		got, err := c.Chat.Completions.New(ctx, oaChat())
		if err != nil {
			t.Fatal(err)
		}
		if got.Choices[0].Message.Content != oaText(5) || mock.Last().Key != upKey || mock.Last().URI != "/v1/chat/completions" {
			t.Errorf("chat: got %q, upstream %s", got.Choices[0].Message.Content, mock.Last().URI)
		}
		st := c.Chat.Completions.NewStreaming(ctx, oaChat())
		var acc openai.ChatCompletionAccumulator
		for st.Next() {
			acc.AddChunk(st.Current())
		}
		if err := st.Err(); err != nil || acc.Choices[0].Message.Content != oaText(5) {
			t.Errorf("stream: got %+v, %v", acc.Choices, err)
		}
	}
	_, err := oaClient(e, "local", openaiKey).Chat.Completions.New(ctx, oaChat())
	checkOAError(t, err, 403, keybridge.EForbidden, "permission_error", "cannot reach openai-compatible providers")
	noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey, other, openaiKey)
	noCanary(t, upKey, e.waitLog(5))
}

// HTTP/2 with prior knowledge is not Front's: net/http serves it, and the
// gateway behind it must answer the same.
func TestOpenAISDKOverH2C(t *testing.T) {
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	defer tr.CloseIdleConnections()
	var s seen
	c := oaClient(e, "oai", e.OwnerKey, option.WithHTTPClient(&http.Client{Transport: tr}), s.middleware())
	ctx := context.Background()

	got, err := c.Chat.Completions.New(ctx, oaChat(), option.WithQuery("x", "%2F"))
	if err != nil {
		t.Fatal(err)
	}
	if s.proto != 2 {
		t.Fatalf("protocol: got HTTP/%d, want HTTP/2", s.proto)
	}
	if got.Choices[0].Message.Content != oaText(5) || mock.Last().Key != upKey {
		t.Errorf("chat: got %q", got.Choices[0].Message.Content)
	}
	if want := "/v1/chat/completions?x=%252F"; mock.Last().URI != want {
		t.Errorf("upstream URI: got %q, want %q", mock.Last().URI, want)
	}
	checkGatewayHeaders(t, s.header)

	mock.Events = 7
	st := c.Chat.Completions.NewStreaming(ctx, oaChat())
	var acc openai.ChatCompletionAccumulator
	for st.Next() {
		acc.AddChunk(st.Current())
	}
	if err := st.Err(); err != nil || acc.Choices[0].Message.Content != oaText(7) {
		t.Errorf("stream: got %+v, %v", acc.Choices, err)
	}
	if s.proto != 2 || s.header.Get("X-Accel-Buffering") != "no" {
		t.Errorf("stream: HTTP/%d, X-Accel-Buffering %q", s.proto, s.header.Get("X-Accel-Buffering"))
	}

	mock.Fault("", providertest.Fault{CutAfter: 3, Times: 1})
	st = c.Chat.Completions.NewStreaming(ctx, oaChat())
	chunks := 0
	for st.Next() {
		chunks++
	}
	if st.Err() == nil || chunks != 3 {
		t.Errorf("cut stream: %d chunks, error %v; want 3 and an error", chunks, st.Err())
	}

	_, err = oaClient(e, "oai", "sk-not-ours", option.WithHTTPClient(&http.Client{Transport: tr})).Chat.Completions.New(ctx, oaChat())
	checkOAError(t, err, 401, keybridge.EUnauthenticated, "authentication_error", "invalid Keybridge key")
	noKeybridgeKeyUpstream(t, mock.Requests(), e.OwnerKey)
	noCanary(t, upKey, e.waitLog(4))
}

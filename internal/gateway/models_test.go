package gateway_test

// The model allowlist (SPEC §7.2) end to end: keys made and changed
// through the management API, requests made with the official SDKs, and
// refusals seen as each SDK sees its provider's own 403.

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/openai/openai-go/v3"
	"google.golang.org/genai"
)

// restrictedKey creates a platform key with gateway:invoke limited to
// models, and returns its plaintext.
func restrictedKey(e *env, models ...string) string {
	e.t.Helper()
	out := e.api("POST", "/api/v1/api-keys", e.OwnerKey, map[string]any{
		"org": "acme", "name": "restricted", "permissions": []string{"gateway:invoke"}, "allowed_models": models,
	}, http.StatusCreated)
	if got := toStrings(out["allowed_models"]); !slices.Equal(got, models) {
		e.t.Fatalf("created key's allowed_models = %q, want %q", got, models)
	}
	return out["key"].(string)
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := []string{}
	for _, s := range l {
		str, _ := s.(string)
		out = append(out, str)
	}
	return out
}

func TestAllowedModelsOpenAI(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	key := restrictedKey(e, "gpt-4o-mini", "o4-*")
	c := oaClient(e, "oa", key)

	chat := oaChat()
	chat.Model = "gpt-4o-mini"
	if _, err := c.Chat.Completions.New(ctx, chat); err != nil {
		t.Fatalf("allowed model gpt-4o-mini: %v", err)
	}
	chat.Model = "o4-mini"
	if _, err := c.Chat.Completions.New(ctx, chat); err != nil {
		t.Fatalf("allowed pattern o4-*: %v", err)
	}
	before := len(mock.Requests())
	chat.Model = "gpt-4o"
	_, err := c.Chat.Completions.New(ctx, chat)
	checkOAError(t, err, 403, "permission_denied", "permission_error", `model "gpt-4o" is not allowed`)
	_, err = c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hi")}})
	checkOAError(t, err, 403, "permission_denied", "permission_error", "not allowed")

	for _, tc := range []struct {
		name, path, body string
	}{
		{"a disallowed body model with an allowed ?model=", "/gateway/oa/chat/completions?model=gpt-4o-mini", `{"model":"gpt-4o","messages":[]}`},
		{"no model", "/gateway/oa/chat/completions", `{"messages":[]}`},
		{"no model, ?model= given", "/gateway/oa/chat/completions?model=gpt-4o-mini", `{"messages":[]}`},
		{"an allowed model, then a duplicate that is not", "/gateway/oa/chat/completions", `{"model":"gpt-4o-mini","messages":[],"model":"gpt-4o"}`},
		{"an escaped disallowed model", "/gateway/oa/chat/completions", `{"mod\u0065l":"gpt-4\u006f"}`},
		{"an allowed model, then one in capitals that is not", "/gateway/oa/chat/completions", `{"model":"gpt-4o-mini","Model":"gpt-4o"}`},
		{"a model that is not a string", "/gateway/oa/chat/completions", `{"model":["gpt-4o-mini"]}`},
		{"not JSON", "/gateway/oa/chat/completions", `model=gpt-4o-mini`},
	} {
		resp, body := e.do(e.post(tc.path, key, tc.body))
		if resp.StatusCode != 403 || resp.Header.Get("X-Keybridge-Error") != "permission_denied" {
			t.Errorf("%s: got %d %s, want 403 permission_denied", tc.name, resp.StatusCode, body)
		}
	}
	if n := len(mock.Requests()) - before; n != 0 {
		t.Errorf("%d refused requests reached the provider, want none", n)
	}

	// Listing models names none, and is allowed.
	if _, err := c.Models.List(ctx); err != nil {
		t.Errorf("Models.List on a restricted key: %v", err)
	}
	// An unrestricted key is not touched.
	chat.Model = "gpt-4o"
	if _, err := oaClient(e, "oa", e.OwnerKey).Chat.Completions.New(ctx, chat); err != nil {
		t.Errorf("unrestricted key, gpt-4o: %v", err)
	}
}

func TestAllowedModelsPatchAndAIKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	oaUpstream(t, e, "oa", "openai", "/v1", nil)
	key := restrictedKey(e, "gpt-4o-mini")
	c := oaClient(e, "oa", key)
	chat := oaChat() // gpt-4o
	_, err := c.Chat.Completions.New(ctx, chat)
	checkOAError(t, err, 403, "permission_denied", "permission_error", "not allowed")

	keys := e.api("GET", "/api/v1/api-keys", e.OwnerKey, nil, 200)["items"].([]any)
	var id string
	for _, k := range keys {
		if m := k.(map[string]any); m["name"] == "restricted" {
			id = m["id"].(string)
		} else if got := m["allowed_models"]; got == nil || len(toStrings(got)) != 0 {
			t.Errorf("unrestricted key's allowed_models = %v, want []", got)
		}
	}
	out := e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"allowed_models": []string{"gpt-4o"}}, 200)
	if got := toStrings(out["allowed_models"]); !slices.Equal(got, []string{"gpt-4o"}) {
		t.Errorf("PATCH answer allowed_models = %q", got)
	}
	if _, err := c.Chat.Completions.New(ctx, chat); err != nil {
		t.Errorf("after PATCH allowing gpt-4o: %v", err)
	}
	e.api("PATCH", "/api/v1/api-keys/"+id, e.OwnerKey, map[string]any{"allowed_models": []string{"gpt-*-x*"}}, 400)
	rotated := e.api("POST", "/api/v1/api-keys/"+id+"/rotate", e.OwnerKey, map[string]any{"grace_period_seconds": 0}, 201)
	if got := toStrings(rotated["allowed_models"]); !slices.Equal(got, []string{"gpt-4o"}) {
		t.Errorf("rotated key's allowed_models = %q, want the old key's", got)
	}

	// An AI key, limited on create, widened by PATCH.
	project := e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey, map[string]any{"name": "p"}, 201)["id"].(string)
	created := e.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", e.OwnerKey,
		map[string]any{"name": "k", "ai_type": "OPENAI", "allowed_models": []string{"gpt-4o-mini"}}, 201)
	ai := oaClient(e, "oa", created["secret"].(string))
	_, err = ai.Chat.Completions.New(ctx, chat)
	checkOAError(t, err, 403, "permission_denied", "permission_error", "not allowed")
	patched := e.api("PATCH", "/api/v1/orgs/acme/projects/"+project+"/ai-keys/"+created["id"].(string), e.OwnerKey,
		map[string]any{"allowed_models": []string{}}, 200)
	if got := patched["allowed_models"]; got == nil || len(toStrings(got)) != 0 {
		t.Errorf("PATCH [] answer allowed_models = %v, want []", got)
	}
	if _, err := ai.Chat.Completions.New(ctx, chat); err != nil {
		t.Errorf("after clearing the AI key's list: %v", err)
	}
	events := e.api("GET", "/api/v1/orgs/acme/audit-events?resource_type=ai_key&action=ai_key.update", e.OwnerKey, nil, 200)["items"].([]any)
	if len(events) != 1 || events[0].(map[string]any)["changes"].(map[string]any)["allowed_models"] == nil {
		t.Errorf("ai_key.update events = %v, want one recording allowed_models", events)
	}
}

func TestAllowedModelsAnthropic(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mock, _ := antUpstream(t, e, "ant")
	key := restrictedKey(e, "claude-sonnet-*")
	c := antClient(e, "ant", key, false)
	if _, err := c.Messages.New(ctx, antMessage()); err != nil {
		t.Fatalf("allowed model: %v", err)
	}
	msg := antMessage()
	msg.Model = "claude-opus-4-1"
	before := len(mock.Requests())
	_, err := c.Messages.New(ctx, msg)
	checkAntError(t, err, 403, "permission_denied", "permission_error", `model "claude-opus-4-1" is not allowed`)
	_, err = c.Messages.CountTokens(ctx, anthropic.MessageCountTokensParams{Model: "claude-opus-4-1",
		Messages: msg.Messages})
	checkAntError(t, err, 403, "permission_denied", "permission_error", "not allowed")
	if n := len(mock.Requests()) - before; n != 0 {
		t.Errorf("%d refused requests reached the provider", n)
	}
	// count_tokens may name no model; the provider answers it.
	resp, body := e.do(e.post("/gateway/ant/v1/messages/count_tokens", key, `{"messages":[]}`))
	if resp.Header.Get("X-Keybridge-Error") != "" {
		t.Errorf("count_tokens without a model: Keybridge refused it: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do(e.post("/gateway/ant/v1/messages", key, `{"messages":[]}`))
	if resp.StatusCode != 403 {
		t.Errorf("messages without a model: %d %s, want 403", resp.StatusCode, body)
	}
}

func TestAllowedModelsGemini(t *testing.T) {
	ctx := context.Background()
	g := newGemEnv(t, envOptions{}, 1)
	key := restrictedKey(g.env, gemModel)
	c := g.client("gem", key)
	if _, err := c.Models.GenerateContent(ctx, gemModel, genai.Text("hi"), nil); err != nil {
		t.Fatalf("allowed model: %v", err)
	}
	before := len(g.mock.Requests())
	_, err := c.Models.GenerateContent(ctx, "gemini-2.5-pro", genai.Text("hi"), nil)
	gemAPIError(t, err, 403, "PERMISSION_DENIED", `model "gemini-2.5-pro" is not allowed`)
	for range c.Models.GenerateContentStream(ctx, "gemini-2.5-pro", genai.Text("hi"), nil) {
	}
	// A model in the path wins over one in the body or the query.
	resp, body := g.do(g.post("/gateway/gem/v1beta/models/gemini-2.5-pro:generateContent?model="+gemModel, key,
		`{"model":"`+gemModel+`","contents":[]}`))
	if resp.StatusCode != 403 {
		t.Errorf("disallowed path model with allowed body and query: %d %s, want 403", resp.StatusCode, body)
	}
	if n := len(g.mock.Requests()) - before; n != 0 {
		t.Errorf("%d refused requests reached the provider", n)
	}
	// A tuned model is named as Google names it.
	tuned := restrictedKey(g.env, "tunedModels/mine-*")
	resp, body = g.do(g.post("/gateway/gem/v1beta/tunedModels/mine-1:generateContent", tuned, `{"contents":[]}`))
	if resp.Header.Get("X-Keybridge-Error") != "" {
		t.Errorf("an allowed tuned model: Keybridge refused it: %d %s", resp.StatusCode, body)
	}
	resp, body = g.do(g.post("/gateway/gem/v1beta/tunedModels/theirs:generateContent", tuned, `{"contents":[]}`))
	if resp.StatusCode != 403 || !strings.Contains(string(body), `tunedModels/theirs`) {
		t.Errorf("a tuned model not on the list: %d %s, want 403 naming it", resp.StatusCode, body)
	}
	before = len(g.mock.Requests())
	// The path as the provider reads it, however it is spelled.
	for _, path := range []string{"/v1beta/%6Dodels/gemini-2.5-pro:generateContent", "/v1beta/Models/gemini-2.5-pro:generateContent",
		"//v1beta//models/gemini-2.5-pro:generateContent", "/%6Dodels/gemini-2.5-pro:generateContent"} {
		resp, body := g.do(g.post("/gateway/gem"+path, key, `{"model":"`+gemModel+`","contents":[]}`))
		if resp.StatusCode != 403 {
			t.Errorf("%s with an allowed body model: %d %s, want 403", path, resp.StatusCode, body)
		}
	}
	if n := len(g.mock.Requests()) - before; n != 0 {
		t.Errorf("%d refused requests reached the provider", n)
	}
}

func TestAllowedModelsBedrockSigV4(t *testing.T) {
	ctx := context.Background()
	b := newBrEnv(t, envOptions{})
	project := b.api("POST", "/api/v1/orgs/acme/projects", b.OwnerKey, map[string]any{"name": "limited"}, 201)["id"].(string)
	out := b.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", b.OwnerKey,
		map[string]any{"name": "k", "ai_type": "AWS", "allowed_models": []string{brModel}}, 201)
	c := b.client("br", out["key"].(string), out["secret"].(string))
	invoke := func(model string) error {
		_, err := c.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{ModelId: aws.String(model),
			ContentType: aws.String("application/json"), Body: []byte(`{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}`)})
		return err
	}
	if err := invoke(brModel); err != nil {
		t.Fatalf("allowed model: %v", err)
	}
	before := len(b.mock.Requests())
	brAPIError(t, invoke(brARN), 403, "AccessDeniedException", "permission_denied", "is not allowed")
	// The path as the provider reads it, however it is spelled; the
	// secret as a bearer token.
	for _, path := range []string{"/%6Dodel/forbidden.model/converse", "/Model/forbidden.model/converse", "//model/forbidden.model/converse"} {
		resp, body := b.do(b.post("/gateway/br"+path, out["secret"].(string), `{"messages":[]}`))
		if resp.StatusCode != 403 {
			t.Errorf("%s: %d %s, want 403", path, resp.StatusCode, body)
		}
	}
	if n := len(b.mock.Requests()) - before; n != 0 {
		t.Errorf("%d refused requests reached the provider", n)
	}
	// An ARN pattern matches the unescaped ARN, as written.
	b.api("PATCH", "/api/v1/orgs/acme/projects/"+project+"/ai-keys/"+out["id"].(string), b.OwnerKey,
		map[string]any{"allowed_models": []string{"arn:aws:bedrock:us-east-1:123456789012:inference-profile/*"}}, 200)
	if err := invoke(brARN); err != nil {
		t.Errorf("ARN allowed by a pattern: %v", err)
	}
	// Dots in an ARN's escaped slashes match the pattern, but name
	// another model to a server that resolves them.
	dotted := "/gateway/br/model/" + url.PathEscape("arn:aws:bedrock:us-east-1:123456789012:inference-profile/../../other") + "/converse"
	if resp, body := b.do(b.post(dotted, out["secret"].(string), `{"messages":[]}`)); resp.StatusCode != 403 {
		t.Errorf("%s: %d %s, want 403", dotted, resp.StatusCode, body)
	}
	brAPIError(t, invoke(brModel), 403, "AccessDeniedException", "permission_denied", "is not allowed")
}

// On Azure the deployment in the path picks the model, whatever the body
// says; that holds too when the provider's base URL already ends in
// /openai, and the caller's path starts at /deployments/.
func TestAllowedModelsAzureDeployment(t *testing.T) {
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "az", "azure-openai", "", nil)
	sub, _ := oaUpstream(t, e, "azsub", "azure-openai", "/openai", nil)
	key := restrictedKey(e, "gpt-4o-mini")
	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		name, path string
		status     int
	}{
		{"an allowed deployment", "/gateway/az/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", 200},
		{"a disallowed deployment, an allowed body model", "/gateway/az/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", 403},
		{"base URL .../openai, an allowed deployment", "/gateway/azsub/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", 200},
		{"base URL .../openai, a disallowed deployment", "/gateway/azsub/deployments/gpt-4o/chat/completions?api-version=2024-10-21", 403},
		// A path the provider reads as one with a deployment, spelled
		// otherwise: percent-encoded letters, a doubled slash, capitals.
		{"a disallowed deployment, percent-encoded", "/gateway/az/openai/%64eployments/gpt-4o/chat/completions?api-version=2024-10-21", 403},
		{"a disallowed deployment, percent-encoded in its name", "/gateway/az/openai/deployments/gpt-4%6F/chat/completions?api-version=2024-10-21", 403},
		{"a disallowed deployment after a doubled slash", "/gateway/az/openai//deployments/gpt-4o/chat/completions?api-version=2024-10-21", 403},
		{"a disallowed deployment, in capitals", "/gateway/az/openai/Deployments/gpt-4o/chat/completions?api-version=2024-10-21", 403},
		{"base URL .../openai, a disallowed deployment, percent-encoded", "/gateway/azsub/%64eployments/gpt-4o/chat/completions?api-version=2024-10-21", 403},
		{"an allowed deployment, percent-encoded", "/gateway/az/openai/%64eployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", 200},
	} {
		before := len(mock.Requests()) + len(sub.Requests())
		resp, body := e.do(e.post(tc.path, key, chat))
		if resp.StatusCode != tc.status {
			t.Errorf("%s: got %d %s, want %d", tc.name, resp.StatusCode, body, tc.status)
		}
		if n := len(mock.Requests()) + len(sub.Requests()) - before; tc.status == 403 && n != 0 {
			t.Errorf("%s: the refused request reached the provider", tc.name)
		}
	}
}

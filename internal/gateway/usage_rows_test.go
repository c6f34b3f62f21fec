package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"
	"google.golang.org/genai"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/providertest"
)

// Every request made with a valid key is one usage row with every field
// of SPEC §7.7, the ones Keybridge refuses itself included (an allowlist's
// 403, an AI key of another type's 403, an unknown provider's 404, a body
// over the limit's 413, a limit's 429): who made it, where it went, its
// status, and no tokens or upstream key for what never reached one. A
// request without a valid key (401) has no org and records nothing.
func TestUsageRowOfEveryRequest(t *testing.T) {
	t.Parallel()
	const maxBody = 4096
	fe, rows, _ := newRowEnv(t, gateway.Options{MaxBody: maxBody})
	e := fe.env
	mock := providertest.NewOpenAI(t)
	mock.Usage = providertest.Usage{Input: 100, Output: 40, CacheRead: 30}
	upKey := canary(t, "sk-proj-")
	mock.AddKey(upKey)
	providerID := e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": mock.URL + "/v1"})
	upKeyID := e.addKey("oai", upKey, 0)
	emptyID := e.provider(map[string]any{"name": "empty", "type": "openai", "base_url": mock.URL + "/v1"})
	limited := newInvokeKey(e, map[string]any{"rate_limit_rpm": 1, "allowed_models": []string{"gpt-4o"}})
	limitedID, limitedKey := limited["id"].(string), limited["key"].(string)
	ai := newAIKey(e, "ANTHROPIC")

	chat := func(model string, stream bool) string {
		s := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]`
		if stream {
			s += `,"stream":true`
		}
		return s + "}"
	}
	type want struct {
		status            int
		apiKey, aiKey     string
		user, project     string
		provider, upKey   string
		model             string
		stream            bool
		input, cacheRead  int64
		output            int64
		upstreamLatencyOK bool // measured: the provider was asked
	}
	cases := []struct {
		name      string
		key, path string
		body      string
		want      *want // nil: no row
	}{
		{"no valid key", "kb_nope", "/gateway/oai/chat/completions", chat("gpt-4o", false), nil},
		{"answered", limitedKey, "/gateway/oai/chat/completions", chat("gpt-4o", false),
			&want{status: 200, apiKey: limitedID, user: e.Owner.ID, provider: providerID, upKey: upKeyID, model: "gpt-4o",
				input: 100, cacheRead: 30, output: 40, upstreamLatencyOK: true}},
		{"a model off the allowlist", limitedKey, "/gateway/oai/chat/completions", chat("o3", true),
			&want{status: 403, apiKey: limitedID, user: e.Owner.ID, provider: providerID, model: "o3", stream: true}},
		{"at the key's RPM", limitedKey, "/gateway/oai/chat/completions", chat("gpt-4o", false),
			&want{status: 429, apiKey: limitedID, user: e.Owner.ID, provider: providerID, model: "gpt-4o"}},
		{"an AI key of another type", ai.secret, "/gateway/oai/chat/completions", chat("gpt-4o-mini", true),
			&want{status: 403, aiKey: ai.id, project: ai.project, provider: providerID, model: "gpt-4o-mini", stream: true}},
		{"a provider without upstream keys", e.OwnerKey, "/gateway/empty/chat/completions", chat("gpt-5", true),
			&want{status: 503, apiKey: ownerKeyID(e), user: e.Owner.ID, provider: emptyID, model: "gpt-5", stream: true}},
		{"an unknown provider", e.OwnerKey, "/gateway/nope/v1/models/gpt-4.1", "",
			&want{status: 404, apiKey: ownerKeyID(e), user: e.Owner.ID, model: "gpt-4.1"}},
		{"a body over the limit", ai.secret, "/gateway/nope/chat/completions", chat(strings.Repeat("x", maxBody), false),
			&want{status: 404, aiKey: ai.id, project: ai.project}},
		{"a body over the limit to a known provider", e.OwnerKey, "/gateway/oai/chat/completions", chat(strings.Repeat("x", maxBody), false),
			&want{status: 413, apiKey: ownerKeyID(e), user: e.Owner.ID, provider: providerID}},
	}
	type sent struct {
		name          string
		want          *want
		before, after time.Time
	}
	var sents []sent
	for _, tc := range cases {
		method := "POST"
		if tc.body == "" {
			method = "GET"
		}
		req, err := http.NewRequest(method, e.URL+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tc.key)
		req.Header.Set("Content-Type", "application/json")
		before := time.Now()
		resp, body := e.do(req)
		after := time.Now()
		wantStatus := http.StatusUnauthorized
		if tc.want != nil {
			wantStatus = tc.want.status
		}
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s: status %d %s, want %d", tc.name, resp.StatusCode, body, wantStatus)
		}
		if tc.want != nil {
			sents = append(sents, sent{tc.name, tc.want, before, after})
		}
	}
	// Rows are queued in the order the requests ended.
	all := rows.wait(t, len(sents))
	if len(all) != len(sents) {
		t.Fatalf("%d usage rows, want %d: %+v", len(all), len(sents), all)
	}
	for i, tc := range sents {
		w, got, before, after := tc.want, all[i], tc.before, tc.after
		if got.Time.Before(before.Add(-time.Millisecond)) || got.Time.After(after) || got.Time.Location() != time.UTC {
			t.Errorf("%s: time %v, want in UTC within [%v, %v]", tc.name, got.Time, before, after)
		}
		if got.OrgID != e.Org.ID || got.APIKeyID != w.apiKey || got.AIKeyID != w.aiKey || got.UserID != w.user || got.ProjectID != w.project {
			t.Errorf("%s: org %q api key %q AI key %q user %q project %q; want %q %q %q %q %q", tc.name,
				got.OrgID, got.APIKeyID, got.AIKeyID, got.UserID, got.ProjectID, e.Org.ID, w.apiKey, w.aiKey, w.user, w.project)
		}
		if got.ProviderID != w.provider || got.ProviderKeyID != w.upKey || got.Model != w.model || got.Status != w.status || got.Stream != w.stream {
			t.Errorf("%s: provider %q upstream key %q model %q status %d stream %v; want %q %q %q %d %v", tc.name,
				got.ProviderID, got.ProviderKeyID, got.Model, got.Status, got.Stream, w.provider, w.upKey, w.model, w.status, w.stream)
		}
		if got.InputTokens != w.input || got.CacheReadTokens != w.cacheRead || got.OutputTokens != w.output || got.CacheWriteTokens != 0 || got.Failovers != 0 {
			t.Errorf("%s: tokens in %d cache read %d out %d cache write %d, failovers %d; want %d %d %d 0, 0", tc.name,
				got.InputTokens, got.CacheReadTokens, got.OutputTokens, got.CacheWriteTokens, got.Failovers, w.input, w.cacheRead, w.output)
		}
		if got.LatencyMS <= 0 || got.LatencyMS > float64(after.Sub(before).Microseconds())/1000 ||
			got.UpstreamLatencyMS > got.LatencyMS || (got.UpstreamLatencyMS > 0) != w.upstreamLatencyOK {
			t.Errorf("%s: latency %v ms, upstream %v ms; want 0 < upstream <= latency <= %v when the provider was asked, else upstream 0",
				tc.name, got.LatencyMS, got.UpstreamLatencyMS, after.Sub(before))
		}
	}
}

// ownerKeyID is the ID of e's owner key.
func ownerKeyID(e *env) string {
	e.t.Helper()
	for _, it := range e.api("GET", "/api/v1/api-keys", e.OwnerKey, nil, http.StatusOK)["items"].([]any) {
		if k := it.(map[string]any); k["name"] == "test key" {
			return k["id"].(string)
		}
	}
	e.t.Fatal("no owner key")
	return ""
}

// A request served with the caller's personal credential touches that
// credential's last_used_at, not the org's upstream key's, and its row
// names no upstream key (SPEC §7.7, docs/gateway.md#usage).
func TestUsagePersonalCredentialLastUsed(t *testing.T) {
	t.Parallel()
	fe, rows, _ := newRowEnv(t, gateway.Options{})
	e := fe.env
	mock := providertest.NewOpenAI(t)
	mock.Usage = providertest.Usage{Input: 8, Output: 3}
	orgKey, personal := canary(t, "sk-proj-"), canary(t, "sk-proj-")
	mock.AddKey(orgKey)
	mock.AddKey(personal)
	e.provider(map[string]any{"name": "either", "type": "openai", "base_url": mock.URL + "/v1", "key_source": "user_or_org"})
	orgKeyID := e.addKey("either", orgKey, 0)
	credID := e.api("POST", "/api/v1/users/me/credentials", e.OwnerKey,
		map[string]any{"org": "acme", "provider": "either", "api_key": personal}, http.StatusCreated)["id"].(string)
	credLastUsed := func() any {
		for _, it := range e.api("GET", "/api/v1/users/me/credentials", e.OwnerKey, nil, http.StatusOK)["items"].([]any) {
			if c := it.(map[string]any); c["id"] == credID {
				return c["last_used_at"]
			}
		}
		t.Fatalf("no credential %s", credID)
		return nil
	}
	if got := credLastUsed(); got != nil {
		t.Fatalf("credential last_used_at %v before any use", got)
	}
	before := time.Now().UTC().Truncate(time.Second)
	if resp, body := e.do(e.post("/gateway/either/chat/completions", e.OwnerKey, `{"model":"gpt-4o","messages":[]}`)); resp.StatusCode != http.StatusOK {
		t.Fatalf("chat = %d %s", resp.StatusCode, body)
	}
	if got := mock.Last().Header.Get("Authorization"); got != "Bearer "+personal {
		t.Fatalf("upstream Authorization is not the personal key")
	}
	row := rows.wait(t, 1)[0]
	if row.ProviderKeyID != "" || row.InputTokens != 8 || row.OutputTokens != 3 {
		t.Errorf("row: upstream key %q, tokens %d/%d; want none, 8/3", row.ProviderKeyID, row.InputTokens, row.OutputTokens)
	}
	waitLastUsed(t, "personal credential", credLastUsed)
	if s, _ := credLastUsed().(string); s != "" {
		if at, err := time.Parse(time.RFC3339Nano, s); err != nil || at.Before(before) {
			t.Errorf("credential last_used_at %q, want a time from %v on", s, before)
		}
	}
	// Written in the same flush as the credential's, had it been touched.
	if got := providerKeyLastUsed(e, "either", orgKeyID); got != nil {
		t.Errorf("the org's upstream key, not used, has last_used_at %v", got)
	}
	noCanary(t, personal, e.logs())
}

// A response over a WebSocket is a request (SPEC §7.7): one the client
// abandons is recorded with status 499, one the provider cuts with 502,
// as a stream over HTTP is, with the tokens seen (none: a response's
// usage comes at its end), not only the responses that end.
func TestUsageWebSocketResponseCutOrAbandoned(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		fault  providertest.Fault
		leave  func(*responses.ResponseConnection) // after two events; nil: the provider cuts
		status int
	}{
		{"client leaves", providertest.Fault{StallAfter: 2, StallFor: time.Minute}, (*responses.ResponseConnection).Abort, 499},
		// A close handshake the provider answers and hangs up after.
		{"client closes the socket", providertest.Fault{StallAfter: 2, StallFor: time.Minute},
			func(c *responses.ResponseConnection) { c.Close() }, 499},
		{"provider cuts", providertest.Fault{CutAfter: 2}, nil, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fe, rows, _ := newRowEnv(t, gateway.Options{})
			e := fe.env
			mock, _ := oaUpstream(t, e, "oai", "openai", "/v1", nil)
			mock.Fault("", tc.fault)
			ctx := context.Background()
			for i, refusedFirst := range []bool{false, true} {
				conn, err := oaClient(e, "oai", e.OwnerKey).Responses.Connect(ctx, responses.ResponseConnectionOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if refusedFirst {
					// A later response on the socket, after an error event.
					refused := wsCreate()
					refused.Model = ""
					if err := conn.Create(ctx, refused); err != nil {
						t.Fatal(err)
					}
					if ev, err := conn.Recv(ctx); err != nil || ev.Type != "error" {
						t.Fatalf("a response.create without a model: %+v, %v; want the provider's error event", ev, err)
					}
				}
				if err := conn.Create(ctx, wsCreate()); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if _, err := conn.Recv(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if tc.leave != nil {
					tc.leave(conn)
				} else if _, err := conn.Recv(ctx); err == nil {
					t.Fatal("a cut socket went on")
				}
				e.waitLog(i + 1) // the socket's rows are queued
			}
			if got := rows.wait(t, 3); len(got) != 3 {
				t.Fatalf("%d rows, want 3: %+v", len(got), got)
			}
			got := rows.wait(t, 3)
			for i, want := range []int{tc.status, http.StatusBadRequest, tc.status} {
				r := got[i]
				if r.Status != want || r.InputTokens+r.OutputTokens != 0 || r.APIKeyID == "" || r.ProviderID == "" || r.ProviderKeyID == "" || !r.Stream {
					t.Errorf("row %d: %+v; want status %d, no tokens, the key, provider and upstream key, a stream", i, r, want)
				}
			}
		})
	}
}

// Embeddings through the SDK: prompt_tokens is the input, and nothing
// else is counted, in float and base64 encodings alike.
func TestUsageEmbeddings(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 17, Output: 99, CacheRead: 5}
	ai := newAIKey(e, "OPENAI")
	c := oaClient(e, "oai", ai.secret)
	for _, format := range []openai.EmbeddingNewParamsEncodingFormat{openai.EmbeddingNewParamsEncodingFormatFloat, openai.EmbeddingNewParamsEncodingFormatBase64} {
		if _, err := c.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
			Model:          openai.EmbeddingModelTextEmbedding3Small,
			Input:          openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}},
			EncodingFormat: format,
		}); err != nil {
			t.Fatalf("%s: %v", format, err)
		}
	}
	settled(e, 2)
	u := newUsageReader(e)
	checkGroup(t, u.wait("model", 2), "text-embedding-3-small", tokens{requests: 2, input: 34})
	checkGroup(t, u.get("project", ""), ai.project, tokens{requests: 2, input: 34})
	noCanary(t, upKey, append(u.answers, e.logs())...)
}

// A Gemini stream the client abandons is recorded 499 with the last
// usageMetadata seen (cumulative: the second chunk's, not the sum of two),
// over SSE (the SDK's) and as the JSON array, cut inside its brackets.
func TestUsageGeminiCanceledStream(t *testing.T) {
	t.Parallel()
	g := newGemEnv(t, envOptions{}, 1) // Input 10, Output 30 (6 thoughts), CacheRead 4; 3 chunks
	g.mock.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Minute})

	ctx, cancel := context.WithCancel(context.Background())
	chunks := 0
	for _, err := range g.client("gem", g.OwnerKey).Models.GenerateContentStream(ctx, gemModel, genai.Text("hi"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		if chunks++; chunks == 2 {
			break
		}
	}
	cancel()
	g.mock.WaitCanceled(t, 1)

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	req := g.post("/gateway/gem/v1beta/models/gemini-2.5-pro:streamGenerateContent", g.OwnerKey, `{"contents":[{"parts":[{"text":"hi"}]}]}`)
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var seen []byte
	buf := make([]byte, 4096)
	// The second element is whole once its usageMetadata, the last of
	// its members, has closed.
	for strings.Count(string(seen), `"totalTokenCount"`) < 2 || !strings.HasSuffix(string(seen), "}}") {
		n, err := resp.Body.Read(buf)
		seen = append(seen, buf[:n]...)
		if err != nil {
			t.Fatalf("array stream after %q: %v", seen, err)
		}
	}
	cancel()
	resp.Body.Close()
	g.mock.WaitCanceled(t, 2)

	settled(g.env, 2)
	u := newUsageReader(g.env)
	byModel := u.wait("model", 2)
	want := tokens{requests: 1, errors: 1, input: 10, output: 16 + 6, cacheRead: 4}
	checkGroup(t, byModel, gemModel, want)
	checkGroup(t, byModel, "gemini-2.5-pro", want)
}

// A Bedrock invoke stream of Claude abandoned before its last chunk (which
// carries amazon-bedrock-invocationMetrics) is recorded 499 with the
// model's own usage seen in the chunks: message_start's input and cache,
// and of the cumulative message_delta output the last, not the sum.
func TestUsageBedrockCanceledInvokeStream(t *testing.T) {
	t.Parallel()
	b := newBrEnv(t, envOptions{}) // Input 11, Output 22, CacheRead 3, CacheWrite 4
	b.mock.Events = 2
	// message_start, content_block_start, 2 deltas, content_block_stop,
	// message_delta (output 11), message_delta (output 22); then the
	// provider stalls before message_stop.
	b.mock.Fault("", providertest.Fault{StallAfter: 7, StallFor: time.Minute})
	ai := newAIKey(b.env, "AWS")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := b.client("br", ai.key, ai.secret).InvokeModelWithResponseStream(ctx, &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(brModel), Body: brBody(t)})
	if err != nil {
		t.Fatal(err)
	}
	es := out.GetStream()
	for n := 0; n < 7; n++ {
		if _, ok := <-es.Events(); !ok {
			t.Fatalf("the stream ended after %d chunks: %v", n, es.Err())
		}
	}
	cancel()
	es.Close()
	b.mock.WaitCanceled(t, 1)
	settled(b.env, 1)
	checkGroup(t, newUsageReader(b.env).wait("api_key", 1), ai.id,
		tokens{requests: 1, errors: 1, input: 11, output: 22, cacheRead: 3, cacheWrite: 4})
}

// Azure OpenAI refuses stream_options (400 "Unrecognized request argument
// supplied") before api-version 2024-09-01-preview, so a stream on such a
// version is sent as it came: metering must not break a request that
// works without the gateway. From that version on, and on the versionless
// v1 API, include_usage is asked for as on OpenAI.
func TestIncludeUsageAzureAPIVersion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "az", "azure-openai", "", nil)
	mock.Usage = providertest.Usage{Input: 3, Output: 4}
	oldMock, _ := oaUpstream(t, e, "azold", "azure-openai", "", map[string]any{"api_version": "2024-06-01"})
	oldMock.Usage = providertest.Usage{Input: 3, Output: 4}
	const body = `{"messages":[{"role":"user","content":"hi"}],"stream":true}`
	for _, tc := range []struct {
		path   string
		mock   *providertest.Server
		inject bool
	}{
		{"/gateway/az/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01", mock, false},
		{"/gateway/az/openai/deployments/gpt-4o/chat/completions?api-version=2024-08-01-preview", mock, false},
		{"/gateway/az/openai/deployments/gpt-4o/chat/completions?api-version=2023-05-15", mock, false},
		{"/gateway/azold/openai/deployments/gpt-4o/chat/completions", oldMock, false}, // the provider's setting
		{"/gateway/az/openai/deployments/gpt-4o/chat/completions?api-version=2024-09-01-preview", mock, true},
		{"/gateway/az/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", mock, true},
		{"/gateway/az/openai/deployments/gpt-4o/chat/completions", mock, true}, // the default, 2024-10-21
		{"/gateway/azold/openai/deployments/gpt-4o/chat/completions?api-version=2025-04-01-preview", oldMock, true},
	} {
		resp, got := e.do(e.post(tc.path, e.OwnerKey, body))
		if resp.StatusCode != http.StatusOK || strings.Contains(string(got), `"choices":[]`) {
			t.Errorf("%s: = %d %s, want 200 without a usage chunk", tc.path, resp.StatusCode, got)
		}
		sent := string(tc.mock.Last().Body)
		if injected := sent != body; injected != tc.inject {
			t.Errorf("%s: upstream body %s; want include_usage added: %v", tc.path, sent, tc.inject)
		}
	}
}

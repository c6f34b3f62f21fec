package gateway_test

// Usage accounting end to end (SPEC §7.7): the official SDKs call the
// providers through the gateway, the providertest mocks answer with token
// counts chosen so that every wrong reading (a sum of cumulative counts,
// cached tokens counted twice, reasoning added again) gives other
// numbers, and the rows are read back as an admin reads them, through
// GET /api/v1/orgs/{org}/usage. Rows are written in batches about once a
// second, so every read polls with a deadline.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genai"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// usageReader reads the usage API of e's org and keeps every answer, so
// that a test can look for secrets in them.
type usageReader struct {
	e       *env
	since   time.Time
	answers []string
}

func newUsageReader(e *env) *usageReader {
	return &usageReader{e: e, since: time.Now().Add(-time.Minute)}
}

// get asks for usage grouped by groupBy (with a series when bucket is
// set) from the reader's start until an hour from now.
func (u *usageReader) get(groupBy, bucket string) map[string]keybridge.UsageGroup {
	u.e.t.Helper()
	q := url.Values{"group_by": {groupBy}, "since": {u.since.UTC().Format(time.RFC3339Nano)},
		"until": {time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)}}
	if bucket != "" {
		q.Set("bucket", bucket)
	}
	req, err := http.NewRequest("GET", u.e.URL+"/api/v1/orgs/acme/usage?"+q.Encode(), nil)
	if err != nil {
		u.e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+u.e.OwnerKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		u.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	u.answers = append(u.answers, string(b))
	if resp.StatusCode != http.StatusOK {
		u.e.t.Fatalf("GET usage?%s = %d %s", q.Encode(), resp.StatusCode, b)
	}
	var out struct{ Items []keybridge.UsageGroup }
	if err := json.Unmarshal(b, &out); err != nil {
		u.e.t.Fatalf("usage answer %s: %v", b, err)
	}
	groups := map[string]keybridge.UsageGroup{}
	for _, g := range out.Items {
		groups[g.Key] = g
	}
	return groups
}

// wait polls the usage grouped by groupBy until it counts n requests in
// all, at most 5 seconds, and returns it.
func (u *usageReader) wait(groupBy string, n int64) map[string]keybridge.UsageGroup {
	u.e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		groups := u.get(groupBy, "")
		var got int64
		for _, g := range groups {
			got += g.Requests
		}
		if got >= n {
			if got > n {
				u.e.t.Fatalf("usage by %s counts %d requests, want %d: %+v", groupBy, got, n, groups)
			}
			return groups
		}
		if time.Now().After(deadline) {
			u.e.t.Fatalf("usage by %s counts %d requests after 5 s, want %d: %+v", groupBy, got, n, groups)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tokens is what a test expects of a group's counts.
type tokens struct{ requests, errors, input, output, cacheRead, cacheWrite, failovers int64 }

// checkGroup compares a group's counts with want, and checks that it
// measured a latency.
func checkGroup(t *testing.T, groups map[string]keybridge.UsageGroup, key string, want tokens) {
	t.Helper()
	g, ok := groups[key]
	if !ok {
		keys := make([]string, 0, len(groups))
		for k := range groups {
			keys = append(keys, k)
		}
		t.Errorf("no usage group %q; groups: %q", key, keys)
		return
	}
	got := tokens{g.Requests, g.Errors, g.InputTokens, g.OutputTokens, g.CacheReadTokens, g.CacheWriteTokens, g.Failovers}
	if got != want {
		t.Errorf("usage of %q: got %+v, want %+v", key, got, want)
	}
	if g.LatencyMSAvg <= 0 {
		t.Errorf("usage of %q: latency_ms_avg = %v, want > 0", key, g.LatencyMSAvg)
	}
}

// settled waits until the gateway has answered and settled n requests
// (each logs its line after its row is queued), so that a following wait
// sees every row they queued and no later one.
func settled(e *env, n int) { e.waitLog(n) }

// tokenMetric reads keybridge_gateway_tokens_total{direction} from reg.
func tokenMetric(t *testing.T, reg *prometheus.Registry, direction string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "keybridge_gateway_tokens_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "direction" && l.GetValue() == direction {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// aiKey is an AI key made for a test.
type aiKey struct{ project, id, key, secret string }

// newAIKey creates an AI key of aiType in a new project.
func newAIKey(e *env, aiType string) aiKey {
	e.t.Helper()
	k := aiKey{project: e.api("POST", "/api/v1/orgs/acme/projects", e.OwnerKey,
		map[string]any{"name": "usage-" + strings.ToLower(aiType)}, http.StatusCreated)["id"].(string)}
	out := e.api("POST", "/api/v1/orgs/acme/projects/"+k.project+"/ai-keys", e.OwnerKey,
		map[string]any{"name": "k", "ai_type": aiType}, http.StatusCreated)
	k.id, k.key, k.secret = out["id"].(string), out["key"].(string), out["secret"].(string)
	return k
}

// lastUsed returns the AI key's last_used_at, nil when unset.
func (k aiKey) lastUsed(e *env) any {
	e.t.Helper()
	for _, it := range e.api("GET", "/api/v1/orgs/acme/projects/"+k.project+"/ai-keys", e.OwnerKey, nil, http.StatusOK)["items"].([]any) {
		if m := it.(map[string]any); m["id"] == k.id {
			return m["last_used_at"]
		}
	}
	e.t.Fatalf("no AI key %s", k.id)
	return nil
}

// memberKey returns the id and last_used_at of the platform key of the
// member userID, found through the org's key list, which the owner key
// reads: reading it does not use the member's key.
func memberKey(e *env, userID string) (id string, lastUsed any) {
	e.t.Helper()
	for _, it := range e.api("GET", "/api/v1/orgs/acme/api-keys", e.OwnerKey, nil, http.StatusOK)["items"].([]any) {
		k := it.(map[string]any)
		if k["user_id"] == userID {
			return k["id"].(string), k["last_used_at"]
		}
	}
	e.t.Fatalf("no key of member %s", userID)
	return "", nil
}

// waitLastUsed polls get until it returns a last_used_at, at most 5
// seconds.
func waitLastUsed(t *testing.T, what string, get func() any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for get() == nil {
		if time.Now().After(deadline) {
			t.Errorf("%s: last_used_at still null after 5 s", what)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// providerKeyLastUsed returns the last_used_at of upstream key id of
// provider p, nil when unset.
func providerKeyLastUsed(e *env, p, id string) any {
	for _, it := range e.api("GET", "/api/v1/orgs/acme/providers/"+p+"/keys", e.OwnerKey, nil, http.StatusOK)["items"].([]any) {
		if k := it.(map[string]any); k["id"] == id {
			return k["last_used_at"]
		}
	}
	e.t.Fatalf("no key %s on provider %s", id, p)
	return nil
}

// OpenAI chat: prompt_tokens less the cached tokens is input, the cached
// part cache read, completion_tokens (reasoning within) output; a stream
// that does not ask for usage is asked on its behalf, and the chunk this
// adds never reaches it.
func TestUsageOpenAIChat(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{Registerer: reg}})
	mock := providertest.NewOpenAI(t)
	mock.Usage = providertest.Usage{Input: 100, Output: 40, CacheRead: 30, Reasoning: 7}
	upKey := canary(t, "sk-proj-")
	mock.AddKey(upKey)
	providerID := e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": mock.URL + "/v1"})
	upKeyID := e.addKey("oai", upKey, 0)
	memberID, memberSecret := e.addMember(keybridge.PermGatewayInvoke)
	keyID, used := memberKey(e, memberID)
	if used != nil {
		t.Fatalf("the member's key was used before its first request: last_used_at %v", used)
	}
	c := oaClient(e, "oai", memberSecret)
	ctx := context.Background()

	// Not streamed.
	chat := oaChat()
	if _, err := c.Chat.Completions.New(ctx, chat); err != nil {
		t.Fatal(err)
	}

	// Streamed without include_usage: the gateway asks, and hides the
	// usage-only chunk.
	chat.Model = "gpt-4o-mini"
	st := c.Chat.Completions.NewStreaming(ctx, chat)
	var text strings.Builder
	for st.Next() {
		ch := st.Current()
		if len(ch.Choices) == 0 || ch.Usage.TotalTokens != 0 {
			t.Errorf("the client saw a usage chunk it did not ask for: %s", ch.RawJSON())
			continue
		}
		text.WriteString(ch.Choices[0].Delta.Content)
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != oaText(5) {
		t.Errorf("streamed text = %q, want %q", text.String(), oaText(5))
	}
	var sent struct {
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := json.Unmarshal(mock.Last().Body, &sent); err != nil || !sent.StreamOptions.IncludeUsage {
		t.Errorf("upstream body %s: want stream_options.include_usage true", mock.Last().Body)
	}

	// Streamed with include_usage: the client gets its usage chunk.
	chat.Model = "gpt-4.1"
	chat.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	st = c.Chat.Completions.NewStreaming(ctx, chat)
	var sawUsage bool
	for st.Next() {
		if u := st.Current().Usage; u.PromptTokens == 130 && u.PromptTokensDetails.CachedTokens == 30 {
			sawUsage = true
		}
	}
	if err := st.Err(); err != nil || !sawUsage {
		t.Errorf("a client that asked for usage got none (err %v)", err)
	}

	settled(e, 3)
	u := newUsageReader(e)
	one := tokens{requests: 1, input: 100, output: 40, cacheRead: 30}
	byModel := u.wait("model", 3)
	for _, m := range []string{"gpt-4o", "gpt-4o-mini", "gpt-4.1"} {
		checkGroup(t, byModel, m, one)
	}
	all := tokens{requests: 3, input: 300, output: 120, cacheRead: 90}
	checkGroup(t, u.get("api_key", ""), keyID, all)
	checkGroup(t, u.get("provider", ""), providerID, all)
	checkGroup(t, u.get("user", ""), memberID, all)

	// The hourly series adds up to the totals (the requests may straddle
	// an hour).
	series := u.get("api_key", "hour")[keyID].Series
	var sum tokens
	for _, p := range series {
		if p.Start.IsZero() || p.Start.Truncate(time.Hour) != p.Start {
			t.Errorf("series point starts at %v, want the start of an hour", p.Start)
		}
		sum.requests += p.Requests
		sum.input += p.InputTokens
		sum.output += p.OutputTokens
		sum.cacheRead += p.CacheReadTokens
		if p.LatencyMSAvg <= 0 {
			t.Errorf("series point %v: latency_ms_avg = %v, want > 0", p.Start, p.LatencyMSAvg)
		}
	}
	if len(series) == 0 || sum != all {
		t.Errorf("hourly series %+v adds up to %+v, want %+v", series, sum, all)
	}

	for dir, want := range map[string]float64{"input": 300, "output": 120, "cache_read": 90, "cache_write": 0} {
		if got := tokenMetric(t, reg, dir); got != want {
			t.Errorf("keybridge_gateway_tokens_total{direction=%q} = %v, want %v", dir, got, want)
		}
	}

	// last_used_at: the upstream key's is the gateway's recorder's;
	// the platform key's is auth's batch, written by Flush as its ticker
	// would.
	waitLastUsed(t, "upstream key", func() any { return providerKeyLastUsed(e, "oai", upKeyID) })
	if err := e.Auth.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.api("GET", "/api/v1/api-keys/"+keyID, memberSecret, nil, http.StatusOK)["last_used_at"]; got == nil {
		t.Error("platform key: last_used_at null after its gateway requests")
	}

	noCanary(t, upKey, append(u.answers, e.logs())...)
}

// OpenAI Responses: input_tokens less the cached is input, the cached
// part cache read; over SSE one row, over a WebSocket one row per
// response.completed, and one per error event.
func TestUsageOpenAIResponses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mock, upKey := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 50, Output: 20, CacheRead: 10, Reasoning: 5}
	ai := newAIKey(e, "OPENAI")
	ownerID := e.api("GET", "/api/v1/api-keys", e.OwnerKey, nil, http.StatusOK)["items"].([]any)[0].(map[string]any)["id"].(string)
	ctx := context.Background()

	st := oaClient(e, "oai", e.OwnerKey).Responses.NewStreaming(ctx, responses.ResponseNewParams{
		Model: "gpt-4o-mini",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")},
	})
	completed := false
	for st.Next() {
		completed = completed || st.Current().Type == "response.completed"
	}
	if err := st.Err(); err != nil || !completed {
		t.Fatalf("SSE stream: completed %v, err %v", completed, err)
	}

	conn, err := oaClient(e, "oai", ai.secret).Responses.Connect(ctx, responses.ResponseConnectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for turn := range 2 {
		if turn > 0 {
			// A pause between responses is neither's time.
			time.Sleep(time.Second)
		}
		if got := wsTurnUsage(t, conn); got != 50+10 {
			t.Errorf("turn %d: the client saw input_tokens %d, want the provider's 60", turn, got)
		}
	}
	// A response.create the provider refuses is answered by an error
	// event: a request, and an error, of no tokens.
	refused := wsCreate()
	refused.Model = ""
	if err := conn.Create(ctx, refused); err != nil {
		t.Fatal(err)
	}
	if ev, err := conn.Recv(ctx); err != nil || ev.Type != "error" {
		t.Fatalf("a response.create without a model: %+v, %v; want the provider's error event", ev, err)
	}
	if err := conn.Close(); err != nil {
		t.Errorf("close: %v", err)
	}

	settled(e, 2) // the SSE request and the WebSocket
	u := newUsageReader(e)
	byKey := u.wait("api_key", 4)
	checkGroup(t, byKey, ownerID, tokens{requests: 1, input: 50, output: 20, cacheRead: 10})
	checkGroup(t, byKey, ai.id, tokens{requests: 3, errors: 1, input: 100, output: 40, cacheRead: 20})
	if avg := byKey[ai.id].LatencyMSAvg; avg >= 250 {
		t.Errorf("the socket's responses took %v ms on average: the pause between them was counted", avg)
	}
	byModel := u.get("model", "")
	checkGroup(t, byModel, "gpt-4o-mini", tokens{requests: 1, input: 50, output: 20, cacheRead: 10})
	checkGroup(t, byModel, "gpt-4o", tokens{requests: 2, input: 100, output: 40, cacheRead: 20})
	noCanary(t, upKey, append(u.answers, e.logs())...)
}

// wsTurnUsage sends one response.create on conn and reads its events up
// to response.completed, returning the input tokens the client saw.
func wsTurnUsage(t *testing.T, conn *responses.ResponseConnection) int64 {
	t.Helper()
	ctx := context.Background()
	if err := conn.Create(ctx, wsCreate()); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := conn.Recv(ctx)
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if ev.Type == "response.completed" {
			return ev.AsResponseCompleted().Response.Usage.InputTokens
		}
	}
}

// Anthropic: message_start's input and cache tokens, and of the
// cumulative message_delta usage the last one, never the sum.
func TestUsageAnthropicStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, upKey := antUpstream(t, e, "ant") // Input 100, Output 40, CacheRead 20, CacheWrite 30
	ctx := context.Background()
	c := antClient(e, "ant", e.OwnerKey, false)
	st := c.Messages.NewStreaming(ctx, antMessage())
	deltas := 0
	for st.Next() {
		if st.Current().Type == "message_delta" {
			deltas++
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if deltas != 2 {
		t.Fatalf("the stream had %d message_delta events, want the mock's 2", deltas)
	}
	msg := antMessage()
	msg.Model = "claude-haiku-4-5"
	if _, err := c.Messages.New(ctx, msg); err != nil {
		t.Fatal(err)
	}
	settled(e, 2)
	u := newUsageReader(e)
	byModel := u.wait("model", 2)
	want := tokens{requests: 1, input: 100, output: 40, cacheRead: 20, cacheWrite: 30}
	checkGroup(t, byModel, "claude-sonnet-4-5", want)
	checkGroup(t, byModel, "claude-haiku-4-5", want)
	noCanary(t, upKey, append(u.answers, e.logs())...)
}

// Gemini: usageMetadata is cumulative, the last chunk's counts; input is
// promptTokenCount less cachedContentTokenCount, output candidates plus
// thoughts. Both stream shapes: SSE (the SDK's) and the JSON array.
func TestUsageGeminiStream(t *testing.T) {
	t.Parallel()
	g := newGemEnv(t, envOptions{}, 1) // Input 10, Output 30 (6 thoughts), CacheRead 4; 3 chunks
	chunks := 0
	for _, err := range g.client("gem", g.OwnerKey).Models.GenerateContentStream(context.Background(), gemModel, genai.Text("hi"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		chunks++
	}
	if chunks != 3 {
		t.Fatalf("the stream had %d chunks, want the mock's 3", chunks)
	}
	// Gemini's REST stream without alt=sse is one JSON array.
	resp, body := g.do(g.post("/gateway/gem/v1beta/models/gemini-2.5-pro:streamGenerateContent", g.OwnerKey,
		`{"contents":[{"parts":[{"text":"hi"}]}]}`))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "[") {
		t.Fatalf("array stream = %d %.80s", resp.StatusCode, body)
	}
	settled(g.env, 2)
	u := newUsageReader(g.env)
	byModel := u.wait("model", 2)
	want := tokens{requests: 1, input: 10, output: 30, cacheRead: 4}
	checkGroup(t, byModel, gemModel, want)
	checkGroup(t, byModel, "gemini-2.5-pro", want)
	noCanary(t, g.keys[0], append(u.answers, g.logs())...)
}

// Bedrock, signed with an AWS AI key: invocation metrics of the last
// chunk, Converse's usage and its stream's metadata event, invoke's body
// usage and headers (one answer, counted once). The rows are the AI key's.
func TestUsageBedrock(t *testing.T) {
	t.Parallel()
	b := newBrEnv(t, envOptions{}) // Input 11, Output 22, CacheRead 3, CacheWrite 4
	ai := newAIKey(b.env, "AWS")
	c := b.client("br", ai.key, ai.secret)
	ctx := context.Background()
	const nova, novaLite, haiku = "amazon.nova-pro-v1:0", "amazon.nova-lite-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"

	out, err := c.InvokeModelWithResponseStream(ctx, &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(brModel), Body: brBody(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := invokeChunkTypes(out.GetStream()); err != nil {
		t.Fatalf("invoke stream: %v", err)
	}
	if _, err := c.Converse(ctx, brConverse(nova)); err != nil {
		t.Fatal(err)
	}
	cs, err := c.ConverseStream(ctx, brConverseStream(novaLite))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := converseEvents(cs.GetStream()); err != nil {
		t.Fatalf("converse stream: %v", err)
	}
	if _, err := c.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{
		ModelId: aws.String(haiku), Body: brBody(t), ContentType: aws.String("application/json")}); err != nil {
		t.Fatal(err)
	}
	// Amazon's own models answer invoke in their shape.
	if _, err := c.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{
		ModelId: aws.String("amazon.nova-micro-v1:0"), Body: []byte(`{"messages":[{"role":"user","content":[{"text":"hi"}]}]}`),
		ContentType: aws.String("application/json")}); err != nil {
		t.Fatal(err)
	}

	settled(b.env, 5)
	u := newUsageReader(b.env)
	byModel := u.wait("model", 5)
	one := tokens{requests: 1, input: 11, output: 22, cacheRead: 3, cacheWrite: 4}
	for _, m := range []string{brModel, nova, novaLite, haiku, "amazon.nova-micro-v1:0"} {
		checkGroup(t, byModel, m, one)
	}
	checkGroup(t, u.get("api_key", ""), ai.id, tokens{requests: 5, input: 55, output: 110, cacheRead: 15, cacheWrite: 20})
	checkGroup(t, u.get("project", ""), ai.project, tokens{requests: 5, input: 55, output: 110, cacheRead: 15, cacheWrite: 20})
	if err := b.Auth.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ai.lastUsed(b.env) == nil {
		t.Error("AI key: last_used_at null after its signed requests")
	}
	b.noKeybridgeSecrets(t)
	noCanary(t, b.upSK, append(u.answers, b.logs())...)
	noCanary(t, b.upAK, append(u.answers, b.logs())...)
}

// A stream the client abandons is recorded with status 499 and the
// tokens seen until then: here Anthropic's message_start.
func TestUsageCanceledStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mock, upKey := antUpstream(t, e, "ant") // Input 100, CacheRead 20, CacheWrite 30; message_start says output 1
	// message_start, content_block_start and ping pass; then the provider
	// thinks for a minute.
	mock.Fault("", providertest.Fault{StallAfter: 3, StallFor: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := antClient(e, "ant", e.OwnerKey, false).Messages.NewStreaming(ctx, antMessage())
	if !st.Next() || st.Current().Type != "message_start" {
		t.Fatalf("first event: %v", st.Err())
	}
	cancel()
	for st.Next() {
	}
	mock.WaitCanceled(t, 1)
	logs := e.waitLog(1)
	if !strings.Contains(logs, `"status":499`) {
		t.Errorf("the request's log line does not say 499:\n%s", logs)
	}
	u := newUsageReader(e)
	checkGroup(t, u.wait("provider", 1), e.api("GET", "/api/v1/orgs/acme/providers/ant", e.OwnerKey, nil, http.StatusOK)["id"].(string),
		tokens{requests: 1, errors: 1, input: 100, output: 1, cacheRead: 20, cacheWrite: 30})
	noCanary(t, upKey, append(u.answers, e.logs())...)
}

// A row counts the failovers of its request; one every key refused is an
// error; last_used_at goes to the key that answered.
func TestUsageFailoversAndErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mock := providertest.NewOpenAI(t)
	mock.Usage = providertest.Usage{Input: 7, Output: 9}
	k1, k2 := canary(t, "sk-proj-"), canary(t, "sk-proj-")
	mock.AddKey(k1)
	mock.AddKey(k2)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": mock.URL + "/v1"})
	e.addKey("oai", k1, 0)
	k2ID := e.addKey("oai", k2, 1)
	c := oaClient(e, "oai", e.OwnerKey)
	ctx := context.Background()

	mock.Fault(k1, providertest.Fault{Status: 500, Times: 1})
	if _, err := c.Chat.Completions.New(ctx, oaChat()); err != nil {
		t.Fatalf("failover: %v", err)
	}
	mock.Fault(k1, providertest.Fault{Status: 500, Times: 1})
	mock.Fault(k2, providertest.Fault{Status: 503, Times: 1})
	chat := oaChat()
	chat.Model = "gpt-4o-mini"
	if _, err := c.Chat.Completions.New(ctx, chat); oaAPIError(t, err).StatusCode != http.StatusBadGateway {
		t.Fatalf("every key failing: got %v, want 502", err)
	}

	settled(e, 2)
	u := newUsageReader(e)
	byModel := u.wait("model", 2)
	checkGroup(t, byModel, "gpt-4o", tokens{requests: 1, input: 7, output: 9, failovers: 1})
	checkGroup(t, byModel, "gpt-4o-mini", tokens{requests: 1, errors: 1, failovers: 1})
	waitLastUsed(t, "upstream key that answered", func() any { return providerKeyLastUsed(e, "oai", k2ID) })
	noCanary(t, k1, append(u.answers, e.logs())...)
	noCanary(t, k2, append(u.answers, e.logs())...)
}

// A model the store could not keep as text (a NUL, invalid UTF-8, both
// reachable through escapes) is recorded with replacement characters,
// on every engine: PostgreSQL refuses NUL in text, and a row refused for
// it would be a request nobody was charged for.
func TestUsageModelStorable(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			t.Parallel()
			e := newEnvWith(t, eng.New(t), envOptions{})
			mock := providertest.NewOpenAI(t)
			mock.Usage = providertest.Usage{Input: 3, Output: 4}
			key := canary(t, "sk-proj-")
			mock.AddKey(key)
			e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": mock.URL + "/v1"})
			e.addKey("oai", key, 0)
			body := `{"model":"gpt\u0000x\udc00","messages":[{"role":"user","content":"hi"}]}`
			resp, _ := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, body))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200", resp.StatusCode)
			}
			settled(e, 1)
			checkGroup(t, newUsageReader(e).wait("model", 1), "gpt\uFFFDx\uFFFD", tokens{requests: 1, input: 3, output: 4})
		})
	}
}

// On Azure the deployment in the path picks the model, whatever the body's
// "model" says, so the usage row records the deployment: from the
// caller's path, and from the path the provider is sent when the base URL
// already ends in /openai or names the deployment itself. A path that
// names no deployment (Responses) records the body's model.
func TestUsageModelAzureDeployment(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	az, _ := oaUpstream(t, e, "az", "azure-openai", "", nil)
	sub, _ := oaUpstream(t, e, "azsub", "azure-openai", "/openai", nil)
	pinned, _ := oaUpstream(t, e, "azdep", "azure-openai", "/openai/deployments/gpt-35-turbo", nil)
	az.Usage = providertest.Usage{Input: 3, Output: 4}
	sub.Usage = providertest.Usage{Input: 5, Output: 6}
	pinned.Usage = providertest.Usage{Input: 7, Output: 8}
	ctx := context.Background()
	// The body names another model than the deployment the client is
	// pointed at, as an Azure client configured with a deployment's URL
	// sends whatever model its code names.
	chat := openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
	for _, tc := range []struct {
		name, base, wantURI string
		mock                *providertest.Server
	}{
		{"deployment in the caller's path", "/gateway/az/openai/deployments/gpt-4o/",
			"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", az},
		{"base URL ending in /openai", "/gateway/azsub/deployments/gpt-4.1/",
			"/openai/deployments/gpt-4.1/chat/completions?api-version=2024-10-21", sub},
		{"base URL naming the deployment", "/gateway/azdep/",
			"/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-10-21", pinned},
	} {
		c := openai.NewClient(option.WithBaseURL(e.URL+tc.base), option.WithQuery("api-version", "2024-10-21"),
			option.WithHeader("Api-Key", e.OwnerKey), option.WithMaxRetries(0))
		if _, err := c.Chat.Completions.New(ctx, chat); err != nil {
			t.Fatalf("%s: chat: %v", tc.name, err)
		}
		if got := tc.mock.Last().URI; got != tc.wantURI {
			t.Errorf("%s: upstream URI: got %q, want %q", tc.name, got, tc.wantURI)
		}
		st := c.Chat.Completions.NewStreaming(ctx, chat)
		for st.Next() {
		}
		if err := st.Err(); err != nil {
			t.Fatalf("%s: chat stream: %v", tc.name, err)
		}
	}
	c := openai.NewClient(azure.WithEndpoint(e.URL+"/gateway/az", "2024-10-21"), azure.WithAPIKey(e.OwnerKey),
		azure.WithUnsafeAllowHTTP(), option.WithMaxRetries(0))
	if _, err := c.Responses.New(ctx, responses.ResponseNewParams{Model: "o3-mini"}); err != nil {
		t.Fatalf("responses: %v", err)
	}
	if got, want := az.Last().URI, "/openai/responses?api-version=2024-10-21"; got != want {
		t.Errorf("responses: upstream URI: got %q, want %q", got, want)
	}
	settled(e, 7)
	byModel := newUsageReader(e).wait("model", 7)
	checkGroup(t, byModel, "gpt-4o", tokens{requests: 2, input: 6, output: 8})
	checkGroup(t, byModel, "gpt-4.1", tokens{requests: 2, input: 10, output: 12})
	checkGroup(t, byModel, "gpt-35-turbo", tokens{requests: 2, input: 14, output: 16})
	checkGroup(t, byModel, "o3-mini", tokens{requests: 1, input: 3, output: 4})
}

// Usage is read whatever the answer's Content-Type adds to its media
// type: parameters, capitals, spaces, even a parameter mime's parser
// refuses. Each answer reports a different count, so that a type the
// scanner skipped shows as a missing request's tokens.
func TestUsageMediaTypeParameters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	types := []string{
		"application/json; charset=utf-8",
		"Application/JSON",
		" application/json ;charset=UTF-8",
		"application/json; charset", // no value: mime.ParseMediaType fails
		"text/event-stream; charset=utf-8",
		"Text/Event-Stream",
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		i, _ := strconv.Atoi(r.Header.Get("X-Case"))
		w.Header().Set("Content-Type", types[i])
		in, out := 10*(i+1), i+1
		if strings.Contains(strings.ToLower(types[i]), "event-stream") {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", in, out, in+out)
			io.WriteString(w, "data: [DONE]\n\n")
			return
		}
		fmt.Fprintf(w, `{"id":"c","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, in, out, in+out)
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-proj-"), 0)
	var want tokens
	for i, ct := range types {
		body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
		if strings.Contains(strings.ToLower(ct), "event-stream") {
			body = `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
		}
		req := e.post("/gateway/oai/chat/completions", e.OwnerKey, body)
		req.Header.Set("X-Case", strconv.Itoa(i))
		resp, _ := e.do(req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%q: status %d, want 200", ct, resp.StatusCode)
		}
		want.requests++
		want.input += int64(10 * (i + 1))
		want.output += int64(i + 1)
	}
	settled(e, len(types))
	checkGroup(t, newUsageReader(e).wait("model", int64(len(types))), "gpt-4o", want)
}

// A path is metered, and its row names its model, as the provider reads
// the path: spelled with percent-encoded letters it is the same path.
// The path's model is the row's, whatever the body names.
func TestUsagePathAsTheProviderReadsIt(t *testing.T) {
	t.Parallel()
	g := newGemEnv(t, envOptions{}, 1) // Input 10, Output 30 (6 thoughts), CacheRead 4
	resp, body := g.do(g.post("/gateway/gem/v1beta/%6Dodels/gemini-2.5-pro:gener%61teContent", g.OwnerKey,
		`{"model":"gemini-body","contents":[{"parts":[{"text":"hi"}]}]}`))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("generateContent = %d %s", resp.StatusCode, body)
	}

	mock := providertest.NewOpenAI(t)
	mock.Usage = providertest.Usage{Input: 100, Output: 40, CacheRead: 30}
	upKey := canary(t, "sk-")
	mock.AddKey(upKey)
	g.provider(map[string]any{"name": "oai", "type": "openai", "base_url": mock.URL + "/v1"})
	g.addKey("oai", upKey, 0)
	resp, body = g.do(g.post("/gateway/oai/chat/complet%69ons", g.OwnerKey,
		`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != http.StatusOK || strings.Contains(string(body), `"total_tokens"`) {
		t.Fatalf("chat stream = %d %s, want 200 without the usage chunk", resp.StatusCode, body)
	}
	settled(g.env, 2)
	byModel := newUsageReader(g.env).wait("model", 2)
	checkGroup(t, byModel, "gemini-2.5-pro", tokens{requests: 1, input: 10, output: 30, cacheRead: 4})
	checkGroup(t, byModel, "gpt-4o-mini", tokens{requests: 1, input: 100, output: 40, cacheRead: 30})
}

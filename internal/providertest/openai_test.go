package providertest_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/keybridge/keybridge/internal/providertest"
)

const openaiKey = "sk-test-0123456789abcdefwxyz"

var openaiUsage = providertest.Usage{Input: 100, Output: 40, CacheRead: 20, Reasoning: 10}

func newOpenAI(t *testing.T) *providertest.Server {
	s := providertest.NewOpenAI(t)
	s.AddKey(openaiKey)
	s.Usage = openaiUsage
	return s
}

func openaiClient(s *providertest.Server, key string, opts ...option.RequestOption) *openai.Client {
	c := openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(s.URL + "/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0),
	}, opts...)...)
	return &c
}

func chatParams() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
}

func wantText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("word")
		b.WriteString(string(rune('1' + i)))
		b.WriteString(" ")
	}
	return b.String()
}

func TestOpenAIChat(t *testing.T) {
	s := newOpenAI(t)
	c := openaiClient(s, openaiKey)
	got, err := c.Chat.Completions.New(context.Background(), chatParams())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Choices) != 1 || got.Choices[0].Message.Content != wantText(5) {
		t.Fatalf("choices: got %+v, want one with %q", got.Choices, wantText(5))
	}
	u := got.Usage
	if u.PromptTokens != 120 || u.PromptTokensDetails.CachedTokens != 20 || u.CompletionTokens != 40 || u.CompletionTokensDetails.ReasoningTokens != 10 || u.TotalTokens != 160 {
		t.Errorf("usage: got %+v", u)
	}
	last := s.Last()
	if last.Method != http.MethodPost || last.URI != "/v1/chat/completions" || last.Key != openaiKey || !strings.Contains(string(last.Body), `"model":"gpt-4o"`) {
		t.Errorf("recorded: got %s %s key %q body %s", last.Method, last.URI, last.Key, last.Body)
	}
	if got := last.Header.Get("Authorization"); got != "Bearer "+openaiKey {
		t.Errorf("recorded Authorization: got %q", got)
	}
}

func TestOpenAIChatStream(t *testing.T) {
	for _, includeUsage := range []bool{false, true} {
		t.Run(map[bool]string{false: "without usage", true: "with usage"}[includeUsage], func(t *testing.T) {
			s := newOpenAI(t)
			s.Events = 7
			c := openaiClient(s, openaiKey)
			p := chatParams()
			if includeUsage {
				p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			st := c.Chat.Completions.NewStreaming(context.Background(), p)
			var acc openai.ChatCompletionAccumulator
			chunks, usageChunks := 0, 0
			for st.Next() {
				ch := st.Current()
				acc.AddChunk(ch)
				chunks++
				if len(ch.Choices) == 0 {
					usageChunks++
				}
				if _, ok := ch.JSON.ExtraFields["usage"]; ok {
					t.Errorf("usage parsed as an unknown field")
				}
				if got := ch.JSON.Usage.Valid(); got && len(ch.Choices) > 0 {
					t.Errorf("a content chunk has usage: %s", ch.RawJSON())
				}
			}
			if err := st.Err(); err != nil {
				t.Fatal(err)
			}
			if got := acc.Choices[0].Message.Content; got != wantText(7) {
				t.Errorf("content: got %q, want %q", got, wantText(7))
			}
			wantChunks, wantUsageChunks := 9, 0
			if includeUsage {
				wantChunks, wantUsageChunks = 10, 1
			}
			if chunks != wantChunks || usageChunks != wantUsageChunks {
				t.Errorf("chunks: got %d (%d usage-only), want %d (%d)", chunks, usageChunks, wantChunks, wantUsageChunks)
			}
			if includeUsage {
				if acc.Usage.PromptTokens != 120 || acc.Usage.CompletionTokens != 40 || acc.Usage.PromptTokensDetails.CachedTokens != 20 {
					t.Errorf("usage: got %+v", acc.Usage)
				}
			} else if acc.Usage.TotalTokens != 0 {
				t.Errorf("usage without include_usage: got %+v", acc.Usage)
			}
		})
	}
}

func TestOpenAIResponses(t *testing.T) {
	s := newOpenAI(t)
	c := openaiClient(s, openaiKey)
	p := responses.ResponseNewParams{Model: "gpt-4o", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}
	got, err := c.Responses.New(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if got.OutputText() != wantText(5) || got.Status != "completed" {
		t.Errorf("response: got %q %s", got.OutputText(), got.Status)
	}
	checkResponseUsage(t, got.Usage)

	st := c.Responses.NewStreaming(context.Background(), p)
	var text strings.Builder
	var completed *responses.Response
	var types []string
	for st.Next() {
		ev := st.Current()
		types = append(types, ev.Type)
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.AsResponseOutputTextDelta().Delta)
		case "response.completed":
			r := ev.AsResponseCompleted().Response
			completed = &r
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != wantText(5) {
		t.Errorf("streamed text: got %q", text.String())
	}
	if types[0] != "response.created" || completed == nil || completed.OutputText() != wantText(5) {
		t.Fatalf("events: got %v", types)
	}
	checkResponseUsage(t, completed.Usage)
}

func checkResponseUsage(t *testing.T, u responses.ResponseUsage) {
	t.Helper()
	if u.InputTokens != 120 || u.InputTokensDetails.CachedTokens != 20 || u.OutputTokens != 40 || u.OutputTokensDetails.ReasoningTokens != 10 || u.TotalTokens != 160 {
		t.Errorf("usage: got %+v", u)
	}
}

func TestOpenAIResponsesWebSocket(t *testing.T) {
	s := newOpenAI(t)
	c := openaiClient(s, openaiKey)
	ctx := context.Background()
	conn, err := c.Responses.Connect(ctx, responses.ResponseConnectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Abort()
	for turn := range 2 {
		err := conn.Create(ctx, responses.ResponsesClientEventResponseCreateParam{
			Model: "gpt-4o",
			Input: responses.ResponsesClientEventResponseCreateInputUnionParam{OfString: openai.String("hi")},
		})
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		for {
			ev, err := conn.Recv(ctx)
			if err != nil {
				t.Fatalf("turn %d: %v", turn, err)
			}
			if ev.Type == "response.output_text.delta" {
				text.WriteString(ev.AsResponseOutputTextDelta().Delta)
			}
			if ev.Type == "response.completed" {
				r := ev.AsResponseCompleted().Response
				checkResponseUsage(t, r.Usage)
				break
			}
		}
		if text.String() != wantText(5) {
			t.Errorf("turn %d text: got %q", turn, text.String())
		}
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	reqs := s.Requests()
	if len(reqs) != 3 {
		t.Fatalf("requests: got %d, want the upgrade and two response.create", len(reqs))
	}
	if reqs[0].Method != http.MethodGet || reqs[0].URI != "/v1/responses" || reqs[0].Key != openaiKey || len(reqs[0].Body) != 0 {
		t.Errorf("upgrade: got %s %s key %q body %q", reqs[0].Method, reqs[0].URI, reqs[0].Key, reqs[0].Body)
	}
	if b := string(reqs[2].Body); !strings.Contains(b, `"type":"response.create"`) || !strings.Contains(b, `"model":"gpt-4o"`) {
		t.Errorf("message: got %s", b)
	}
	for _, r := range reqs {
		if r.Canceled {
			t.Errorf("canceled: %s %s", r.Method, r.Body)
		}
	}
}

func TestOpenAIResponsesWebSocketFaults(t *testing.T) {
	s := newOpenAI(t)
	c := openaiClient(s, openaiKey)
	ctx := context.Background()
	bad := openaiClient(s, "sk-wrong-key-000000000000")
	if _, err := bad.Responses.Connect(ctx, responses.ResponseConnectionOptions{}); err == nil {
		t.Error("connect with a wrong key: got no error")
	}

	s.Fault("", providertest.Fault{CutAfter: 3})
	conn, err := c.Responses.Connect(ctx, responses.ResponseConnectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Abort()
	if err := conn.Create(ctx, responses.ResponsesClientEventResponseCreateParam{Model: "gpt-4o"}); err != nil {
		t.Fatal(err)
	}
	events := 0
	for {
		ev, err := conn.Recv(ctx)
		if err != nil {
			break
		}
		if ev.Type == "response.completed" {
			t.Fatal("cut response completed")
		}
		events++
	}
	if events != 3 {
		t.Errorf("events before the cut: got %d, want 3", events)
	}
}

func TestOpenAIResponsesWebSocketCanceled(t *testing.T) {
	s := newOpenAI(t)
	s.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Minute})
	c := openaiClient(s, openaiKey)
	ctx := context.Background()
	conn, err := c.Responses.Connect(ctx, responses.ResponseConnectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Create(ctx, responses.ResponsesClientEventResponseCreateParam{Model: "gpt-4o"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := conn.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	conn.Abort()
	s.WaitCanceled(t, 1)
	reqs := s.Requests()
	if reqs[0].Canceled || !reqs[1].Canceled {
		t.Errorf("canceled: upgrade %v, response.create %v; want false, true", reqs[0].Canceled, reqs[1].Canceled)
	}
}

func TestOpenAIEmbeddings(t *testing.T) {
	s := newOpenAI(t)
	c := openaiClient(s, openaiKey)
	for _, format := range []openai.EmbeddingNewParamsEncodingFormat{"", openai.EmbeddingNewParamsEncodingFormatFloat, openai.EmbeddingNewParamsEncodingFormatBase64} {
		got, err := c.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
			Model:          openai.EmbeddingModelTextEmbedding3Small,
			Input:          openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}},
			EncodingFormat: format,
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Data) != 2 || len(got.Data[1].Embedding) != 8 || got.Data[1].Embedding[0] != 1 || got.Usage.PromptTokens != 100 {
			t.Errorf("format %q: got %+v", format, got)
		}
	}
}

func TestOpenAIModels(t *testing.T) {
	s := newOpenAI(t)
	c := openaiClient(s, openaiKey)
	page, err := c.Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) == 0 || page.Data[0].ID != "gpt-4o" {
		t.Errorf("models: got %+v", page.Data)
	}
	m, err := c.Models.Get(context.Background(), "gpt-4o-mini")
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "gpt-4o-mini" {
		t.Errorf("model: got %q", m.ID)
	}
}

func TestOpenAIErrors(t *testing.T) {
	s := newOpenAI(t)
	for _, c := range []struct {
		name      string
		key       string
		fault     providertest.Fault
		status    int
		typ, code string
	}{
		{"wrong key", "sk-wrong-0123456789abcdefghij", providertest.Fault{}, 401, "invalid_request_error", "invalid_api_key"},
		{"rate limit", openaiKey, providertest.Fault{Status: 429}, 429, "tokens", "rate_limit_exceeded"},
		{"server error", openaiKey, providertest.Fault{Status: 500}, 500, "server_error", ""},
		{"overloaded", openaiKey, providertest.Fault{Status: 503}, 503, "server_error", ""},
		{"forbidden", openaiKey, providertest.Fault{Status: 403}, 403, "request_forbidden", "unsupported_country_region_territory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s.ClearFaults()
			s.Fault(c.key, c.fault)
			_, err := openaiClient(s, c.key).Chat.Completions.New(context.Background(), chatParams())
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("error: got %v, want *openai.Error", err)
			}
			if apiErr.StatusCode != c.status || apiErr.Type != c.typ || apiErr.Code != c.code || apiErr.Message == "" {
				t.Errorf("error: got %d %q %q %q, want %d %q %q", apiErr.StatusCode, apiErr.Type, apiErr.Code, apiErr.Message, c.status, c.typ, c.code)
			}
			if c.status == 401 {
				if !strings.Contains(apiErr.Message, "sk-wr***ghij") || strings.Contains(apiErr.Message, c.key) {
					t.Errorf("401 message: got %q, want the key's fragment only", apiErr.Message)
				}
			}
		})
	}
}

func TestOpenAIRetryAfter(t *testing.T) {
	s := newOpenAI(t)
	s.Fault(openaiKey, providertest.Fault{Status: 429, RetryAfterMS: "1", Times: 1})
	got, err := openaiClient(s, openaiKey, option.WithMaxRetries(1)).Chat.Completions.New(context.Background(), chatParams())
	if err != nil {
		t.Fatalf("after one 429 and a retry: %v", err)
	}
	if got.Choices[0].Message.Content == "" {
		t.Error("empty answer")
	}
	if n := len(s.Requests()); n != 2 {
		t.Errorf("requests: got %d, want 2 (the fault's Times is 1)", n)
	}
	_, err = openaiClient(s, openaiKey).Chat.Completions.New(context.Background(), chatParams())
	if err != nil {
		t.Errorf("after the fault's Times: %v", err)
	}

	s.Fault("", providertest.Fault{Status: 429, RetryAfter: "7"})
	_, err = openaiClient(s, openaiKey).Chat.Completions.New(context.Background(), chatParams())
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.Response.Header.Get("Retry-After") != "7" {
		t.Errorf("Retry-After: got %v", err)
	}
}

func TestOpenAIReset(t *testing.T) {
	s := newOpenAI(t)
	s.Fault(openaiKey, providertest.Fault{Reset: true})
	_, err := openaiClient(s, openaiKey).Chat.Completions.New(context.Background(), chatParams())
	var apiErr *openai.Error
	if err == nil || errors.As(err, &apiErr) {
		t.Fatalf("reset: got %v, want a transport error", err)
	}
}

func TestOpenAICut(t *testing.T) {
	s := newOpenAI(t)
	s.Fault("", providertest.Fault{CutAfter: 3})
	st := openaiClient(s, openaiKey).Chat.Completions.NewStreaming(context.Background(), chatParams())
	chunks := 0
	for st.Next() {
		chunks++
	}
	if st.Err() == nil {
		t.Error("cut stream: got no error")
	}
	if chunks != 3 {
		t.Errorf("chunks before the cut: got %d, want 3", chunks)
	}

	rs := openaiClient(s, openaiKey).Responses.NewStreaming(context.Background(), responses.ResponseNewParams{Model: "gpt-4o"})
	for rs.Next() {
		if rs.Current().Type == "response.completed" {
			t.Error("cut response completed")
		}
	}
	if rs.Err() == nil {
		t.Error("cut Responses stream: got no error")
	}
}

func TestOpenAICanceled(t *testing.T) {
	s := newOpenAI(t)
	s.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	st := openaiClient(s, openaiKey).Chat.Completions.NewStreaming(ctx, chatParams())
	for range 2 {
		if !st.Next() {
			t.Fatal(st.Err())
		}
	}
	cancel()
	s.WaitCanceled(t, 1)

	s.Fault("", providertest.Fault{StallBefore: time.Minute})
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := openaiClient(s, openaiKey).Chat.Completions.New(ctx, chatParams())
		done <- err
	}()
	for len(s.Requests()) < 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("stalled request: got %v, want context.Canceled", err)
	}
	s.WaitCanceled(t, 2)

	s.ClearFaults()
	if _, err := openaiClient(s, openaiKey).Chat.Completions.New(context.Background(), chatParams()); err != nil {
		t.Fatal(err)
	}
	if s.Last().Canceled {
		t.Error("a completed request is marked canceled")
	}
	s.Forget()
	if n := len(s.Requests()); n != 0 {
		t.Errorf("after Forget: %d requests", n)
	}
}

func TestAzure(t *testing.T) {
	s := newOpenAI(t)
	c := openai.NewClient(
		azure.WithEndpoint(s.URL, "2024-10-21"), azure.WithAPIKey(openaiKey), azure.WithUnsafeAllowHTTP(),
		option.WithMaxRetries(0),
	)
	got, err := c.Chat.Completions.New(context.Background(), chatParams())
	if err != nil {
		t.Fatal(err)
	}
	if got.Choices[0].Message.Content != wantText(5) || got.Usage.PromptTokens != 120 {
		t.Errorf("chat: got %+v", got)
	}
	last := s.Last()
	if last.URI != "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" || last.Key != openaiKey {
		t.Errorf("recorded: got %s key %q", last.URI, last.Key)
	}
	emb, err := c.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
		Model: "text-embedding-3-small", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("a")},
	})
	if err != nil || len(emb.Data) != 1 {
		t.Errorf("embeddings: got %v, %v", emb, err)
	}
	st := c.Chat.Completions.NewStreaming(context.Background(), chatParams())
	var acc openai.ChatCompletionAccumulator
	for st.Next() {
		acc.AddChunk(st.Current())
	}
	if st.Err() != nil || acc.Choices[0].Message.Content != wantText(5) {
		t.Errorf("streaming: got %+v, %v", acc.Choices, st.Err())
	}
	r, err := c.Responses.New(context.Background(), responses.ResponseNewParams{Model: "gpt-4o"})
	if err != nil || r.OutputText() != wantText(5) {
		t.Errorf("responses: got %v, %v", r, err)
	}
	if got := s.Last().URI; got != "/openai/responses?api-version=2024-10-21" {
		t.Errorf("responses path: got %s", got)
	}

	bad := openai.NewClient(
		azure.WithEndpoint(s.URL, "2024-10-21"), azure.WithAPIKey("wrong-azure-key-0000000000"), azure.WithUnsafeAllowHTTP(),
		option.WithMaxRetries(0),
	)
	_, err = bad.Chat.Completions.New(context.Background(), chatParams())
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "401" || strings.Contains(apiErr.Message, "wrong-azure") {
		t.Errorf("wrong key: got %v", err)
	}

	// Azure answers 404 when api-version is missing on its dated paths.
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/openai/deployments/gpt-4o/chat/completions", strings.NewReader(`{"messages":[]}`))
	req.Header.Set("Api-Key", openaiKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("without api-version: got %d, want 404", res.StatusCode)
	}

	// The v1 paths need no api-version.
	v1 := openai.NewClient(option.WithBaseURL(s.URL+"/openai/v1/"), option.WithHeader("Api-Key", openaiKey), option.WithMaxRetries(0))
	got, err = v1.Chat.Completions.New(context.Background(), chatParams())
	if err != nil || got.Choices[0].Message.Content != wantText(5) {
		t.Errorf("v1 chat: got %v, %v", got, err)
	}
	if got := s.Last().URI; got != "/openai/v1/chat/completions" {
		t.Errorf("v1 path: got %s", got)
	}
}

package gateway_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/providertest"
)

// A streamed chat completion that does not ask for usage is asked for it
// upstream (so it can be metered), and the client sees exactly the stream
// it asked for: no usage-only chunk (SPEC §7.7).
func TestIncludeUsageInjectedAndHidden(t *testing.T) {
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oai", "openai", "/v1", nil)
	mock.Usage = providertest.Usage{Input: 11, Output: 7, CacheRead: 3}
	c := oaClient(e, "oai", e.OwnerKey)

	stream := c.Chat.Completions.NewStreaming(context.Background(), oaChat())
	chunks, withUsage := 0, 0
	for stream.Next() {
		chunks++
		if stream.Current().Usage.TotalTokens > 0 || len(stream.Current().Choices) == 0 {
			withUsage++
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if withUsage != 0 {
		t.Errorf("the client saw %d usage chunks it did not ask for", withUsage)
	}
	var sent map[string]json.RawMessage
	json.Unmarshal(mock.Last().Body, &sent)
	if string(sent["stream_options"]) != `{"include_usage":true}` {
		t.Errorf("upstream body stream_options = %s, want include_usage added", sent["stream_options"])
	}

	// A client that asks for usage gets it, unchanged.
	p := oaChat()
	p.StreamOptions.IncludeUsage = openai.Bool(true)
	stream = c.Chat.Completions.NewStreaming(context.Background(), p)
	var usage openai.CompletionUsage
	for stream.Next() {
		if stream.Current().Usage.TotalTokens > 0 {
			usage = stream.Current().Usage
		}
	}
	if stream.Err() != nil || usage.PromptTokens != 14 || usage.CompletionTokens != 7 {
		t.Errorf("usage = %+v, %v; want the provider's own usage chunk", usage, stream.Err())
	}

	// Raw: no usage-only chunk, and the stream's proper end.
	body := `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	resp, got := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, body))
	if resp.StatusCode != 200 || strings.Contains(string(got), `"choices":[]`) || !strings.HasSuffix(string(got), "data: [DONE]\n\n") {
		t.Errorf("= %d %q", resp.StatusCode, got)
	}
}

func TestUsageChunkFilterAtEverySplit(t *testing.T) {
	stream := "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\r\n\r\n" +
		"data: [DONE]\n\n"
	want := "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
	for i := 0; i <= len(stream); i++ {
		for j := i; j <= len(stream); j++ {
			f := gateway.NewUsageChunkFilter()
			var got []byte
			for _, part := range []string{stream[:i], stream[i:j], stream[j:]} {
				got = append(got, f.Filter([]byte(part))...)
			}
			got = append(got, f.Flush()...)
			if string(got) != want {
				t.Fatalf("split at %d, %d: got %q, want %q", i, j, got, want)
			}
		}
	}
}

// TestUsageChunkFilterReusedBuffer reads a stream as the gateway does,
// every read into the same buffer: what the filter returns is written out
// before the next read, and what it holds must not be the buffer's.
func TestUsageChunkFilterReusedBuffer(t *testing.T) {
	events := []string{
		"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\r\n\r\n",
		"data: {\"choices\":[{\"delta\":{\"content\":\"" + strings.Repeat("x", 70<<10) + "\"}}]}\n\n",
		": keep-alive\n\n",
		"data: [DONE]\n\n",
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		var stream, want strings.Builder
		for range 1 + r.IntN(8) {
			i := r.IntN(len(events))
			if i == 2 && r.IntN(4) > 0 {
				i = 0 // the long one now and then
			}
			stream.WriteString(events[i])
			if i != 1 {
				want.WriteString(events[i])
			}
		}
		f := gateway.NewUsageChunkFilter()
		buf := make([]byte, 32<<10)
		var got []byte
		for rest := stream.String(); len(rest) > 0; {
			n := copy(buf[:1+r.IntN(len(buf))], rest)
			rest = rest[n:]
			got = append(got, f.FilterInPlace(buf[:n])...)
			for i := range buf {
				buf[i] = '#'
			}
		}
		got = append(got, f.Flush()...)
		if string(got) != want.String() {
			t.Fatalf("got %d bytes, want %d: %.200q", len(got), want.Len(), got)
		}
	}
}

// BenchmarkUsageChunkFilter is the filter on a 20-event chat stream whose
// every chunk names usage, as OpenAI's do once include_usage is asked for.
func BenchmarkUsageChunkFilter(b *testing.B) {
	var ev strings.Builder
	for i := range 20 {
		ev.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"word` + string(rune('a'+i)) + ` "},"finish_reason":null}],"usage":null}` + "\n\n")
	}
	ev.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}` + "\n\ndata: [DONE]\n\n")
	var events [][]byte
	for _, e := range strings.SplitAfter(ev.String(), "\n\n") {
		events = append(events, []byte(e))
	}
	f := gateway.NewUsageChunkFilter()
	b.ReportAllocs()
	for b.Loop() {
		for _, e := range events {
			f.FilterInPlace(e)
		}
	}
}

func BenchmarkInjectIncludeUsage(b *testing.B) {
	body := []byte(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}`)
	b.ReportAllocs()
	for b.Loop() {
		gateway.InjectUsage(body)
	}
}

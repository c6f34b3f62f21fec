package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// usageBench is one response as a relay sees it: the scanner's choice
// inputs, the body in events, and one event that carries no usage.
type usageBench struct {
	name       string
	t          keybridge.ProviderType
	path, ct   string
	events     [][]byte
	plain      []byte // a content event, for the steady-state cost
	wantTokens tokens
}

func usageBenches(b *testing.B) []usageBench {
	chatChunk := func(i int) string {
		return fmt.Sprintf(`{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":"word%d "},"logprobs":null,"finish_reason":null}],"usage":null}`, i)
	}
	var chat [][]byte
	for i := range 19 {
		chat = append(chat, []byte(ev("", chatChunk(i))))
	}
	chat = append(chat, []byte(ev("", `{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":77,"total_tokens":1077,"prompt_tokens_details":{"cached_tokens":300,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}`)), []byte(ev("", "[DONE]")))

	anthDelta := func(i int) string {
		return ev("content_block_delta", fmt.Sprintf(`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"word%d "}}`, i))
	}
	anth := [][]byte{[]byte(ev("message_start", `{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":1}}}`)),
		[]byte(ev("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`)),
		[]byte(ev("ping", `{"type": "ping"}`))}
	for i := range 15 {
		anth = append(anth, []byte(anthDelta(i)))
	}
	anth = append(anth, []byte(ev("content_block_stop", `{"type":"content_block_stop","index":0}`)),
		[]byte(ev("message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":400}}`)),
		[]byte(ev("message_stop", `{"type":"message_stop"}`)))

	gemChunk := func(i int) string {
		return fmt.Sprintf(`data: {"candidates": [{"content": {"parts": [{"text": "word%d "}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 1000,"candidatesTokenCount": %d,"totalTokenCount": %d,"cachedContentTokenCount": 400,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 1000}]},"modelVersion": "gemini-2.5-flash","responseId": "mockresp20"}`+"\r\n\r\n", i, i+1, 1001+i)
	}
	var gem [][]byte
	for i := range 20 {
		gem = append(gem, []byte(gemChunk(i)))
	}

	bedDelta := func(i int) []byte {
		return esChunk(b, fmt.Sprintf(`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"word%d "}}`, i))
	}
	bed := [][]byte{esChunk(b, `{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":1}}}`)}
	for i := range 16 {
		bed = append(bed, bedDelta(i))
	}
	bed = append(bed, esChunk(b, `{"type":"content_block_stop","index":0}`),
		esChunk(b, `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":400}}`),
		esChunk(b, `{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":50,"outputTokenCount":400,"invocationLatency":120,"firstByteLatency":40,"cacheReadInputTokenCount":3000,"cacheWriteInputTokenCount":2000}}`))

	body := `{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk path.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}},"service_tier":"default"}`

	return []usageBench{
		{name: "openai-chat-sse", t: keybridge.ProviderOpenAI, path: "/chat/completions", ct: "text/event-stream; charset=utf-8", events: chat, plain: chat[3], wantTokens: tokens{Input: 700, Output: 77, CacheRead: 300}},
		{name: "anthropic-sse", t: keybridge.ProviderAnthropic, path: "/v1/messages", ct: "text/event-stream; charset=utf-8", events: anth, plain: anth[5], wantTokens: tokens{Input: 50, Output: 400, CacheRead: 3000, CacheWrite: 2000}},
		{name: "gemini-sse", t: keybridge.ProviderGoogle, path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent", ct: "text/event-stream", events: gem, plain: gem[5], wantTokens: tokens{Input: 600, Output: 20, CacheRead: 400}},
		{name: "bedrock-eventstream", t: keybridge.ProviderBedrock, path: "/model/anthropic.claude-sonnet-4-5/invoke-with-response-stream", ct: "application/vnd.amazon.eventstream", events: bed, plain: bed[4], wantTokens: tokens{Input: 50, Output: 400, CacheRead: 3000, CacheWrite: 2000}},
		{name: "openai-chat-json-400B", t: keybridge.ProviderOpenAI, path: "/chat/completions", ct: "application/json", events: [][]byte{[]byte(body)}, wantTokens: tokens{Input: 1117, Output: 46}},
	}
}

// BenchmarkUsageScan is one whole response per op: a new scanner, every
// event written as the relay would write it, and the tokens read.
func BenchmarkUsageScan(b *testing.B) {
	for _, c := range usageBenches(b) {
		b.Run(c.name, func(b *testing.B) {
			h := http.Header{}
			size := 0
			for _, e := range c.events {
				size += len(e)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				s := newUsageScanner(c.t, c.path, c.ct, h)
				for _, e := range c.events {
					s.Write(e)
				}
				if got, ok := s.Tokens(); !ok || got != c.wantTokens {
					b.Fatalf("Tokens() = %+v, %v; want %+v", got, ok, c.wantTokens)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(c.events)), "ns/event")
		})
	}
}

// BenchmarkUsageScanPlainEvent is the steady-state cost of an event that
// carries no usage, the kind a stream is made of: it must stay at tens of
// nanoseconds and no allocation.
func BenchmarkUsageScanPlainEvent(b *testing.B) {
	for _, c := range usageBenches(b) {
		if c.plain == nil {
			continue
		}
		b.Run(c.name, func(b *testing.B) {
			s := newUsageScanner(c.t, c.path, c.ct, http.Header{})
			s.Write(c.plain)
			b.SetBytes(int64(len(c.plain)))
			b.ReportAllocs()
			for b.Loop() {
				s.Write(c.plain)
			}
		})
	}
}

// BenchmarkWSUsageReader is a Responses stream over a WebSocket: 20 delta
// messages and a response.completed, per op.
func BenchmarkWSUsageReader(b *testing.B) {
	var stream []byte
	for i := range 20 {
		stream = append(stream, wsFrame(true, 1, fmt.Appendf(nil, `{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_67ccd3acc8d48190a77525dc6de64b4104becb25c0c7a2","output_index":0,"content_index":0,"delta":"word%d ","logprobs":[]}`, i+4, i), false)...)
	}
	stream = append(stream, wsFrame(true, 1, []byte(`{"type":"response.completed","response":{"id":"resp_1","object":"response","status":"completed","model":"gpt-5","output":[{"type":"message","content":[{"type":"output_text","text":"`+strings.Repeat("word ", 20)+`"}]}],"usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":200},"output_tokens":345,"output_tokens_details":{"reasoning_tokens":100},"total_tokens":1545}}}`), false)...)
	n := 0
	w := newWSUsageReader(func(tokens, string, int) { n++ })
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = w.Write(stream)
	}
	if n == 0 {
		b.Fatal("no response seen")
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*21), "ns/message")
}

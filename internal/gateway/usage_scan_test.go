package gateway

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
)

// scanCase is a response body and the tokens SPEC §7.7 reads from it. The
// numbers are chosen so that every wrong rule (summing cumulative counts,
// taking the first, forgetting to subtract the cached part, counting a
// nested or skipped object) gives a different answer.
type scanCase struct {
	name        string
	t           keybridge.ProviderType
	path        string
	contentType string
	header      http.Header
	body        string
	want        tokens
	wantNone    bool // no usage in the body at all
	failure     int  // the status of the failure the body reports
}

// checkSplits feeds the body whole, split in two at every position, and a
// byte at a time, and wants the same tokens each way.
func checkSplits(t *testing.T, c scanCase) {
	t.Helper()
	body := []byte(c.body)
	h := c.header
	if h == nil {
		h = http.Header{}
	}
	scan := func(parts ...[]byte) (tokens, bool, int) {
		s := newUsageScanner(c.t, c.path, c.contentType, h)
		if s == nil {
			t.Fatalf("newUsageScanner(%s, %q, %q) = nil, want a scanner", c.t, c.path, c.contentType)
		}
		for _, p := range parts {
			// A copy that is overwritten after Write proves the scanner
			// keeps no reference to p.
			q := bytes.Clone(p)
			s.Write(q)
			for i := range q {
				q[i] = 'X'
			}
		}
		tok, ok := s.Tokens()
		return tok, ok, s.Failure()
	}
	check := func(how string, got tokens, ok bool, failure int) {
		t.Helper()
		if failure != c.failure {
			t.Fatalf("%s: Failure() = %d, want %d", how, failure, c.failure)
		}
		if c.wantNone {
			if ok {
				t.Fatalf("%s: Tokens() = %+v, true; want nothing seen", how, got)
			}
			return
		}
		if !ok || got != c.want {
			t.Fatalf("%s: Tokens() = %+v, %v; want %+v, true", how, got, ok, c.want)
		}
	}
	got, ok, failure := scan(body)
	check("whole", got, ok, failure)
	for i := 0; i <= len(body); i++ {
		got, ok, failure := scan(body[:i], body[i:])
		check(fmt.Sprintf("split at %d", i), got, ok, failure)
	}
	parts := make([][]byte, len(body))
	for i := range body {
		parts[i] = body[i : i+1]
	}
	got, ok, failure = scan(parts...)
	check("byte by byte", got, ok, failure)
}

func sse(events ...string) string { return strings.Join(events, "") }

func ev(name, data string) string {
	if name == "" {
		return "data: " + data + "\n\n"
	}
	return "event: " + name + "\ndata: " + data + "\n\n"
}

func TestUsageOpenAIChat(t *testing.T) {
	const usage = `{"prompt_tokens":1000,"completion_tokens":77,"total_tokens":1077,"prompt_tokens_details":{"cached_tokens":300,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":20}}`
	want := tokens{Input: 700, Output: 77, CacheRead: 300}
	chunk := func(i int) string {
		return fmt.Sprintf(`{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"w%d \"usage\":{\"prompt_tokens\":5}"}}],"usage":null}`, i)
	}
	var events []string
	for i := range 5 {
		events = append(events, ev("", chunk(i)))
	}
	events = append(events, ev("", `{"id":"c","choices":[],"usage":`+usage+`}`), ev("", "[DONE]"))
	stream := sse(events...)
	for _, c := range []scanCase{
		{name: "json", body: `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"\"usage\": {\"prompt_tokens\": 9}","usage":{"prompt_tokens":9,"completion_tokens":9}}}],"usage":` + usage + `,"system_fingerprint":"fp"}`, want: want},
		{name: "json brackets and escapes in skipped containers", body: `{"choices":[{"message":{"content":"]}\\\\","refusal":"\\\"}]","x":[[{"usage":{"prompt_tokens":5}}],"[{"]}}],"logprobs":{"usage":[{}]},"usage":` + usage + `}`, want: want},
		{name: "json with spaces", body: "{\n  \"usage\" : {\n    \"prompt_tokens\" : 1000 , \"completion_tokens\": 77,\n \"prompt_tokens_details\": { \"cached_tokens\": 300 }\n  }\n}\n", want: want},
		{name: "sse", contentType: "text/event-stream; charset=utf-8", body: stream, want: want},
		{name: "sse crlf", contentType: "text/event-stream", body: strings.ReplaceAll(stream, "\n", "\r\n"), want: want},
		{name: "sse cr", contentType: "text/event-stream", body: strings.ReplaceAll(stream, "\n", "\r"), want: want},
		{name: "sse data split over lines", contentType: "text/event-stream", body: "data: {\"usage\":\ndata: {\"prompt_tokens\":1000,\"completion_tokens\":77,\ndata:\"prompt_tokens_details\":{\"cached_tokens\":300}}}\n\n", want: want},
		{name: "sse without usage", contentType: "text/event-stream", body: sse(ev("", chunk(0)), ev("", "[DONE]")), wantNone: true},
		{name: "sse named events", contentType: "text/event-stream", body: ": comment\nevent: chunk\nid: 1\ndata: {\"usage\":" + usage + "}\n\n", want: want},
		// An error chunk fails the stream: counted as far as it went,
		// recorded with the error's status.
		{name: "sse error chunk", contentType: "text/event-stream", body: sse(ev("", chunk(0)), ev("", `{"id":"c","choices":[],"usage":`+usage+`}`),
			ev("", `{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}`)), want: want, failure: 500},
		{name: "sse error chunk, rate limit", contentType: "text/event-stream", body: sse(ev("", chunk(0)),
			ev("", `{"error":{"message":"slow down","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`)), wantNone: true, failure: 429},
		// vLLM's error chunk: the class name as the type.
		{name: "sse error chunk, openai-compatible", contentType: "text/event-stream", body: sse(ev("", chunk(0)),
			ev("", `{"error":{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}}`)), wantNone: true, failure: 400},
		{name: "sse error inside a chunk is text", contentType: "text/event-stream", body: sse(ev("", `{"choices":[{"delta":{"content":"\"error\":{\"type\":\"x\"}"}}],"usage":null}`)), wantNone: true},
		{name: "json error", body: `{"error":{"message":"bad","type":"invalid_request_error","param":"messages","code":null}}`, wantNone: true, failure: 400},
		{name: "embeddings", path: "/v1/embeddings", body: `{"object":"list","data":[{"embedding":[0.1,-0.2,1e-3]}],"usage":{"prompt_tokens":42,"total_tokens":42}}`, want: tokens{Input: 42}},
		// A provider's nonsense counts no negative input, which would
		// credit the key's limits.
		{name: "more cached than the prompt", body: `{"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":30}}}`,
			want: tokens{Input: 0, Output: 5, CacheRead: 30}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.t = keybridge.ProviderOpenAI
			if c.path == "" {
				c.path = "/chat/completions"
			}
			if c.contentType == "" {
				c.contentType = "application/json"
			}
			checkSplits(t, c)
		})
	}
}

func TestUsageOpenAIResponses(t *testing.T) {
	const usage = `{"input_tokens":1200,"input_tokens_details":{"cached_tokens":200},"output_tokens":345,"output_tokens_details":{"reasoning_tokens":100},"total_tokens":1545}`
	want := tokens{Input: 1000, Output: 345, CacheRead: 200}
	created := `{"type":"response.created","sequence_number":0,"response":{"id":"r","status":"in_progress","output":[],"usage":null}}`
	// A tool schema with a property called "usage" inside an output item:
	// only the response's own usage counts.
	decoy := `{"type":"response.output_item.done","item":{"type":"mcp_list_tools","tools":[{"input_schema":{"usage":{"input_tokens":5}}}]},"response":{"usage":{"input_tokens":7,"output_tokens":7}}}`
	delta := `{"type":"response.output_text.delta","delta":"hi"}`
	done := func(typ string) string {
		return `{"type":"` + typ + `","sequence_number":9,"response":{"id":"r","status":"completed","model":"gpt-5","output":[{"type":"message","content":[{"type":"output_text","text":"the \"usage\":{} text"}]}],"usage":` + usage + `}}`
	}
	cases := []scanCase{
		{name: "json", contentType: "application/json", body: `{"id":"r","object":"response","output":[{"type":"mcp_list_tools","tools":[{"input_schema":{"usage":{"input_tokens":5}}}]}],"usage":` + usage + `,"user":null}`, want: want},
		{name: "sse unnamed", body: sse(ev("", created), ev("", decoy), ev("", delta), ev("", done("response.completed"))), want: want},
		{name: "sse unnamed, type last", body: sse(ev("", `{"response":{"usage":`+usage+`},"type":"response.completed"}`)), want: want},
		{name: "sse unnamed decoy only", body: sse(ev("", created), ev("", decoy)), wantNone: true},
	}
	for _, typ := range []string{"response.completed", "response.incomplete", "response.failed"} {
		failure := 0
		if typ == "response.failed" {
			failure = 500 // it names no error code
		}
		cases = append(cases, scanCase{name: "sse " + typ, body: sse(
			ev("response.created", created), ev("response.output_item.done", decoy),
			ev("response.output_text.delta", delta), ev(typ, done(typ)),
			// Only the done events count, even when another one carries a
			// response with usage.
			ev("response.output_item.done", decoy)), want: want, failure: failure})
	}
	failed := func(code string) string {
		return `{"type":"response.failed","sequence_number":9,"response":{"id":"r","status":"failed","model":"gpt-5","error":{"code":"` + code + `","message":"m"},"usage":` + usage + `}}`
	}
	cases = append(cases,
		scanCase{name: "sse failed, server error", body: sse(ev("response.created", created), ev("response.failed", failed("server_error"))), want: want, failure: 500},
		scanCase{name: "sse failed, rate limit", body: sse(ev("response.created", created), ev("response.failed", failed("rate_limit_exceeded"))), want: want, failure: 429},
		scanCase{name: "sse failed, bad image", body: sse(ev("response.created", created), ev("response.failed", failed("invalid_image_url"))), want: want, failure: 400},
		scanCase{name: "sse unnamed failed, no usage", body: sse(ev("", created),
			ev("", `{"type":"response.failed","response":{"error":{"code":"vector_store_timeout","message":"m"},"usage":null}}`)), wantNone: true, failure: 504},
		// An error event fails the stream, and what it holds that looks
		// like usage counts for nothing.
		scanCase{name: "sse error event", body: sse(ev("response.created", created), ev("response.output_text.delta", delta),
			ev("error", `{"type":"error","code":"rate_limit_exceeded","message":"m","param":null,"response":{"usage":{"input_tokens":7,"output_tokens":7}}}`)), wantNone: true, failure: 429},
		// Where the stream does not name its events, an error event is
		// known by its type.
		scanCase{name: "sse unnamed error event", body: sse(ev("", created), ev("", delta),
			ev("", `{"type":"error","code":"invalid_prompt","message":"m","param":null,"response":{"usage":{"input_tokens":7,"output_tokens":7}}}`)), wantNone: true, failure: 400},
		scanCase{name: "sse unnamed error event without a code", body: sse(ev("", done("response.completed")), ev("", `{"type":"error","message":"m"}`)), want: want, failure: 500},
		scanCase{name: "sse unnamed error with a status", body: sse(ev("", `{"type":"error","status":429,"error":{"type":"tokens","code":"rate_limit_exceeded"}}`)), wantNone: true, failure: 429},
		scanCase{name: "sse unnamed delta of an error's text", body: sse(ev("", `{"type":"response.output_text.delta","delta":"{\"type\":\"error\"}"}`), ev("", done("response.completed"))), want: want},
		scanCase{name: "sse error event after the end", body: sse(ev("response.completed", done("response.completed")), ev("error", decoy)), want: want, failure: 500},
		scanCase{name: "json failed", contentType: "application/json", body: `{"id":"r","object":"response","status":"failed","error":{"code":"server_error","message":"m"},"usage":` + usage + `}`, want: want, failure: 500},
		scanCase{name: "json done", contentType: "application/json", body: `{"id":"r","object":"response","status":"completed","error":null,"usage":` + usage + `}`, want: want},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, pt := range []keybridge.ProviderType{keybridge.ProviderOpenAI, keybridge.ProviderAzureOpenAI, keybridge.ProviderOpenAICompatible} {
				c.t = pt
				c.path = "/openai/v1/responses"
				if c.contentType == "" {
					c.contentType = "text/event-stream"
				}
				checkSplits(t, c)
			}
		})
	}
}

func TestUsageAnthropic(t *testing.T) {
	start := `{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":1}}}`
	block := `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\"usage\":{\"output_tokens\":9999}"}}`
	// Cumulative: the last counts, never the sum (1+200+400) nor the first;
	// the last delta also restates the input, and its value wins.
	delta1 := `{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":200}}`
	delta2 := `{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":55,"cache_read_input_tokens":3001,"output_tokens":400}}`
	tool := `{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","input":{"usage":{"input_tokens":1}}}}`
	named := sse(ev("message_start", start), ev("content_block_start", tool), ev("ping", `{"type":"ping"}`),
		ev("content_block_delta", block), ev("message_delta", delta1), ev("message_delta", delta2),
		ev("message_stop", `{"type":"message_stop"}`))
	want := tokens{Input: 55, Output: 400, CacheRead: 3001, CacheWrite: 2000}
	for _, c := range []scanCase{
		{name: "json", contentType: "application/json", body: `{"id":"m","type":"message","content":[{"type":"tool_use","input":{"usage":{"input_tokens":1,"output_tokens":1}}}],"usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":400,"service_tier":"standard"}}`,
			want: tokens{Input: 50, Output: 400, CacheRead: 3000, CacheWrite: 2000}},
		{name: "sse", contentType: "text/event-stream", body: named, want: want},
		{name: "sse crlf", contentType: "text/event-stream", body: strings.ReplaceAll(named, "\n", "\r\n"), want: want},
		{name: "sse data before event line", contentType: "text/event-stream", body: "data: " + start + "\nevent: message_start\n\ndata: " + delta1 + "\nevent: message_delta\n\n",
			want: tokens{Input: 50, Output: 200, CacheRead: 3000, CacheWrite: 2000}},
		{name: "sse cut after message_start", contentType: "text/event-stream", body: sse(ev("message_start", start), ev("content_block_delta", block)),
			want: tokens{Input: 50, Output: 1, CacheRead: 3000, CacheWrite: 2000}},
		{name: "sse error", contentType: "text/event-stream", body: ev("error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`), wantNone: true, failure: 529},
		// A stream that fails after its start is charged what it read,
		// and recorded with the error's status; the error's own fields
		// that look like usage count for nothing.
		{name: "sse error mid-stream", contentType: "text/event-stream", body: sse(ev("message_start", start), ev("content_block_delta", block), ev("message_delta", delta1),
			ev("error", `{"type":"error","error":{"type":"api_error","message":"Internal server error"},"usage":{"output_tokens":9999}}`)),
			want: tokens{Input: 50, Output: 200, CacheRead: 3000, CacheWrite: 2000}, failure: 500},
		{name: "sse error without a type", contentType: "text/event-stream", body: sse(ev("message_start", start), ev("error", `{"type":"error"}`)),
			want: tokens{Input: 50, Output: 1, CacheRead: 3000, CacheWrite: 2000}, failure: 500},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.t, c.path = keybridge.ProviderAnthropic, "/v1/messages"
			checkSplits(t, c)
		})
	}
}

func TestUsageGemini(t *testing.T) {
	chunk := func(text string, candidates, thoughts int, cached bool, last bool) string {
		u := fmt.Sprintf(`"promptTokenCount":1000,"candidatesTokenCount":%d,"totalTokenCount":2000,"promptTokensDetails":[{"modality":"TEXT","tokenCount":1000}]`, candidates)
		if cached {
			u += `,"cachedContentTokenCount":400`
		}
		if thoughts > 0 {
			u += fmt.Sprintf(`,"thoughtsTokenCount":%d`, thoughts)
		}
		finish := ""
		if last {
			finish = `,"finishReason":"STOP"`
		}
		return `{"candidates":[{"content":{"parts":[{"text":"` + text + `"}],"role":"model"},"index":0` + finish + `}],"usageMetadata":{` + u + `},"modelVersion":"gemini-2.5-flash"}`
	}
	chunks := []string{chunk("a", 10, 50, true, false), chunk(`\"usageMetadata\":{}`, 20, 50, true, false), chunk("c", 30, 64, true, true)}
	want := tokens{Input: 600, Output: 94, CacheRead: 400}
	var sseBody, array strings.Builder
	for i, c := range chunks {
		sseBody.WriteString("data: " + c + "\r\n\r\n")
		if i == 0 {
			array.WriteString("[" + c)
		} else {
			array.WriteString("\n,\r\n" + c)
		}
	}
	array.WriteString("\n]")
	for _, c := range []scanCase{
		{name: "json", path: "/v1beta/models/gemini-2.5-flash:generateContent", contentType: "application/json; charset=UTF-8", body: chunks[2], want: want},
		{name: "sse", path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent", contentType: "text/event-stream", body: sseBody.String(), want: want},
		{name: "array", path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent", contentType: "application/json; charset=UTF-8", body: array.String(), want: want},
		// The last usageMetadata counts whole: a cached count only an
		// earlier one had is gone.
		{name: "last counts whole", path: "/v1/models/m:streamGenerateContent", contentType: "text/event-stream",
			body: sse(ev("", chunks[0]), ev("", chunk("d", 31, 0, false, true))), want: tokens{Input: 1000, Output: 31}},
		{name: "array, last counts whole", path: "/v1/models/m:streamGenerateContent", contentType: "application/json",
			body: "[" + chunks[0] + ",\n" + chunk("d", 31, 0, false, true) + "]", want: tokens{Input: 1000, Output: 31}},
		// A stream the provider fails is counted as far as it went.
		{name: "sse error", path: "/v1beta/models/m:streamGenerateContent", contentType: "text/event-stream",
			body: sse(ev("", chunks[0]), ev("", chunks[1]), ev("", `{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}`)),
			want: tokens{Input: 600, Output: 70, CacheRead: 400}, failure: 503},
		{name: "array error", path: "/v1beta/models/m:streamGenerateContent", contentType: "application/json",
			body: "[" + chunks[0] + ",\n" + `{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}` + "]",
			want: tokens{Input: 600, Output: 60, CacheRead: 400}, failure: 429},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.t = keybridge.ProviderGoogle
			checkSplits(t, c)
		})
	}
}

func TestUsageBedrockBodies(t *testing.T) {
	headers := func(in, out, read, write string) http.Header {
		h := http.Header{}
		h.Set("X-Amzn-Bedrock-Input-Token-Count", in)
		h.Set("X-Amzn-Bedrock-Output-Token-Count", out)
		if read != "" {
			h.Set("X-Amzn-Bedrock-Cache-Read-Input-Token-Count", read)
			h.Set("X-Amzn-Bedrock-Cache-Write-Input-Token-Count", write)
		}
		return h
	}
	for _, c := range []scanCase{
		{name: "invoke anthropic", path: "/model/anthropic.claude-sonnet-4-5/invoke", header: headers("1", "2", "3", "4"),
			body: `{"id":"m","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":400}}`,
			want: tokens{Input: 50, Output: 400, CacheRead: 3000, CacheWrite: 2000}},
		{name: "invoke nova", path: "/model/amazon.nova-pro-v1:0/invoke",
			body: `{"output":{"message":{"content":[{"text":"hi"}]}},"usage":{"inputTokens":60,"outputTokens":70,"totalTokens":210,"cacheReadInputTokenCount":80,"cacheWriteInputTokenCount":0}}`,
			want: tokens{Input: 60, Output: 70, CacheRead: 80}},
		{name: "invoke, headers only", path: "/model/meta.llama3-70b/invoke", header: headers("11", "22", "33", "44"),
			body: `{"generation":"hi","prompt_token_count":5,"generation_token_count":6}`,
			want: tokens{Input: 11, Output: 22, CacheRead: 33, CacheWrite: 44}},
		{name: "converse", path: "/model/arn:aws:bedrock:us-east-1:1:inference-profile%2Fus.anthropic.claude/converse",
			body: `{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":90,"outputTokens":91,"totalTokens":500,"cacheReadInputTokens":92,"cacheWriteInputTokens":93},"metrics":{"latencyMs":120}}`,
			want: tokens{Input: 90, Output: 91, CacheRead: 92, CacheWrite: 93}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.t, c.contentType = keybridge.ProviderBedrock, "application/json"
			checkSplits(t, c)
		})
	}
}

// esMessage is one event-stream message, framed by the AWS SDK's encoder.
func esMessage(t testing.TB, msgType, typ string, payload []byte) []byte {
	t.Helper()
	var m eventstream.Message
	m.Headers.Set(":message-type", eventstream.StringValue(msgType))
	if msgType == "exception" {
		m.Headers.Set(":exception-type", eventstream.StringValue(typ))
	} else {
		m.Headers.Set(":event-type", eventstream.StringValue(typ))
	}
	m.Headers.Set(":content-type", eventstream.StringValue("application/json"))
	m.Headers.Set("x-test-int", eventstream.Int32Value(7))
	m.Headers.Set("x-test-bytes", eventstream.BytesValue([]byte("chunk")))
	m.Payload = payload
	var b bytes.Buffer
	if err := eventstream.NewEncoder().Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// esChunk is an invoke-with-response-stream chunk holding the model's
// event, with the padding field Bedrock adds.
func esChunk(t testing.TB, event string) []byte {
	p, err := json.Marshal(map[string]any{"bytes": []byte(event), "p": "abcdefghijklmnopqrstuvwxyzABCDEF"})
	if err != nil {
		t.Fatal(err)
	}
	return esMessage(t, "event", "chunk", p)
}

func TestUsageBedrockEventStream(t *testing.T) {
	start := `{"type":"message_start","message":{"id":"m","usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":1}}}`
	text := `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}`
	// The invocation metrics of the last chunk count over what the
	// model's own events said.
	stop := `{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":51,"outputTokenCount":401,"invocationLatency":120,"firstByteLatency":40,"cacheReadInputTokenCount":3002,"cacheWriteInputTokenCount":2003}}`
	var invoke, cut []byte
	for i, e := range []string{start, text, text, `{"type":"message_delta","usage":{"output_tokens":200}}`, `{"type":"message_delta","usage":{"output_tokens":400}}`, stop} {
		m := esChunk(t, e)
		invoke = append(invoke, m...)
		if i < 5 {
			cut = append(cut, m...)
		}
	}
	nova := slicesConcat(
		esChunk(t, `{"messageStart":{"role":"assistant"}}`),
		esChunk(t, `{"contentBlockDelta":{"delta":{"text":"hi"},"contentBlockIndex":0}}`),
		esChunk(t, `{"metadata":{"usage":{"inputTokens":60,"outputTokens":70,"cacheReadInputTokenCount":80,"cacheWriteInputTokenCount":5}},"amazon-bedrock-invocationMetrics":{"inputTokenCount":60,"outputTokenCount":70,"cacheReadInputTokenCount":80,"cacheWriteInputTokenCount":5}}`),
	)
	converse := slicesConcat(
		esMessage(t, "event", "messageStart", []byte(`{"role":"assistant","p":"abc"}`)),
		esMessage(t, "event", "contentBlockDelta", []byte(`{"contentBlockIndex":0,"delta":{"text":"\"usage\":{\"inputTokens\":1}"},"p":"abcdefgh"}`)),
		esMessage(t, "event", "messageStop", []byte(`{"stopReason":"end_turn"}`)),
		esMessage(t, "event", "metadata", []byte(`{"usage":{"inputTokens":90,"outputTokens":91,"totalTokens":500,"cacheReadInputTokens":92,"cacheWriteInputTokens":93},"metrics":{"latencyMs":120},"p":"ab"}`)),
	)
	failed := slicesConcat(esChunk(t, start), esMessage(t, "exception", "modelStreamErrorException", []byte(`{"message":"the \"usage\":{\"inputTokens\":1} broke"}`)))
	for _, c := range []scanCase{
		{name: "invoke anthropic", path: "/model/anthropic.claude/invoke-with-response-stream", body: string(invoke), want: tokens{Input: 51, Output: 401, CacheRead: 3002, CacheWrite: 2003}},
		{name: "invoke anthropic cut", path: "/model/anthropic.claude/invoke-with-response-stream", body: string(cut), want: tokens{Input: 50, Output: 400, CacheRead: 3000, CacheWrite: 2000}},
		{name: "invoke nova", path: "/model/amazon.nova-pro-v1:0/invoke-with-response-stream", body: string(nova), want: tokens{Input: 60, Output: 70, CacheRead: 80, CacheWrite: 5}},
		{name: "converse", path: "/model/amazon.nova-pro-v1:0/converse-stream", body: string(converse), want: tokens{Input: 90, Output: 91, CacheRead: 92, CacheWrite: 93}},
		{name: "exception", path: "/model/anthropic.claude/invoke-with-response-stream", body: string(failed), want: tokens{Input: 50, Output: 1, CacheRead: 3000, CacheWrite: 2000}, failure: 424},
		{name: "throttled", path: "/model/amazon.nova-pro-v1:0/converse-stream", body: string(slicesConcat(esMessage(t, "event", "messageStart", []byte(`{"role":"assistant"}`)),
			esMessage(t, "exception", "throttlingException", []byte(`{"message":"Too many tokens"}`)))), wantNone: true, failure: 429},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.t, c.contentType = keybridge.ProviderBedrock, "application/vnd.amazon.eventstream"
			checkSplits(t, c)
		})
	}
}

func slicesConcat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestUsageBedrockEventStreamGarbage(t *testing.T) {
	s := newUsageScanner(keybridge.ProviderBedrock, "/model/m/converse-stream", "application/vnd.amazon.eventstream", http.Header{})
	s.Write([]byte{0, 0, 0, 3, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6})
	s.Write(esMessage(t, "event", "metadata", []byte(`{"usage":{"inputTokens":90}}`)))
	if got, ok := s.Tokens(); ok {
		t.Errorf("after a broken prelude Tokens() = %+v, true; want nothing", got)
	}
}

func TestNewUsageScanner(t *testing.T) {
	gz := http.Header{"Content-Encoding": {"gzip"}}
	for _, c := range []struct {
		t           keybridge.ProviderType
		path, ct    string
		h           http.Header
		want        bool
		description string
	}{
		{keybridge.ProviderOpenAI, "/chat/completions", "application/json", nil, true, "chat"},
		{keybridge.ProviderOpenAI, "/models", "application/json", nil, false, "model list"},
		{keybridge.ProviderOpenAI, "/responses/resp_1", "application/json", nil, false, "a stored response"},
		{keybridge.ProviderOpenAI, "/chat/completions", "application/json", gz, false, "compressed"},
		{keybridge.ProviderOpenAI, "/audio/speech", "audio/mpeg", nil, false, "audio"},
		{keybridge.ProviderOpenAI, "/chat/completions", "audio/mpeg", nil, false, "not JSON"},
		{keybridge.ProviderAzureOpenAI, "/openai/deployments/d/chat/completions?api-version=1", "application/json", nil, true, "azure chat"},
		{keybridge.ProviderAnthropic, "/v1/messages/count_tokens", "application/json", nil, false, "count tokens"},
		{keybridge.ProviderAnthropic, "/v1/messages", "text/event-stream", nil, true, "messages"},
		{keybridge.ProviderGoogle, "/v1beta/models/m:countTokens", "application/json", nil, false, "gemini count"},
		{keybridge.ProviderGoogle, "/v1beta/models", "application/json", nil, false, "gemini models"},
		{keybridge.ProviderBedrock, "/model/m/invoke", "application/octet-stream", nil, false, "no JSON, no headers"},
		{keybridge.ProviderBedrock, "/model/m/invoke", "application/octet-stream", http.Header{"X-Amzn-Bedrock-Input-Token-Count": {"3"}}, true, "headers only"},
		{keybridge.ProviderBedrock, "/foundation-models", "application/json", nil, false, "bedrock list"},
	} {
		h := c.h
		if h == nil {
			h = http.Header{}
		}
		if got := newUsageScanner(c.t, c.path, c.ct, h) != nil; got != c.want {
			t.Errorf("%s: newUsageScanner(%s, %q, %q) != nil is %v, want %v", c.description, c.t, c.path, c.ct, got, c.want)
		}
	}
}

func TestUsageEventTooLarge(t *testing.T) {
	s := newUsageScanner(keybridge.ProviderOpenAI, "/chat/completions", "text/event-stream", http.Header{})
	big := `data: {"usage":{"prompt_tokens":5,"completion_tokens":5},"pad":"` + strings.Repeat("x", maxUsageEvent) + "\"}\n\n"
	s.Write([]byte(big))
	if got, ok := s.Tokens(); ok {
		t.Fatalf("after an event over the limit Tokens() = %+v, true; want it skipped", got)
	}
	s.Write([]byte(`data: {"usage":{"prompt_tokens":7,"completion_tokens":8}}` + "\n\n"))
	if got, ok := s.Tokens(); !ok || got != (tokens{Input: 7, Output: 8}) {
		t.Fatalf("after the next event Tokens() = %+v, %v; want {Input:7 Output:8}", got, ok)
	}
}

// wsFrame is one server WebSocket frame; mask makes it a client's.
func wsFrame(fin bool, op byte, payload []byte, mask bool) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var f []byte
	var mbit byte
	if mask {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		f = []byte{b0, mbit | byte(n)}
	case n <= 0xffff:
		f = []byte{b0, mbit | 126, 0, 0}
		binary.BigEndian.PutUint16(f[2:], uint16(n))
	default:
		f = []byte{b0, mbit | 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(f[2:], uint64(n))
	}
	p := bytes.Clone(payload)
	if mask {
		key := []byte{0x12, 0x34, 0x56, 0x78}
		f = append(f, key...)
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	return append(f, p...)
}

type wsSeen struct {
	t      tokens
	model  string
	status int
}

func TestWSUsageReader(t *testing.T) {
	completed := func(model string, in, cached, out int) []byte {
		return fmt.Appendf(nil, `{"type":"response.completed","response":{"id":"r","model":%q,"output":[{"type":"message","content":[{"type":"output_text","text":"\"usage\":{}"}]}],"usage":{"input_tokens":%d,"input_tokens_details":{"cached_tokens":%d},"output_tokens":%d}}}`, model, in, cached, out)
	}
	first := completed("gpt-5", 1200, 200, 345)
	second := []byte(`{"response":{"model":"gpt-5-mini","usage":{"input_tokens":10,"output_tokens":3}},"type":"response.incomplete"}`)
	big := completed("gpt-5"+strings.Repeat("x", 70000), 1, 0, 1)
	want := []wsSeen{
		{tokens{Input: 1000, Output: 345, CacheRead: 200}, "gpt-5", 200},
		{tokens{Input: 10, Output: 3}, "gpt-5-mini", 200},
		// A failed response is a row, with the error's status, even
		// without usage.
		{tokens{}, "gpt-5", 500},
		// Error events end the request in flight: a row each, with the
		// status they name, else their code's, and no tokens.
		{tokens{}, "", 429},
		{tokens{}, "", 400},
		{tokens{}, "", 503},
		{tokens{Input: 5, Output: 6}, "gpt-5", 429},
		{tokens{Input: 1, Output: 1}, ("gpt-5" + strings.Repeat("x", 70000))[:128], 200},
		{tokens{Input: 1000, Output: 345, CacheRead: 200}, "gpt-5", 200},
	}
	for _, mask := range []bool{false, true} {
		var stream []byte
		add := func(f []byte) { stream = append(stream, f...) }
		add(wsFrame(true, 1, []byte(`{"type":"response.created","response":{"usage":null}}`), mask))
		add(wsFrame(true, 1, []byte(`{"type":"response.output_item.done","response":{"usage":{"input_tokens":7}}}`), mask))
		add(wsFrame(true, 2, first, mask)) // binary: not read
		// A fragmented text message with a ping and a pong between its
		// fragments.
		add(wsFrame(false, 1, first[:40], mask))
		add(wsFrame(true, 9, []byte("ping"), mask))
		add(wsFrame(false, 0, first[40:100], mask))
		add(wsFrame(true, 10, nil, mask))
		add(wsFrame(true, 0, first[100:], mask))
		add(wsFrame(true, 1, second, mask))
		add(wsFrame(true, 1, []byte(`{"type":"response.failed","response":{"model":"gpt-5","error":{"code":"server_error","message":"m"},"usage":null}}`), mask))
		add(wsFrame(true, 1, []byte(`{"type":"error","code":"rate_limit_exceeded","message":"m","response":{"usage":{"input_tokens":7}}}`), mask))
		add(wsFrame(true, 1, []byte(`{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"m"},"headers":{"x-request-id":"req_1"}}`), mask))
		// Its members in another order.
		add(wsFrame(true, 1, []byte(`{"error":{"code":"server_is_overloaded","message":"m","type":"server_error"},"status":503,"type":"error"}`), mask))
		// An error's text in a delta is no error event.
		add(wsFrame(true, 1, []byte(`{"type":"response.output_text.delta","delta":"{\"type\":\"error\",\"status\":400}"}`), mask))
		add(wsFrame(true, 1, []byte(`{"type":"response.failed","response":{"model":"gpt-5","error":{"code":"rate_limit_exceeded","message":"m"},"usage":{"input_tokens":5,"output_tokens":6}}}`), mask))
		add(wsFrame(true, 1, big, mask))
		add(wsFrame(false, 1, first[:10], mask))
		add(wsFrame(false, 0, nil, mask))
		add(wsFrame(true, 0, first[10:], mask))
		add(wsFrame(true, 8, []byte{0x03, 0xe8}, mask))

		run := func(parts ...[]byte) []wsSeen {
			var seen []wsSeen
			w := newWSUsageReader(func(t tokens, model string, status int) { seen = append(seen, wsSeen{t, model, status}) })
			for _, p := range parts {
				q := bytes.Clone(p)
				if n, err := w.Write(q); n != len(q) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(q))
				}
				clear(q)
			}
			return seen
		}
		check := func(how string, got []wsSeen) {
			t.Helper()
			if len(got) != len(want) {
				t.Fatalf("mask %v, %s: %d responses, want %d: %+v", mask, how, len(got), len(want), got)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("mask %v, %s: response %d = %+v, want %+v", mask, how, i, got[i], want[i])
				}
			}
		}
		check("whole", run(stream))
		for i := 0; i <= len(stream); i += 1 + i/2000*50 {
			check(fmt.Sprintf("split at %d", i), run(stream[:i], stream[i:]))
		}
		var bytewise [][]byte
		for i := range stream {
			bytewise = append(bytewise, stream[i:i+1])
		}
		check("byte by byte", run(bytewise...))
	}
}

// A response whose end is longer than a message the reader holds (its
// whole output is in it) is walked as it comes, and counted; the next
// message is read as ever.
func TestWSUsageReaderLongMessage(t *testing.T) {
	huge := fmt.Appendf(nil, `{"type":"response.completed","response":{"model":"gpt-5","output":[{"type":"message","content":[{"type":"output_text","text":"%s"}]}],"usage":{"input_tokens":4,"output_tokens":300000}}}`,
		strings.Repeat(`x\"`, maxUsageEvent/2))
	next := []byte(`{"type":"response.completed","response":{"model":"m","usage":{"input_tokens":1,"output_tokens":2}}}`)
	want := []wsSeen{{tokens{Input: 4, Output: 300000}, "gpt-5", 200}, {tokens{Input: 1, Output: 2}, "m", 200}}
	for _, mask := range []bool{false, true} {
		var stream []byte
		stream = append(stream, wsFrame(false, 1, huge[:maxUsageEvent-10], mask)...)
		stream = append(stream, wsFrame(true, 0, huge[maxUsageEvent-10:], mask)...)
		stream = append(stream, wsFrame(true, 1, huge, mask)...)
		stream = append(stream, wsFrame(true, 1, next, mask)...)
		for _, size := range []int{len(stream), 4096, 1000003} {
			var seen []wsSeen
			w := newWSUsageReader(func(t tokens, model string, status int) { seen = append(seen, wsSeen{t, model, status}) })
			for p := stream; len(p) > 0; {
				n := min(size, len(p))
				w.Write(bytes.Clone(p[:n]))
				p = p[n:]
			}
			if len(seen) != 3 || seen[0] != want[0] || seen[1] != want[0] || seen[2] != want[1] {
				t.Errorf("mask %v, writes of %d: saw %+v, want %+v twice, then %+v", mask, size, seen, want[0], want[1])
			}
		}
	}
}

// The event stream decodes base64 in the payload: a chunk without it, or
// with bytes that are not base64, is skipped.
func TestUsageBedrockBadChunk(t *testing.T) {
	s := newUsageScanner(keybridge.ProviderBedrock, "/model/m/invoke-with-response-stream", "application/vnd.amazon.eventstream", http.Header{})
	s.Write(esMessage(t, "event", "chunk", []byte(`{"bytes":"!!!not base64"}`)))
	s.Write(esMessage(t, "event", "chunk", []byte(`{"nobytes":1}`)))
	if got, ok := s.Tokens(); ok {
		t.Fatalf("Tokens() = %+v, true; want nothing", got)
	}
	s.Write(esMessage(t, "event", "chunk", []byte(`{"bytes":"`+base64.StdEncoding.EncodeToString([]byte(`{"type":"message_delta","usage":{"output_tokens":4}}`))+`"}`)))
	if got, ok := s.Tokens(); !ok || got != (tokens{Output: 4}) {
		t.Fatalf("Tokens() = %+v, %v; want {Output:4}", got, ok)
	}
}

// The scanners read what the provider mocks send, byte for byte as they
// send it, to the numbers each mock was told to report.
func TestUsageFromMocks(t *testing.T) {
	u := providertest.Usage{Input: 1234, Output: 567, CacheRead: 89, CacheWrite: 45, Reasoning: 23}
	// OpenAI and Gemini have no cache writes.
	noWrite := tokens{Input: u.Input, Output: u.Output, CacheRead: u.CacheRead}
	all := tokens{Input: u.Input, Output: u.Output, CacheRead: u.CacheRead, CacheWrite: u.CacheWrite}

	oa := providertest.NewOpenAI(t)
	oa.AddKey("sk-mock")
	an := providertest.NewAnthropic(t)
	an.AddKey("sk-ant-mock")
	ge := providertest.NewGemini(t)
	ge.AddKey("AIza-mock")
	br := providertest.NewBedrock(t, "us-east-1", "AKIDMOCK", "secretmock")
	br.AddKey("bedrock-mock")
	for _, s := range []*providertest.Server{oa, an, ge, br} {
		s.Usage, s.Events = u, 7
	}
	oaHead := http.Header{"Authorization": {"Bearer sk-mock"}}
	anHead := http.Header{"X-Api-Key": {"sk-ant-mock"}, "Anthropic-Version": {"2023-06-01"}}
	geHead := http.Header{"X-Goog-Api-Key": {"AIza-mock"}}
	brHead := http.Header{"Authorization": {"Bearer bedrock-mock"}}
	const claude = `{"anthropic_version":"bedrock-2023-05-31","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	const nova = `{"messages":[{"role":"user","content":[{"text":"hi"}]}]}`
	for _, c := range []struct {
		name string
		t    keybridge.ProviderType
		s    *providertest.Server
		path string
		head http.Header
		body string
		want tokens
	}{
		{"openai chat", keybridge.ProviderOpenAI, oa, "/v1/chat/completions", oaHead, `{"model":"gpt-4o","messages":[]}`, noWrite},
		{"openai chat stream", keybridge.ProviderOpenAI, oa, "/v1/chat/completions", oaHead, `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`, noWrite},
		{"openai responses", keybridge.ProviderOpenAI, oa, "/v1/responses", oaHead, `{"model":"gpt-5","input":"hi"}`, noWrite},
		{"openai responses stream", keybridge.ProviderOpenAI, oa, "/v1/responses", oaHead, `{"model":"gpt-5","input":"hi","stream":true}`, noWrite},
		{"azure chat stream", keybridge.ProviderAzureOpenAI, oa, "/openai/deployments/d/chat/completions?api-version=2024-10-21", http.Header{"Api-Key": {"sk-mock"}}, `{"stream":true,"stream_options":{"include_usage":true}}`, noWrite},
		{"anthropic", keybridge.ProviderAnthropic, an, "/v1/messages", anHead, `{"model":"claude","max_tokens":100,"messages":[]}`, all},
		{"anthropic stream", keybridge.ProviderAnthropic, an, "/v1/messages", anHead, `{"model":"claude","max_tokens":100,"messages":[],"stream":true}`, all},
		{"gemini", keybridge.ProviderGoogle, ge, "/v1beta/models/gemini-2.5-flash:generateContent", geHead, `{"contents":[{"parts":[{"text":"hi"}]}]}`, noWrite},
		{"gemini sse", keybridge.ProviderGoogle, ge, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", geHead, `{"contents":[{"parts":[{"text":"hi"}]}]}`, noWrite},
		{"gemini array", keybridge.ProviderGoogle, ge, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", geHead, `{"contents":[{"parts":[{"text":"hi"}]}]}`, noWrite},
		{"bedrock invoke claude", keybridge.ProviderBedrock, br, "/model/anthropic.claude-sonnet-4-5/invoke", brHead, claude, all},
		{"bedrock invoke nova", keybridge.ProviderBedrock, br, "/model/amazon.nova-pro-v1:0/invoke", brHead, nova, all},
		{"bedrock invoke stream claude", keybridge.ProviderBedrock, br, "/model/anthropic.claude-sonnet-4-5/invoke-with-response-stream", brHead, claude, all},
		{"bedrock invoke stream nova", keybridge.ProviderBedrock, br, "/model/amazon.nova-pro-v1:0/invoke-with-response-stream", brHead, nova, all},
		{"bedrock converse", keybridge.ProviderBedrock, br, "/model/amazon.nova-pro-v1:0/converse", brHead, nova, all},
		{"bedrock converse stream", keybridge.ProviderBedrock, br, "/model/us.anthropic.claude-sonnet-4-5/converse-stream", brHead, nova, all},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, c.s.URL+c.path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header = c.head.Clone()
			req.Header.Set("Content-Type", "application/json")
			// No Accept-Encoding of the transport's own: the body is read
			// exactly as the provider sent it.
			req.Header.Set("Accept-Encoding", "identity")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%s %s: %d %v %s", req.Method, c.path, resp.StatusCode, err, body)
			}
			path, _, _ := strings.Cut(c.path, "?")
			s := newUsageScanner(c.t, path, resp.Header.Get("Content-Type"), resp.Header)
			if s == nil {
				t.Fatalf("no scanner for %s %q", resp.Header.Get("Content-Type"), c.path)
			}
			// In pieces of odd sizes, as a relay may see them.
			for len(body) > 0 {
				n := min(len(body), 97)
				s.Write(body[:n])
				body = body[n:]
			}
			if got, ok := s.Tokens(); !ok || got != c.want {
				t.Errorf("Tokens() = %+v, %v; want %+v, true", got, ok, c.want)
			}
		})
	}

	t.Run("openai responses websocket", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(oa.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A deadline so that a broken reader fails the test instead of
		// hanging it; it does not time anything.
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(conn, "GET /v1/responses HTTP/1.1\r\nHost: mock\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer sk-mock\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v, %v", resp, err)
		}
		var seen []wsSeen
		w := newWSUsageReader(func(t tokens, model string, status int) { seen = append(seen, wsSeen{t, model, status}) })
		for _, model := range []string{"gpt-5", "gpt-5-mini"} {
			if _, err := conn.Write(wsFrame(true, 1, []byte(`{"type":"response.create","model":"`+model+`","input":"hi"}`), true)); err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 333)
		for len(seen) < 2 {
			n, err := br.Read(buf)
			if err != nil {
				t.Fatalf("after %d responses: %v", len(seen), err)
			}
			_, _ = w.Write(buf[:n])
		}
		want := []wsSeen{{noWrite, "gpt-5", 200}, {noWrite, "gpt-5-mini", 200}}
		if seen[0] != want[0] || seen[1] != want[1] {
			t.Errorf("responses = %+v, want %+v", seen, want)
		}
	})
}

// Counts a provider reports past int64 when summed stay at its largest:
// a sum that wrapped would credit the key's limits.
func TestTokenSumsSaturate(t *testing.T) {
	v := [nSlots]int64{slotOut: math.MaxInt64, slotThoughts: 5}
	if got := openaiTokens(&v).Output; got != math.MaxInt64 {
		t.Errorf("output = %d, want %d", got, int64(math.MaxInt64))
	}
	if got := (tokens{Input: math.MaxInt64, Output: 1, CacheRead: 1, CacheWrite: math.MaxInt64}).total(); got != math.MaxInt64 {
		t.Errorf("total = %d, want %d", got, int64(math.MaxInt64))
	}
}

// A response that ends is a row even when its server reports no usage
// ("usage": null, or none); and a response is under way from the
// provider's first text message until its end or an error event, which
// control frames neither begin nor end.
func TestWSUsageReaderUnderway(t *testing.T) {
	var seen []wsSeen
	w := newWSUsageReader(func(t tokens, model string, status int) { seen = append(seen, wsSeen{t, model, status}) })
	step := func(frame []byte, underway bool) {
		t.Helper()
		w.Write(frame)
		if w.Underway() != underway {
			t.Errorf("after %q: Underway() = %v, want %v", frame, w.Underway(), underway)
		}
	}
	step(wsFrame(true, 9, []byte("ping"), false), false)
	step(wsFrame(true, 1, []byte(`{"type":"response.created","response":{"model":"m1","usage":null}}`), false), true)
	step(wsFrame(true, 1, []byte(`{"type":"response.completed","response":{"model":"m1","usage":null}}`), false), false)
	step(wsFrame(true, 1, []byte(`{"type":"response.output_text.delta","delta":"\"response.completed\""}`), false), true)
	step(wsFrame(true, 1, []byte(`{"type":"response.incomplete","response":{"model":"m2"}}`), false), false)
	step(wsFrame(true, 10, nil, false), false)
	step(wsFrame(true, 1, []byte(`{"type":"response.in_progress"}`), false), true)
	step(wsFrame(true, 1, []byte(`{"type":"error","status":429,"error":{"code":"rate_limit_exceeded"}}`), false), false)
	want := []wsSeen{{tokens{}, "m1", 200}, {tokens{}, "m2", 200}, {tokens{}, "", 429}}
	if !slices.Equal(seen, want) {
		t.Errorf("responses = %+v, want %+v", seen, want)
	}
}

// A close frame of a normal closure (1000, or no code) is the provider's
// answer to a client's close; any other code, or none at all, is not.
func TestWSUsageReaderClosedNormally(t *testing.T) {
	for _, c := range []struct {
		name   string
		frames [][]byte
		want   bool
	}{
		{"no close frame", nil, false},
		{"1000", [][]byte{wsFrame(true, 8, []byte{0x03, 0xe8, 'o', 'k'}, false)}, true},
		{"1000 masked", [][]byte{wsFrame(true, 8, []byte{0x03, 0xe8}, true)}, true},
		{"no code", [][]byte{wsFrame(true, 8, nil, false)}, true},
		{"1011", [][]byte{wsFrame(true, 8, []byte{0x03, 0xf3}, false)}, false},
		{"a ping only", [][]byte{wsFrame(true, 9, []byte{0x03, 0xe8}, false)}, false},
	} {
		w := newWSUsageReader(func(tokens, string, int) {})
		for _, f := range c.frames {
			// A byte at a time: the code may come split.
			for i := range f {
				w.Write(f[i : i+1])
			}
		}
		if got := w.ClosedNormally(); got != c.want {
			t.Errorf("%s: ClosedNormally() = %v, want %v", c.name, got, c.want)
		}
	}
}

package gateway

import (
	"bytes"
	"net/http"
	"slices"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// The usage scanners read bytes an upstream chose, split wherever the
// network split them. The fuzz targets below feed arbitrary bodies to every
// scanner the gateway builds and want: no panic, and the same answer
// whether the body comes whole or cut in three at arbitrary places (with
// each chunk overwritten after Write, which also proves the scanner keeps
// no reference to it). Run them with scripts/fuzz.sh (docs/testing.md).

// fuzzScanners are the (provider, path, Content-Type) triples that pick
// each scanner newUsageScanner has.
var fuzzScanners = []struct {
	t           keybridge.ProviderType
	path, ctype string
}{
	{keybridge.ProviderOpenAI, "/v1/chat/completions", "application/json"},
	{keybridge.ProviderOpenAI, "/v1/chat/completions", "text/event-stream"},
	{keybridge.ProviderOpenAI, "/v1/responses", "text/event-stream"},
	{keybridge.ProviderOpenAI, "/v1/responses", "application/json"},
	{keybridge.ProviderAnthropic, "/v1/messages", "text/event-stream"},
	{keybridge.ProviderAnthropic, "/v1/messages", "application/json"},
	{keybridge.ProviderGoogle, "/v1beta/models/gemini-2.0-flash:streamGenerateContent", "text/event-stream"},
	{keybridge.ProviderGoogle, "/v1beta/models/gemini-2.0-flash:generateContent", "application/json"},
	{keybridge.ProviderBedrock, "/model/m/invoke-with-response-stream", "application/vnd.amazon.eventstream"},
	{keybridge.ProviderBedrock, "/model/m/converse", "application/json"},
}

// cuts splits b in three at positions derived from a and c.
func cuts(b []byte, a, c uint16) [][]byte {
	if len(b) == 0 {
		return [][]byte{b}
	}
	i, j := int(a)%(len(b)+1), int(c)%(len(b)+1)
	if i > j {
		i, j = j, i
	}
	return [][]byte{b[:i], b[i:j], b[j:]}
}

// scanned is what a scanner read of a body: its tokens and its failure.
type scanned struct {
	t       tokens
	ok      bool
	failure int
}

func scanUsageParts(which int, parts [][]byte) scanned {
	c := fuzzScanners[which]
	s := newUsageScanner(c.t, c.path, c.ctype, http.Header{})
	for _, p := range parts {
		q := bytes.Clone(p)
		s.Write(q)
		clear(q)
	}
	t, ok := s.Tokens()
	return scanned{t, ok, s.Failure()}
}

// FuzzUsageScan drives the SSE, JSON and AWS event-stream usage scanners.
func FuzzUsageScan(f *testing.F) {
	for i, body := range []string{
		`{"usage":{"prompt_tokens":1000,"completion_tokens":77,"prompt_tokens_details":{"cached_tokens":300}}}`,
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
		"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":3}}}\n\n",
		`{"usage":{"input_tokens":5,"output_tokens":3}}`,
		"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":4}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n",
		`{"usage":{"input_tokens":10,"output_tokens":7,"cache_creation_input_tokens":2}}`,
		"data: {\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":3,\"thoughtsTokenCount\":1}}\r\n\r\n",
		`{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3}}`,
		"\x00\x00\x00\x55\x00\x00\x00\x3b\x00\x00\x00\x00",
		`{"usage":{"inputTokens":4,"outputTokens":2,"cacheReadInputTokens":1}}`,
		"data: {\"error\":{\"type\":\"server_error\"}}\n\n",
		"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
		"data: {\"type\":\"error\",\"code\":\"invalid_prompt\",\"message\":\"m\"}\n\n",
	} {
		f.Add(uint8(i), []byte(body), uint16(7), uint16(40))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte, a, c uint16) {
		w := int(which) % len(fuzzScanners)
		whole := scanUsageParts(w, [][]byte{body})
		split := scanUsageParts(w, cuts(body, a, c))
		if whole != split {
			t.Fatalf("%+v: whole = %+v; split = %+v", fuzzScanners[w], whole, split)
		}
	})
}

// FuzzWSUsage drives the WebSocket frame reader of the Responses API's
// WebSocket mode: arbitrary frames, whole or cut.
func FuzzWSUsage(f *testing.F) {
	msg := []byte(`{"type":"response.completed","response":{"model":"gpt-5","usage":{"input_tokens":7,"output_tokens":2}}}`)
	f.Add(wsFrame(true, 1, msg, false), uint16(3), uint16(50))
	f.Add(append(wsFrame(false, 1, msg[:20], true), wsFrame(true, 0, msg[20:], true)...), uint16(1), uint16(90))
	f.Add(append(wsFrame(true, 9, []byte("ping"), false), wsFrame(true, 8, []byte{0x03, 0xe8}, false)...), uint16(0), uint16(2))
	f.Add(wsFrame(true, 1, []byte(`{"type":"error","status":429,"error":{"code":"rate_limit_exceeded","message":"m"}}`), true), uint16(5), uint16(30))
	f.Fuzz(func(t *testing.T, stream []byte, a, c uint16) {
		run := func(parts [][]byte) []wsSeen {
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
		whole, split := run([][]byte{stream}), run(cuts(stream, a, c))
		if !slices.Equal(whole, split) {
			t.Fatalf("whole = %+v\nsplit = %+v", whole, split)
		}
	})
}

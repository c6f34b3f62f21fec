package providertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// NewAnthropic starts a mock of the Anthropic API:
//
//   - POST /v1/messages, streamed as SSE when "stream" is true: message_start,
//     content_block_start, ping, content_block_delta ×Events,
//     content_block_stop, two message_delta and message_stop;
//   - POST /v1/messages/count_tokens;
//   - GET /v1/models and /v1/models/{model}.
//
// It takes the key as x-api-key and requires the anthropic-version header.
// Usage is reported as Anthropic does: input_tokens is Input,
// cache_creation_input_tokens CacheWrite, cache_read_input_tokens
// CacheRead, output_tokens Output. A stream's message_start has
// output_tokens 1, and its two message_delta events carry cumulative usage,
// the first with half of Output and the last with all of it: the last one
// counts.
func NewAnthropic(t testing.TB) *Server {
	t.Helper()
	var s *Server
	s = newServer(t, provider{
		key:   func(r *http.Request) string { return r.Header.Get("X-Api-Key") },
		fail:  anthropicFail,
		serve: func(c *call) { anthropicServe(s, c) },
	})
	return s
}

var anthropicIDs atomic.Int64

func anthropicID(prefix string) string {
	return fmt.Sprintf("%s_01%022d", prefix, anthropicIDs.Add(1))
}

// anthropicError answers with Anthropic's error body.
func anthropicError(c *call, status int, typ, msg string) {
	id := anthropicID("req")
	c.w.Header().Set("Request-Id", id)
	writeJSON(c.w, status, map[string]any{
		"type": "error", "error": map[string]any{"type": typ, "message": msg}, "request_id": id,
	})
}

func anthropicFail(c *call, status int) {
	typ, msg := "api_error", "Internal server error"
	switch status {
	case http.StatusBadRequest:
		typ, msg = "invalid_request_error", "There was an issue with the format or content of your request."
	case http.StatusUnauthorized:
		typ, msg = "authentication_error", "x-api-key header is required"
		if c.key != "" {
			msg = "invalid x-api-key: " + fragment(c.key)
		}
	case http.StatusForbidden:
		typ, msg = "permission_error", "Your API key does not have permission to use the specified resource."
	case http.StatusNotFound:
		typ, msg = "not_found_error", "Not Found"
	case http.StatusRequestEntityTooLarge:
		typ, msg = "request_too_large", "Request exceeds the maximum allowed number of bytes."
	case http.StatusTooManyRequests:
		typ, msg = "rate_limit_error", "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."
	case 529:
		typ, msg = "overloaded_error", "Overloaded"
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		typ, msg = "api_error", "Service unavailable"
	}
	anthropicError(c, status, typ, msg)
}

const anthropicModel = "claude-sonnet-4-5-20250929"

func anthropicServe(s *Server, c *call) {
	p, m := c.r.URL.Path, c.r.Method
	var op string
	switch {
	case p == "/v1/messages" && m == http.MethodPost:
		op = "messages"
	case p == "/v1/messages/count_tokens" && m == http.MethodPost:
		op = "count"
	case p == "/v1/models" && m == http.MethodGet:
		op = "models"
	case strings.HasPrefix(p, "/v1/models/") && m == http.MethodGet && !strings.Contains(p[len("/v1/models/"):], "/"):
		op = "model"
	default:
		anthropicFail(c, http.StatusNotFound)
		return
	}
	if !c.keyOK() {
		anthropicFail(c, http.StatusUnauthorized)
		return
	}
	if c.r.Header.Get("Anthropic-Version") == "" {
		anthropicError(c, http.StatusBadRequest, "invalid_request_error", "anthropic-version: header is required")
		return
	}
	c.w.Header().Set("Request-Id", anthropicID("req"))
	switch op {
	case "messages":
		anthropicMessages(s, c)
	case "count":
		var b anthropicBody
		if !b.parse(c, false) {
			return
		}
		c.writeJSON(http.StatusOK, map[string]any{"input_tokens": s.Usage.Input})
	case "models":
		first := anthropicModelInfo(anthropicModel)
		c.writeJSON(http.StatusOK, map[string]any{
			"data":     []any{first, anthropicModelInfo("claude-haiku-4-5-20251001")},
			"has_more": false, "first_id": anthropicModel, "last_id": "claude-haiku-4-5-20251001",
		})
	default:
		c.writeJSON(http.StatusOK, anthropicModelInfo(p[len("/v1/models/"):]))
	}
}

func anthropicModelInfo(id string) map[string]any {
	return map[string]any{"type": "model", "id": id, "display_name": id, "created_at": "2025-09-29T00:00:00Z"}
}

type anthropicBody struct {
	Model     string `json:"model"`
	MaxTokens *int64 `json:"max_tokens"`
	Stream    bool   `json:"stream"`
}

// parse decodes the body, answering 400 as Anthropic does when it is not
// JSON or lacks a required field.
func (b *anthropicBody) parse(c *call, needMaxTokens bool) bool {
	if err := json.Unmarshal(c.body, b); err != nil {
		anthropicError(c, http.StatusBadRequest, "invalid_request_error", "There was an issue with the format or content of your request. Please make sure it is valid JSON.")
		return false
	}
	if b.Model == "" {
		anthropicError(c, http.StatusBadRequest, "invalid_request_error", "model: Field required")
		return false
	}
	if needMaxTokens && b.MaxTokens == nil {
		anthropicError(c, http.StatusBadRequest, "invalid_request_error", "max_tokens: Field required")
		return false
	}
	return true
}

// anthropicText is the i-th piece of a streamed answer's text; a whole
// answer is the pieces concatenated.
func anthropicText(i int) string { return fmt.Sprintf("word%d ", i+1) }

func anthropicMessages(s *Server, c *call) {
	var b anthropicBody
	if !b.parse(c, true) {
		return
	}
	u := s.Usage
	id := anthropicID("msg")
	usage := func(output int64) map[string]any {
		return map[string]any{
			"input_tokens": u.Input, "cache_creation_input_tokens": u.CacheWrite,
			"cache_read_input_tokens": u.CacheRead, "output_tokens": output,
		}
	}
	if !b.Stream {
		var text strings.Builder
		for i := range s.Events {
			text.WriteString(anthropicText(i))
		}
		full := usage(u.Output)
		full["service_tier"] = "standard"
		c.writeJSON(http.StatusOK, map[string]any{
			"id": id, "type": "message", "role": "assistant", "model": b.Model,
			"content":     []any{map[string]any{"type": "text", "text": text.String()}},
			"stop_reason": "end_turn", "stop_sequence": nil, "usage": full,
		})
		return
	}
	c.w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	c.w.Header().Set("Cache-Control", "no-cache")
	st := c.stream()
	ev := func(typ string, fields map[string]any) bool {
		fields["type"] = typ
		return st.sse(typ, fields)
	}
	ok := ev("message_start", map[string]any{"message": map[string]any{
		"id": id, "type": "message", "role": "assistant", "model": b.Model, "content": []any{},
		"stop_reason": nil, "stop_sequence": nil, "usage": usage(1),
	}}) &&
		ev("content_block_start", map[string]any{"index": 0, "content_block": map[string]any{"type": "text", "text": ""}}) &&
		ev("ping", map[string]any{})
	for i := 0; ok && i < s.Events; i++ {
		ok = ev("content_block_delta", map[string]any{"index": 0, "delta": map[string]any{"type": "text_delta", "text": anthropicText(i)}})
	}
	_ = ok &&
		ev("content_block_stop", map[string]any{"index": 0}) &&
		ev("message_delta", map[string]any{"delta": map[string]any{"stop_reason": nil, "stop_sequence": nil}, "usage": usage(u.Output / 2)}) &&
		ev("message_delta", map[string]any{"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil}, "usage": usage(u.Output)}) &&
		ev("message_stop", map[string]any{})
}

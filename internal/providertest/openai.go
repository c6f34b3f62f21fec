package providertest

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// NewOpenAI starts a mock of the OpenAI API, which also serves Azure
// OpenAI's paths:
//
//   - POST /v1/chat/completions, streamed as SSE when "stream" is true, with
//     a usage-only last chunk only when stream_options.include_usage is;
//   - POST /v1/responses, streamed as SSE when "stream" is true, and
//     GET /v1/responses upgraded to a WebSocket carrying response.create
//     commands and the same events as JSON text messages;
//   - POST /v1/embeddings, GET /v1/models and /v1/models/{model};
//   - Azure: /openai/deployments/{deployment}/chat/completions and
//     /embeddings, /openai/responses and /openai/models, which require
//     ?api-version= (else 404, as Azure answers), and the same operations
//     under /openai/v1/ without it.
//
// OpenAI paths take the key as Authorization: Bearer, Azure paths as
// api-key. Usage is reported as OpenAI does: chat's prompt_tokens is
// Input+CacheRead with CacheRead as prompt_tokens_details.cached_tokens, its
// completion_tokens is Output with Reasoning as reasoning_tokens; Responses'
// input_tokens, input_tokens_details.cached_tokens, output_tokens and
// output_tokens_details.reasoning_tokens likewise.
func NewOpenAI(t testing.TB) *Server {
	t.Helper()
	var s *Server
	s = newServer(t, provider{
		key:   openaiKey,
		fail:  openaiFail,
		serve: func(c *call) { openaiServe(s, c) },
	})
	return s
}

// isAzure reports whether r is on Azure OpenAI's paths.
func isAzure(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/openai/") }

func openaiKey(r *http.Request) string {
	if isAzure(r) {
		return r.Header.Get("Api-Key")
	}
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

var openaiIDs atomic.Int64

// openaiID makes an id of the kind prefix, unique in the process.
func openaiID(prefix string) string {
	return fmt.Sprintf("%s_%024d", prefix, openaiIDs.Add(1))
}

// openaiFail answers with OpenAI's (or, on Azure paths, Azure's) error body
// for status.
func openaiFail(c *call, status int) {
	c.w.Header().Set("X-Request-Id", openaiID("req"))
	if isAzure(c.r) {
		azureFail(c, status)
		return
	}
	typ, code, msg := "invalid_request_error", any(nil), ""
	switch status {
	case http.StatusBadRequest:
		msg = "We could not parse the JSON body of your request."
	case http.StatusUnauthorized:
		if c.key == "" {
			msg = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
		} else {
			msg = "Incorrect API key provided: " + fragment(c.key) + ". You can find your API key at https://platform.openai.com/account/api-keys."
			code = "invalid_api_key"
		}
	case http.StatusForbidden:
		typ, code, msg = "request_forbidden", "unsupported_country_region_territory", "Country, region, or territory not supported"
	case http.StatusNotFound:
		msg = "Invalid URL (" + c.r.Method + " " + c.r.URL.Path + ")"
	case http.StatusTooManyRequests:
		typ, code, msg = "tokens", "rate_limit_exceeded", "Rate limit reached for gpt-4o in organization org-mock on tokens per min (TPM): Limit 30000, Used 30000, Requested 100. Please try again in 200ms."
	case http.StatusServiceUnavailable:
		typ, msg = "server_error", "The engine is currently overloaded, please try again later."
	default:
		typ, msg = "server_error", "The server had an error while processing your request. Sorry about that!"
	}
	writeJSON(c.w, status, map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": nil, "code": code,
	}})
}

// openaiBadRequest answers 400 with OpenAI's body (which Azure uses as well)
// for a request that does not parse or lacks a field.
func openaiBadRequest(c *call, msg string) {
	c.w.Header().Set("X-Request-Id", openaiID("req"))
	writeJSON(c.w, http.StatusBadRequest, map[string]any{"error": map[string]any{
		"message": msg, "type": "invalid_request_error", "param": nil, "code": nil,
	}})
}

func azureFail(c *call, status int) {
	code, msg := fmt.Sprint(status), ""
	switch status {
	case http.StatusUnauthorized:
		msg = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."
	case http.StatusNotFound:
		code, msg = "404", "Resource not found"
	case http.StatusTooManyRequests:
		msg = "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."
	case http.StatusForbidden:
		msg = "Access denied: the request is not allowed for this resource."
	case http.StatusInternalServerError:
		code, msg = "InternalServerError", "The service is temporarily unable to process your request. Please try again later."
	default:
		msg = "The service is temporarily unable to process your request. Please try again later."
	}
	c.w.Header().Set("Apim-Request-Id", openaiID("apim"))
	writeJSON(c.w, status, map[string]any{"error": map[string]any{"code": code, "message": msg}})
}

// openaiServe routes a request no fault stopped.
func openaiServe(s *Server, c *call) {
	op, ok := openaiRoute(c.r)
	if !ok {
		c.s.p.fail(c, http.StatusNotFound)
		return
	}
	if !c.keyOK() {
		c.s.p.fail(c, http.StatusUnauthorized)
		return
	}
	c.w.Header().Set("X-Request-Id", openaiID("req"))
	if !isAzure(c.r) {
		for name, vv := range OpenAIRateLimitHeaders() {
			c.w.Header()[name] = vv
		}
	}
	switch op {
	case "chat":
		openaiChat(s, c)
	case "responses":
		openaiResponses(s, c)
	case "responses-ws":
		openaiResponsesSocket(s, c)
	case "embeddings":
		openaiEmbeddings(c)
	case "models":
		c.writeJSON(http.StatusOK, map[string]any{"object": "list", "data": []any{
			openaiModel("gpt-4o"), openaiModel("gpt-4o-mini"), openaiModel("text-embedding-3-small"),
		}})
	default: // "model"
		c.writeJSON(http.StatusOK, openaiModel(c.r.PathValue("model")))
	}
}

// OpenAIRateLimitHeaders returns the x-ratelimit-* headers the OpenAI mock
// puts on every answer it serves, as OpenAI reports an organisation's own
// limits, so that tests can tell them from a gateway's.
func OpenAIRateLimitHeaders() http.Header {
	return http.Header{
		"X-Ratelimit-Limit-Requests":     {"10000"},
		"X-Ratelimit-Remaining-Requests": {"9999"},
		"X-Ratelimit-Limit-Tokens":       {"30000000"},
		"X-Ratelimit-Remaining-Tokens":   {"29999000"},
		"X-Ratelimit-Reset-Requests":     {"6ms"},
		"X-Ratelimit-Reset-Tokens":       {"2ms"},
	}
}

// openaiRoute names the operation r asks for, and reports false for a path
// the provider does not have.
func openaiRoute(r *http.Request) (string, bool) {
	p := r.URL.Path
	rest, azure := strings.CutPrefix(p, "/openai/")
	if !azure {
		rest, ok := strings.CutPrefix(p, "/v1/")
		if !ok {
			return "", false
		}
		return openaiOp(r, rest)
	}
	if v1, ok := strings.CutPrefix(rest, "v1/"); ok {
		return openaiOp(r, v1)
	}
	if r.URL.Query().Get("api-version") == "" {
		return "", false
	}
	if d, ok := strings.CutPrefix(rest, "deployments/"); ok {
		name, op, ok := strings.Cut(d, "/")
		if !ok || name == "" || (op != "chat/completions" && op != "embeddings") {
			return "", false
		}
		return openaiOp(r, op)
	}
	return openaiOp(r, rest)
}

// openaiOp names the operation for a path below the API's version prefix.
func openaiOp(r *http.Request, path string) (string, bool) {
	switch {
	case path == "chat/completions" && r.Method == http.MethodPost:
		return "chat", true
	case path == "responses" && r.Method == http.MethodPost:
		return "responses", true
	case path == "responses" && r.Method == http.MethodGet && strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		return "responses-ws", true
	case path == "embeddings" && r.Method == http.MethodPost:
		return "embeddings", true
	case path == "models" && r.Method == http.MethodGet:
		return "models", true
	case strings.HasPrefix(path, "models/") && r.Method == http.MethodGet && !strings.Contains(path[len("models/"):], "/"):
		r.SetPathValue("model", path[len("models/"):])
		return "model", true
	}
	return "", false
}

func openaiModel(id string) map[string]any {
	return map[string]any{"id": id, "object": "model", "created": 1715367049, "owned_by": "system"}
}

// openaiText is the i-th piece of a streamed answer's text; a whole answer
// is the pieces concatenated.
func openaiText(i int) string { return fmt.Sprintf("word%d ", i+1) }

func openaiWhole(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(openaiText(i))
	}
	return b.String()
}

// openaiBody is the part of a request body the mock looks at.
type openaiBody struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     int             `json:"dimensions"`
}

// parse decodes the request body, answering 400 when it is not the JSON
// OpenAI expects.
func (b *openaiBody) parse(c *call) bool {
	if err := json.Unmarshal(c.body, b); err != nil {
		openaiBadRequest(c, "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)")
		return false
	}
	if b.Model == "" && isAzure(c.r) {
		if d, ok := strings.CutPrefix(c.r.URL.Path, "/openai/deployments/"); ok {
			b.Model, _, _ = strings.Cut(d, "/")
		}
	}
	if b.Model == "" {
		openaiBadRequest(c, "you must provide a model parameter")
		return false
	}
	return true
}

func openaiChatUsage(u Usage) map[string]any {
	return map[string]any{
		"prompt_tokens":     u.Input + u.CacheRead,
		"completion_tokens": u.Output,
		"total_tokens":      u.Input + u.CacheRead + u.Output,
		"prompt_tokens_details": map[string]any{
			"cached_tokens": u.CacheRead, "audio_tokens": 0,
		},
		"completion_tokens_details": map[string]any{
			"reasoning_tokens": u.Reasoning, "audio_tokens": 0,
			"accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
		},
	}
}

func openaiChat(s *Server, c *call) {
	var b openaiBody
	if !b.parse(c) {
		return
	}
	id, created := openaiID("chatcmpl"), time.Now().Unix()
	if !b.Stream {
		c.writeJSON(http.StatusOK, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": b.Model,
			"choices": []any{map[string]any{
				"index": 0,
				"message": map[string]any{
					"role": "assistant", "content": openaiWhole(s.Events), "refusal": nil, "annotations": []any{},
				},
				"logprobs": nil, "finish_reason": "stop",
			}},
			"usage": openaiChatUsage(s.Usage), "service_tier": "default", "system_fingerprint": "fp_mock",
		})
		return
	}
	includeUsage := b.StreamOptions != nil && b.StreamOptions.IncludeUsage
	chunk := func(delta map[string]any, finish any) map[string]any {
		m := map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": created, "model": b.Model,
			"service_tier": "default", "system_fingerprint": "fp_mock",
			"choices": []any{map[string]any{"index": 0, "delta": delta, "logprobs": nil, "finish_reason": finish}},
		}
		if includeUsage {
			m["usage"] = nil
		}
		return m
	}
	c.w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	c.w.Header().Set("Cache-Control", "no-cache")
	st := c.stream()
	if !st.sse("", chunk(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil)) {
		return
	}
	for i := range s.Events {
		if !st.sse("", chunk(map[string]any{"content": openaiText(i)}, nil)) {
			return
		}
	}
	if !st.sse("", chunk(map[string]any{}, "stop")) {
		return
	}
	if includeUsage {
		last := chunk(nil, nil)
		last["choices"] = []any{}
		last["usage"] = openaiChatUsage(s.Usage)
		if !st.sse("", last) {
			return
		}
	}
	st.sse("", "[DONE]")
}

func openaiResponseUsage(u Usage) map[string]any {
	return map[string]any{
		"input_tokens":          u.Input + u.CacheRead,
		"input_tokens_details":  map[string]any{"cached_tokens": u.CacheRead},
		"output_tokens":         u.Output,
		"output_tokens_details": map[string]any{"reasoning_tokens": u.Reasoning},
		"total_tokens":          u.Input + u.CacheRead + u.Output,
	}
}

// openaiResponse is a Responses API response object: in progress (no
// output, no usage) or completed.
func openaiResponse(s *Server, id, msgID, model string, created int64, completed bool) map[string]any {
	r := map[string]any{
		"id": id, "object": "response", "created_at": created, "status": "in_progress",
		"background": false, "error": nil, "incomplete_details": nil, "instructions": nil,
		"max_output_tokens": nil, "model": model, "output": []any{}, "parallel_tool_calls": true,
		"previous_response_id": nil, "reasoning": map[string]any{"effort": nil, "summary": nil},
		"service_tier": "default", "store": true, "temperature": 1.0,
		"text": map[string]any{"format": map[string]any{"type": "text"}}, "tool_choice": "auto",
		"tools": []any{}, "top_p": 1.0, "truncation": "disabled", "usage": nil, "user": nil,
		"metadata": map[string]any{},
	}
	if completed {
		r["status"] = "completed"
		r["output"] = []any{openaiMessage(msgID, openaiWhole(s.Events), true)}
		r["usage"] = openaiResponseUsage(s.Usage)
	}
	return r
}

func openaiMessage(id, text string, done bool) map[string]any {
	status, content := "in_progress", []any{}
	if done {
		status = "completed"
		content = []any{openaiTextPart(text)}
	}
	return map[string]any{"id": id, "type": "message", "status": status, "role": "assistant", "content": content}
}

func openaiTextPart(text string) map[string]any {
	return map[string]any{"type": "output_text", "text": text, "annotations": []any{}, "logprobs": []any{}}
}

// openaiResponseEvents sends a response's events, in the order OpenAI
// sends them, through send; it stops when send reports false, and reports
// whether every event was sent.
func openaiResponseEvents(s *Server, model string, send func(typ string, ev map[string]any) bool) bool {
	id, msgID, created := openaiID("resp"), openaiID("msg"), time.Now().Unix()
	seq := 0
	emit := func(typ string, fields map[string]any) bool {
		fields["type"] = typ
		fields["sequence_number"] = seq
		seq++
		return send(typ, fields)
	}
	part := map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0}
	with := func(kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range part {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	whole := openaiWhole(s.Events)
	ok := emit("response.created", map[string]any{"response": openaiResponse(s, id, msgID, model, created, false)}) &&
		emit("response.in_progress", map[string]any{"response": openaiResponse(s, id, msgID, model, created, false)}) &&
		emit("response.output_item.added", map[string]any{"output_index": 0, "item": openaiMessage(msgID, "", false)}) &&
		emit("response.content_part.added", with("part", openaiTextPart("")))
	for i := 0; ok && i < s.Events; i++ {
		ok = emit("response.output_text.delta", with("delta", openaiText(i), "logprobs", []any{}))
	}
	return ok &&
		emit("response.output_text.done", with("text", whole, "logprobs", []any{})) &&
		emit("response.content_part.done", with("part", openaiTextPart(whole))) &&
		emit("response.output_item.done", map[string]any{"output_index": 0, "item": openaiMessage(msgID, whole, true)}) &&
		emit("response.completed", map[string]any{"response": openaiResponse(s, id, msgID, model, created, true)})
}

func openaiResponses(s *Server, c *call) {
	var b openaiBody
	if !b.parse(c) {
		return
	}
	if !b.Stream {
		c.writeJSON(http.StatusOK, openaiResponse(s, openaiID("resp"), openaiID("msg"), b.Model, time.Now().Unix(), true))
		return
	}
	c.w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	c.w.Header().Set("Cache-Control", "no-cache")
	st := c.stream()
	openaiResponseEvents(s, b.Model, func(typ string, ev map[string]any) bool {
		return st.sse(typ, ev)
	})
}

func openaiEmbeddings(c *call) {
	var b openaiBody
	if !b.parse(c) {
		return
	}
	n := 1
	var list []json.RawMessage
	if json.Unmarshal(b.Input, &list) == nil && len(list) > 0 {
		// An array of token ids is one input; an array of strings or of
		// token arrays is one input each.
		if list[0][0] == '"' || list[0][0] == '[' {
			n = len(list)
		}
	}
	dims := b.Dimensions
	if dims <= 0 {
		dims = 8
	}
	data := make([]any, n)
	for i := range n {
		vec := make([]float32, dims)
		for j := range vec {
			vec[j] = float32(i+1) / float32(j+2)
		}
		var emb any = vec
		if b.EncodingFormat == "base64" {
			raw := make([]byte, 4*len(vec))
			for j, f := range vec {
				binary.LittleEndian.PutUint32(raw[4*j:], math.Float32bits(f))
			}
			emb = base64.StdEncoding.EncodeToString(raw)
		}
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": emb}
	}
	u := c.s.Usage
	c.writeJSON(http.StatusOK, map[string]any{
		"object": "list", "data": data, "model": b.Model,
		"usage": map[string]any{"prompt_tokens": u.Input, "total_tokens": u.Input},
	})
}

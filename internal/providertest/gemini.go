package providertest

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// NewGemini starts a mock of the Gemini API (generativelanguage.googleapis.com).
// It accepts keys given to AddKey in x-goog-api-key or the key query
// parameter, and answers, under /v1beta and /v1:
//
//   - POST models/{model}:generateContent, one GenerateContentResponse;
//   - POST models/{model}:streamGenerateContent, with alt=sse as server-sent
//     events ("data: {GenerateContentResponse}" and a CRLF blank line, as
//     Google sends them), else as one JSON array streamed element by element;
//   - POST models/{model}:countTokens;
//   - GET models and GET models/{model}.
//
// Each streamed chunk carries the cumulative usageMetadata: promptTokenCount
// is Input+CacheRead, cachedContentTokenCount CacheRead, candidatesTokenCount
// grows to Output-Reasoning, thoughtsTokenCount is Reasoning.
//
// Like Google, it refuses a request without a key with 403 PERMISSION_DENIED
// and one with a key it does not know with 400 INVALID_ARGUMENT (reason
// API_KEY_INVALID), not with 401. Errors are {"error": {"code", "message",
// "status"}}.
func NewGemini(t testing.TB) *Server {
	t.Helper()
	return newServer(t, provider{key: geminiKey, fail: geminiFail, serve: serveGemini})
}

func geminiKey(r *http.Request) string {
	if k := r.Header.Get("X-Goog-Api-Key"); k != "" {
		return k
	}
	return r.URL.Query().Get("key")
}

// geminiStatus is Google's canonical status name for an HTTP status.
func geminiStatus(status int) (name, message string) {
	switch status {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT", "Request contains an invalid argument."
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
	case http.StatusForbidden:
		return "PERMISSION_DENIED", "The caller does not have permission"
	case http.StatusNotFound:
		return "NOT_FOUND", "Requested entity was not found."
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."
	case http.StatusNotImplemented:
		return "UNIMPLEMENTED", "Operation is not implemented, or supported, or enabled."
	case http.StatusServiceUnavailable, 529:
		return "UNAVAILABLE", "The model is overloaded. Please try again later."
	case http.StatusGatewayTimeout:
		return "DEADLINE_EXCEEDED", "The request timed out. Please try again."
	default:
		return "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
	}
}

// writeGeminiError answers with Google's error body; details, when not nil,
// are google.rpc detail objects.
func writeGeminiError(c *call, status int, message string, details []any) {
	name, def := geminiStatus(status)
	if message == "" {
		message = def
	}
	e := map[string]any{"code": status, "message": message, "status": name}
	if details != nil {
		e["details"] = details
	}
	c.w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	b, err := json.MarshalIndent(map[string]any{"error": e}, "", "  ")
	if err != nil {
		panic(err)
	}
	c.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	c.w.WriteHeader(status)
	_, _ = c.w.Write(b)
}

// geminiFail answers status as Gemini does; a 429 tells, as Google's do,
// how long to wait in a RetryInfo detail when the fault has a Retry-After.
func geminiFail(c *call, status int) {
	var details []any
	if status == http.StatusTooManyRequests && c.fault.RetryAfter != "" {
		details = []any{map[string]any{
			"@type":      "type.googleapis.com/google.rpc.RetryInfo",
			"retryDelay": c.fault.RetryAfter + "s",
		}}
	}
	writeGeminiError(c, status, "", details)
}

func serveGemini(c *call) {
	switch {
	case c.key == "":
		writeGeminiError(c, http.StatusForbidden,
			"Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.", nil)
		return
	case !c.keyOK():
		writeGeminiError(c, http.StatusBadRequest, "API key not valid. Please pass a valid API key.", []any{map[string]any{
			"@type":    "type.googleapis.com/google.rpc.ErrorInfo",
			"reason":   "API_KEY_INVALID",
			"domain":   "googleapis.com",
			"metadata": map[string]string{"service": "generativelanguage.googleapis.com"},
		}})
		return
	}

	path := c.r.URL.Path
	rest, ok := strings.CutPrefix(path, "/v1beta/")
	if !ok {
		rest, ok = strings.CutPrefix(path, "/v1/")
	}
	if !ok {
		writeGeminiError(c, http.StatusNotFound, "", nil)
		return
	}
	if rest == "models" {
		if c.r.Method != http.MethodGet {
			writeGeminiError(c, http.StatusNotFound, "", nil)
			return
		}
		models := make([]any, len(geminiModels))
		for i, m := range geminiModels {
			models[i] = geminiModel(m)
		}
		c.writeJSON(http.StatusOK, map[string]any{"models": models})
		return
	}
	name, ok := strings.CutPrefix(rest, "models/")
	if !ok || name == "" || strings.Contains(name, "/") {
		writeGeminiError(c, http.StatusNotFound, "", nil)
		return
	}
	model, method, hasMethod := strings.Cut(name, ":")
	if !hasMethod {
		if c.r.Method != http.MethodGet {
			writeGeminiError(c, http.StatusNotFound, "", nil)
			return
		}
		c.writeJSON(http.StatusOK, geminiModel(model))
		return
	}
	if c.r.Method != http.MethodPost {
		writeGeminiError(c, http.StatusNotFound, "", nil)
		return
	}
	var req struct {
		Contents json.RawMessage `json:"contents"`
	}
	if err := json.Unmarshal(c.body, &req); err != nil {
		writeGeminiError(c, http.StatusBadRequest, "Invalid JSON payload received. "+err.Error(), nil)
		return
	}
	switch method {
	case "generateContent":
		if !geminiHasContents(c, req.Contents) {
			return
		}
		n := max(c.s.Events, 1)
		c.writeJSON(http.StatusOK, geminiResponse(model, c.s.Usage, geminiFullText(n), n, n))
	case "streamGenerateContent":
		if !geminiHasContents(c, req.Contents) {
			return
		}
		geminiStream(c, model, c.r.URL.Query().Get("alt") == "sse")
	case "countTokens":
		u := c.s.Usage
		out := map[string]any{
			"totalTokens":         u.Input + u.CacheRead,
			"promptTokensDetails": []any{map[string]any{"modality": "TEXT", "tokenCount": u.Input + u.CacheRead}},
		}
		if u.CacheRead > 0 {
			out["cachedContentTokenCount"] = u.CacheRead
		}
		c.writeJSON(http.StatusOK, out)
	default:
		writeGeminiError(c, http.StatusNotFound, "", nil)
	}
}

// geminiHasContents refuses, as Gemini does, a request without contents.
func geminiHasContents(c *call, contents json.RawMessage) bool {
	if len(contents) == 0 || string(contents) == "null" || string(contents) == "[]" {
		writeGeminiError(c, http.StatusBadRequest, "* GenerateContentRequest.contents: contents is not specified\n", nil)
		return false
	}
	return true
}

var geminiModels = []string{"gemini-2.5-flash", "gemini-2.5-pro"}

func geminiModel(name string) map[string]any {
	return map[string]any{
		"name":                       "models/" + name,
		"version":                    "001",
		"displayName":                name,
		"description":                "A mock of " + name + ".",
		"inputTokenLimit":            1048576,
		"outputTokenLimit":           65536,
		"supportedGenerationMethods": []string{"generateContent", "countTokens"},
		"temperature":                1,
		"topP":                       0.95,
		"topK":                       64,
		"maxTemperature":             2,
		"thinking":                   true,
	}
}

func geminiText(i int) string { return "word" + strconv.Itoa(i) + " " }

func geminiFullText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(geminiText(i))
	}
	return b.String()
}

// geminiResponse is a GenerateContentResponse holding text, the i-th of n
// (1-based; i == n is the last, or only, one), with usage as of it.
func geminiResponse(model string, u Usage, text string, i, n int) map[string]any {
	prompt := u.Input + u.CacheRead
	candidates := (u.Output - u.Reasoning) * int64(i) / int64(n)
	usage := map[string]any{
		"promptTokenCount":     prompt,
		"candidatesTokenCount": candidates,
		"totalTokenCount":      prompt + candidates + u.Reasoning,
		"promptTokensDetails":  []any{map[string]any{"modality": "TEXT", "tokenCount": prompt}},
	}
	if u.CacheRead > 0 {
		usage["cachedContentTokenCount"] = u.CacheRead
		usage["cacheTokensDetails"] = []any{map[string]any{"modality": "TEXT", "tokenCount": u.CacheRead}}
	}
	if u.Reasoning > 0 {
		usage["thoughtsTokenCount"] = u.Reasoning
	}
	cand := map[string]any{
		"content": map[string]any{"parts": []any{map[string]any{"text": text}}, "role": "model"},
		"index":   0,
	}
	if i == n {
		cand["finishReason"] = "STOP"
	}
	return map[string]any{
		"candidates":    []any{cand},
		"usageMetadata": usage,
		"modelVersion":  model,
		"responseId":    "mockresp" + strconv.Itoa(n),
	}
}

// geminiStream sends Events chunks, each an event CutAfter and StallAfter
// count. Without alt=sse the chunks are the elements of one JSON array, as
// Google streams it: "[{...}\n,\r\n{...}\n]".
func geminiStream(c *call, model string, sse bool) {
	n := max(c.s.Events, 1)
	if sse {
		c.w.Header().Set("Content-Type", "text/event-stream")
	} else {
		c.w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	}
	st := c.stream()
	for i := range n {
		b, err := json.Marshal(geminiResponse(model, c.s.Usage, geminiText(i), i+1, n))
		if err != nil {
			panic(err)
		}
		var ev []byte
		switch {
		case sse:
			ev = append(append([]byte("data: "), b...), "\r\n\r\n"...)
		case i == 0:
			ev = append([]byte("["), b...)
		default:
			ev = append([]byte("\n,\r\n"), b...)
		}
		if !st.event(ev) {
			return
		}
	}
	if !sse {
		_ = st.write([]byte("\n]"))
	}
}

package providertest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/google/uuid"
)

// NewBedrock starts a mock of the AWS Bedrock runtime in region. It accepts
// requests signed with SigV4 by the pair accessKey, secretKey for service
// "bedrock" in region (the signature is recomputed over the raw path as it
// arrived), and Bedrock API keys (Authorization: Bearer) given to AddKey.
//
// It answers POST /model/{modelId}/invoke, /invoke-with-response-stream,
// /converse and /converse-stream. A model id naming an Anthropic model
// (anything holding "anthropic", ARNs of inference profiles included) takes
// and gives Anthropic Messages bodies, as Claude on Bedrock does, and wants
// "anthropic_version"; other models answer invoke in Amazon Nova's shape.
//
// Usage is reported as Bedrock does: Anthropic's usage object in invoke
// bodies, the x-amzn-bedrock-input-token-count and -output-token-count
// headers (and the -cache-read-/-cache-write-input-token-count ones) on
// invoke, amazon-bedrock-invocationMetrics in the last chunk of
// invoke-with-response-stream, Converse's usage and its stream's metadata
// event. Bedrock's input token counts exclude cached tokens.
func NewBedrock(t testing.TB, region, accessKey, secretKey string) *Server {
	t.Helper()
	b := &bedrock{region: region, accessKey: accessKey, secretKey: secretKey}
	return newServer(t, provider{key: bedrockKey, fail: bedrockFail, serve: b.serve})
}

type bedrock struct {
	region, accessKey, secretKey string
}

// bedrockKey is the access key id of a SigV4 signature, or the Bedrock API
// key of a bearer token.
func bedrockKey(r *http.Request) string {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(tok)
	}
	return sigV4Key(r)
}

// writeAWSError answers the way AWS's JSON services refuse: the error's
// type in x-amzn-ErrorType (with the Coral namespace after a colon, which
// SDKs cut off) and {"message": ...}.
func writeAWSError(c *call, e *awsError) {
	h := c.w.Header()
	h.Set("X-Amzn-Errortype", e.code+":http://internal.amazon.com/coral/com.amazon.bedrock/")
	h.Set("X-Amzn-Requestid", newRequestID())
	writeJSON(c.w, e.status, map[string]string{"message": e.message})
}

// bedrockFail answers status with the exception Bedrock uses for it.
func bedrockFail(c *call, status int) {
	writeAWSError(c, bedrockError(status))
}

func bedrockError(status int) *awsError {
	e := &awsError{status: status}
	switch status {
	case http.StatusBadRequest:
		e.code, e.message = "ValidationException", "Malformed input request, please reformat your input and try again."
	case http.StatusUnauthorized:
		e.code, e.message = errBadToken.code, errBadToken.message
	case http.StatusForbidden:
		e.code, e.message = "AccessDeniedException", "You don't have access to the model with the specified model ID."
	case http.StatusNotFound:
		e.code, e.message = "ResourceNotFoundException", "The provided model identifier is invalid."
	case http.StatusRequestTimeout:
		e.code, e.message = "ModelTimeoutException", "Model has timed out in processing the request. Try your request again."
	case 424:
		e.code, e.message = "ModelErrorException", "The system encountered an unexpected error during processing. Try your request again."
	case http.StatusTooManyRequests:
		e.code, e.message = "ThrottlingException", "Too many requests, please wait before trying again."
	case http.StatusServiceUnavailable, 529:
		e.code, e.message = "ServiceUnavailableException", "Bedrock is unable to process your request."
	default:
		e.code, e.message = "InternalServerException", "The system encountered an unexpected error during processing. Try your request again."
	}
	return e
}

// newRequestID is an x-amzn-requestid, fresh for each answer.
func newRequestID() string { return uuid.NewString() }

func (b *bedrock) serve(c *call) {
	if e := b.authenticate(c); e != nil {
		writeAWSError(c, e)
		return
	}
	rawPath, _, _ := strings.Cut(c.r.RequestURI, "?")
	seg := strings.Split(strings.TrimPrefix(rawPath, "/"), "/")
	if len(seg) != 3 || seg[0] != "model" || c.r.Method != http.MethodPost {
		writeAWSError(c, &awsError{http.StatusNotFound, "UnknownOperationException", "Unknown operation"})
		return
	}
	model, err := url.PathUnescape(seg[1])
	if err != nil || model == "" {
		writeAWSError(c, bedrockError(http.StatusBadRequest))
		return
	}
	var body map[string]any
	if err := json.Unmarshal(c.body, &body); err != nil {
		writeAWSError(c, &awsError{http.StatusBadRequest, "ValidationException",
			"Malformed input request: expected a JSON object, please reformat your input and try again."})
		return
	}
	anthropic := strings.Contains(model, "anthropic")
	switch seg[2] {
	case "invoke", "invoke-with-response-stream":
		if anthropic {
			if _, ok := body["anthropic_version"]; !ok {
				writeAWSError(c, &awsError{http.StatusBadRequest, "ValidationException",
					"Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again."})
				return
			}
		}
		if seg[2] == "invoke" {
			b.invoke(c, model, anthropic)
		} else {
			b.invokeStream(c, model, anthropic)
		}
	case "converse":
		b.converse(c)
	case "converse-stream":
		b.converseStream(c)
	default:
		writeAWSError(c, &awsError{http.StatusNotFound, "UnknownOperationException", "Unknown operation"})
	}
}

// authenticate accepts a bearer token given to AddKey or a valid SigV4
// signature by the server's pair, and returns AWS's refusal otherwise.
func (b *bedrock) authenticate(c *call) *awsError {
	h := c.r.Header.Get("Authorization")
	switch {
	case h == "":
		return errMissingToken
	case strings.HasPrefix(h, "Bearer "):
		if !c.keyOK() {
			return errBadToken
		}
		return nil
	default:
		return verifySigV4(c.r, c.body, b.region, b.accessKey, b.secretKey, time.Now())
	}
}

// bedrockText is the i-th piece of a streamed answer; an answer in one
// piece is all n of them.
func bedrockText(i int) string { return "word" + strconv.Itoa(i) + " " }

func bedrockFullText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(bedrockText(i))
	}
	return b.String()
}

func (b *bedrock) invoke(c *call, model string, anthropic bool) {
	u := c.s.Usage
	h := c.w.Header()
	h.Set("X-Amzn-Requestid", newRequestID())
	h.Set("X-Amzn-Bedrock-Invocation-Latency", "120")
	h.Set("X-Amzn-Bedrock-Input-Token-Count", strconv.FormatInt(u.Input, 10))
	h.Set("X-Amzn-Bedrock-Output-Token-Count", strconv.FormatInt(u.Output, 10))
	if u.CacheRead > 0 || u.CacheWrite > 0 {
		h.Set("X-Amzn-Bedrock-Cache-Read-Input-Token-Count", strconv.FormatInt(u.CacheRead, 10))
		h.Set("X-Amzn-Bedrock-Cache-Write-Input-Token-Count", strconv.FormatInt(u.CacheWrite, 10))
	}
	text := bedrockFullText(c.s.Events)
	if anthropic {
		c.writeJSON(http.StatusOK, map[string]any{
			"id":            "msg_bdrk_" + newRequestID()[:8],
			"type":          "message",
			"role":          "assistant",
			"model":         model,
			"content":       []any{map[string]any{"type": "text", "text": text}},
			"stop_reason":   "end_turn",
			"stop_sequence": nil,
			"usage":         anthropicUsage(u, u.Output),
		})
		return
	}
	c.writeJSON(http.StatusOK, map[string]any{
		"output": map[string]any{"message": map[string]any{
			"role": "assistant", "content": []any{map[string]any{"text": text}},
		}},
		"stopReason": "end_turn",
		"usage":      novaUsage(u),
	})
}

// anthropicUsage is Anthropic's usage object with output tokens so far.
func anthropicUsage(u Usage, output int64) map[string]any {
	return map[string]any{
		"input_tokens":                u.Input,
		"cache_creation_input_tokens": u.CacheWrite,
		"cache_read_input_tokens":     u.CacheRead,
		"output_tokens":               output,
	}
}

// novaUsage is the usage of an Amazon Nova invoke body.
func novaUsage(u Usage) map[string]any {
	return map[string]any{
		"inputTokens":               u.Input,
		"outputTokens":              u.Output,
		"totalTokens":               u.Input + u.Output + u.CacheRead + u.CacheWrite,
		"cacheReadInputTokenCount":  u.CacheRead,
		"cacheWriteInputTokenCount": u.CacheWrite,
	}
}

// converseUsage is Converse's TokenUsage.
func converseUsage(u Usage) map[string]any {
	return map[string]any{
		"inputTokens":           u.Input,
		"outputTokens":          u.Output,
		"totalTokens":           u.Input + u.Output + u.CacheRead + u.CacheWrite,
		"cacheReadInputTokens":  u.CacheRead,
		"cacheWriteInputTokens": u.CacheWrite,
	}
}

// invocationMetrics is what Bedrock adds to the last chunk of a response
// stream.
func invocationMetrics(u Usage) map[string]any {
	return map[string]any{
		"inputTokenCount":           u.Input,
		"outputTokenCount":          u.Output,
		"invocationLatency":         120,
		"firstByteLatency":          40,
		"cacheReadInputTokenCount":  u.CacheRead,
		"cacheWriteInputTokenCount": u.CacheWrite,
	}
}

// eventStream writes AWS event-stream messages (binary frames with prelude
// and message CRCs) through the call's stream, so faults and gaps apply.
type eventStream struct {
	st  *stream
	enc *eventstream.Encoder
}

// startEventStream sends the 200 of a streamed Bedrock answer.
func startEventStream(c *call, contentType string) *eventStream {
	h := c.w.Header()
	h.Set("Content-Type", "application/vnd.amazon.eventstream")
	h.Set("X-Amzn-Requestid", newRequestID())
	if contentType != "" {
		h.Set("X-Amzn-Bedrock-Content-Type", contentType)
	}
	return &eventStream{st: c.stream(), enc: eventstream.NewEncoder()}
}

// encodeEvent is one event message: :event-type typ, a JSON payload.
func encodeEvent(enc *eventstream.Encoder, typ string, payload any) []byte {
	var msg eventstream.Message
	msg.Headers.Set(":event-type", eventstream.StringValue(typ))
	msg.Headers.Set(":content-type", eventstream.StringValue("application/json"))
	msg.Headers.Set(":message-type", eventstream.StringValue("event"))
	msg.Payload = mustJSON(payload)
	var b bytes.Buffer
	if err := enc.Encode(&b, msg); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// encodeException is an exception message, the way a Bedrock stream fails
// midway: :exception-type is the member name of the stream's union
// ("modelStreamErrorException", "throttlingException", ...).
func encodeException(enc *eventstream.Encoder, typ, message string) []byte {
	var msg eventstream.Message
	msg.Headers.Set(":exception-type", eventstream.StringValue(typ))
	msg.Headers.Set(":content-type", eventstream.StringValue("application/json"))
	msg.Headers.Set(":message-type", eventstream.StringValue("exception"))
	msg.Payload = mustJSON(map[string]string{"message": message})
	var b bytes.Buffer
	if err := enc.Encode(&b, msg); err != nil {
		panic(err)
	}
	return b.Bytes()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// event sends one event message and reports whether the stream goes on.
func (es *eventStream) event(typ string, payload any) bool {
	return es.st.event(encodeEvent(es.enc, typ, payload))
}

// chunk sends an invoke-with-response-stream chunk: the model's own JSON
// event, base64 in {"bytes": ...} (encoding/json encodes []byte so).
func (es *eventStream) chunk(v any) bool {
	return es.event("chunk", map[string]any{"bytes": mustJSON(v)})
}

func (b *bedrock) invokeStream(c *call, model string, anthropic bool) {
	u, n := c.s.Usage, c.s.Events
	es := startEventStream(c, "application/json")
	if anthropic {
		start := map[string]any{
			"type": "message_start",
			"message": map[string]any{
				"id": "msg_bdrk_" + newRequestID()[:8], "type": "message", "role": "assistant",
				"model": model, "content": []any{}, "stop_reason": nil, "stop_sequence": nil,
				"usage": anthropicUsage(u, 1),
			},
		}
		if !es.chunk(start) ||
			!es.chunk(map[string]any{"type": "content_block_start", "index": 0,
				"content_block": map[string]any{"type": "text", "text": ""}}) {
			return
		}
		for i := range n {
			if !es.chunk(map[string]any{"type": "content_block_delta", "index": 0,
				"delta": map[string]any{"type": "text_delta", "text": bedrockText(i)}}) {
				return
			}
		}
		delta := func(output int64) map[string]any {
			return map[string]any{"type": "message_delta",
				"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil},
				"usage": map[string]any{"output_tokens": output}}
		}
		_ = es.chunk(map[string]any{"type": "content_block_stop", "index": 0}) &&
			es.chunk(delta(u.Output/2)) &&
			es.chunk(delta(u.Output)) &&
			es.chunk(map[string]any{"type": "message_stop", "amazon-bedrock-invocationMetrics": invocationMetrics(u)})
		return
	}
	if !es.chunk(map[string]any{"messageStart": map[string]any{"role": "assistant"}}) {
		return
	}
	for i := range n {
		if !es.chunk(map[string]any{"contentBlockDelta": map[string]any{
			"delta": map[string]any{"text": bedrockText(i)}, "contentBlockIndex": 0}}) {
			return
		}
	}
	_ = es.chunk(map[string]any{"contentBlockStop": map[string]any{"contentBlockIndex": 0}}) &&
		es.chunk(map[string]any{"messageStop": map[string]any{"stopReason": "end_turn"}}) &&
		es.chunk(map[string]any{
			"metadata":                         map[string]any{"usage": novaUsage(u), "metrics": map[string]any{}, "trace": map[string]any{}},
			"amazon-bedrock-invocationMetrics": invocationMetrics(u),
		})
}

func (b *bedrock) converse(c *call) {
	c.w.Header().Set("X-Amzn-Requestid", newRequestID())
	c.writeJSON(http.StatusOK, map[string]any{
		"output": map[string]any{"message": map[string]any{
			"role": "assistant", "content": []any{map[string]any{"text": bedrockFullText(c.s.Events)}},
		}},
		"stopReason": "end_turn",
		"usage":      converseUsage(c.s.Usage),
		"metrics":    map[string]any{"latencyMs": 120},
	})
}

func (b *bedrock) converseStream(c *call) {
	u, n := c.s.Usage, c.s.Events
	es := startEventStream(c, "")
	if !es.event("messageStart", map[string]any{"role": "assistant"}) {
		return
	}
	for i := range n {
		if !es.event("contentBlockDelta", map[string]any{
			"contentBlockIndex": 0, "delta": map[string]any{"text": bedrockText(i)}}) {
			return
		}
	}
	_ = es.event("contentBlockStop", map[string]any{"contentBlockIndex": 0}) &&
		es.event("messageStop", map[string]any{"stopReason": "end_turn"}) &&
		es.event("metadata", map[string]any{"usage": converseUsage(u), "metrics": map[string]any{"latencyMs": 120}})
}

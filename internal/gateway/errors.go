package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// gwError is an answer the gateway gives itself, not the provider.
type gwError struct {
	status int
	code   string // a keybridge error code (SPEC §1)
	msg    string
	// retryAfter is the Retry-After of a 429 or 503, in seconds.
	retryAfter int
}

func newError(code, msg string) *gwError {
	return &gwError{status: codeStatus[code], code: code, msg: msg}
}

// codeStatus maps the codes the gateway answers with to their statuses.
// gateway_timeout is the gateway's own: SPEC §1 has no code for a 504.
var codeStatus = map[string]int{
	keybridge.EInvalid:         http.StatusBadRequest,
	keybridge.EUnauthenticated: http.StatusUnauthorized,
	keybridge.EForbidden:       http.StatusForbidden,
	keybridge.ENotFound:        http.StatusNotFound,
	keybridge.ETooLarge:        http.StatusRequestEntityTooLarge,
	keybridge.ERateLimited:     http.StatusTooManyRequests,
	keybridge.EInternal:        http.StatusInternalServerError,
	keybridge.EBadGateway:      http.StatusBadGateway,
	keybridge.EUnavailable:     http.StatusServiceUnavailable,
	codeGatewayTimeout:         http.StatusGatewayTimeout,
}

const codeGatewayTimeout = "gateway_timeout"

// style is whose error shape an answer takes: the provider's type, or ""
// for the §1 shape (an unknown provider).
type style = keybridge.ProviderType

// writeError answers e in the shape the SDKs of st parse (SPEC §7.3), with
// X-Keybridge-Error so a client can tell it from the provider's own.
func writeError(w http.ResponseWriter, st style, e *gwError) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Keybridge-Error", e.code)
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	if st == keybridge.ProviderBedrock {
		// The AWS SDKs read the error's name from this header and its
		// text from "message".
		h.Set("X-Amzn-Errortype", awsErrorType(e.status))
	}
	body := errorBody(st, e)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	w.Write(body)
}

// errorBody is e in st's error shape.
func errorBody(st style, e *gwError) []byte {
	var v any
	switch st {
	case keybridge.ProviderOpenAI, keybridge.ProviderAzureOpenAI, keybridge.ProviderOpenAICompatible:
		v = map[string]any{"error": map[string]any{"message": e.msg, "type": openAIType(e.status), "code": e.code}}
	case keybridge.ProviderAnthropic:
		v = map[string]any{"type": "error", "error": map[string]any{"type": anthropicType(e.status), "message": e.msg}}
	case keybridge.ProviderBedrock:
		// Anthropic's shape, which Claude Code on Bedrock reads, with
		// AWS's top-level message beside it for the AWS SDKs.
		v = map[string]any{"type": "error", "error": map[string]any{"type": anthropicType(e.status), "message": e.msg}, "message": e.msg}
	case keybridge.ProviderGoogle:
		v = map[string]any{"error": map[string]any{"code": e.status, "message": e.msg, "status": googleStatus(e.status)}}
	default:
		v = map[string]any{"error": map[string]any{"code": e.code, "message": e.msg}}
	}
	b, _ := json.Marshal(v)
	return b
}

func openAIType(status int) string {
	switch status {
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 429:
		return "rate_limit_error"
	case 400, 413:
		return "invalid_request_error"
	}
	return "server_error"
}

func anthropicType(status int) string {
	switch status {
	case 400:
		return "invalid_request_error"
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 413:
		return "request_too_large"
	case 429:
		return "rate_limit_error"
	case 503:
		return "overloaded_error"
	}
	return "api_error"
}

func googleStatus(status int) string {
	switch status {
	case 400, 413:
		return "INVALID_ARGUMENT"
	case 401:
		return "UNAUTHENTICATED"
	case 403:
		return "PERMISSION_DENIED"
	case 404:
		return "NOT_FOUND"
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 502, 503:
		return "UNAVAILABLE"
	case 504:
		return "DEADLINE_EXCEEDED"
	}
	return "INTERNAL"
}

func awsErrorType(status int) string {
	switch status {
	case 400, 413:
		return "ValidationException"
	case 401:
		return "UnrecognizedClientException"
	case 403:
		return "AccessDeniedException"
	case 404:
		return "ResourceNotFoundException"
	case 429:
		return "ThrottlingException"
	case 503:
		return "ServiceUnavailableException"
	case 504:
		return "ModelTimeoutException"
	}
	return "InternalServerException"
}

// streamError is the event that tells a streaming client its stream was
// cut (SPEC §7.5), in the stream's own format: e in st's error shape as
// an SSE event for SSE streams, an exception message with e's message
// for AWS event streams (internalServerException, which every Bedrock
// stream's SDK models). It is nil for bodies that have no events (a JSON
// body cut short is only aborted).
func streamError(st style, contentType string, e *gwError) []byte {
	switch {
	case hasMediaType(contentType, "text/event-stream"):
		var b bytes.Buffer
		switch st {
		case keybridge.ProviderAnthropic, keybridge.ProviderBedrock:
			b.WriteString("event: error\ndata: ")
			b.Write(errorBody(keybridge.ProviderAnthropic, e))
		case keybridge.ProviderGoogle:
			// Google ends its events with CRLF CRLF, and the Gen AI SDKs
			// split a buffer at the first LF LF in it: an LF-ended event
			// after Google's would glue them all into one bad event.
			// CRLF CRLF is read right after events ended either way.
			b.WriteString("data: ")
			b.Write(errorBody(keybridge.ProviderGoogle, e))
			b.WriteString("\r\n\r\n")
			return b.Bytes()
		default:
			b.WriteString("data: ")
			b.Write(errorBody(keybridge.ProviderOpenAI, e))
		}
		b.WriteString("\n\n")
		return b.Bytes()
	case hasMediaType(contentType, "application/vnd.amazon.eventstream"):
		payload, _ := json.Marshal(map[string]string{"message": e.msg})
		var b bytes.Buffer
		err := eventstream.NewEncoder().Encode(&b, eventstream.Message{
			Headers: eventstream.Headers{
				{Name: ":message-type", Value: eventstream.StringValue("exception")},
				{Name: ":exception-type", Value: eventstream.StringValue("internalServerException")},
				{Name: ":content-type", Value: eventstream.StringValue("application/json")},
			},
			Payload: payload,
		})
		if err != nil {
			return nil
		}
		return b.Bytes()
	}
	return nil
}

// hasMediaType reports whether a Content-Type value is of media type mt,
// ignoring parameters and case.
func hasMediaType(contentType, mt string) bool {
	if len(contentType) < len(mt) {
		return false
	}
	if !equalFold(contentType[:len(mt)], mt) {
		return false
	}
	rest := contentType[len(mt):]
	return rest == "" || rest[0] == ';' || rest[0] == ' '
}

// mediaType is a Content-Type's media type without its parameters, in
// lower case: what mime.ParseMediaType returns for a valid one, without
// its map of parameters. An invalid one is read as far as it goes.
func mediaType(contentType string) string {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

// jsonMedia reports whether a media type (from mediaType) is JSON:
// application/json or a +json type.
func jsonMedia(mt string) bool {
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// equalFold is strings.EqualFold for ASCII.
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

package gateway

import (
	"bytes"
	"net/http"
)

// A provider can fail a response after its 200 went out: an error event in
// the stream (Anthropic's "error", the Responses API's "response.failed" and
// "error", an OpenAI-style chunk or Gemini element holding an "error"
// object, a Bedrock exception message). The usage scanners see those bytes
// pass, and the request is recorded with the status the provider gives
// such an error when it can still answer with one, not the 200 the stream
// began with: what the client got is an error (docs/gateway.md#usage).

// keyFailed is the cheap test of a Responses event that may say its
// response failed: its type, anchored on the dot.
var keyFailed = searchKey{[]byte(`"response.failed"`), 9}

// isErrorObject is the cheap test of an event that is an error: a JSON
// object whose first member is an "error" object, as OpenAI's error
// chunks and Google's errors are sent (they have no other member). The
// test looks at the event's first bytes only: the events that are not
// errors pass at no cost.
func isErrorObject(d []byte) bool {
	v := firstValue(d, `"error"`)
	return len(v) > 0 && v[0] == '{'
}

// isErrorEvent is the cheap test of a Responses API error event, over SSE
// or a WebSocket: an object whose first member is "type":"error", as
// OpenAI sends them (with isErrorObject, one whose members came sorted).
func isErrorEvent(d []byte) bool {
	return bytes.HasPrefix(firstValue(d, `"type"`), []byte(`"error"`))
}

// firstValue is the text from the value of a JSON object's first member
// on, if that member is named name (quoted, as sent), else nil.
func firstValue(d []byte, name string) []byte {
	i := skipSpace(d, 0)
	if i >= len(d) || d[i] != '{' {
		return nil
	}
	rest, ok := bytes.CutPrefix(d[skipSpace(d, i+1):], []byte(name))
	if !ok {
		return nil
	}
	i = skipSpace(rest, 0)
	if i >= len(rest) || rest[i] != ':' {
		return nil
	}
	return rest[skipSpace(rest, i+1):]
}

// openaiFailure is the status of an OpenAI error, from its code (Responses)
// or its type (chat): the codes the Responses API fails a response with,
// the types of OpenAI's error objects, and the error class names that
// OpenAI-compatible servers (vLLM) send as the type. One it does not know
// is a server error.
func openaiFailure(code []byte) int {
	switch string(code) {
	case "BadRequestError":
		return http.StatusBadRequest
	case "AuthenticationError":
		return http.StatusUnauthorized
	case "PermissionDeniedError":
		return http.StatusForbidden
	case "NotFoundError":
		return http.StatusNotFound
	case "UnprocessableEntityError":
		return http.StatusUnprocessableEntity
	case "rate_limit_exceeded", "insufficient_quota", "requests", "tokens", "RateLimitError":
		return http.StatusTooManyRequests
	case "vector_store_timeout":
		return http.StatusGatewayTimeout
	case "invalid_request_error", "invalid_prompt", "data_residency_mismatch", "bio_policy",
		"misalignment_policy_violation", "invalid_image", "invalid_image_format", "invalid_base64_image",
		"invalid_image_url", "image_too_large", "image_too_small", "image_parse_error",
		"image_content_policy_violation", "invalid_image_mode", "image_file_too_large",
		"unsupported_image_media_type", "empty_image_file", "failed_to_download_image", "image_file_not_found":
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// anthropicFailure is the status Anthropic answers an error of this type
// with.
func anthropicFailure(typ []byte) int {
	switch string(typ) {
	case "invalid_request_error":
		return http.StatusBadRequest
	case "authentication_error":
		return http.StatusUnauthorized
	case "billing_error":
		return http.StatusPaymentRequired
	case "permission_error":
		return http.StatusForbidden
	case "not_found_error":
		return http.StatusNotFound
	case "request_too_large":
		return http.StatusRequestEntityTooLarge
	case "rate_limit_error":
		return http.StatusTooManyRequests
	case "timeout_error":
		return http.StatusGatewayTimeout
	case "overloaded_error":
		return 529
	}
	return http.StatusInternalServerError
}

// geminiFailure is the HTTP status of a Google API error's status, the
// canonical code's name (google.rpc.Code).
func geminiFailure(status []byte) int {
	switch string(status) {
	case "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE":
		return http.StatusBadRequest
	case "UNAUTHENTICATED":
		return http.StatusUnauthorized
	case "PERMISSION_DENIED":
		return http.StatusForbidden
	case "NOT_FOUND":
		return http.StatusNotFound
	case "ABORTED", "ALREADY_EXISTS":
		return http.StatusConflict
	case "RESOURCE_EXHAUSTED":
		return http.StatusTooManyRequests
	case "CANCELLED":
		return statusClientClosed
	case "NOT_IMPLEMENTED":
		return http.StatusNotImplemented
	case "UNAVAILABLE":
		return http.StatusServiceUnavailable
	case "DEADLINE_EXCEEDED":
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// bedrockFailure is the status Bedrock's runtime gives the exception a
// stream ends with.
func bedrockFailure(exception []byte) int {
	switch string(exception) {
	case "validationException":
		return http.StatusBadRequest
	case "modelTimeoutException":
		return http.StatusRequestTimeout
	case "modelStreamErrorException":
		return http.StatusFailedDependency
	case "throttlingException":
		return http.StatusTooManyRequests
	case "serviceUnavailableException":
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

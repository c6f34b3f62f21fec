package gateway

import (
	"bytes"
	"strconv"
	"strings"
)

// reqFields are the top-level fields of a JSON request body the gateway
// acts on: the model (allowlists), the declared output cap (limits'
// reservations) and whether it streams and asks for usage (metering).
type reqFields struct {
	ok            bool   // the body is a JSON object the scan could read
	model         string // top-level "model", when a string
	stream        bool   // "stream": true
	streamOptions []byte // the raw value of "stream_options", nil when absent
	maxTokens     int64  // max_tokens, max_output_tokens or max_completion_tokens, the largest
}

// scanReqBody reads the top level of a JSON object body without decoding
// it (scanTopLevel): a long conversation costs a pass over its bytes and
// no allocation.
func scanReqBody(b []byte) reqFields {
	var f reqFields
	f.ok = scanTopLevel(b, func(key, val []byte, _ bool) bool {
		if len(key) >= 2 {
			f.field(key[1:len(key)-1], val)
		}
		return true
	})
	return f
}

func (f *reqFields) field(key, val []byte) {
	switch string(key) { // no allocation: the compiler compares in place
	case "model":
		if len(val) >= 2 && val[0] == '"' {
			var m string
			if bytes.IndexByte(val[1:len(val)-1], '\\') < 0 {
				m = string(val[1 : len(val)-1])
			} else {
				m = jsonString(val) // rare: an escaped name
			}
			// As encoding/json reads it: the store keeps text, and a
			// database refuses invalid UTF-8.
			f.model = strings.ToValidUTF8(m, "\uFFFD")
		}
	case "stream":
		f.stream = string(val) == "true"
	case "stream_options":
		f.streamOptions = val
	case "max_tokens", "max_output_tokens", "max_completion_tokens":
		if n, err := strconv.ParseInt(string(val), 10, 64); err == nil && n > f.maxTokens {
			f.maxTokens = n
		}
	}
}

package gateway

import (
	"bytes"
	"encoding/json"
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
// it: nested values are skipped by matching brackets and strings, so a
// long conversation costs a pass over its bytes and no allocation.
func scanReqBody(b []byte) reqFields {
	var f reqFields
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return f
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		f.ok = true
		return f
	}
	for i < len(b) {
		if b[i] != '"' {
			return f
		}
		kEnd := skipString(b, i)
		if kEnd < 0 {
			return f
		}
		key := b[i+1 : kEnd-1]
		i = skipWS(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return f
		}
		i = skipWS(b, i+1)
		vEnd := skipValue(b, i)
		if vEnd < 0 {
			return f
		}
		f.field(key, b[i:vEnd])
		i = skipWS(b, vEnd)
		if i >= len(b) {
			return f
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			f.ok = true
			return f
		default:
			return f
		}
	}
	return f
}

func (f *reqFields) field(key, val []byte) {
	switch string(key) { // no allocation: the compiler compares in place
	case "model":
		if len(val) >= 2 && val[0] == '"' {
			var m string
			if bytes.IndexByte(val[1:len(val)-1], '\\') < 0 {
				m = string(val[1 : len(val)-1])
			} else if json.Unmarshal(val, &m) != nil {
				m = "" // rare: an escaped name is decoded, as JSON
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

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] ('"'),
// or -1.
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); {
		k := bytes.IndexAny(b[j:], "\"\\")
		if k < 0 {
			return -1
		}
		j += k
		if b[j] == '\\' {
			j += 2
			continue
		}
		return j + 1
	}
	return -1
}

// skipValue returns the index after the JSON value starting at b[i], or
// -1. Objects and arrays are skipped by depth, strings in them whole.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				e := skipString(b, j)
				if e < 0 {
					return -1
				}
				j = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	if j == i {
		return -1
	}
	return j
}

package gateway

import (
	"bytes"
	"math"
	"strconv"
	"strings"
)

// reqFields are the top-level fields of a JSON request body the gateway
// acts on: the model (allowlists), the declared output cap (limits'
// reservations) and whether it streams and asks for usage (metering).
//
// Member names are read as the providers' parsers read them: escapes
// decoded ("str\u0065am" is "stream"), and, where some parsers match
// names in any letter case (Go's encoding/json, behind many
// OpenAI-compatible servers) and reading them so can only count more,
// in any case: the model and the output caps. "stream" and
// "stream_options" are matched exactly: a "Stream" OpenAI ignores must
// not make the gateway add stream options to a request that does not
// stream.
type reqFields struct {
	ok            bool   // the body is a JSON object the scan could read
	model         string // top-level "model", when a string
	stream        bool   // "stream": true
	streamOptions []byte // the raw value of "stream_options", nil when absent
	// maxTokens is the declared output cap: the largest of max_tokens,
	// max_output_tokens, max_completion_tokens, Llama's max_gen_len,
	// Gemini's generationConfig.maxOutputTokens and Converse's
	// inferenceConfig.maxTokens, times the choices asked for (n, Gemini's
	// candidateCount), each of which may use the whole cap.
	maxTokens int64
	choices   int64
}

// scanReqBody reads the top level of a JSON object body without decoding
// it (scanTopLevel): a long conversation costs a pass over its bytes and
// no allocation.
func scanReqBody(b []byte) reqFields {
	var f reqFields
	f.ok = scanTopLevel(b, func(key, val []byte, _ bool) bool {
		f.field(memberName(key), val)
		return true
	})
	if f.choices > 1 {
		f.maxTokens = mulSat(f.maxTokens, f.choices)
	}
	return f
}

// memberName is a member name token's text: its bytes between the
// quotes, or, when it holds escapes (rare), its decoded text.
func memberName(key []byte) []byte {
	if len(key) < 2 {
		return nil
	}
	if bytes.IndexByte(key, '\\') < 0 {
		return key[1 : len(key)-1]
	}
	return []byte(jsonString(key))
}

func (f *reqFields) field(name, val []byte) {
	switch string(name) { // no allocation: the compiler compares in place
	case "stream":
		f.stream = string(val) == "true"
		return
	case "stream_options":
		f.streamOptions = val
		return
	}
	switch {
	case bytes.EqualFold(name, []byte("model")):
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
	case isCapName(name):
		f.cap(val)
	case bytes.EqualFold(name, []byte("n")):
		f.choice(val)
	case bytes.EqualFold(name, []byte("generationConfig")), bytes.EqualFold(name, []byte("generation_config")),
		bytes.EqualFold(name, []byte("inferenceConfig")):
		// Gemini's and Converse's options: their cap and choices.
		scanTopLevel(val, func(key, val []byte, _ bool) bool {
			switch name := memberName(key); {
			case isCapName(name):
				f.cap(val)
			case bytes.EqualFold(name, []byte("candidateCount")), bytes.EqualFold(name, []byte("candidate_count")):
				f.choice(val)
			}
			return true
		})
	}
}

// isCapName reports whether a member names an output cap.
func isCapName(name []byte) bool {
	for _, c := range [...]string{"max_tokens", "max_output_tokens", "max_completion_tokens", "max_gen_len",
		"maxOutputTokens", "maxTokens"} {
		if bytes.EqualFold(name, []byte(c)) {
			return true
		}
	}
	return false
}

// cap counts a declared output cap: the largest counts.
func (f *reqFields) cap(val []byte) {
	if n, ok := count(val); ok && n > f.maxTokens {
		f.maxTokens = n
	}
}

// choice counts how many answers the request asks for.
func (f *reqFields) choice(val []byte) {
	if n, ok := count(val); ok && n > f.choices {
		f.choices = n
	}
}

// count reads a JSON whole number, past int64 as its largest.
func count(val []byte) (int64, bool) {
	n, err := strconv.ParseInt(string(val), 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange && val[0] != '-' {
			return math.MaxInt64, true
		}
		return 0, false
	}
	return n, true
}

// mulSat is a*b for non-negative numbers, at most math.MaxInt64.
func mulSat(a, b int64) int64 {
	if a != 0 && b > math.MaxInt64/a {
		return math.MaxInt64
	}
	return a * b
}

package gateway

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// emptyChoicesForward is hasEmptyChoices as a forward scan from each
// "choices", overlapping ones included: the plain reading of its rule,
// which the backward scan must match.
func emptyChoicesForward(ev []byte) bool {
	key := []byte(`"choices"`)
	for {
		i := bytes.Index(ev, key)
		if i < 0 {
			return false
		}
		j := skipSpace(ev, i+len(key))
		if j < len(ev) && ev[j] == ':' {
			if j = skipSpace(ev, j+1); j < len(ev) && ev[j] == '[' {
				if j = skipSpace(ev, j+1); j < len(ev) && ev[j] == ']' {
					return true
				}
			}
		}
		ev = ev[i+1:]
	}
}

func TestHasEmptyChoicesMatchesForwardScan(t *testing.T) {
	for _, s := range []string{
		`data: {"choices":[],"usage":{}}`, `{"choices" : [ ] }`, "{\"choices\"\r\n:\t[\n]}", `{"choices":[{}]}`,
		`{"choices":[]`, `"choices":[`, `choices":[]`, `{"xchoices":[]}`, `]`, `[]`, `:[]`, `"choices"]`,
		`{"a":[],"choices":[1],"b":"choices":[]}`, `""choices":[]`, "",
	} {
		if got, want := hasEmptyChoices([]byte(s)), emptyChoicesForward([]byte(s)); got != want {
			t.Errorf("hasEmptyChoices(%q) = %v, want %v", s, got, want)
		}
	}
	// The rule's own pieces come often, so that many inputs hold it.
	parts := []string{`"choices"`, `"choices"`, `"choices":`, `:`, `:[`, `[`, `[]`, `]`, `]`, ` `, "\t", "\n", "\r",
		`"choice"`, `choices"`, `"`, `{`, `}`, `,`, `a`, `"usage"`, `[{`, `}]`}
	r := rand.New(rand.NewPCG(1, 2))
	matched := 0
	for range 200_000 {
		var b []byte
		for range 1 + r.IntN(12) {
			b = append(b, parts[r.IntN(len(parts))]...)
		}
		got, want := hasEmptyChoices(b), emptyChoicesForward(b)
		if got != want {
			t.Fatalf("hasEmptyChoices(%q) = %v, want %v", b, got, want)
		}
		if want {
			matched++
		}
	}
	if matched < 1000 {
		t.Errorf("only %d of the random inputs hold empty choices: the test reaches too little", matched)
	}
}

// usageOnlyByDecoding is isUsageOnlyChunk by encoding/json: the reading
// the scan must agree with on every chunk a provider sends.
func usageOnlyByDecoding(ev []byte) bool {
	data, ok := bytes.CutPrefix(bytes.TrimSpace(ev), []byte("data:"))
	if !ok {
		return false
	}
	var chunk struct {
		Choices []json.RawMessage `json:"choices"`
		Usage   json.RawMessage   `json:"usage"`
	}
	if json.Unmarshal(bytes.TrimSpace(data), &chunk) != nil {
		return false
	}
	return chunk.Choices != nil && len(chunk.Choices) == 0 && len(chunk.Usage) > 0 && chunk.Usage[0] == '{'
}

func TestIsUsageOnlyChunkMatchesDecoding(t *testing.T) {
	for _, s := range []string{
		`data: {"choices":[],"usage":{"prompt_tokens":3}}`, "data:{\"choices\" : [ ] ,\n\"usage\":{}}\r\n\r\n",
		`data: {"choices":[],"usage":null}`, `data: {"choices":[{}],"usage":{}}`, `data: {"usage":{}}`,
		`data: {"choices":[],"usage":{},"choices":[1]}`, `data: {"choices":[1],"usage":{},"choices":[]}`,
		`data: {"choices":[],"usage":{},"usage":null}`, `data: {"x":{"choices":[],"usage":{}}}`,
		`data: {"choices":[],"usage":{}`, `data: {"choices":[],"usage":{}}x`, `event: x`, `data: [DONE]`,
		`data: {"choices":[],"usage":{"a":"}"}}`, `{"choices":[],"usage":{}}`,
	} {
		if got, want := isUsageOnlyChunk([]byte(s)), usageOnlyByDecoding([]byte(s)); got != want {
			t.Errorf("isUsageOnlyChunk(%q) = %v, want %v", s, got, want)
		}
	}
}

// include_usage is set by adding it or by making its value true; every
// other byte of the body stays as sent.
func TestInjectIncludeUsageKeepsTheBody(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"stream":true,"messages":[{"content":"a<b & c"}]}`,
			`{"stream_options":{"include_usage":true},"stream":true,"messages":[{"content":"a<b & c"}]}`},
		{` { "stream" : true } `, ` {"stream_options":{"include_usage":true}, "stream" : true } `},
		{`{"stream":true,"stream_options":{"include_usage":false},"z":"a<b","a":1}`,
			`{"stream":true,"stream_options":{"include_usage":true},"z":"a<b","a":1}`},
		{`{"stream":true,"stream_options":{ "x" : 1 },"z":"\u003c"}`,
			`{"stream":true,"stream_options":{"include_usage":true, "x" : 1 },"z":"\u003c"}`},
		{`{"stream":true,"stream_options":{ }}`, `{"stream":true,"stream_options":{"include_usage":true }}`},
		{`{"stream":true,"stream_options":null}`, `{"stream":true,"stream_options":{"include_usage":true}}`},
		{`{"stream":true,"stream_options":{"include_usage":null,"include_usage":false}}`,
			`{"stream":true,"stream_options":{"include_usage":true,"include_usage":true}}`},
		{`{"stream":true,"stream_opt\u0069ons":{"include_us\u0061ge":false}}`,
			`{"stream":true,"stream_opt\u0069ons":{"include_us\u0061ge":true}}`},
		{`{"stream_options":{"include_usage":true},"stream":true,"stream_options":{}}`,
			`{"stream_options":{"include_usage":true},"stream":true,"stream_options":{"include_usage":true}}`},
	} {
		f := scanReqBody([]byte(tc.body))
		if !wantsUsageInjected("openai", "/chat/completions", &f) {
			t.Errorf("%s: no injection wanted", tc.body)
			continue
		}
		if got := string(injectIncludeUsage([]byte(tc.body), &f)); got != tc.want {
			t.Errorf("injectIncludeUsage(%s)\n = %s\nwant %s", tc.body, got, tc.want)
		}
	}
}

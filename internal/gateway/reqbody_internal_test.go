package gateway

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestScanReqBodyAgreesWithEncodingJSON(t *testing.T) {
	for _, body := range []string{
		`{}`,
		`{"model":"gpt-4o","stream":true,"max_tokens":100}`,
		` { "messages" : [ {"role":"user","content":"say \"model\": \"evil\", {\"stream\":true}"} ] , "model" : "claude-3" , "max_output_tokens": 7 } `,
		`{"tools":[{"function":{"parameters":{"stream":true,"model":"nested"}}}],"model":"outer","stream":false}`,
		`{"model":"esc\u0061ped\\path","stream_options":{"include_usage":false},"stream":true,"max_completion_tokens":5,"max_tokens":3}`,
		`{"model":null,"stream":"true"}`,
		`{"stream_options":null,"stream":true}`,
	} {
		f := scanReqBody([]byte(body))
		var want struct {
			Model         any             `json:"model"`
			Stream        any             `json:"stream"`
			StreamOptions json.RawMessage `json:"stream_options"`
			Max           int64           `json:"max_tokens"`
			MaxOut        int64           `json:"max_output_tokens"`
			MaxCompl      int64           `json:"max_completion_tokens"`
		}
		if err := json.Unmarshal([]byte(body), &want); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		model, _ := want.Model.(string)
		stream, _ := want.Stream.(bool)
		maxTok := max(want.Max, want.MaxOut, want.MaxCompl)
		if !f.ok || f.model != model || f.stream != stream || f.maxTokens != maxTok ||
			strings.TrimSpace(string(f.streamOptions)) != strings.TrimSpace(string(want.StreamOptions)) {
			t.Errorf("scanReqBody(%s) = %+v, want model %q stream %v max %d options %s", body, f, model, stream, maxTok, want.StreamOptions)
		}
	}
	for _, bad := range []string{``, `[]`, `{"model":`, `{"model":"x"`, `{"a":[1,2}`, `{"a":"unterminated}`, `not json`} {
		if f := scanReqBody([]byte(bad)); f.ok {
			t.Errorf("scanReqBody(%q) read it as an object", bad)
		}
	}
}

func FuzzScanReqBody(f *testing.F) {
	f.Add(`{"model":"gpt-4o","stream":true,"messages":[{"content":"a\"b"}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		got := scanReqBody([]byte(body))
		var want struct {
			Model any `json:"model"`
		}
		if got.ok && json.Valid([]byte(body)) && json.Unmarshal([]byte(body), &want) == nil {
			if m, _ := want.Model.(string); m != got.model {
				t.Errorf("model = %q, encoding/json says %q", got.model, m)
			}
		}
	})
}

func BenchmarkScanReqBody(b *testing.B) {
	body := []byte(`{"model":"gpt-4o-mini","messages":[` + strings.Repeat(`{"role":"user","content":"Say hello in one short sentence, please, with \"quotes\"."},`, 12) +
		`{"role":"user","content":"last"}],"stream":true,"max_tokens":256}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		scanReqBody(body)
	}
}

// Member names are read as providers' parsers read them: escapes decoded
// everywhere, any letter case for the model and the output caps, and the
// caps nested in Gemini's and Converse's options counted, times the
// choices asked for.
func TestScanReqBodyNames(t *testing.T) {
	for _, tc := range []struct {
		body   string
		model  string
		stream bool
		opts   string
		max    int64
	}{
		{`{"str\u0065am":true,"stream_opt\u0069ons":{"include_usage":false}}`, "", true, `{"include_usage":false}`, 0},
		{`{"Stream":true,"STREAM_OPTIONS":{}}`, "", false, "", 0}, // OpenAI reads neither
		{`{"Model":"gpt-4o"}`, "gpt-4o", false, "", 0},
		{`{"m\u006fdel":"a","MODEL":"b"}`, "b", false, "", 0},
		{`{"Max_Tokens":10,"max_t\u006fkens":20}`, "", false, "", 20},
		{`{"max_tokens":100,"n":3}`, "", false, "", 300},
		{`{"generationConfig":{"maxOutputTokens":50,"candidateCount":2}}`, "", false, "", 100},
		{`{"generation_config":{"max_output_tokens":60}}`, "", false, "", 60},
		{`{"inferenceConfig":{"maxTokens":70},"max_gen_len":10}`, "", false, "", 70},
		{`{"max_gen_len":80}`, "", false, "", 80},
		{`{"max_tokens":99999999999999999999999}`, "", false, "", math.MaxInt64},
		{`{"max_tokens":4611686018427387904,"n":4}`, "", false, "", math.MaxInt64},
		{`{"max_tokens":-5,"n":-2}`, "", false, "", 0},
	} {
		f := scanReqBody([]byte(tc.body))
		if !f.ok || f.model != tc.model || f.stream != tc.stream || string(f.streamOptions) != tc.opts || f.maxTokens != tc.max {
			t.Errorf("scanReqBody(%s) = model %q stream %v options %s max %d; want %q %v %s %d",
				tc.body, f.model, f.stream, f.streamOptions, f.maxTokens, tc.model, tc.stream, tc.opts, tc.max)
		}
	}
}

package gateway

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// refModels is what encoding/json sees at the top level of body: each
// "model" member's value, in order, or ok=false when body is not one
// JSON object.
func refModels(body []byte) (models []string, ok bool) {
	if !json.Valid(body) {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(body))
	if tok, _ := d.Token(); tok != json.Delim('{') {
		return nil, false
	}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return nil, false
		}
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			return nil, false
		}
		if tok == "model" {
			var s string
			if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
				s = "\x00not a string"
			}
			models = append(models, s)
		}
	}
	return models, true
}

func scanAll(body []byte) (models []string, named, ok bool) {
	named, ok = scanModels(body, func(raw []byte, str bool) bool {
		if str {
			models = append(models, jsonString(raw))
		} else {
			models = append(models, "\x00not a string")
		}
		return true
	})
	return models, named, ok
}

var scanSeeds = []string{
	`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
	`{"messages":[{"role":"user","content":"a \"model\": \"x\" {["}],"model":"gpt-4o-mini"}`,
	`{"model":"a","model":"b"}`,
	`{"mod\u0065l":"c"}`,
	`{"model":"\u0067pt"}`,
	`{"model":null}`,
	`{"model":{"name":"x"}}`,
	`{"nested":{"model":"x"}}`,
	`[{"model":"x"}]`,
	`{}`,
	` { "model" : "x" } `,
	`{"model":"x"}{"model":"y"}`,
	`{"model":"x",}`,
	`{"model":"x"`,
	`{"model":"x\"}`,
	"{\"model\":\"a\tb\"}",
	`{"a":1.5e3,"b":true,"c":null,"model":"z"}`,
	"\xef\xbb\xbf{\"model\":\"x\"}",
	``,
}

func TestScanModelsMatchesEncodingJSON(t *testing.T) {
	for _, s := range scanSeeds {
		checkScan(t, []byte(s))
	}
}

func FuzzScanModels(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkScan(t, body) })
}

// checkScan holds scanModels to encoding/json on every valid body: the
// same models, in the same order. On an invalid one it may see less, but
// never claim to have read it all.
func checkScan(t *testing.T, body []byte) {
	want, wantOK := refModels(body)
	got, named, ok := scanAll(body)
	if wantOK {
		if !ok || !slices.Equal(got, want) || named != (len(want) > 0) {
			t.Errorf("scanModels(%q) = %q, named %v, ok %v; want %q, ok", body, got, named, ok, want)
		}
		return
	}
	if ok && json.Valid(body) {
		t.Errorf("scanModels(%q) read an invalid body as valid", body)
	}
}

// chatBody is a ~1 KB chat completion request with the model after the
// messages, as openai-go writes it.
func chatBody() []byte {
	var b strings.Builder
	b.WriteString(`{"messages":[{"role":"system","content":"You are a careful assistant. Answer briefly, cite sources, and say \"I don't know\" when unsure."}`)
	for i := range 6 {
		b.WriteString(`,{"role":"user","content":"Question ` + strings.Repeat("x", i) + `: what does the {model} field of a request do, and why is it [checked] here?"}`)
	}
	b.WriteString(`],"model":"gpt-4o-mini","temperature":0.2,"max_completion_tokens":512,"stream":true,"stream_options":{"include_usage":true}}`)
	return []byte(b.String())
}

func BenchmarkScanModels(b *testing.B) {
	body := chatBody()
	var found int
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		scanModels(body, func(raw []byte, str bool) bool {
			found += len(raw)
			return true
		})
	}
	if found == 0 {
		b.Fatal("no model found")
	}
}

// BenchmarkDecoderToken is the same extraction with encoding/json's
// Decoder.Token, for comparison.
func BenchmarkDecoderToken(b *testing.B) {
	body := chatBody()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if m, ok := refModels(body); !ok || len(m) != 1 {
			b.Fatal("no model found")
		}
	}
}

func TestScanModelsAllocatesNothing(t *testing.T) {
	body := chatBody()
	if n := testing.AllocsPerRun(100, func() { scanModels(body, func([]byte, bool) bool { return true }) }); n != 0 {
		t.Errorf("scanModels allocates %v times per body, want 0", n)
	}
}

// The usage row's model is read on every request: from an Azure path,
// base URL's path included, or from the scanned body, it costs no
// allocation.
func TestUsageModelAllocatesNothing(t *testing.T) {
	azure := &keybridge.Provider{Type: keybridge.ProviderAzureOpenAI}
	openai := &keybridge.Provider{Type: keybridge.ProviderOpenAI}
	for _, tc := range []struct {
		name       string
		provider   *keybridge.Provider
		base, rest string
		want       string
	}{
		{"azure", azure, "", "/openai/deployments/gpt-4o/chat/completions", "gpt-4o"},
		{"azure, base URL ending in /openai", azure, "/openai", "/deployments/gpt-4o/chat/completions", "gpt-4o"},
		{"azure, no deployment", azure, "/openai", "/responses", "gpt-4o-mini"},
		{"openai", openai, "/v1", "/chat/completions", "gpt-4o-mini"},
	} {
		x := &exchange{
			rt:        &route{provider: tc.provider, basePath: tc.base},
			path:      tc.rest,
			scanned:   true,
			reqFields: reqFields{ok: true, model: "gpt-4o-mini"},
		}
		if got := x.model(); got != tc.want {
			t.Errorf("%s: model() = %q, want %q", tc.name, got, tc.want)
		}
		if n := testing.AllocsPerRun(100, func() { x.model() }); n != 0 {
			t.Errorf("%s: model() allocates %v times, want 0", tc.name, n)
		}
	}
}

// modelInPath reads the path the provider is sent, base URL's path first,
// as pathModel reads the two joined, for every base and path shape.
func TestModelInPathReadsTheJoinedPath(t *testing.T) {
	bases := []string{"", "/openai", "/openai/deployments", "/openai/deployments/pinned", "/v1", "/model", "/x/model",
		"/v1beta", "/o", "/openai/deploy"}
	rests := []string{"/chat/completions", "/deployments/gpt-4o/chat/completions", "/openai/deployments/gpt-4o/chat/completions",
		"/model/anthropic.claude/invoke", "/claude/invoke", "/gpt-4o/chat/completions", "/models/gemini-2.0:generateContent",
		"/penai/deployments/x/y", "ments/x/chat", "/", ""}
	for _, pt := range []keybridge.ProviderType{keybridge.ProviderOpenAI, keybridge.ProviderAnthropic, keybridge.ProviderGoogle,
		keybridge.ProviderBedrock, keybridge.ProviderAzureOpenAI, keybridge.ProviderOpenAICompatible} {
		for _, base := range bases {
			for _, rest := range rests {
				x := &exchange{rt: &route{provider: &keybridge.Provider{Type: pt}, basePath: base}, path: rest}
				gotM, gotOK := x.modelInPath()
				wantM, wantOK := pathModel(pt, rest)
				if !wantOK {
					wantM, wantOK = pathModel(pt, base+rest)
				}
				if gotM != wantM || gotOK != wantOK {
					t.Errorf("%s, base %q, path %q: modelInPath = %q, %v; want %q, %v", pt, base, rest, gotM, gotOK, wantM, wantOK)
				}
			}
		}
	}
}

// canonicalPath decodes exactly the escapes of unreserved characters and
// makes runs of slashes one; every other byte stays as sent.
func TestCanonicalPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/v1/chat/completions", "/v1/chat/completions"},
		{"/openai/%64eployments/gpt-4%6F/chat", "/openai/deployments/gpt-4o/chat"},
		{"/%41%7a%30%2D%2e%5F%7E", "/Az0-._~"},
		{"/model/arn%3Aaws%3Abedrock%2Fx/invoke", "/model/arn%3Aaws%3Abedrock%2Fx/invoke"},
		{"/a%2F%2Fb", "/a%2F%2Fb"}, // encoded slashes are not path separators
		{"//v1///models//x", "/v1/models/x"},
		{"/model/a/%2E%2E/b", "/model/a/../b"},
		{"/%", "/%"}, {"/%6", "/%6"}, {"/%zz", "/%zz"}, {"/%%41", "/%A"},
		{"", ""},
	} {
		if got := canonicalPath(tc.in); got != tc.want {
			t.Errorf("canonicalPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { canonicalPath("/v1/chat/completions") }); n != 0 {
		t.Errorf("a plain path allocates %v times, want 0", n)
	}
}

// modelFromPath, the usage row's last resort (an unknown provider, a path
// whose type names no model at a fixed place), reads a model as the
// allowlist reads one: the segment unescaped, the prefix in any case.
func TestModelFromPath(t *testing.T) {
	for path, want := range map[string]string{
		"/model/anthropic.claude-v2%3A1/invoke":           "anthropic.claude-v2:1",
		"/Model/amazon.nova-pro-v1:0/converse":            "amazon.nova-pro-v1:0",
		"/openai/deployments/gpt-4o/chat/completions":     "gpt-4o",
		"/openai/deployments/my%20deploy/chat":            "my deploy",
		"/v1beta/models/gemini-2.0-flash:generateContent": "gemini-2.0-flash",
		"/v1/models/gpt-4o":                               "gpt-4o",
		"/v1/models/gpt-4o?x=/model/other":                "gpt-4o",
		"/v1/chat/completions":                            "",
		"":                                                "",
	} {
		if got := modelFromPath(path); got != want {
			t.Errorf("modelFromPath(%q) = %q, want %q", path, got, want)
		}
	}
}

package gateway_test

// Edges of the model allowlist (SPEC §7.2) that models_test.go does not
// reach: which requests may name no model, and model ids in raw paths.

import (
	"bytes"
	"context"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// A restricted key may name no model only where no model is called:
// listing or describing models and counting tokens. A WebSocket upgrade
// is refused whatever its path or body names: the models asked for inside
// the tunnel are not checked.
func TestAllowedModelsNamingNone(t *testing.T) {
	e := newEnv(t)
	mock, _ := oaUpstream(t, e, "oa", "openai", "/v1", nil)
	key := restrictedKey(e, "gpt-4o-mini")
	req := func(method, path, body string, upgrade bool) *http.Request {
		r := e.post(path, key, body)
		r.Method = method
		if body == "" {
			r.Body, r.ContentLength = http.NoBody, 0
		}
		if upgrade {
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
			r.Header.Set("Sec-WebSocket-Version", "13")
			r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		r       *http.Request
		allowed bool
	}{
		{"listing models", req("GET", "/gateway/oa/models", "", false), true},
		{"describing a model not on the list", req("GET", "/gateway/oa/models/gpt-4o", "", false), true},
		{"counting a response's input tokens", req("POST", "/gateway/oa/responses/input_tokens", `{"input":"hi"}`, false), true},
		{"counting them for a model not on the list", req("POST", "/gateway/oa/responses/input_tokens", `{"model":"gpt-4o","input":"hi"}`, false), false},
		{"a POST to the models path", req("POST", "/gateway/oa/models", `{}`, false), false},
		{"a response", req("POST", "/gateway/oa/responses", `{"input":"hi"}`, false), false},
		{"a WebSocket on the Responses path", req("GET", "/gateway/oa/responses", "", true), false},
		{"a WebSocket naming an allowed model in its body", req("GET", "/gateway/oa/responses", `{"model":"gpt-4o-mini"}`, true), false},
		{"a WebSocket on a models path", req("GET", "/gateway/oa/models", "", true), false},
		{"a WebSocket on a path with a models segment", req("GET", "/gateway/oa/models/gpt-4o-mini/realtime", "", true), false},
	} {
		before := len(mock.Requests())
		resp, body := doUnlessTunnel(t, tc.r)
		refused := resp.Header.Get("X-Keybridge-Error") == keybridge.EForbidden
		if refused == tc.allowed {
			t.Errorf("%s: got %d (X-Keybridge-Error %q) %.200s, want allowed %t", tc.name, resp.StatusCode, resp.Header.Get("X-Keybridge-Error"), body, tc.allowed)
		}
		if refused {
			checkShape(t, "openai", resp, body, http.StatusForbidden, keybridge.EForbidden, "")
			if n := len(mock.Requests()) - before; n != 0 {
				t.Errorf("%s: refused, but reached the provider", tc.name)
			}
		}
	}
}

// doUnlessTunnel is e.do for a request that may be answered with a
// WebSocket: a 101 is closed at once (its body would never end) and
// returned without a body.
func doUnlessTunnel(t *testing.T, r *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, nil
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// Bedrock model ids in the path as clients send them: with ':' as is or
// escaped, and ARNs with their '/' escaped, matched unescaped; the body's
// "model" and the query are not read there.
func TestAllowedModelsBedrockRawPaths(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	key := restrictedKey(b.env, brModel, brARN)
	body := `{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		name, path string
		allowed    bool
	}{
		{"an id with ':' as is", "/model/" + brModel + "/invoke", true},
		{"an id with ':' escaped", brModelPath + "/invoke", true},
		{"an id with ':' escaped in lower case", "/model/anthropic.claude-3-5-sonnet-20241022-v2%3a0/converse", true},
		{"an ARN, escaped", brARNPath + "/converse", true},
		{"another version of the model", "/model/anthropic.claude-3-5-sonnet-20241022-v2:1/invoke", false},
		{"an allowed id in the query only", "/model/anthropic.claude-3-opus:0/invoke?model=" + brModel, false},
		{"an ARN with its '/' as is", "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0/converse", false},
	} {
		before := len(b.mock.Requests())
		r := b.post("/gateway/br"+tc.path, key, body)
		resp, got := b.do(r)
		refused := resp.Header.Get("X-Keybridge-Error") == keybridge.EForbidden
		if refused == tc.allowed {
			t.Errorf("%s: got %d %.200s, want allowed %t", tc.name, resp.StatusCode, got, tc.allowed)
		}
		if reached := len(b.mock.Requests()) > before; reached != tc.allowed {
			t.Errorf("%s: reached the provider %t, want %t", tc.name, reached, tc.allowed)
		}
		if refused {
			checkShape(t, "bedrock", resp, got, http.StatusForbidden, keybridge.EForbidden, "is not allowed")
		}
	}
	// A body naming an allowed model does not change what the path calls.
	resp, got := b.do(b.post("/gateway/br/model/anthropic.claude-3-opus:0/invoke", key, `{"model":"`+brModel+`","messages":[]}`))
	checkShape(t, "bedrock", resp, got, http.StatusForbidden, keybridge.EForbidden, `"anthropic.claude-3-opus:0" is not allowed`)
}

// A form's model (OpenAI's audio transcriptions, sent multipart by the
// SDK) is checked as a JSON body's is: allowed, refused, every "model"
// field of the form, and none named.
func TestAllowedModelsMultipartForm(t *testing.T) {
	e := newEnv(t)
	var got []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.FormValue("model"))
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"text":"hello"}`)
	}))
	t.Cleanup(up.Close)
	e.provider(map[string]any{"name": "oa", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oa", "sk-form-0123456789", 0)
	key := restrictedKey(e, "gpt-4o-mini-transcribe")
	transcribe := func(model openai.AudioModel) error {
		_, err := oaClient(e, "oa", key).Audio.Transcriptions.New(context.Background(), openai.AudioTranscriptionNewParams{
			File: openai.File(strings.NewReader("RIFF...."), "a.wav", "audio/wav"), Model: model})
		return err
	}
	if err := transcribe("gpt-4o-mini-transcribe"); err != nil {
		t.Fatalf("an allowed model: %v", err)
	}
	checkOAError(t, transcribe("gpt-transcribe"), http.StatusForbidden, keybridge.EForbidden, "permission_error", `model "gpt-transcribe" is not allowed`)

	form := func(fields ...string) *http.Request {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for i := 0; i < len(fields); i += 2 {
			mw.WriteField(fields[i], fields[i+1])
		}
		fw, _ := mw.CreateFormFile("file", "a.wav")
		io.WriteString(fw, "RIFF....")
		mw.Close()
		r := e.post("/gateway/oa/audio/transcriptions", key, b.String())
		r.Header.Set("Content-Type", mw.FormDataContentType())
		return r
	}
	for _, tc := range []struct {
		name   string
		r      *http.Request
		reason string
	}{
		{"a second model field", form("model", "gpt-4o-mini-transcribe", "model", "gpt-transcribe"), `gpt-transcribe\" is not allowed`},
		{"no model field", form("language", "en"), "names none"},
		{"a form cut short", func() *http.Request {
			r := form("model", "gpt-4o-mini-transcribe")
			b, _ := io.ReadAll(r.Body)
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b[:len(b)-10])), int64(len(b)-10)
			return r
		}(), "cannot be read"},
	} {
		resp, body := e.do(tc.r)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), tc.reason) {
			t.Errorf("%s: %d %s, want 403 saying %q", tc.name, resp.StatusCode, body, tc.reason)
		}
	}
	if !slices.Equal(got, []string{"gpt-4o-mini-transcribe"}) {
		t.Errorf("the provider got forms naming %q, want only the allowed one", got)
	}
}

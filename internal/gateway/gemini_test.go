package gateway_test

// The Google Gen AI SDK for Go pointed at the gateway, which forwards to
// the providertest Gemini mock, and plain HTTP in Gemini's REST style
// (?key=).

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genai"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

const gemModel = "gemini-2.5-flash"

// gemEnv is a Keybridge with a google provider "gem" in front of the mock.
type gemEnv struct {
	*env
	mock *providertest.Server
	keys []string // upstream keys, in priority order
	seen headerLog
}

// gemUpstream adds a google provider named name to e, in front of a new
// Gemini mock, with one upstream key the mock knows.
func gemUpstream(t *testing.T, e *env, name string) *providertest.Server {
	gem := providertest.NewGemini(t)
	key := canary(t, "AIzaSy")
	gem.AddKey(key)
	e.provider(map[string]any{"name": name, "type": "google", "base_url": gem.URL})
	e.addKey(name, key, 0)
	return gem
}

// newGemEnv makes n upstream keys, each known to the mock.
func newGemEnv(t *testing.T, opts envOptions, n int) *gemEnv {
	e := newEnvWith(t, storetest.SQLite(t), opts)
	g := &gemEnv{env: e, mock: providertest.NewGemini(t)}
	g.mock.Usage = providertest.Usage{Input: 10, Output: 30, CacheRead: 4, Reasoning: 6}
	g.mock.Events = 3
	e.provider(map[string]any{"name": "gem", "type": "google", "base_url": g.mock.URL})
	for i := range n {
		k := canary(t, "AIzaSy")
		g.mock.AddKey(k)
		e.addKey("gem", k, i)
		g.keys = append(g.keys, k)
	}
	return g
}

// headerLog keeps the headers and bodies of the answers a client got, so
// that tests can look at what the SDK does not expose.
type headerLog struct {
	mu      sync.Mutex
	headers []http.Header
	bodies  []string
}

func (h *headerLog) last() http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.headers) == 0 {
		return http.Header{}
	}
	return h.headers[len(h.headers)-1]
}

func (h *headerLog) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for i, hh := range h.headers {
		for name, vv := range hh {
			b.WriteString(name + ": " + strings.Join(vv, ",") + "\n")
		}
		b.WriteString(h.bodies[i])
	}
	return b.String()
}

// recordingTransport notes each answer's headers and body as the client
// reads them.
type recordingTransport struct{ log *headerLog }

func (rt recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	rt.log.mu.Lock()
	rt.log.headers = append(rt.log.headers, resp.Header.Clone())
	rt.log.bodies = append(rt.log.bodies, "")
	i := len(rt.log.bodies) - 1
	rt.log.mu.Unlock()
	resp.Body = &teeBody{ReadCloser: resp.Body, log: rt.log, i: i}
	return resp, nil
}

type teeBody struct {
	io.ReadCloser
	log *headerLog
	i   int
}

func (b *teeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.log.mu.Lock()
	b.log.bodies[b.i] += string(p[:n])
	b.log.mu.Unlock()
	return n, err
}

// client is the official SDK as a user points it at Keybridge: the
// gateway's base URL and a Keybridge key. Its transport only records.
func (g *gemEnv) client(provider, key string) *genai.Client {
	g.t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: g.URL + "/gateway/" + provider},
		HTTPClient:  &http.Client{Transport: recordingTransport{&g.seen}},
	})
	if err != nil {
		g.t.Fatal(err)
	}
	return c
}

// noKeybridgeSecrets fails if a Keybridge credential reached the
// provider, or an upstream key reached the client or the logs.
func (g *gemEnv) noKeybridgeSecrets(t *testing.T, kbKeys ...string) {
	t.Helper()
	for i, r := range g.mock.Requests() {
		var all strings.Builder
		all.WriteString(r.URI)
		all.Write(r.Body)
		for name, vv := range r.Header {
			all.WriteString(name + ": " + strings.Join(vv, ",") + "\n")
		}
		for _, s := range append([]string{g.OwnerKey, "kb_", "kbs_"}, kbKeys...) {
			if strings.Contains(all.String(), s) {
				t.Errorf("request %d to the provider holds a Keybridge credential (%.6s...)", i, s)
			}
		}
	}
	for _, k := range g.keys {
		noCanary(t, k, g.seen.all(), g.logs())
	}
}

func gemAPIError(t *testing.T, err error, code int, status, msg string) genai.APIError {
	t.Helper()
	var ae genai.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want the SDK's APIError", err)
	}
	if ae.Code != code || ae.Status != status || !strings.Contains(ae.Message, msg) {
		t.Errorf("APIError = %d %s %q, want %d %s with %q", ae.Code, ae.Status, ae.Message, code, status, msg)
	}
	return ae
}

func TestGeminiSDKCalls(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 1)
	_, googleSecret := (&brEnv{env: g.env}).aiKey("GOOGLE")
	for name, key := range map[string]string{"platform key": g.OwnerKey, "AI key secret": googleSecret} {
		t.Run(name, func(t *testing.T) {
			c := g.client("gem", key)
			resp, err := c.Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Text() != "word0 word1 word2 " || resp.UsageMetadata == nil || resp.UsageMetadata.PromptTokenCount != 14 {
				t.Errorf("answer = %q %+v", resp.Text(), resp.UsageMetadata)
			}
			last := g.mock.Last()
			if want := "/v1beta/models/" + gemModel + ":generateContent"; last.URI != want {
				t.Errorf("upstream URI = %q, want %q", last.URI, want)
			}
			if last.Header.Get("X-Goog-Api-Key") != g.keys[0] {
				t.Error("the upstream key did not arrive as x-goog-api-key")
			}
			if last.Header.Get("X-Goog-Api-Client") == "" {
				t.Error("the SDK's x-goog-api-client header did not pass")
			}
			h := g.seen.last()
			if !strings.HasPrefix(h.Get("Server-Timing"), "keybridge;dur=") || h.Get("X-Keybridge-Request-Id") == "" {
				t.Errorf("Server-Timing = %q, X-Keybridge-Request-Id = %q", h.Get("Server-Timing"), h.Get("X-Keybridge-Request-Id"))
			}

			var text strings.Builder
			n := 0
			for chunk, err := range c.Models.GenerateContentStream(context.Background(), gemModel, genai.Text("hi"), nil) {
				if err != nil {
					t.Fatal(err)
				}
				n++
				text.WriteString(chunk.Text())
				if n == 3 && chunk.UsageMetadata.CandidatesTokenCount != 24 {
					t.Errorf("last chunk's usage = %+v", chunk.UsageMetadata)
				}
			}
			if n != 3 || text.String() != "word0 word1 word2 " {
				t.Errorf("stream = %d chunks %q, want 3", n, text.String())
			}
			if want := "/v1beta/models/" + gemModel + ":streamGenerateContent?alt=sse"; g.mock.Last().URI != want {
				t.Errorf("upstream URI = %q, want %q", g.mock.Last().URI, want)
			}
			if h := g.seen.last(); h.Get("X-Accel-Buffering") != "no" || h.Get("Content-Type") != "text/event-stream" {
				t.Errorf("stream headers = %v", h)
			}

			ct, err := c.Models.CountTokens(context.Background(), gemModel, genai.Text("hi"), nil)
			if err != nil || ct.TotalTokens != 14 {
				t.Errorf("CountTokens = %+v, %v", ct, err)
			}
			page, err := c.Models.List(context.Background(), nil)
			if err != nil || len(page.Items) == 0 || page.Items[0].Name != "models/"+gemModel {
				t.Errorf("Models.List = %+v, %v", page.Items, err)
			}
			m, err := c.Models.Get(context.Background(), gemModel, nil)
			if err != nil || m.Name != "models/"+gemModel {
				t.Errorf("Models.Get = %+v, %v", m, err)
			}
		})
	}
	g.waitLog(10)
	g.noKeybridgeSecrets(t, googleSecret)
	noCanary(t, googleSecret, g.logs())
}

// Gemini's REST style puts the key in the query: it must not reach the
// provider, and the rest of the query passes byte for byte.
func TestGeminiKeyInQuery(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 1)
	body := `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`
	for _, tc := range []struct{ query, want string }{
		{"?key=" + g.OwnerKey + "&alt=sse", "?alt=sse"},
		{"?alt=sse&key=" + g.OwnerKey + "&x=a%2Fb+c", "?alt=sse&x=a%2Fb+c"},
		{"?key=" + g.OwnerKey, ""},
		// The name spelled as the provider reads it, and every copy.
		{"?%6Bey=" + g.OwnerKey + "&alt=sse", "?alt=sse"},
		{"?alt=sse&k%65y=" + g.OwnerKey, "?alt=sse"},
		{"?key=" + g.OwnerKey + "&%6B%65%79=" + g.OwnerKey + "&key", ""},
	} {
		req := g.post("/gateway/gem/v1beta/models/"+gemModel+":streamGenerateContent"+tc.query, "", body)
		resp, got := g.do(req)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: = %d %s", tc.query, resp.StatusCode, got)
		}
		last := g.mock.Last()
		if want := "/v1beta/models/" + gemModel + ":streamGenerateContent" + tc.want; last.URI != want {
			t.Errorf("upstream URI = %q, want %q", last.URI, want)
		}
		if last.Header.Get("X-Goog-Api-Key") != g.keys[0] || last.Key != g.keys[0] {
			t.Error("the upstream key did not arrive as x-goog-api-key")
		}
		if last.Body == nil || string(last.Body) != body {
			t.Errorf("upstream body = %s, want the client's bytes", last.Body)
		}
		if tc.want == "" && !strings.HasPrefix(string(got), "[{") {
			t.Errorf("JSON array stream = %.40s", got)
		}
		noCanary(t, g.keys[0], string(got))
	}
	g.noKeybridgeSecrets(t)
}

func TestGeminiSDKRefusals(t *testing.T) {
	g := newGemEnv(t, envOptions{Gateway: gateway.Options{MaxBody: 4096}}, 1)
	b := &brEnv{env: g.env}
	_, openaiSecret := b.aiKey("OPENAI")
	_, noInvoke := g.addMember(keybridge.PermProvidersRead)
	for _, tc := range []struct {
		name, provider, key string
		code                int
		status, kbCode, msg string
	}{
		{"invalid key", "gem", "kb_notakey", 401, "UNAUTHENTICATED", "unauthenticated", "invalid API key"},
		{"provider's own key", "gem", "AIzaSyOwnKey", 401, "UNAUTHENTICATED", "unauthenticated", "never a provider's own key"},
		{"AI key of another type", "gem", openaiSecret, 403, "PERMISSION_DENIED", "permission_denied", "cannot reach google providers"},
		{"no gateway:invoke", "gem", noInvoke, 403, "PERMISSION_DENIED", "permission_denied", "gateway:invoke"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.client(tc.provider, tc.key).Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
			gemAPIError(t, err, tc.code, tc.status, tc.msg)
			if got := g.seen.last().Get("X-Keybridge-Error"); got != tc.kbCode {
				t.Errorf("X-Keybridge-Error = %q, want %q", got, tc.kbCode)
			}
		})
	}
	t.Run("unknown provider", func(t *testing.T) {
		// The §1 shape (SPEC §7.3): the SDK keeps the status and shows
		// the body.
		_, err := g.client("nope", g.OwnerKey).Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
		var ae genai.APIError
		if !errors.As(err, &ae) || ae.Code != 404 || !strings.Contains(ae.Message, `provider \"nope\" not found`) {
			t.Errorf("err = %v, want a 404 with Keybridge's message", err)
		}
		if got := g.seen.last().Get("X-Keybridge-Error"); got != "not_found" {
			t.Errorf("X-Keybridge-Error = %q", got)
		}
	})
	t.Run("too large", func(t *testing.T) {
		_, err := g.client("gem", g.OwnerKey).Models.GenerateContent(context.Background(), gemModel, genai.Text(strings.Repeat("x", 5000)), nil)
		gemAPIError(t, err, 413, "INVALID_ARGUMENT", "over the gateway's limit of 4096 bytes")
		if got := g.seen.last().Get("X-Keybridge-Error"); got != "payload_too_large" {
			t.Errorf("X-Keybridge-Error = %q", got)
		}
	})
	if n := len(g.mock.Requests()); n != 0 {
		t.Errorf("the provider got %d requests, want none", n)
	}
	noCanary(t, openaiSecret, g.waitLog(6))
}

func TestGeminiSDKFailover(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 3)
	k1, k2, k3 := g.keys[0], g.keys[1], g.keys[2]
	c := g.client("gem", g.OwnerKey)
	call := func() error {
		_, err := c.Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
		return err
	}
	keysSince := func(n int) []string {
		var ks []string
		for _, r := range g.mock.Requests()[n:] {
			ks = append(ks, r.Key)
		}
		return ks
	}

	for _, f := range []providertest.Fault{{Status: 500}, {Status: 503}, {Status: 529}, {Reset: true, Times: 2}} {
		if f.Times == 0 {
			f.Times = 1
		}
		g.mock.Fault(k1, f)
		before := len(g.mock.Requests())
		if err := call(); err != nil {
			t.Errorf("k1 failing with %+v: %v, want k2's answer", f, err)
		}
		if ks := keysSince(before); ks[len(ks)-1] != k2 {
			t.Errorf("k1 failing with %+v: served by key %d", f, len(ks))
		}
		g.mock.ClearFaults()
	}

	t.Run("429 rests the key for its Retry-After", func(t *testing.T) {
		g.mock.Fault(k1, providertest.Fault{Status: 429, RetryAfter: "30", Times: 1})
		before := len(g.mock.Requests())
		if err := call(); err != nil {
			t.Fatal(err)
		}
		if err := call(); err != nil {
			t.Fatal(err)
		}
		if ks := keysSince(before); len(ks) != 3 || ks[0] != k1 || ks[1] != k2 || ks[2] != k2 {
			t.Errorf("keys tried = %d, want k1, k2, then k2 alone", len(ks))
		}
	})

	t.Run("exhausted by 429s answers RESOURCE_EXHAUSTED with Retry-After", func(t *testing.T) {
		g.mock.Fault(k2, providertest.Fault{Status: 429, RetryAfter: "7"})
		g.mock.Fault(k3, providertest.Fault{Status: 429, RetryAfterMS: "2500"})
		gemAPIError(t, call(), 429, "RESOURCE_EXHAUSTED", `every upstream key of provider "gem" is rate limited`)
		h := g.seen.last()
		if h.Get("Retry-After") != "3" || h.Get("X-Keybridge-Error") != "rate_limited" {
			t.Errorf("Retry-After = %q, X-Keybridge-Error = %q; want 3 and rate_limited", h.Get("Retry-After"), h.Get("X-Keybridge-Error"))
		}
	})
	noCanary(t, k1, g.seen.all())
	g.noKeybridgeSecrets(t)
}

// Google refuses a revoked or mistyped key with 400 INVALID_ARGUMENT,
// reason API_KEY_INVALID, where others answer 401: the gateway takes it
// for a refused key, moves on and rests the key. Other 400s are the
// provider's answer.
func TestGeminiInvalidKeyFailsOver(t *testing.T) {
	e := newEnv(t)
	mock := providertest.NewGemini(t)
	revoked, good := canary(t, "AIzaSy"), canary(t, "AIzaSy")
	mock.AddKey(good) // the mock does not know revoked
	e.provider(map[string]any{"name": "gem", "type": "google", "base_url": mock.URL})
	e.addKey("gem", revoked, 0)
	e.addKey("gem", good, 1)
	g := &gemEnv{env: e, mock: mock, keys: []string{revoked, good}}
	c := g.client("gem", e.OwnerKey)

	if _, err := c.Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil); err != nil {
		t.Fatalf("with the first key revoked: %v, want the second key's answer", err)
	}
	reqs := mock.Requests()
	if len(reqs) != 2 || reqs[0].Key != revoked || reqs[1].Key != good {
		t.Fatalf("upstream requests = %d, want the revoked key then the good one", len(reqs))
	}
	// The revoked key rests: the next call goes straight to the good one.
	if _, err := c.Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil); err != nil {
		t.Fatal(err)
	}
	if reqs = mock.Requests(); len(reqs) != 3 || reqs[2].Key != good {
		t.Errorf("upstream requests = %d, want one more, with the good key", len(reqs))
	}

	// A 400 about the request itself passes as Google's own answer.
	before := len(mock.Requests())
	_, err := c.Models.GenerateContent(context.Background(), gemModel, nil, nil)
	gemAPIError(t, err, 400, "INVALID_ARGUMENT", "Invalid JSON payload")
	if n := len(mock.Requests()) - before; n != 1 {
		t.Errorf("a request 400 was tried on %d keys, want 1", n)
	}
	g.noKeybridgeSecrets(t)
}

func TestGeminiInvalidKeysExhaustedIs502(t *testing.T) {
	e := newEnv(t)
	mock := providertest.NewGemini(t)
	k1, k2 := canary(t, "AIzaSy"), canary(t, "AIzaSy") // neither known
	e.provider(map[string]any{"name": "gem", "type": "google", "base_url": mock.URL})
	e.addKey("gem", k1, 0)
	e.addKey("gem", k2, 1)
	g := &gemEnv{env: e, mock: mock, keys: []string{k1, k2}}
	_, err := g.client("gem", e.OwnerKey).Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
	ae := gemAPIError(t, err, 502, "UNAVAILABLE", `provider "gem": every upstream key failed (400, 400)`)
	if strings.Contains(ae.Message, "API key not valid") {
		t.Errorf("the provider's refusal reached the client: %q", ae.Message)
	}
	if len(mock.Requests()) != 2 {
		t.Errorf("upstream requests = %d, want 2", len(mock.Requests()))
	}
	g.waitLog(1)
	g.noKeybridgeSecrets(t)
}

func TestGeminiSDKExhaustedByRefusalsIs502(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 2)
	g.mock.Fault(g.keys[0], providertest.Fault{Status: 401})
	g.mock.Fault(g.keys[1], providertest.Fault{Status: 403})
	_, err := g.client("gem", g.OwnerKey).Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
	ae := gemAPIError(t, err, 502, "UNAVAILABLE", "every upstream key failed (401, 403)")
	if strings.Contains(ae.Message, "credentials") || strings.Contains(ae.Message, "permission") {
		t.Errorf("the provider's refusal reached the client: %q", ae.Message)
	}
	if got := g.seen.last().Get("X-Keybridge-Error"); got != "bad_gateway" {
		t.Errorf("X-Keybridge-Error = %q", got)
	}
	g.waitLog(1)
	g.noKeybridgeSecrets(t)
}

func TestGeminiSDKHeaderTimeout(t *testing.T) {
	g := newGemEnv(t, envOptions{Gateway: gateway.Options{HeaderTimeout: 200 * time.Millisecond}}, 1)
	g.mock.Fault("", providertest.Fault{StallBefore: time.Minute})
	_, err := g.client("gem", g.OwnerKey).Models.GenerateContent(context.Background(), gemModel, genai.Text("hi"), nil)
	gemAPIError(t, err, 504, "DEADLINE_EXCEEDED", "sent no response headers within 200ms")
	if got := g.seen.last().Get("X-Keybridge-Error"); got != "gateway_timeout" {
		t.Errorf("X-Keybridge-Error = %q", got)
	}
}

func TestGeminiSDKCutStream(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 1)
	g.mock.Fault("", providertest.Fault{CutAfter: 2})
	n := 0
	var streamErr error
	for chunk, err := range g.client("gem", g.OwnerKey).Models.GenerateContentStream(context.Background(), gemModel, genai.Text("hi"), nil) {
		if err != nil {
			streamErr = err
			break
		}
		if chunk.Candidates[0].FinishReason != "" {
			t.Error("a cut stream gave a finished chunk")
		}
		n++
	}
	if n != 2 || streamErr == nil {
		t.Fatalf("cut stream = %d chunks and %v, want 2 and an error", n, streamErr)
	}
	gemAPIError(t, streamErr, 502, "UNAVAILABLE", "cut short")
}

func TestGeminiSDKCancelReachesProvider(t *testing.T) {
	g := newGemEnv(t, envOptions{}, 1)
	g.mock.Fault("", providertest.Fault{StallAfter: 1, StallFor: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	for _, err := range g.client("gem", g.OwnerKey).Models.GenerateContentStream(ctx, gemModel, genai.Text("hi"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		cancel()
		break
	}
	g.mock.WaitCanceled(t, 1)
	if n != 1 {
		t.Errorf("chunks = %d, want 1", n)
	}
	if l := g.waitLog(1); !strings.Contains(l, `"status":499`) {
		t.Errorf("the log line does not record 499:\n%s", l)
	}
}

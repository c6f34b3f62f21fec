package providertest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genai"

	"github.com/keybridge/keybridge/internal/providertest"
)

const (
	geminiKey   = "AIzaSyMockGeminiKey0123456789abcdefghij"
	geminiModel = "gemini-2.5-flash"
)

var geminiUsage = providertest.Usage{Input: 10, Output: 30, CacheRead: 4, Reasoning: 6}

func newGemini(t *testing.T) *providertest.Server {
	s := providertest.NewGemini(t)
	s.AddKey(geminiKey)
	s.Usage = geminiUsage
	return s
}

func geminiClient(t *testing.T, url, key string) *genai.Client {
	t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: url},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkGeminiUsage checks the cumulative usage of a whole answer.
func checkGeminiUsage(t *testing.T, u *genai.GenerateContentResponseUsageMetadata) {
	t.Helper()
	if u == nil {
		t.Fatal("usageMetadata: got none")
	}
	if u.PromptTokenCount != 14 || u.CachedContentTokenCount != 4 || u.CandidatesTokenCount != 24 ||
		u.ThoughtsTokenCount != 6 || u.TotalTokenCount != 44 {
		t.Errorf("usage: got prompt %d cached %d candidates %d thoughts %d total %d, want 14 4 24 6 44",
			u.PromptTokenCount, u.CachedContentTokenCount, u.CandidatesTokenCount, u.ThoughtsTokenCount, u.TotalTokenCount)
	}
}

func TestGeminiGenerateContent(t *testing.T) {
	s := newGemini(t)
	resp, err := geminiClient(t, s.URL, geminiKey).Models.GenerateContent(context.Background(), geminiModel, genai.Text("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Text() == "" {
		t.Error("text: got none")
	}
	if resp.Candidates[0].FinishReason != genai.FinishReasonStop {
		t.Errorf("finish reason: got %q, want STOP", resp.Candidates[0].FinishReason)
	}
	checkGeminiUsage(t, resp.UsageMetadata)
	last := s.Last()
	if want := "/v1beta/models/" + geminiModel + ":generateContent"; last.URI != want {
		t.Errorf("URI: got %q, want %q", last.URI, want)
	}
	if last.Key != geminiKey {
		t.Errorf("Key: got %q, want the API key", last.Key)
	}
}

func TestGeminiGenerateContentStream(t *testing.T) {
	s := newGemini(t)
	s.Events = 3
	var text strings.Builder
	var chunks []*genai.GenerateContentResponse
	for resp, err := range geminiClient(t, s.URL, geminiKey).Models.GenerateContentStream(context.Background(), geminiModel, genai.Text("hi"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, resp)
		text.WriteString(resp.Text())
	}
	if len(chunks) != 3 {
		t.Fatalf("chunks: got %d, want 3", len(chunks))
	}
	if want := "word0 word1 word2 "; text.String() != want {
		t.Errorf("text: got %q, want %q", text.String(), want)
	}
	// The usage is cumulative: it grows, and the last one counts.
	var prev int32
	for i, c := range chunks {
		if got := c.UsageMetadata.CandidatesTokenCount; got < prev {
			t.Errorf("chunk %d: candidatesTokenCount went down from %d to %d", i, prev, got)
		} else {
			prev = got
		}
	}
	checkGeminiUsage(t, chunks[2].UsageMetadata)
	if want := "/v1beta/models/" + geminiModel + ":streamGenerateContent?alt=sse"; s.Last().URI != want {
		t.Errorf("URI: got %q, want %q", s.Last().URI, want)
	}
}

// Without alt=sse the stream is one JSON array, sent element by element.
func TestGeminiStreamJSONArray(t *testing.T) {
	s := newGemini(t)
	s.Events = 4
	req, err := http.NewRequest(http.MethodPost, s.URL+"/v1beta/models/"+geminiModel+":streamGenerateContent?key="+geminiKey,
		strings.NewReader(`{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var chunks []genai.GenerateContentResponse
	if err := json.Unmarshal(body, &chunks); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	if len(chunks) != 4 || chunks[3].UsageMetadata.CandidatesTokenCount != 24 {
		t.Errorf("got %d chunks ending with %+v, want 4 ending with candidatesTokenCount 24", len(chunks), chunks[len(chunks)-1].UsageMetadata)
	}
	if s.Last().Key != geminiKey {
		t.Errorf("Key from ?key=: got %q", s.Last().Key)
	}
}

func TestGeminiCountTokens(t *testing.T) {
	s := newGemini(t)
	resp, err := geminiClient(t, s.URL, geminiKey).Models.CountTokens(context.Background(), geminiModel, genai.Text("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TotalTokens != 14 || resp.CachedContentTokenCount != 4 {
		t.Errorf("got total %d cached %d, want 14 and 4", resp.TotalTokens, resp.CachedContentTokenCount)
	}
}

func TestGeminiModels(t *testing.T) {
	s := newGemini(t)
	c := geminiClient(t, s.URL, geminiKey)
	page, err := c.Models.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) == 0 || page.Items[0].Name != "models/"+geminiModel {
		t.Errorf("models: got %+v, want %s first", page.Items, geminiModel)
	}
	m, err := c.Models.Get(context.Background(), geminiModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "models/"+geminiModel || m.InputTokenLimit == 0 {
		t.Errorf("model: got %+v", m)
	}
}

func TestGeminiRefusesKeys(t *testing.T) {
	s := newGemini(t)
	for _, tc := range []struct {
		name, key string
		code      int
		status    string
	}{
		{"unknown key", "AIzaSyNotAKnownKey", http.StatusBadRequest, "INVALID_ARGUMENT"},
		{"no key", "", http.StatusForbidden, "PERMISSION_DENIED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, s.URL+"/v1beta/models/"+geminiModel+":generateContent", strings.NewReader(`{"contents":[{"parts":[{"text":"hi"}]}]}`))
			if err != nil {
				t.Fatal(err)
			}
			if tc.key != "" {
				req.Header.Set("x-goog-api-key", tc.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct{ Error genai.APIError }
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.code || body.Error.Code != tc.code || body.Error.Status != tc.status {
				t.Errorf("got %d %+v, want %d %s", resp.StatusCode, body.Error, tc.code, tc.status)
			}
		})
	}
	// The SDK reports the refusal as its APIError.
	_, err := geminiClient(t, s.URL, "AIzaSyNotAKnownKey").Models.GenerateContent(context.Background(), geminiModel, genai.Text("hi"), nil)
	var ae genai.APIError
	if !errors.As(err, &ae) || ae.Code != http.StatusBadRequest || ae.Details[0]["reason"] != "API_KEY_INVALID" {
		t.Errorf("got %v, want an APIError 400 API_KEY_INVALID", err)
	}
}

func TestGeminiFaultStatus(t *testing.T) {
	s := newGemini(t)
	c := geminiClient(t, s.URL, geminiKey)
	for _, tc := range []struct {
		code   int
		status string
	}{
		{429, "RESOURCE_EXHAUSTED"}, {500, "INTERNAL"}, {503, "UNAVAILABLE"}, {403, "PERMISSION_DENIED"}, {401, "UNAUTHENTICATED"},
	} {
		s.Fault(geminiKey, providertest.Fault{Status: tc.code, RetryAfter: "9", Times: 1})
		_, err := c.Models.GenerateContent(context.Background(), geminiModel, genai.Text("hi"), nil)
		var ae genai.APIError
		if !errors.As(err, &ae) || ae.Code != tc.code || ae.Status != tc.status {
			t.Errorf("%d: got %v, want APIError %d %s", tc.code, err, tc.code, tc.status)
			continue
		}
		if tc.code == 429 && (len(ae.Details) != 1 || ae.Details[0]["retryDelay"] != "9s") {
			t.Errorf("429 details: got %v, want RetryInfo 9s", ae.Details)
		}
	}
	// A stream fails the same way before its first chunk.
	s.Fault("", providertest.Fault{Status: 503, Times: 1})
	for _, err := range c.Models.GenerateContentStream(context.Background(), geminiModel, genai.Text("hi"), nil) {
		var ae genai.APIError
		if !errors.As(err, &ae) || ae.Code != 503 {
			t.Errorf("stream: got %v, want APIError 503", err)
		}
		break
	}
	if _, err := c.Models.GenerateContent(context.Background(), geminiModel, genai.Text("hi"), nil); err != nil {
		t.Errorf("after the faults: got %v, want success", err)
	}
}

func TestGeminiFaultRetryAfterHeader(t *testing.T) {
	s := newGemini(t)
	s.Fault("", providertest.Fault{Status: 429, RetryAfter: "3"})
	req, err := http.NewRequest(http.MethodPost, s.URL+"/v1beta/models/"+geminiModel+":generateContent?key="+geminiKey, strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("got %d Retry-After %q, want 429 and 3", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestGeminiFaultReset(t *testing.T) {
	s := newGemini(t)
	s.Fault(geminiKey, providertest.Fault{Reset: true})
	_, err := geminiClient(t, s.URL, geminiKey).Models.GenerateContent(context.Background(), geminiModel, genai.Text("hi"), nil)
	var ae genai.APIError
	if err == nil || errors.As(err, &ae) {
		t.Errorf("got %v, want a transport error", err)
	}
}

func TestGeminiFaultCut(t *testing.T) {
	s := newGemini(t)
	s.Fault("", providertest.Fault{CutAfter: 2})
	n := 0
	var streamErr error
	for resp, err := range geminiClient(t, s.URL, geminiKey).Models.GenerateContentStream(context.Background(), geminiModel, genai.Text("hi"), nil) {
		if err != nil {
			streamErr = err
			break
		}
		if resp.Candidates[0].FinishReason != "" {
			t.Error("cut stream: got a finished chunk")
		}
		n++
	}
	if n != 2 || streamErr == nil {
		t.Errorf("cut stream: got %d chunks and %v, want 2 and an error", n, streamErr)
	}
}

func TestGeminiCanceled(t *testing.T) {
	s := newGemini(t)
	s.Fault("", providertest.Fault{StallAfter: 1, StallFor: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	for _, err := range geminiClient(t, s.URL, geminiKey).Models.GenerateContentStream(ctx, geminiModel, genai.Text("hi"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		cancel()
		break
	}
	s.WaitCanceled(t, 1)
	if n != 1 || !s.Last().Canceled {
		t.Errorf("got %d chunks, Canceled %v; want 1 and true", n, s.Last().Canceled)
	}
}

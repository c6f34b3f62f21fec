package providertest_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	aoption "github.com/anthropics/anthropic-sdk-go/option"

	"github.com/keybridge/keybridge/internal/providertest"
)

const anthropicKey = "sk-ant-api03-0123456789abcdefwxyz"

var anthropicUsage = providertest.Usage{Input: 100, Output: 40, CacheRead: 20, CacheWrite: 30}

func newAnthropic(t *testing.T) *providertest.Server {
	s := providertest.NewAnthropic(t)
	s.AddKey(anthropicKey)
	s.Usage = anthropicUsage
	return s
}

func anthropicClient(s *providertest.Server, key string, opts ...aoption.RequestOption) *anthropic.Client {
	c := anthropic.NewClient(append([]aoption.RequestOption{
		aoption.WithBaseURL(s.URL), aoption.WithAPIKey(key), aoption.WithMaxRetries(0),
	}, opts...)...)
	return &c
}

func messageParams() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 256,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	}
}

func checkAnthropicUsage(t *testing.T, u anthropic.Usage) {
	t.Helper()
	if u.InputTokens != 100 || u.OutputTokens != 40 || u.CacheReadInputTokens != 20 || u.CacheCreationInputTokens != 30 {
		t.Errorf("usage: got in %d out %d cache read %d write %d, want 100 40 20 30", u.InputTokens, u.OutputTokens, u.CacheReadInputTokens, u.CacheCreationInputTokens)
	}
}

func TestAnthropicMessages(t *testing.T) {
	s := newAnthropic(t)
	c := anthropicClient(s, anthropicKey)
	got, err := c.Messages.New(context.Background(), messageParams())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Content) != 1 || got.Content[0].Text != wantText(5) || got.StopReason != anthropic.StopReasonEndTurn {
		t.Errorf("message: got %+v", got)
	}
	checkAnthropicUsage(t, got.Usage)
	last := s.Last()
	if last.URI != "/v1/messages" || last.Key != anthropicKey || last.Header.Get("Anthropic-Version") == "" {
		t.Errorf("recorded: got %s key %q version %q", last.URI, last.Key, last.Header.Get("Anthropic-Version"))
	}
}

func TestAnthropicStream(t *testing.T) {
	s := newAnthropic(t)
	s.Events = 6
	st := anthropicClient(s, anthropicKey).Messages.NewStreaming(context.Background(), messageParams())
	var msg anthropic.Message
	var types []string
	var deltaOutputs []int64
	for st.Next() {
		ev := st.Current()
		types = append(types, ev.Type)
		if ev.Type == "message_delta" {
			deltaOutputs = append(deltaOutputs, ev.Usage.OutputTokens)
		}
		if err := msg.Accumulate(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	// The SDK passes no ping on.
	want := "message_start content_block_start" + strings.Repeat(" content_block_delta", 6) + " content_block_stop message_delta message_delta message_stop"
	if got := strings.Join(types, " "); got != want {
		t.Errorf("events:\ngot  %s\nwant %s", got, want)
	}
	if len(deltaOutputs) != 2 || deltaOutputs[0] != 20 || deltaOutputs[1] != 40 {
		t.Errorf("message_delta output_tokens: got %v, want [20 40]", deltaOutputs)
	}
	if msg.Content[0].Text != wantText(6) || msg.StopReason != anthropic.StopReasonEndTurn {
		t.Errorf("accumulated: got %q %q", msg.Content[0].Text, msg.StopReason)
	}
	checkAnthropicUsage(t, msg.Usage)
}

func TestAnthropicCountTokensAndModels(t *testing.T) {
	s := newAnthropic(t)
	c := anthropicClient(s, anthropicKey)
	n, err := c.Messages.CountTokens(context.Background(), anthropic.MessageCountTokensParams{
		Model:    "claude-sonnet-4-5",
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n.InputTokens != 100 {
		t.Errorf("count_tokens: got %d, want 100", n.InputTokens)
	}
	page, err := c.Models.List(context.Background(), anthropic.ModelListParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 2 || page.Data[0].ID == "" {
		t.Errorf("models: got %+v", page.Data)
	}
	m, err := c.Models.Get(context.Background(), "claude-opus-4-1", anthropic.ModelGetParams{})
	if err != nil || m.ID != "claude-opus-4-1" {
		t.Errorf("model: got %v, %v", m, err)
	}
}

func TestAnthropicErrors(t *testing.T) {
	s := newAnthropic(t)
	for _, c := range []struct {
		name   string
		key    string
		fault  providertest.Fault
		status int
		typ    string
	}{
		{"wrong key", "sk-ant-wrong-0123456789abcdefghij", providertest.Fault{}, 401, "authentication_error"},
		{"rate limit", anthropicKey, providertest.Fault{Status: 429}, 429, "rate_limit_error"},
		{"overloaded", anthropicKey, providertest.Fault{Status: 529}, 529, "overloaded_error"},
		{"server error", anthropicKey, providertest.Fault{Status: 500}, 500, "api_error"},
		{"forbidden", anthropicKey, providertest.Fault{Status: 403}, 403, "permission_error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s.ClearFaults()
			s.Fault(c.key, c.fault)
			_, err := anthropicClient(s, c.key).Messages.New(context.Background(), messageParams())
			var apiErr *anthropic.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("error: got %v, want *anthropic.Error", err)
			}
			if apiErr.StatusCode != c.status || string(apiErr.Type()) != c.typ || apiErr.RequestID == "" {
				t.Errorf("error: got %d %q request id %q, want %d %q", apiErr.StatusCode, apiErr.Type(), apiErr.RequestID, c.status, c.typ)
			}
			if c.status == 401 && (!strings.Contains(apiErr.RawJSON(), "sk-an***ghij") || strings.Contains(apiErr.RawJSON(), c.key)) {
				t.Errorf("401 body: got %s, want the key's fragment only", apiErr.RawJSON())
			}
		})
	}

	// Without anthropic-version, Anthropic refuses the request.
	s.ClearFaults()
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/messages", strings.NewReader(`{"model":"m","max_tokens":1,"messages":[]}`))
	req.Header.Set("X-Api-Key", anthropicKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("without anthropic-version: got %d, want 400", res.StatusCode)
	}
}

func TestAnthropicRetryAfter(t *testing.T) {
	s := newAnthropic(t)
	s.Fault(anthropicKey, providertest.Fault{Status: 529, RetryAfterMS: "1", Times: 1})
	if _, err := anthropicClient(s, anthropicKey, aoption.WithMaxRetries(1)).Messages.New(context.Background(), messageParams()); err != nil {
		t.Fatalf("after one 529 and a retry: %v", err)
	}
	if n := len(s.Requests()); n != 2 {
		t.Errorf("requests: got %d, want 2", n)
	}
	s.Fault("", providertest.Fault{Status: 429, RetryAfter: "3"})
	_, err := anthropicClient(s, anthropicKey).Messages.New(context.Background(), messageParams())
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.Response.Header.Get("Retry-After") != "3" {
		t.Errorf("Retry-After: got %v", err)
	}
}

func TestAnthropicResetCutCanceled(t *testing.T) {
	s := newAnthropic(t)
	s.Fault(anthropicKey, providertest.Fault{Reset: true, Times: 1})
	_, err := anthropicClient(s, anthropicKey).Messages.New(context.Background(), messageParams())
	var apiErr *anthropic.Error
	if err == nil || errors.As(err, &apiErr) {
		t.Errorf("reset: got %v, want a transport error", err)
	}

	// Events the server counts include the ping, which the SDK drops.
	s.Fault(anthropicKey, providertest.Fault{CutAfter: 4, Times: 1})
	st := anthropicClient(s, anthropicKey).Messages.NewStreaming(context.Background(), messageParams())
	events := 0
	for st.Next() {
		if st.Current().Type == "message_stop" {
			t.Error("cut stream stopped")
		}
		events++
	}
	if st.Err() == nil || events != 3 {
		t.Errorf("cut stream: got %d events and error %v, want 3 and an error", events, st.Err())
	}

	s.Fault(anthropicKey, providertest.Fault{StallAfter: 4, StallFor: time.Minute, Times: 1})
	ctx, cancel := context.WithCancel(context.Background())
	st = anthropicClient(s, anthropicKey).Messages.NewStreaming(ctx, messageParams())
	for range 3 {
		if !st.Next() {
			t.Fatal(st.Err())
		}
	}
	cancel()
	s.WaitCanceled(t, 1)
	if !s.Last().Canceled {
		t.Error("the stalled stream is not the canceled one")
	}
}

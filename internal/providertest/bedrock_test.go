package providertest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthropicbedrock "github.com/anthropics/anthropic-sdk-go/bedrock"
	"github.com/anthropics/anthropic-sdk-go/option"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/keybridge/keybridge/internal/providertest"
)

const (
	bedrockRegion = "eu-west-1"
	bedrockAKID   = "AKIAMOCKEXAMPLE12345"
	bedrockSecret = "mock/secret+key/abcdefghijklmnopqrstuv"
	claudeModel   = "anthropic.claude-3-5-sonnet-20240620-v1:0"
	claudeARN     = "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-3-5-sonnet-20240620-v1:0"
	novaModel     = "amazon.nova-lite-v1:0"
)

var bedrockUsage = providertest.Usage{Input: 11, Output: 22, CacheRead: 3, CacheWrite: 4}

func newBedrock(t *testing.T) *providertest.Server {
	s := providertest.NewBedrock(t, bedrockRegion, bedrockAKID, bedrockSecret)
	s.Usage = bedrockUsage
	return s
}

// bedrockClient is the official client pointed at url, signing with the
// pair given and never retrying, so faults are seen as they are; its HTTP
// client is AWSHTTPClient, so that the SDK's own race does not close the
// connection under a stream.
func bedrockClient(url, akid, secret string) *bedrockruntime.Client {
	return bedrockruntime.New(bedrockruntime.Options{
		Region:           bedrockRegion,
		BaseEndpoint:     aws.String(url),
		Credentials:      credentials.NewStaticCredentialsProvider(akid, secret, ""),
		RetryMaxAttempts: 1,
		HTTPClient:       providertest.AWSHTTPClient(nil),
	})
}

func anthropicBody(t *testing.T) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"anthropic_version": "bedrock-2023-05-31",
		"max_tokens":        64,
		"messages":          []any{map[string]any{"role": "user", "content": "hi"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func converseInput(model string) *bedrockruntime.ConverseInput {
	return &bedrockruntime.ConverseInput{
		ModelId: aws.String(model),
		Messages: []types.Message{{
			Role:    types.ConversationRoleUser,
			Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: "hi"}},
		}},
	}
}

func TestBedrockInvokeModel(t *testing.T) {
	s := newBedrock(t)
	c := bedrockClient(s.URL, bedrockAKID, bedrockSecret)
	for _, model := range []string{claudeModel, claudeARN} {
		out, err := c.InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
			ModelId: aws.String(model), Body: anthropicBody(t), ContentType: aws.String("application/json"),
		})
		if err != nil {
			t.Fatalf("InvokeModel %s: %v", model, err)
		}
		var msg struct {
			Type    string `json:"type"`
			Content []struct{ Type, Text string }
			Usage   struct {
				InputTokens              int64 `json:"input_tokens"`
				OutputTokens             int64 `json:"output_tokens"`
				CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
				CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
			}
		}
		if err := json.Unmarshal(out.Body, &msg); err != nil {
			t.Fatalf("body %s: %v", out.Body, err)
		}
		if msg.Type != "message" || len(msg.Content) != 1 || msg.Content[0].Text == "" {
			t.Errorf("body: got %s, want an Anthropic message with one text block", out.Body)
		}
		u := msg.Usage
		if u.InputTokens != 11 || u.OutputTokens != 22 || u.CacheReadInputTokens != 3 || u.CacheCreationInputTokens != 4 {
			t.Errorf("usage: got %+v, want 11/22/3/4", u)
		}
		raw := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response)
		for h, want := range map[string]string{
			"X-Amzn-Bedrock-Input-Token-Count":  "11",
			"X-Amzn-Bedrock-Output-Token-Count": "22",
		} {
			if got := raw.Header.Get(h); got != want {
				t.Errorf("%s: got %q, want %q", h, got, want)
			}
		}
		last := s.Last()
		if last.Key != bedrockAKID {
			t.Errorf("Key: got %q, want %q", last.Key, bedrockAKID)
		}
	}
	// The SDK escapes ':' in the model id and '/' in an ARN; the record
	// keeps the path's bytes as they came, which the signature covers.
	reqs := s.Requests()
	if want := "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"; reqs[0].URI != want {
		t.Errorf("URI: got %q, want %q", reqs[0].URI, want)
	}
	if want := "/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A123456789012%3Ainference-profile%2Feu.anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"; reqs[1].URI != want {
		t.Errorf("URI: got %q, want %q", reqs[1].URI, want)
	}
}

func TestBedrockInvokeModelNova(t *testing.T) {
	s := newBedrock(t)
	out, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
		ModelId: aws.String(novaModel),
		Body:    []byte(`{"messages":[{"role":"user","content":[{"text":"hi"}]}]}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Output struct {
			Message struct{ Content []struct{ Text string } }
		}
		Usage struct{ InputTokens, OutputTokens int64 }
	}
	if err := json.Unmarshal(out.Body, &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Output.Message.Content) != 1 || body.Usage.InputTokens != 11 || body.Usage.OutputTokens != 22 {
		t.Errorf("body: got %s, want Nova's shape with usage 11/22", out.Body)
	}
}

func TestBedrockInvokeModelNeedsAnthropicVersion(t *testing.T) {
	s := newBedrock(t)
	_, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
		ModelId: aws.String(claudeModel), Body: []byte(`{"max_tokens":5,"messages":[]}`),
	})
	var ve *types.ValidationException
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a ValidationException", err)
	}
}

// streamChunks reads an invoke-with-response-stream answer into its
// chunks' JSON payloads.
func streamChunks(t *testing.T, es *bedrockruntime.InvokeModelWithResponseStreamEventStream) ([]map[string]any, error) {
	t.Helper()
	defer es.Close()
	var chunks []map[string]any
	for ev := range es.Events() {
		c, ok := ev.(*types.ResponseStreamMemberChunk)
		if !ok {
			t.Fatalf("event: got %T, want a chunk", ev)
		}
		var m map[string]any
		if err := json.Unmarshal(c.Value.Bytes, &m); err != nil {
			t.Fatalf("chunk %s: %v", c.Value.Bytes, err)
		}
		chunks = append(chunks, m)
	}
	return chunks, es.Err()
}

func TestBedrockInvokeModelWithResponseStream(t *testing.T) {
	s := newBedrock(t)
	s.Events = 4
	c := bedrockClient(s.URL, bedrockAKID, bedrockSecret)
	out, err := c.InvokeModelWithResponseStream(context.Background(), &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(claudeARN), Body: anthropicBody(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := streamChunks(t, out.GetStream())
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	var typs []string
	for _, c := range chunks {
		typs = append(typs, c["type"].(string))
	}
	want := "message_start content_block_start content_block_delta content_block_delta content_block_delta content_block_delta content_block_stop message_delta message_delta message_stop"
	if got := strings.Join(typs, " "); got != want {
		t.Errorf("events: got %s, want %s", got, want)
	}
	last := chunks[len(chunks)-1]
	metrics, _ := last["amazon-bedrock-invocationMetrics"].(map[string]any)
	if metrics["inputTokenCount"] != 11.0 || metrics["outputTokenCount"] != 22.0 ||
		metrics["invocationLatency"] == nil || metrics["firstByteLatency"] == nil {
		t.Errorf("last chunk: got %v, want invocation metrics 11/22 with latencies", last)
	}
	if md := chunks[len(chunks)-2]["usage"].(map[string]any); md["output_tokens"] != 22.0 {
		t.Errorf("last message_delta usage: got %v, want output_tokens 22", md)
	}
}

func TestBedrockInvokeModelWithResponseStreamNova(t *testing.T) {
	s := newBedrock(t)
	out, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).InvokeModelWithResponseStream(context.Background(),
		&bedrockruntime.InvokeModelWithResponseStreamInput{ModelId: aws.String(novaModel), Body: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := streamChunks(t, out.GetStream())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(chunks), 5+4; got != want {
		t.Errorf("chunks: got %d, want %d", got, want)
	}
	if _, ok := chunks[len(chunks)-1]["amazon-bedrock-invocationMetrics"]; !ok {
		t.Errorf("last chunk: got %v, want invocation metrics", chunks[len(chunks)-1])
	}
}

func TestBedrockConverse(t *testing.T) {
	s := newBedrock(t)
	out, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).Converse(context.Background(), converseInput(claudeModel))
	if err != nil {
		t.Fatal(err)
	}
	msg, ok := out.Output.(*types.ConverseOutputMemberMessage)
	if !ok || len(msg.Value.Content) != 1 {
		t.Fatalf("output: got %#v, want a message with one block", out.Output)
	}
	if text, ok := msg.Value.Content[0].(*types.ContentBlockMemberText); !ok || text.Value == "" {
		t.Errorf("content: got %#v, want text", msg.Value.Content[0])
	}
	if out.StopReason != types.StopReasonEndTurn {
		t.Errorf("stop reason: got %q, want end_turn", out.StopReason)
	}
	u := out.Usage
	if aws.ToInt32(u.InputTokens) != 11 || aws.ToInt32(u.OutputTokens) != 22 ||
		aws.ToInt32(u.CacheReadInputTokens) != 3 || aws.ToInt32(u.CacheWriteInputTokens) != 4 ||
		aws.ToInt32(u.TotalTokens) != 40 {
		t.Errorf("usage: got %d/%d/%d/%d total %d, want 11/22/3/4 total 40", aws.ToInt32(u.InputTokens), aws.ToInt32(u.OutputTokens),
			aws.ToInt32(u.CacheReadInputTokens), aws.ToInt32(u.CacheWriteInputTokens), aws.ToInt32(u.TotalTokens))
	}
	if want := "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"; s.Last().URI != want {
		t.Errorf("URI: got %q, want %q", s.Last().URI, want)
	}
}

func TestBedrockConverseStream(t *testing.T) {
	s := newBedrock(t)
	s.Events = 3
	out, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).ConverseStream(context.Background(),
		(*bedrockruntime.ConverseStreamInput)(converseStreamInput(claudeARN)))
	if err != nil {
		t.Fatal(err)
	}
	es := out.GetStream()
	defer es.Close()
	var got []string
	var text string
	var usage *types.TokenUsage
	for ev := range es.Events() {
		switch v := ev.(type) {
		case *types.ConverseStreamOutputMemberMessageStart:
			got = append(got, "messageStart")
		case *types.ConverseStreamOutputMemberContentBlockDelta:
			got = append(got, "contentBlockDelta")
			if d, ok := v.Value.Delta.(*types.ContentBlockDeltaMemberText); ok {
				text += d.Value
			}
		case *types.ConverseStreamOutputMemberContentBlockStop:
			got = append(got, "contentBlockStop")
		case *types.ConverseStreamOutputMemberMessageStop:
			got = append(got, "messageStop:"+string(v.Value.StopReason))
		case *types.ConverseStreamOutputMemberMetadata:
			got = append(got, "metadata")
			usage = v.Value.Usage
		default:
			t.Errorf("event: got %T", ev)
		}
	}
	if err := es.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	want := "messageStart contentBlockDelta contentBlockDelta contentBlockDelta contentBlockStop messageStop:end_turn metadata"
	if g := strings.Join(got, " "); g != want {
		t.Errorf("events: got %s, want %s", g, want)
	}
	if text == "" {
		t.Error("text: got none")
	}
	if usage == nil || aws.ToInt32(usage.InputTokens) != 11 || aws.ToInt32(usage.OutputTokens) != 22 {
		t.Errorf("metadata usage: got %+v, want 11/22", usage)
	}
}

// converseStreamInput is converseInput for ConverseStream, whose input has
// the same fields.
func converseStreamInput(model string) *bedrockruntime.ConverseStreamInput {
	in := converseInput(model)
	return &bedrockruntime.ConverseStreamInput{ModelId: in.ModelId, Messages: in.Messages}
}

func TestBedrockRefusesBadSignatures(t *testing.T) {
	s := newBedrock(t)
	for _, tc := range []struct {
		name, akid, secret, code string
	}{
		{"wrong secret", bedrockAKID, "not-the-secret", "InvalidSignatureException"},
		{"unknown access key", "AKIAUNKNOWN000000000", bedrockSecret, "UnrecognizedClientException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bedrockClient(s.URL, tc.akid, tc.secret).Converse(context.Background(), converseInput(claudeModel))
			var ae smithy.APIError
			if !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
			var re *smithyhttp.ResponseError
			if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusForbidden {
				t.Errorf("status: got %v, want 403", err)
			}
		})
	}

	// A signature made for another region or another path does not hold.
	other := bedrockruntime.New(bedrockruntime.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(s.URL), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(bedrockAKID, bedrockSecret, ""),
		HTTPClient:  providertest.AWSHTTPClient(nil),
	})
	if _, err := other.Converse(context.Background(), converseInput(claudeModel)); err == nil {
		t.Error("another region's signature: got success, want a refusal")
	}
	req := signedRequest(t, s.URL, "/model/"+strings.ReplaceAll(claudeModel, ":", "%3A")+"/converse")
	req.URL.RawPath = "/model/" + claudeModel + "/converse" // ':' no longer escaped
	req.URL.Path = req.URL.RawPath
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "InvalidSignatureException") {
		t.Errorf("changed path: got %d %q, want 403 InvalidSignatureException", resp.StatusCode, resp.Header.Get("X-Amzn-Errortype"))
	}
}

// signedRequest captures a request the SDK signed for rawPath, unsent.
func signedRequest(t *testing.T, url, rawPath string) *http.Request {
	t.Helper()
	var captured *http.Request
	var body []byte
	c := bedrockruntime.New(bedrockruntime.Options{
		Region: bedrockRegion, BaseEndpoint: aws.String(url), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(bedrockAKID, bedrockSecret, ""),
		HTTPClient: doerFunc(func(r *http.Request) (*http.Response, error) {
			captured = r.Clone(r.Context())
			body, _ = io.ReadAll(r.Body)
			return nil, errors.New("captured")
		}),
	})
	_, _ = c.Converse(context.Background(), converseInput(claudeModel))
	if captured == nil || captured.URL.EscapedPath() != rawPath {
		t.Fatalf("captured: got %v, want a request for %s", captured, rawPath)
	}
	captured.RequestURI = ""
	captured.Body = io.NopCloser(bytes.NewReader(body))
	return captured.WithContext(context.Background())
}

type doerFunc func(*http.Request) (*http.Response, error)

func (f doerFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

func TestBedrockBearerToken(t *testing.T) {
	s := newBedrock(t)
	s.AddKey("ABSKbedrockapikey0123456789")
	post := func(key string) *http.Response {
		req, err := http.NewRequest(http.MethodPost,
			s.URL+"/model/"+strings.ReplaceAll(claudeModel, ":", "%3A")+"/invoke-with-response-stream",
			bytes.NewReader(anthropicBody(t)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if resp := post("ABSKnotakey"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("unknown bearer token: got %d, want 403", resp.StatusCode)
	}
	resp := post("ABSKbedrockapikey0123456789")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/vnd.amazon.eventstream" {
		t.Fatalf("got %d %q, want 200 application/vnd.amazon.eventstream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if got := s.Last().Key; got != "ABSKbedrockapikey0123456789" {
		t.Errorf("Key: got %q, want the bearer token", got)
	}
	// Claude Code decodes the frames itself: each is an event of type
	// chunk whose {"bytes"} is an Anthropic SSE event's JSON.
	dec := eventstream.NewDecoder()
	var typs []string
	for {
		msg, err := dec.Decode(resp.Body, nil)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h := msg.Headers.Get(":event-type"); h == nil || h.String() != "chunk" {
			t.Fatalf(":event-type: got %v, want chunk", h)
		}
		var part struct{ Bytes []byte }
		var ev struct{ Type string }
		if err := json.Unmarshal(msg.Payload, &part); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(part.Bytes, &ev); err != nil {
			t.Fatal(err)
		}
		typs = append(typs, ev.Type)
	}
	if len(typs) != 6+5 || typs[0] != "message_start" || typs[len(typs)-1] != "message_stop" {
		t.Errorf("events: got %v, want message_start … message_stop", typs)
	}
}

func TestBedrockFaultStatus(t *testing.T) {
	s := newBedrock(t)
	c := bedrockClient(s.URL, bedrockAKID, bedrockSecret)
	for _, tc := range []struct {
		status int
		target any
	}{
		{429, new(*types.ThrottlingException)},
		{500, new(*types.InternalServerException)},
		{503, new(*types.ServiceUnavailableException)},
		{403, new(*types.AccessDeniedException)},
		{400, new(*types.ValidationException)},
	} {
		s.Fault(bedrockAKID, providertest.Fault{Status: tc.status, RetryAfter: "7", Times: 1})
		_, err := c.Converse(context.Background(), converseInput(claudeModel))
		if !errors.As(err, tc.target) {
			t.Errorf("%d: got %v, want %T", tc.status, err, tc.target)
		}
		var re *smithyhttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != tc.status {
			t.Errorf("%d: got %v, want that status", tc.status, err)
			continue
		}
		if got := re.Response.Header.Get("Retry-After"); got != "7" {
			t.Errorf("%d: Retry-After: got %q, want 7", tc.status, got)
		}
	}
	if _, err := c.Converse(context.Background(), converseInput(claudeModel)); err != nil {
		t.Errorf("after the faults were used up: got %v, want success", err)
	}
	// The stream operations fail the same way before their stream starts.
	s.Fault("", providertest.Fault{Status: 429, Times: 1})
	_, err := c.InvokeModelWithResponseStream(context.Background(), &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(claudeModel), Body: anthropicBody(t)})
	var te *types.ThrottlingException
	if !errors.As(err, &te) {
		t.Errorf("stream: got %v, want a ThrottlingException", err)
	}
}

func TestBedrockFaultReset(t *testing.T) {
	s := newBedrock(t)
	s.Fault(bedrockAKID, providertest.Fault{Reset: true})
	_, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).Converse(context.Background(), converseInput(claudeModel))
	var re *smithyhttp.RequestSendError
	if !errors.As(err, &re) {
		t.Errorf("got %v, want a RequestSendError", err)
	}
}

// A cut event stream is seen by the Go SDK as the end of the stream: its
// decoder takes an unexpected EOF at or within a frame for a clean end. What
// shows the cut is the missing last events (message_stop with the invocation
// metrics, Converse's messageStop and metadata); a proxy that must make the
// failure plain sends an exception event first.
func TestBedrockFaultCut(t *testing.T) {
	s := newBedrock(t)
	s.Fault("", providertest.Fault{CutAfter: 3})
	c := bedrockClient(s.URL, bedrockAKID, bedrockSecret)
	out, err := c.InvokeModelWithResponseStream(context.Background(), &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(claudeModel), Body: anthropicBody(t)})
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := streamChunks(t, out.GetStream())
	if err != nil {
		t.Errorf("cut invoke stream: got %v, want the SDK's silent end", err)
	}
	if len(chunks) != 3 || chunks[2]["type"] != "content_block_delta" {
		t.Errorf("chunks before the cut: got %v, want 3 ending in a delta", chunks)
	}

	cs, err := c.ConverseStream(context.Background(), converseStreamInput(claudeModel))
	if err != nil {
		t.Fatal(err)
	}
	es := cs.GetStream()
	defer es.Close()
	n := 0
	for ev := range es.Events() {
		n++
		if _, ok := ev.(*types.ConverseStreamOutputMemberMetadata); ok {
			t.Error("cut converse stream: got its metadata event")
		}
	}
	if n != 3 {
		t.Errorf("cut converse stream: got %d events, want 3", n)
	}
}

func TestBedrockCanceled(t *testing.T) {
	s := newBedrock(t)
	s.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := bedrockClient(s.URL, bedrockAKID, bedrockSecret).ConverseStream(ctx, converseStreamInput(claudeModel))
	if err != nil {
		t.Fatal(err)
	}
	es := out.GetStream()
	defer es.Close()
	for range 2 {
		if _, ok := <-es.Events(); !ok {
			t.Fatalf("stream ended early: %v", es.Err())
		}
	}
	cancel()
	s.WaitCanceled(t, 1)
	if !s.Last().Canceled {
		t.Error("Canceled: got false, want true")
	}
}

// Anthropic's own SDK for Bedrock, which Claude Code's client mirrors,
// signs or sends a bearer token itself and decodes the event stream into
// Anthropic events.
func TestBedrockAnthropicSDK(t *testing.T) {
	s := newBedrock(t)
	s.AddKey("ABSKbedrockapikey0123456789")
	for _, tc := range []struct {
		name string
		cfg  aws.Config
		key  string
	}{
		{"sigv4", aws.Config{Region: bedrockRegion,
			Credentials: credentials.NewStaticCredentialsProvider(bedrockAKID, bedrockSecret, "")}, bedrockAKID},
		{"bearer", aws.Config{Region: bedrockRegion, AuthSchemePreference: []string{"httpBearerAuth"},
			BearerAuthTokenProvider: anthropicbedrock.NewStaticBearerTokenProvider("ABSKbedrockapikey0123456789")}, "ABSKbedrockapikey0123456789"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := anthropic.NewClient(anthropicbedrock.WithConfig(tc.cfg), option.WithBaseURL(s.URL), option.WithMaxRetries(0))
			params := anthropic.MessageNewParams{
				Model:     claudeARN,
				MaxTokens: 64,
				Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
			}
			msg, err := c.Messages.New(context.Background(), params)
			if err != nil {
				t.Fatal(err)
			}
			if msg.Usage.InputTokens != 11 || msg.Usage.OutputTokens != 22 || len(msg.Content) != 1 {
				t.Errorf("message: got %+v", msg)
			}
			if s.Last().Key != tc.key {
				t.Errorf("Key: got %q, want %q", s.Last().Key, tc.key)
			}

			stream := c.Messages.NewStreaming(context.Background(), params)
			var acc anthropic.Message
			for stream.Next() {
				if err := acc.Accumulate(stream.Current()); err != nil {
					t.Fatal(err)
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if acc.Usage.OutputTokens != 22 || acc.Usage.CacheReadInputTokens != 3 || acc.StopReason != anthropic.StopReasonEndTurn {
				t.Errorf("streamed message: got usage %+v stop %q, want output 22, cache read 3, end_turn", acc.Usage, acc.StopReason)
			}
			if !strings.HasSuffix(s.Last().URI, "/invoke-with-response-stream") {
				t.Errorf("URI: got %q", s.Last().URI)
			}
		})
	}
	s.Fault(bedrockAKID, providertest.Fault{Status: 429, RetryAfter: "5", Times: 1})
	c := anthropic.NewClient(anthropicbedrock.WithConfig(aws.Config{Region: bedrockRegion,
		Credentials: credentials.NewStaticCredentialsProvider(bedrockAKID, bedrockSecret, "")}),
		option.WithBaseURL(s.URL), option.WithMaxRetries(0))
	_, err := c.Messages.New(context.Background(), anthropic.MessageNewParams{Model: claudeModel, MaxTokens: 8,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}})
	var ae *anthropic.Error
	if !errors.As(err, &ae) || ae.StatusCode != 429 || ae.Response.Header.Get("Retry-After") != "5" {
		t.Errorf("got %v, want a 429 with Retry-After 5", err)
	}
}

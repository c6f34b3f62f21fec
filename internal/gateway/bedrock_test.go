package gateway_test

// The AWS SDK for Go's Bedrock runtime client, and Anthropic's SDK for
// Bedrock as Claude Code uses it, pointed at the gateway, which forwards to
// the providertest Bedrock mock. The client signs with an AWS AI key pair
// (or sends a Keybridge key as a bearer token); the gateway verifies that
// and signs afresh with the provider's own AWS pair, which the mock checks.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthropicbedrock "github.com/anthropics/anthropic-sdk-go/bedrock"
	"github.com/anthropics/anthropic-sdk-go/option"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/auth/bearer"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

const (
	brRegion = "us-east-1"
	brModel  = "anthropic.claude-3-5-sonnet-20241022-v2:0"
	brARN    = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0"
	// The SDK escapes ':' and '/' in model ids; these bytes must reach
	// the provider as they are, since the signature covers them.
	brModelPath = "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0"
	brARNPath   = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20241022-v2%3A0"
)

// brEnv is a Keybridge with a bedrock provider "br" in front of the mock,
// and an AWS AI key to sign with.
type brEnv struct {
	*env
	mock            *providertest.Server
	upAK, upSK      string // the provider's AWS pair
	awsKey, awsSecr string // the AI key's kbk_ key and kbs_ secret
}

func newBrEnv(t *testing.T, opts envOptions) *brEnv {
	return newBrEnvWith(t, storetest.SQLite(t), opts)
}

func newBrEnvWith(t *testing.T, st store.Store, opts envOptions) *brEnv {
	e := newEnvWith(t, st, opts)
	b := &brEnv{env: e, upAK: "AKIA" + strings.ToUpper(canary(t, "")[:16]), upSK: canary(t, "aws-secret/")}
	b.mock = providertest.NewBedrock(t, brRegion, b.upAK, b.upSK)
	b.mock.Usage = providertest.Usage{Input: 11, Output: 22, CacheRead: 3, CacheWrite: 4}
	e.provider(map[string]any{"name": "br", "type": "bedrock", "base_url": b.mock.URL,
		"settings": map[string]any{"region": brRegion, "access_key": b.upAK, "access_key_secret": b.upSK}})
	b.awsKey, b.awsSecr = b.aiKey("AWS")
	return b
}

// aiKey creates an AI key of aiType in a new project and returns its key
// and secret.
func (b *brEnv) aiKey(aiType string) (key, secret string) {
	b.t.Helper()
	project := b.api("POST", "/api/v1/orgs/acme/projects", b.OwnerKey, map[string]any{"name": "p-" + strings.ToLower(aiType)}, 201)["id"].(string)
	out := b.api("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", b.OwnerKey,
		map[string]any{"name": "k", "ai_type": aiType}, 201)
	return out["key"].(string), out["secret"].(string)
}

// client is the official Bedrock runtime client as a user sets it up for
// Keybridge: the gateway's endpoint and the AI key pair, no retries. Its HTTP
// client is providertest.AWSHTTPClient, which keeps the SDK's own race from
// closing the connection under a stream.
func (b *brEnv) client(provider, akid, secret string) *bedrockruntime.Client {
	return bedrockruntime.New(bedrockruntime.Options{
		Region:           brRegion,
		BaseEndpoint:     aws.String(b.URL + "/gateway/" + provider),
		Credentials:      credentials.NewStaticCredentialsProvider(akid, secret, ""),
		RetryMaxAttempts: 1,
		HTTPClient:       providertest.AWSHTTPClient(nil),
	})
}

// bearerClient is the Bedrock runtime client with a bearer token, as
// AWS_BEARER_TOKEN_BEDROCK sets it up. The SDK's own bearer signer sends
// tokens only over HTTPS; the test server is plain HTTP, so a signer that
// sets the same header stands in for it.
func (b *brEnv) bearerClient(token string) *bedrockruntime.Client {
	return bedrockruntime.New(bedrockruntime.Options{
		Region:                  brRegion,
		BaseEndpoint:            aws.String(b.URL + "/gateway/br"),
		AuthSchemePreference:    []string{"httpBearerAuth"},
		BearerAuthTokenProvider: bearer.StaticTokenProvider{Token: bearer.Token{Value: token}},
		BearerAuthSigner:        plainBearer{},
		RetryMaxAttempts:        1,
		HTTPClient:              providertest.AWSHTTPClient(nil),
	})
}

type plainBearer struct{}

func (plainBearer) SignWithBearerToken(_ context.Context, tok bearer.Token, m bearer.Message) (bearer.Message, error) {
	r, ok := m.(*smithyhttp.Request)
	if !ok {
		return nil, errors.New("not an HTTP request")
	}
	r.Header.Set("Authorization", "Bearer "+tok.Value)
	return r, nil
}

// noKeybridgeSecrets fails if any Keybridge credential reached the
// provider, in any header, URI or body it received.
func (b *brEnv) noKeybridgeSecrets(t *testing.T, extra ...string) {
	t.Helper()
	for i, r := range b.mock.Requests() {
		var all strings.Builder
		all.WriteString(r.URI)
		all.Write(r.Body)
		for name, vv := range r.Header {
			all.WriteString(name + ": " + strings.Join(vv, ",") + "\n")
		}
		for _, s := range append([]string{b.OwnerKey, b.awsKey, b.awsSecr, "kb_", "kbs_", "kbk_"}, extra...) {
			if strings.Contains(all.String(), s) {
				t.Errorf("request %d to the provider holds a Keybridge credential (%.6s...)", i, s)
			}
		}
		if r.Key != b.upAK {
			t.Errorf("request %d signed by %q, want the provider's access key", i, r.Key)
		}
	}
}

func brBody(t *testing.T) []byte {
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

func brConverse(model string) *bedrockruntime.ConverseInput {
	return &bedrockruntime.ConverseInput{
		ModelId: aws.String(model),
		Messages: []types.Message{{Role: types.ConversationRoleUser,
			Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: "hi"}}}},
	}
}

func brConverseStream(model string) *bedrockruntime.ConverseStreamInput {
	in := brConverse(model)
	return &bedrockruntime.ConverseStreamInput{ModelId: in.ModelId, Messages: in.Messages}
}

func TestBedrockSDKInvokeModel(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	c := b.client("br", b.awsKey, b.awsSecr)
	for _, tc := range []struct{ model, path string }{{brModel, brModelPath}, {brARN, brARNPath}} {
		body := brBody(t)
		out, err := c.InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
			ModelId: aws.String(tc.model), Body: body, ContentType: aws.String("application/json"),
			Trace: types.TraceEnabled,
		})
		if err != nil {
			t.Fatalf("InvokeModel %s: %v", tc.model, err)
		}
		var msg struct {
			Type    string `json:"type"`
			Content []struct{ Text string }
		}
		if err := json.Unmarshal(out.Body, &msg); err != nil || msg.Type != "message" || len(msg.Content) != 1 {
			t.Errorf("body = %s, want an Anthropic message", out.Body)
		}
		last := b.mock.Last()
		if want := tc.path + "/invoke"; last.URI != want {
			t.Errorf("upstream URI = %q, want %q", last.URI, want)
		}
		if !bytes.Equal(last.Body, body) {
			t.Errorf("upstream body = %s, want the client's bytes", last.Body)
		}
		if got := last.Header.Get("X-Amzn-Bedrock-Trace"); got != "ENABLED" {
			t.Errorf("upstream X-Amzn-Bedrock-Trace = %q, want the client's header passed", got)
		}
		if last.Header.Get("Amz-Sdk-Invocation-Id") == "" {
			t.Error("the SDK's invocation id did not reach the provider")
		}
		raw := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response)
		if got := raw.Header.Get("X-Amzn-Bedrock-Input-Token-Count"); got != "11" {
			t.Errorf("X-Amzn-Bedrock-Input-Token-Count = %q, want the provider's 11", got)
		}
		if id, ok := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata); !ok || id == "" {
			t.Error("the provider's request id did not reach the SDK")
		}
		if !strings.HasPrefix(raw.Header.Get("Server-Timing"), "keybridge;dur=") || raw.Header.Get("X-Keybridge-Request-Id") == "" {
			t.Errorf("Server-Timing = %q, X-Keybridge-Request-Id = %q", raw.Header.Get("Server-Timing"), raw.Header.Get("X-Keybridge-Request-Id"))
		}
	}
	b.noKeybridgeSecrets(t)
	noCanary(t, b.upSK, b.waitLog(2))
}

func TestBedrockSDKStreams(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	b.mock.Events = 4
	c := b.client("br", b.awsKey, b.awsSecr)

	t.Run("InvokeModelWithResponseStream", func(t *testing.T) {
		out, err := c.InvokeModelWithResponseStream(context.Background(), &bedrockruntime.InvokeModelWithResponseStreamInput{
			ModelId: aws.String(brARN), Body: brBody(t)})
		if err != nil {
			t.Fatal(err)
		}
		raw := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response)
		if raw.Header.Get("X-Accel-Buffering") != "no" {
			t.Errorf("X-Accel-Buffering = %q, want no", raw.Header.Get("X-Accel-Buffering"))
		}
		typs, err := invokeChunkTypes(out.GetStream())
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if len(typs) != 6+4 || typs[0] != "message_start" || typs[len(typs)-1] != "message_stop" {
			t.Errorf("chunks = %v, want message_start … message_stop", typs)
		}
		if want := brARNPath + "/invoke-with-response-stream"; b.mock.Last().URI != want {
			t.Errorf("upstream URI = %q, want %q", b.mock.Last().URI, want)
		}
	})

	t.Run("Converse", func(t *testing.T) {
		out, err := c.Converse(context.Background(), brConverse(brModel))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := out.Output.(*types.ConverseOutputMemberMessage); !ok || out.StopReason != types.StopReasonEndTurn {
			t.Errorf("output = %#v, stop %q", out.Output, out.StopReason)
		}
		if aws.ToInt32(out.Usage.InputTokens) != 11 || aws.ToInt32(out.Usage.OutputTokens) != 22 {
			t.Errorf("usage = %+v, want 11/22", out.Usage)
		}
		if want := brModelPath + "/converse"; b.mock.Last().URI != want {
			t.Errorf("upstream URI = %q, want %q", b.mock.Last().URI, want)
		}
	})

	t.Run("ConverseStream", func(t *testing.T) {
		out, err := c.ConverseStream(context.Background(), brConverseStream(brModel))
		if err != nil {
			t.Fatal(err)
		}
		got, err := converseEvents(out.GetStream())
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if want := "messageStart delta delta delta delta contentBlockStop messageStop metadata"; strings.Join(got, " ") != want {
			t.Errorf("events = %v, want %s", got, want)
		}
	})
	b.noKeybridgeSecrets(t)
	noCanary(t, b.upSK, b.waitLog(3))
}

func invokeChunkTypes(es *bedrockruntime.InvokeModelWithResponseStreamEventStream) ([]string, error) {
	defer es.Close()
	var typs []string
	for ev := range es.Events() {
		c, ok := ev.(*types.ResponseStreamMemberChunk)
		if !ok {
			continue
		}
		var v struct{ Type string }
		json.Unmarshal(c.Value.Bytes, &v)
		typs = append(typs, v.Type)
	}
	return typs, es.Err()
}

func converseEvents(es *bedrockruntime.ConverseStreamEventStream) ([]string, error) {
	defer es.Close()
	var got []string
	for ev := range es.Events() {
		switch ev.(type) {
		case *types.ConverseStreamOutputMemberMessageStart:
			got = append(got, "messageStart")
		case *types.ConverseStreamOutputMemberContentBlockDelta:
			got = append(got, "delta")
		case *types.ConverseStreamOutputMemberContentBlockStop:
			got = append(got, "contentBlockStop")
		case *types.ConverseStreamOutputMemberMessageStop:
			got = append(got, "messageStop")
		case *types.ConverseStreamOutputMemberMetadata:
			got = append(got, "metadata")
		}
	}
	return got, es.Err()
}

// brAPIError checks that err is the SDK's API error with the status,
// error code and X-Keybridge-Error given, and a message holding msg.
func brAPIError(t *testing.T, err error, status int, code, kbCode, msg string) *smithyhttp.ResponseError {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want an API error", err)
	}
	if ae.ErrorCode() != code || !strings.Contains(ae.ErrorMessage(), msg) {
		t.Errorf("API error = %s %q, want %s with %q", ae.ErrorCode(), ae.ErrorMessage(), code, msg)
	}
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want a response error", err)
	}
	if re.HTTPStatusCode() != status {
		t.Errorf("status = %d, want %d", re.HTTPStatusCode(), status)
	}
	if got := re.Response.Header.Get("X-Keybridge-Error"); got != kbCode {
		t.Errorf("X-Keybridge-Error = %q, want %q", got, kbCode)
	}
	return re
}

func TestBedrockSDKRefusals(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	_, openaiSecret := b.aiKey("OPENAI")

	t.Run("wrong secret", func(t *testing.T) {
		_, err := b.client("br", b.awsKey, b.awsSecr+"x").Converse(context.Background(), brConverse(brModel))
		brAPIError(t, err, 401, "UnrecognizedClientException", "unauthenticated", "AWS signature does not verify")
	})
	t.Run("unknown access key", func(t *testing.T) {
		_, err := b.client("br", "kbk_"+strings.Repeat("a", 32), b.awsSecr).Converse(context.Background(), brConverse(brModel))
		brAPIError(t, err, 401, "UnrecognizedClientException", "unauthenticated", "AWS signature does not verify")
	})
	t.Run("no credentials", func(t *testing.T) {
		resp, body := b.do(b.post("/gateway/br"+brModelPath+"/converse", "", `{"messages":[]}`))
		var v struct{ Message string }
		json.Unmarshal(body, &v)
		if resp.StatusCode != 401 || resp.Header.Get("X-Keybridge-Error") != "unauthenticated" ||
			!strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "UnrecognizedClientException") ||
			!strings.Contains(v.Message, "missing credentials") {
			t.Errorf("= %d %v %s, want 401 in AWS's shape", resp.StatusCode, resp.Header, body)
		}
	})
	t.Run("AI key of another type", func(t *testing.T) {
		_, err := b.bearerClient(openaiSecret).Converse(context.Background(), brConverse(brModel))
		var ade *types.AccessDeniedException
		if !errors.As(err, &ade) {
			t.Errorf("err = %v, want an AccessDeniedException", err)
		}
		brAPIError(t, err, 403, "AccessDeniedException", "permission_denied", "cannot reach bedrock providers")
	})
	t.Run("unknown provider", func(t *testing.T) {
		// The provider's type is unknown, so the answer has the §1 shape
		// (SPEC §7.3), which the AWS SDK reads as an untyped 404.
		_, err := b.client("nope", b.awsKey, b.awsSecr).Converse(context.Background(), brConverse(brModel))
		var re *smithyhttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != 404 || re.Response.Header.Get("X-Keybridge-Error") != "not_found" {
			t.Fatalf("err = %v, want a 404 from Keybridge", err)
		}
	})
	if n := len(b.mock.Requests()); n != 0 {
		t.Errorf("the provider got %d requests, want none", n)
	}
	noCanary(t, b.awsSecr, b.waitLog(5))
	noCanary(t, openaiSecret, b.logs())
}

func TestBedrockSDKUpstreamFailures(t *testing.T) {
	b := newBrEnv(t, envOptions{Gateway: gateway.Options{HeaderTimeout: 300 * time.Millisecond, MaxBody: 4096}})
	c := b.client("br", b.awsKey, b.awsSecr)

	t.Run("429 is the SDK's ThrottlingException with Retry-After", func(t *testing.T) {
		b.mock.Fault(b.upAK, providertest.Fault{Status: 429, RetryAfter: "7", Times: 1})
		_, err := c.Converse(context.Background(), brConverse(brModel))
		var te *types.ThrottlingException
		if !errors.As(err, &te) {
			t.Errorf("err = %v, want a ThrottlingException", err)
		}
		re := brAPIError(t, err, 429, "ThrottlingException", "rate_limited", `provider "br" is rate limited`)
		if got := re.Response.Header.Get("Retry-After"); got != "7" {
			t.Errorf("Retry-After = %q, want 7", got)
		}
	})
	for _, f := range []providertest.Fault{{Status: 500}, {Status: 503}, {Status: 401}, {Status: 403}, {Reset: true}} {
		t.Run("502 after "+faultName(f), func(t *testing.T) {
			f.Times = 1
			if f.Reset {
				// A reset on a pooled connection is taken for one the
				// provider closed while idle, and sent again once on a
				// fresh one: both must fail.
				f.Times = 2
			}
			b.mock.Fault(b.upAK, f)
			_, err := c.Converse(context.Background(), brConverse(brModel))
			var ie *types.InternalServerException
			if !errors.As(err, &ie) {
				t.Errorf("err = %v, want an InternalServerException", err)
			}
			brAPIError(t, err, 502, "InternalServerException", "bad_gateway", `provider "br": every upstream key failed`)
			var ae smithy.APIError
			if errors.As(err, &ae) && (strings.Contains(ae.ErrorMessage(), "security token") || strings.Contains(ae.ErrorMessage(), "access to the model")) {
				t.Errorf("the provider's refusal reached the client: %q", ae.ErrorMessage())
			}
		})
	}
	t.Run("504 when no headers come", func(t *testing.T) {
		b.mock.Fault(b.upAK, providertest.Fault{StallBefore: time.Minute, Times: 1})
		_, err := c.Converse(context.Background(), brConverse(brModel))
		var me *types.ModelTimeoutException
		if !errors.As(err, &me) {
			t.Errorf("err = %v, want a ModelTimeoutException", err)
		}
		brAPIError(t, err, 504, "ModelTimeoutException", "gateway_timeout", "sent no response headers")
	})
	t.Run("413 before anything is sent", func(t *testing.T) {
		before := len(b.mock.Requests())
		_, err := c.InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
			ModelId: aws.String(brModel), Body: bytes.Repeat([]byte("x"), 5000)})
		var ve *types.ValidationException
		if !errors.As(err, &ve) {
			t.Errorf("err = %v, want a ValidationException", err)
		}
		brAPIError(t, err, 413, "ValidationException", "payload_too_large", "over the gateway's limit of 4096 bytes")
		if n := len(b.mock.Requests()) - before; n != 0 {
			t.Errorf("the provider got %d requests", n)
		}
	})
	// The provider's single credential is not put to rest: once the
	// faults are over, the next call goes through.
	if _, err := c.Converse(context.Background(), brConverse(brModel)); err != nil {
		t.Errorf("after the faults: %v", err)
	}
	b.noKeybridgeSecrets(t)
	noCanary(t, b.upSK, b.waitLog(9))
}

func faultName(f providertest.Fault) string {
	if f.Reset {
		return "reset"
	}
	return http.StatusText(f.Status)
}

// A cut event stream would look finished to the SDK, which takes EOF for
// the end: the gateway sends an exception event first, which the SDK
// reports as the stream's error.
func TestBedrockSDKCutStream(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	b.mock.Fault("", providertest.Fault{CutAfter: 3})
	c := b.client("br", b.awsKey, b.awsSecr)

	out, err := c.InvokeModelWithResponseStream(context.Background(), &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(brModel), Body: brBody(t)})
	if err != nil {
		t.Fatal(err)
	}
	typs, err := invokeChunkTypes(out.GetStream())
	var ie *types.InternalServerException
	if !errors.As(err, &ie) || !strings.Contains(aws.ToString(ie.Message), "cut short") {
		t.Errorf("invoke stream error = %v, want the gateway's InternalServerException", err)
	}
	if len(typs) != 3 {
		t.Errorf("chunks = %v, want the 3 before the cut", typs)
	}

	cs, err := c.ConverseStream(context.Background(), brConverseStream(brModel))
	if err != nil {
		t.Fatal(err)
	}
	got, err := converseEvents(cs.GetStream())
	ie = nil
	if !errors.As(err, &ie) || !strings.Contains(aws.ToString(ie.Message), "cut short") {
		t.Errorf("converse stream error = %v, want the gateway's InternalServerException", err)
	}
	if len(got) != 3 {
		t.Errorf("events = %v, want the 3 before the cut", got)
	}
}

func TestBedrockSDKCancelReachesProvider(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	b.mock.Fault("", providertest.Fault{StallAfter: 2, StallFor: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := b.client("br", b.awsKey, b.awsSecr).ConverseStream(ctx, brConverseStream(brModel))
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
	b.mock.WaitCanceled(t, 1)
	if l := b.waitLog(1); !strings.Contains(l, `"status":499`) {
		t.Errorf("the log line does not record 499:\n%s", l)
	}
}

// Claude Code on Bedrock with CLAUDE_CODE_SKIP_BEDROCK_AUTH sends
// AWS_BEARER_TOKEN_BEDROCK, here a Keybridge key, as a bearer token; the
// gateway signs for the provider. Anthropic's SDK for Bedrock does the same.
func TestBedrockAnthropicSDKBearer(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	// The Go SDK turns /v1/messages into /model/{id}/invoke only when that
	// is the whole path, so it cannot take a base URL with a path (Claude
	// Code's TypeScript SDK can): the base URL is the server's and a
	// middleware after the SDK's own puts the gateway's prefix in front.
	client := func(token string) *anthropic.Client {
		c := anthropic.NewClient(
			anthropicbedrock.WithConfig(aws.Config{Region: brRegion, AuthSchemePreference: []string{"httpBearerAuth"},
				BearerAuthTokenProvider: anthropicbedrock.NewStaticBearerTokenProvider(token)}),
			option.WithBaseURL(b.URL), option.WithMaxRetries(0),
			option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
				r.URL.Path = "/gateway/br" + r.URL.Path
				if r.URL.RawPath != "" {
					r.URL.RawPath = "/gateway/br" + r.URL.RawPath
				}
				return next(r)
			}))
		return &c
	}
	params := anthropic.MessageNewParams{
		Model: brARN, MaxTokens: 64,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	}
	for name, token := range map[string]string{"platform key": b.OwnerKey, "AWS AI key secret": b.awsSecr} {
		t.Run(name, func(t *testing.T) {
			c := client(token)
			msg, err := c.Messages.New(context.Background(), params)
			if err != nil {
				t.Fatal(err)
			}
			if msg.Usage.InputTokens != 11 || msg.Usage.OutputTokens != 22 || len(msg.Content) != 1 {
				t.Errorf("message = %+v", msg)
			}
			if want := brARNPath + "/invoke"; b.mock.Last().URI != want {
				t.Errorf("upstream URI = %q, want %q", b.mock.Last().URI, want)
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
			if acc.Usage.OutputTokens != 22 || acc.StopReason != anthropic.StopReasonEndTurn {
				t.Errorf("streamed message: usage %+v stop %q", acc.Usage, acc.StopReason)
			}
		})
	}
	t.Run("cut stream", func(t *testing.T) {
		b.mock.Fault(b.upAK, providertest.Fault{CutAfter: 3, Times: 1})
		stream := client(b.OwnerKey).Messages.NewStreaming(context.Background(), params)
		n := 0
		for stream.Next() {
			n++
			if stream.Current().Type == "message_stop" {
				t.Error("a cut stream ended with message_stop")
			}
		}
		if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "cut short") {
			t.Errorf("stream error = %v, want the gateway's exception", err)
		}
		if n != 3 {
			t.Errorf("events = %d, want the 3 before the cut", n)
		}
	})
	t.Run("invalid key", func(t *testing.T) {
		before := len(b.mock.Requests())
		_, err := client("kb_notakey").Messages.New(context.Background(), params)
		var ae *anthropic.Error
		if !errors.As(err, &ae) || ae.StatusCode != 401 || ae.Response.Header.Get("X-Keybridge-Error") != "unauthenticated" {
			t.Fatalf("err = %v, want Keybridge's 401", err)
		}
		if !strings.Contains(ae.Error(), "authentication_error") {
			t.Errorf("err = %v, want Anthropic's authentication_error", err)
		}
		if len(b.mock.Requests()) != before {
			t.Error("a refused request reached the provider")
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		b.mock.Fault(b.upAK, providertest.Fault{Status: 429, RetryAfter: "5", Times: 1})
		_, err := client(b.OwnerKey).Messages.New(context.Background(), params)
		var ae *anthropic.Error
		if !errors.As(err, &ae) || ae.StatusCode != 429 || ae.Response.Header.Get("Retry-After") != "5" ||
			!strings.Contains(ae.Error(), "rate_limit_error") {
			t.Errorf("err = %v, want Keybridge's 429 with Retry-After 5", err)
		}
	})
	b.noKeybridgeSecrets(t)
	noCanary(t, b.upSK, b.waitLog(7))
	noCanary(t, b.awsSecr, b.logs())
	noCanary(t, b.OwnerKey, b.logs())
}

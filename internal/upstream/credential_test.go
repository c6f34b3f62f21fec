package upstream_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/upstream"
)

func TestSetHeader(t *testing.T) {
	for _, c := range []struct {
		typ        keybridge.ProviderType
		key        string
		header     string
		want       string
		wantAbsent []string
	}{
		{keybridge.ProviderOpenAI, testKey, "Authorization", "Bearer " + testKey, nil},
		{keybridge.ProviderOpenAICompatible, testKey, "Authorization", "Bearer " + testKey, nil},
		{keybridge.ProviderOpenAICompatible, "", "Authorization", "", nil},
		{keybridge.ProviderAnthropic, testKey, "x-api-key", testKey, []string{"Authorization"}},
		{keybridge.ProviderAzureOpenAI, testKey, "api-key", testKey, []string{"Authorization"}},
		{keybridge.ProviderGoogle, testKey, "x-goog-api-key", testKey, []string{"Authorization"}},
		{keybridge.ProviderBedrock, testKey, "Authorization", "", nil},
	} {
		t.Run(string(c.typ)+"/"+c.key, func(t *testing.T) {
			h := http.Header{}
			if c.want != "" {
				h.Set(c.header, "left over from the caller")
			}
			upstream.Credential{Type: c.typ, Key: keybridge.NewSecret(c.key)}.SetHeader(h)
			if got := h.Values(c.header); c.want == "" && len(got) != 0 || c.want != "" && (len(got) != 1 || got[0] != c.want) {
				t.Errorf("SetHeader: %s = %q, want %q", c.header, got, c.want)
			}
			for _, name := range c.wantAbsent {
				if v := h.Get(name); v != "" {
					t.Errorf("SetHeader set %s = %q, want it absent", name, v)
				}
			}
		})
	}
}

// Bedrock credentials of the tests: AWS's documented example pair.
const (
	awsAccessKey = "AKIAIOSFODNN7EXAMPLE"
	awsSecretKey = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

func bedrockCredential() upstream.Credential {
	return upstream.Credential{Type: keybridge.ProviderBedrock, Settings: keybridge.ProviderSettings{
		Region: "us-east-1", AccessKey: keybridge.NewSecret(awsAccessKey), AccessKeySecret: keybridge.NewSecret(awsSecretKey),
	}}
}

// recorded is a request as it reached the server, with its exact path bytes.
type recorded struct {
	method, rawPath, host string
	header                http.Header
	body                  []byte
}

// recordBedrock runs the real bedrockruntime SDK against a loopback
// server and returns the requests it sent.
func recordBedrock(t *testing.T, call func(ctx context.Context, c *bedrockruntime.Client) error) []recorded {
	t.Helper()
	var mu sync.Mutex
	var got []recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		path, _, _ := strings.Cut(r.RequestURI, "?")
		mu.Lock()
		got = append(got, recorded{r.Method, path, r.Host, r.Header.Clone(), body})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)
	client := bedrockruntime.New(bedrockruntime.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  credentials.NewStaticCredentialsProvider(awsAccessKey, awsSecretKey, ""),
		HTTPClient:   srv.Client(),
	})
	if err := call(context.Background(), client); err != nil {
		t.Fatalf("bedrockruntime call: %v", err)
	}
	return got
}

// The model IDs of Bedrock that a proxy gets wrong: a ':' in a model ID,
// and an ARN (':' and '/').
const (
	modelWithColon = "anthropic.claude-3-5-sonnet-20240620-v1:0"
	modelARN       = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
)

// TestSignBedrockMatchesSDK replays what the bedrockruntime SDK sent,
// path bytes and signed headers alike, through SignBedrock at the SDK's
// signing time: the signatures must be the SDK's own. Both are also
// checked against a reference computed here from AWS's documented
// algorithm, which escapes the already escaped path once more.
func TestSignBedrockMatchesSDK(t *testing.T) {
	for _, c := range []struct{ model, wantPath string }{
		{modelWithColon, "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"},
		{modelARN, "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/invoke"},
	} {
		t.Run(c.model, func(t *testing.T) {
			reqs := recordBedrock(t, func(ctx context.Context, client *bedrockruntime.Client) error {
				_, err := client.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{
					ModelId: aws.String(c.model), ContentType: aws.String("application/json"),
					Body: []byte(`{"anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}`),
				})
				return err
			})
			if len(reqs) != 1 {
				t.Fatalf("the SDK sent %d requests, want 1", len(reqs))
			}
			sdk := reqs[0]
			if sdk.rawPath != c.wantPath {
				t.Fatalf("the SDK sent path %q, want %q", sdk.rawPath, c.wantPath)
			}
			sdkAuth := sdk.header.Get("Authorization")
			if ref := referenceSignature(t, sdk); ref != sdkAuth {
				t.Fatalf("the reference signature\n%s\ndiffers from the SDK's\n%s", ref, sdkAuth)
			}

			req, err := http.NewRequest(sdk.method, "http://"+sdk.host+sdk.rawPath, bytes.NewReader(sdk.body))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range signedHeaders(sdkAuth) {
				if name != "host" && name != "content-length" && name != "x-amz-date" {
					req.Header[http.CanonicalHeaderKey(name)] = sdk.header.Values(name)
				}
			}
			req.Header.Set("X-Amz-Security-Token", "a caller's")
			at, err := time.Parse("20060102T150405Z", sdk.header.Get("X-Amz-Date"))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(sdk.body)
			if err := bedrockCredential().SignBedrock(context.Background(), req, hex.EncodeToString(sum[:]), at); err != nil {
				t.Fatalf("SignBedrock: %v", err)
			}
			if got := req.Header.Get("Authorization"); got != sdkAuth {
				t.Errorf("SignBedrock Authorization =\n%s\nwant the SDK's\n%s", got, sdkAuth)
			}
			if got := req.URL.RequestURI(); got != sdk.rawPath {
				t.Errorf("after SignBedrock the request would go to %q, want %q", got, sdk.rawPath)
			}
			if v := req.Header.Get("X-Amz-Security-Token"); v != "" {
				t.Errorf("SignBedrock kept X-Amz-Security-Token %q", v)
			}
		})
	}
}

// TestSignBedrockRawPathWins checks that RawPath is what is signed and
// sent even when Path was left saying something else.
func TestSignBedrockRawPathWins(t *testing.T) {
	req := httptest.NewRequest(http.MethodPost, "http://bedrock.test/model/x/invoke", nil)
	req.URL.RawPath = "/model/a%3A0/invoke"
	if err := bedrockCredential().SignBedrock(context.Background(), req, strings.Repeat("0", 64), time.Now()); err != nil {
		t.Fatalf("SignBedrock: %v", err)
	}
	if got := req.URL.EscapedPath(); got != "/model/a%3A0/invoke" {
		t.Errorf("EscapedPath after SignBedrock = %q, want the RawPath", got)
	}
	req.URL.RawPath = "/model/%zz/invoke"
	if err := bedrockCredential().SignBedrock(context.Background(), req, strings.Repeat("0", 64), time.Now()); err == nil {
		t.Errorf("SignBedrock(invalid RawPath) = nil, want an error")
	}
	cred := bedrockCredential()
	cred.Settings.AccessKeySecret = keybridge.Secret{}
	if err := cred.SignBedrock(context.Background(), req, strings.Repeat("0", 64), time.Now()); err == nil {
		t.Errorf("SignBedrock(no secret) = nil, want an error")
	}
}

// TestSignBedrockSecretChange guards against the signer's own cache, which
// knows a derived key by its access key ID: a secret corrected under the
// same ID must sign with the new secret at once.
func TestSignBedrockSecretChange(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	sign := func(secret string) string {
		cred := bedrockCredential()
		cred.Settings.AccessKeySecret = keybridge.NewSecret(secret)
		req := httptest.NewRequest(http.MethodPost, "http://bedrock.test/model/m/invoke", nil)
		if err := cred.SignBedrock(context.Background(), req, strings.Repeat("0", 64), at); err != nil {
			t.Fatalf("SignBedrock: %v", err)
		}
		return req.Header.Get("Authorization")
	}
	first, second, again := sign("wrong-secret"), sign(awsSecretKey), sign("wrong-secret")
	if first == second || first != again {
		t.Errorf("signatures with two secrets: %q, %q, then the first again %q; want two different, the first repeatable", first, second, again)
	}
}

func signedHeaders(auth string) []string {
	_, rest, _ := strings.Cut(auth, "SignedHeaders=")
	list, _, _ := strings.Cut(rest, ",")
	return strings.Split(list, ";")
}

// referenceSignature computes the Authorization header of r from AWS's
// SigV4 documentation, independently of the SDK: the canonical URI is the
// path as sent, escaped once more (every byte but unreserved ones and
// '/'), the headers those the request names as signed.
func referenceSignature(t *testing.T, r recorded) string {
	t.Helper()
	auth := r.header.Get("Authorization")
	_, cred, _ := strings.Cut(auth, "Credential=")
	cred, _, _ = strings.Cut(cred, ",")
	scope := strings.SplitN(cred, "/", 2)[1] // date/region/service/aws4_request
	parts := strings.Split(scope, "/")
	names := signedHeaders(auth)

	var canon strings.Builder
	canon.WriteString(r.method + "\n")
	for i := 0; i < len(r.rawPath); i++ {
		b := r.rawPath[i]
		if 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || strings.IndexByte("-_.~/", b) >= 0 {
			canon.WriteByte(b)
		} else {
			canon.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{b})))
		}
	}
	canon.WriteString("\n\n") // no query
	for _, n := range names {
		v := strings.Join(r.header.Values(n), ",")
		if n == "host" {
			v = r.host
		}
		canon.WriteString(n + ":" + strings.TrimSpace(v) + "\n")
	}
	sum := sha256.Sum256(r.body)
	canon.WriteString("\n" + strings.Join(names, ";") + "\n" + hex.EncodeToString(sum[:]))
	creq := sha256.Sum256([]byte(canon.String()))
	toSign := "AWS4-HMAC-SHA256\n" + r.header.Get("X-Amz-Date") + "\n" + scope + "\n" + hex.EncodeToString(creq[:])

	mac := func(key []byte, data string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(data))
		return h.Sum(nil)
	}
	k := mac([]byte("AWS4"+awsSecretKey), parts[0])
	for _, p := range parts[1:] {
		k = mac(k, p)
	}
	return "AWS4-HMAC-SHA256 Credential=" + cred + ", SignedHeaders=" + strings.Join(names, ";") +
		", Signature=" + hex.EncodeToString(mac(k, toSign))
}

// The gateway sets a credential on every request; SetHeader must cost
// next to nothing.
func BenchmarkSetHeader(b *testing.B) {
	cred := upstream.Credential{Type: keybridge.ProviderOpenAI, Key: keybridge.NewSecret(testKey)}
	h := http.Header{"Content-Type": {"application/json"}}
	b.ReportAllocs()
	for b.Loop() {
		cred.SetHeader(h)
	}
}

// SignBedrock on a request shaped like the gateway's: an InvokeModel with
// the headers the SDK sends.
func BenchmarkSignBedrock(b *testing.B) {
	cred := bedrockCredential()
	ctx := context.Background()
	hash := strings.Repeat("a", 64)
	req := httptest.NewRequest(http.MethodPost, "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke", nil)
	req.ContentLength = 110
	base := http.Header{
		"Content-Type": {"application/json"}, "Accept": {"application/json"},
		"Amz-Sdk-Invocation-Id": {"0b9b8a4e-54a4-4bf2-bc0e-6a6e3f6cb0a1"}, "Amz-Sdk-Request": {"attempt=1; max=3"},
	}
	b.ReportAllocs()
	for b.Loop() {
		req.Header = base.Clone()
		if err := cred.SignBedrock(ctx, req, hash, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

package auth_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/google/uuid"
	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// ringService starts a Service over the fixture's store with a key ring
// of its own, as SigV4 needs, and returns both.
func (f *fixture) ringService(t testing.TB) (*secrets.Ring, *auth.Service) {
	ring := f.openRing(t)
	opts := fastOptions()
	opts.Ring = ring
	return ring, startService(t, f.st, opts)
}

// openRing opens a key ring over the fixture's store with a random
// master key.
func (f *fixture) openRing(t testing.TB) *secrets.Ring {
	t.Helper()
	master, err := secrets.NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	ring, err := secrets.OpenRing(context.Background(), f.st, master, secrets.Options{})
	if err != nil {
		t.Fatalf("OpenRing: %v", err)
	}
	return ring
}

// newSealedAIKey stores an AI key of aiType whose secret is sealed the way
// the API seals an AWS key's (ring nil: not sealed, as for keys made
// before secrets were sealed). It returns the secret.
func (f *fixture) newSealedAIKey(t testing.TB, ring *secrets.Ring, aiType keybridge.AIType) (string, *keybridge.AIKey) {
	t.Helper()
	ctx := context.Background()
	p := &keybridge.Project{OrgID: f.org.ID, Name: "project " + time.Now().Format(time.RFC3339Nano)}
	if err := f.st.CreateProject(ctx, p); err != nil {
		t.Fatalf("CreateProject: %v", err)
	}
	secret, _ := apikey.Generate(apikey.AISecretPrefix)
	pub, _ := apikey.Generate(apikey.AIKeyPrefix)
	h := apikey.Hash(secret)
	k := &keybridge.AIKey{
		ID: uuid.Must(uuid.NewV7()).String(), ProjectID: p.ID, OrgID: f.org.ID, Name: "sdk", AIType: aiType,
		Key: pub, SecretHash: h[:], Limits: keybridge.Limits{RateLimitRPM: 30}, CreatedBy: f.owner.ID,
	}
	if ring != nil {
		sealed, err := ring.Seal([]byte(secret), keybridge.SealedAIKeySecret.AD(k.ID))
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		k.SecretSealed = sealed
	}
	if err := f.st.CreateAIKey(ctx, k); err != nil {
		t.Fatalf("CreateAIKey: %v", err)
	}
	return secret, k
}

// verdict is what the gateway stand-in decided about one request.
type verdict struct {
	p   *keybridge.Principal
	err error
}

// sigV4Server stands in for the gateway: it buffers the body, hashes it,
// and asks VerifySigV4. It answers what the SDK expects of Bedrock.
func sigV4Server(t *testing.T, s *auth.Service) (*httptest.Server, func() []verdict) {
	t.Helper()
	var mu sync.Mutex
	var got []verdict
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(body)
		before, uri := r.Header.Clone(), r.URL.String()
		p, err := s.VerifySigV4(r.Context(), r, hex.EncodeToString(sum[:]))
		if !reflect.DeepEqual(r.Header, before) || r.URL.String() != uri {
			t.Errorf("VerifySigV4 changed the request")
		}
		mu.Lock()
		got = append(got, verdict{p, err})
		mu.Unlock()
		if err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"message":"refused"}`))
			return
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/converse"):
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn",` +
				`"usage":{"inputTokens":1,"outputTokens":1,"totalTokens":2},"metrics":{"latencyMs":1}}`))
		case strings.HasSuffix(r.URL.Path, "/invoke-with-response-stream"):
			w.Header().Set("Content-Type", "application/vnd.amazon.eventstream")
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"content":[]}`))
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []verdict {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
}

// skewedSigner signs as the SDK does, with a clock off by skew.
type skewedSigner struct{ skew time.Duration }

func (s skewedSigner) SignHTTP(ctx context.Context, c aws.Credentials, r *http.Request, payloadHash, service, region string, t time.Time, opts ...func(*v4.SignerOptions)) error {
	return v4.NewSigner().SignHTTP(ctx, c, r, payloadHash, service, region, t.Add(s.skew), opts...)
}

// tamperingTransport changes the body after the SDK signed it, keeping
// its length.
type tamperingTransport struct{ next http.RoundTripper }

func (tt tamperingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	body, _ := io.ReadAll(r.Body)
	body = bytes.Replace(body, []byte(`"max_tokens":1`), []byte(`"max_tokens":9`), 1)
	r = r.Clone(r.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	return tt.next.RoundTrip(r)
}

const (
	modelWithColon = "anthropic.claude-3-5-sonnet-20240620-v1:0"
	modelARN       = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
	invokeBody     = `{"anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}`
)

// bedrockClient is the unmodified bedrockruntime SDK pointed at the
// gateway's endpoint for a provider, as SPEC §7.1 sets it up.
func bedrockClient(srv *httptest.Server, keyID, secret string, edit func(*bedrockruntime.Options)) *bedrockruntime.Client {
	return bedrockruntime.New(bedrockruntime.Options{
		Region:           "eu-west-3",
		BaseEndpoint:     aws.String(srv.URL + "/gateway/bedrock"),
		Credentials:      credentials.NewStaticCredentialsProvider(keyID, secret, ""),
		HTTPClient:       srv.Client(),
		RetryMaxAttempts: 1,
	}, func(o *bedrockruntime.Options) {
		if edit != nil {
			edit(o)
		}
	})
}

func invoke(ctx context.Context, c *bedrockruntime.Client, model string) error {
	_, err := c.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{
		ModelId: aws.String(model), ContentType: aws.String("application/json"), Body: []byte(invokeBody),
	})
	return err
}

func TestVerifySigV4(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			ring, s := f.ringService(t)
			srv, verdicts := sigV4Server(t, s)

			secret, k := f.newSealedAIKey(t, ring, keybridge.AIAWS)
			want := keybridge.Principal{
				Type: keybridge.ActorAIKey, KeyID: k.ID, OrgID: f.org.ID, ProjectID: k.ProjectID,
				AIType: keybridge.AIAWS, Permissions: keybridge.PermGatewayInvoke, Limits: k.Limits,
			}
			client := bedrockClient(srv, k.Key, secret, nil)

			accepted := []struct {
				name string
				call func() error
			}{
				{"InvokeModel, model id with ':'", func() error { return invoke(ctx, client, modelWithColon) }},
				{"InvokeModel, ARN", func() error { return invoke(ctx, client, modelARN) }},
				{"InvokeModel again, from the cache", func() error { return invoke(ctx, client, modelWithColon) }},
				{"Converse", func() error {
					_, err := client.Converse(ctx, &bedrockruntime.ConverseInput{
						ModelId: aws.String(modelWithColon),
						Messages: []types.Message{{Role: types.ConversationRoleUser,
							Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: "hi"}}}},
					})
					return err
				}},
				{"InvokeModelWithResponseStream", func() error {
					out, err := client.InvokeModelWithResponseStream(ctx, &bedrockruntime.InvokeModelWithResponseStreamInput{
						ModelId: aws.String(modelARN), ContentType: aws.String("application/json"), Body: []byte(invokeBody),
					})
					if err == nil {
						out.GetStream().Close()
					}
					return err
				}},
			}
			for _, c := range accepted {
				err := c.call()
				v := verdicts()
				if len(v) != 1 || v[0].err != nil || v[0].p == nil || *v[0].p != want {
					t.Errorf("%s: VerifySigV4 said %+v, want one request of principal %+v", c.name, v, want)
				} else if err != nil {
					t.Errorf("%s: the SDK call failed: %v", c.name, err)
				}
			}
			if p, err := s.VerifyAISecret(ctx, secret); err != nil || *p != want {
				t.Errorf("VerifyAISecret(AWS key's secret) = %v, %v; want the same principal: the secret is also a bearer token", p, err)
			}

			wrongSecret, _ := apikey.Generate(apikey.AISecretPrefix)
			openaiSecret, openai := f.newSealedAIKey(t, ring, keybridge.AIOpenAI)
			legacySecret, legacy := f.newSealedAIKey(t, nil, keybridge.AIAWS)
			unknownKey, _ := apikey.Generate(apikey.AIKeyPrefix)
			refused := []struct {
				name   string
				client *bedrockruntime.Client
				legacy bool
			}{
				{"wrong secret", bedrockClient(srv, k.Key, wrongSecret, nil), false},
				{"unknown key", bedrockClient(srv, unknownKey, secret, nil), false},
				{"the secret as the key id", bedrockClient(srv, secret, secret, nil), false},
				{"tampered body", bedrockClient(srv, k.Key, secret, func(o *bedrockruntime.Options) {
					o.HTTPClient = &http.Client{Transport: tamperingTransport{srv.Client().Transport}}
				}), false},
				{"clock 6 minutes fast", bedrockClient(srv, k.Key, secret, func(o *bedrockruntime.Options) {
					o.HTTPSignerV4 = skewedSigner{6 * time.Minute}
				}), false},
				{"clock 6 minutes slow", bedrockClient(srv, k.Key, secret, func(o *bedrockruntime.Options) {
					o.HTTPSignerV4 = skewedSigner{-6 * time.Minute}
				}), false},
				{"not an AWS key", bedrockClient(srv, openai.Key, openaiSecret, nil), false},
				{"AWS key without a sealed secret", bedrockClient(srv, legacy.Key, legacySecret, nil), true},
			}
			for _, c := range refused {
				sdkErr := invoke(ctx, c.client, modelWithColon)
				v := verdicts()
				if len(v) != 1 || v[0].p != nil || keybridge.ErrorCode(v[0].err) != keybridge.EUnauthenticated {
					t.Errorf("%s: VerifySigV4 said %+v, want one request refused as unauthenticated", c.name, v)
					continue
				}
				if sdkErr == nil {
					t.Errorf("%s: the SDK call succeeded", c.name)
				}
				msg := keybridge.ErrorMessage(v[0].err)
				if hint := strings.Contains(msg, "create a new AWS AI key"); hint != c.legacy {
					t.Errorf("%s: message %q; asks for a new key: %v, want %v", c.name, msg, hint, c.legacy)
				}
			}

			// A deleted key stops verifying at once, cached or not.
			if err := f.st.DeleteAIKey(ctx, k.ProjectID, k.ID); err != nil {
				t.Fatalf("DeleteAIKey: %v", err)
			}
			invoke(ctx, client, modelWithColon)
			if v := verdicts(); len(v) != 1 || keybridge.ErrorCode(v[0].err) != keybridge.EUnauthenticated {
				t.Errorf("after DeleteAIKey, VerifySigV4 said %+v, want unauthenticated", v)
			}
		})
	}
}

// Without a key ring nothing can open a secret: SigV4 is refused.
func TestVerifySigV4WithoutRing(t *testing.T) {
	f := newFixture(t, storetest.SQLite(t))
	ring := f.openRing(t)
	s := startService(t, f.st, fastOptions())
	srv, verdicts := sigV4Server(t, s)
	secret, k := f.newSealedAIKey(t, ring, keybridge.AIAWS)
	invoke(context.Background(), bedrockClient(srv, k.Key, secret, nil), modelWithColon)
	if v := verdicts(); len(v) != 1 || keybridge.ErrorCode(v[0].err) != keybridge.EUnauthenticated {
		t.Errorf("VerifySigV4 without a ring said %+v, want unauthenticated", v)
	}
}

// signedInvoke is a request as the SDK signs an InvokeModel through the
// gateway, signed now.
func signedInvoke(tb testing.TB, keyID, secret string) (*http.Request, string) {
	tb.Helper()
	body := []byte(invokeBody)
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	r := httptest.NewRequest(http.MethodPost, "http://keybridge.test/gateway/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Accept", "application/json")
	r.Header.Set("Amz-Sdk-Invocation-Id", "0b9b8a4e-54a4-4bf2-bc0e-6a6e3f6cb0a1")
	r.Header.Set("Amz-Sdk-Request", "attempt=1; max=3")
	r.Header.Set("User-Agent", "aws-sdk-go-v2/1.48.0")
	creds := aws.Credentials{AccessKeyID: keyID, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, r, hash, "bedrock", "us-east-1", time.Now()); err != nil {
		tb.Fatalf("SignHTTP: %v", err)
	}
	return r, hash
}

// A cached SigV4 verification: the gateway pays it on every request of the
// AWS SDKs. Target: a few µs.
func BenchmarkVerifySigV4Hit(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b, storetest.SQLite(b))
	ring, s := f.ringService(b)
	secret, k := f.newSealedAIKey(b, ring, keybridge.AIAWS)
	r, hash := signedInvoke(b, k.Key, secret)
	if _, err := s.VerifySigV4(ctx, r, hash); err != nil {
		b.Fatalf("VerifySigV4: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.VerifySigV4(ctx, r, hash); err != nil {
			b.Fatal(err)
		}
	}
}

// SigV4KeyPrincipal re-checks an AWS AI key by its public key alone, as an
// open WebSocket whose upgrade was signed needs: the principal while the
// key lives, unauthenticated once it is deleted.
func TestSigV4KeyPrincipal(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			ring, s := f.ringService(t)

			_, k := f.newSealedAIKey(t, ring, keybridge.AIAWS)
			want := keybridge.Principal{
				Type: keybridge.ActorAIKey, KeyID: k.ID, OrgID: f.org.ID, ProjectID: k.ProjectID,
				AIType: keybridge.AIAWS, Permissions: keybridge.PermGatewayInvoke, Limits: k.Limits,
			}
			for range 2 { // loaded, then from the cache
				if p, err := s.SigV4KeyPrincipal(ctx, k.Key); err != nil || *p != want {
					t.Fatalf("SigV4KeyPrincipal(%s) = %+v, %v; want %+v", k.Key, p, err, want)
				}
			}
			openaiSecret, openai := f.newSealedAIKey(t, ring, keybridge.AIOpenAI)
			unknown, _ := apikey.Generate(apikey.AIKeyPrefix)
			for name, id := range map[string]string{
				"not an AWS key": openai.Key, "unknown key": unknown, "a secret": openaiSecret, "empty": "",
			} {
				if p, err := s.SigV4KeyPrincipal(ctx, id); p != nil || keybridge.ErrorCode(err) != keybridge.EUnauthenticated {
					t.Errorf("%s: SigV4KeyPrincipal = %+v, %v; want unauthenticated", name, p, err)
				}
			}
			if err := f.st.DeleteAIKey(ctx, k.ProjectID, k.ID); err != nil {
				t.Fatalf("DeleteAIKey: %v", err)
			}
			deadline := time.Now().Add(time.Second)
			for {
				p, err := s.SigV4KeyPrincipal(ctx, k.Key)
				if p == nil && keybridge.ErrorCode(err) == keybridge.EUnauthenticated {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("a second after DeleteAIKey, SigV4KeyPrincipal = %+v, %v; want unauthenticated", p, err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestSigV4KeyID(t *testing.T) {
	r := httptest.NewRequest("POST", "/model/m/invoke", nil)
	if got := auth.SigV4KeyID(r); got != "" {
		t.Errorf("no Authorization: got %q", got)
	}
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=kbk_abc/20261202/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature="+strings.Repeat("0", 64))
	if got := auth.SigV4KeyID(r); got != "kbk_abc" {
		t.Errorf("SigV4KeyID = %q, want kbk_abc", got)
	}
	r.Header.Set("Authorization", "Bearer kbk_abc")
	if got := auth.SigV4KeyID(r); got != "" {
		t.Errorf("bearer: got %q", got)
	}
}

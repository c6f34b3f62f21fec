package upstream_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/upstream"
)

const testKey = "sk-test-0123456789abcdefghijKLMNOP"

// fakeProvider is a loopback provider that checks the request it gets
// the way the real API would, and answers with a model list.
func fakeProvider(t *testing.T, check func(r *http.Request) (int, string)) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		status, body := check(r)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("x-ratelimit-limit-requests", "60")
		w.Header().Set("x-ratelimit-remaining-requests", "59")
		w.Header().Set("x-ratelimit-reset-requests", "1s")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestProbePerType(t *testing.T) {
	const openaiList = `{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"gpt-4o-mini","object":"model"}]}`
	for _, c := range []struct {
		name     string
		typ      keybridge.ProviderType
		path     string // appended to the server's URL as base_url
		settings keybridge.ProviderSettings
		wantPath string
		check    func(r *http.Request) bool
		body     string
		want     []string
	}{
		{
			name: "openai", typ: keybridge.ProviderOpenAI, path: "/v1", wantPath: "/v1/models",
			check: func(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer "+testKey },
			body:  openaiList, want: []string{"gpt-4o", "gpt-4o-mini"},
		},
		{
			name: "openai-compatible keeps a sub-path", typ: keybridge.ProviderOpenAICompatible, path: "/team/a/v1/", wantPath: "/team/a/v1/models",
			check: func(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer "+testKey },
			body:  openaiList, want: []string{"gpt-4o", "gpt-4o-mini"},
		},
		{
			name: "anthropic", typ: keybridge.ProviderAnthropic, path: "", wantPath: "/v1/models",
			check: func(r *http.Request) bool {
				return r.Header.Get("x-api-key") == testKey && r.Header.Get("anthropic-version") == "2023-06-01" &&
					r.Header.Get("Authorization") == "" && r.URL.Query().Get("limit") == "1000"
			},
			body: `{"data":[{"type":"model","id":"claude-sonnet-4-5","display_name":"Claude Sonnet 4.5"}],"has_more":false}`,
			want: []string{"claude-sonnet-4-5"},
		},
		{
			name: "anthropic behind a /v1 proxy", typ: keybridge.ProviderAnthropic, path: "/proxy/v1", wantPath: "/proxy/v1/models",
			check: func(r *http.Request) bool { return r.Header.Get("x-api-key") == testKey },
			body:  `{"data":[]}`, want: []string{},
		},
		{
			name: "google", typ: keybridge.ProviderGoogle, path: "", wantPath: "/v1beta/models",
			check: func(r *http.Request) bool {
				return r.Header.Get("x-goog-api-key") == testKey && r.URL.Query().Get("key") == ""
			},
			body: `{"models":[{"name":"models/gemini-2.5-pro","displayName":"Gemini 2.5 Pro"}]}`,
			want: []string{"gemini-2.5-pro"},
		},
		{
			name: "azure", typ: keybridge.ProviderAzureOpenAI, path: "", wantPath: "/openai/models",
			settings: keybridge.ProviderSettings{APIVersion: "2024-10-21"},
			check: func(r *http.Request) bool {
				return r.Header.Get("api-key") == testKey && r.URL.Query().Get("api-version") == "2024-10-21"
			},
			body: `{"data":[{"id":"gpt-4o","status":"succeeded"}],"object":"list"}`,
			want: []string{"gpt-4o"},
		},
		{
			name: "azure v1", typ: keybridge.ProviderAzureOpenAI, path: "/openai/v1", wantPath: "/openai/v1/models",
			check: func(r *http.Request) bool {
				return r.Header.Get("api-key") == testKey && !r.URL.Query().Has("api-version")
			},
			body: `{"data":[{"id":"gpt-4.1"}]}`, want: []string{"gpt-4.1"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, _ := fakeProvider(t, func(r *http.Request) (int, string) {
				if r.Method != http.MethodGet || r.URL.Path != c.wantPath || !c.check(r) {
					t.Errorf("provider got %s %s with headers %v, want GET %s with the type's auth", r.Method, r.URL, r.Header, c.wantPath)
					return http.StatusUnauthorized, `{"error":{"code":"invalid_api_key"}}`
				}
				return http.StatusOK, c.body
			})
			res := upstream.New(upstream.Options{}).Probe(context.Background(), upstream.Target{
				Type: c.typ, BaseURL: srv.URL + c.path, APIKey: keybridge.NewSecret(testKey), Settings: c.settings,
			})
			if !res.Reachable || res.Error != "" || res.StatusCode != 200 || !slices.Equal(res.Models, c.want) {
				t.Errorf("Probe = %+v, want reachable with models %v", res, c.want)
			}
			if r := res.RateLimits.Requests; r == nil || *r.Limit != 60 || *r.Remaining != 59 || r.ResetAt == nil {
				t.Errorf("Probe rate limits = %+v, want requests 60/59 with a reset", res.RateLimits)
			}
		})
	}
}

var sigV4 = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY0001/\d{8}/eu-west-3/bedrock/aws4_request, SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}$`)

func TestProbeBedrockSigned(t *testing.T) {
	srv, _ := fakeProvider(t, func(r *http.Request) (int, string) {
		if r.URL.Path != "/foundation-models" || !sigV4.MatchString(r.Header.Get("Authorization")) || r.Header.Get("X-Amz-Date") == "" {
			t.Errorf("bedrock got %s with Authorization %q, want a SigV4-signed /foundation-models", r.URL, r.Header.Get("Authorization"))
			return http.StatusForbidden, `{"message":"no"}`
		}
		if strings.Contains(r.Header.Get("Authorization"), "bedrock-secret") {
			t.Errorf("the secret access key was sent in the clear")
		}
		return http.StatusOK, `{"modelSummaries":[{"modelId":"anthropic.claude-3-haiku-20240307-v1:0"}]}`
	})
	res := upstream.New(upstream.Options{}).Probe(context.Background(), upstream.Target{
		Type: keybridge.ProviderBedrock, BaseURL: srv.URL,
		Settings: keybridge.ProviderSettings{Region: "eu-west-3", AccessKey: keybridge.NewSecret("AKIAEXAMPLEKEY0001"),
			AccessKeySecret: keybridge.NewSecret("bedrock-secret-abcdefghijklmnop")},
	})
	if !res.Reachable || !slices.Equal(res.Models, []string{"anthropic.claude-3-haiku-20240307-v1:0"}) {
		t.Errorf("Probe(bedrock) = %+v, want reachable with the model", res)
	}

	res = upstream.New(upstream.Options{}).Probe(context.Background(), upstream.Target{
		Type: keybridge.ProviderBedrock, BaseURL: srv.URL, Settings: keybridge.ProviderSettings{Region: "eu-west-3"},
	})
	if res.Reachable || !strings.Contains(res.Error, "access_key") {
		t.Errorf("Probe(bedrock without keys) = %+v, want unreachable naming access_key", res)
	}
}

func TestProbeFailures(t *testing.T) {
	ctx := context.Background()
	unauthorized, _ := fakeProvider(t, func(r *http.Request) (int, string) {
		// OpenAI echoes part of a wrong key in its message.
		return http.StatusUnauthorized, `{"error":{"message":"Incorrect API key provided: sk-test-***MNOP.","type":"invalid_request_error","code":"invalid_api_key"}}`
	})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	redirectTarget, redirectCalls := fakeProvider(t, func(r *http.Request) (int, string) { return 200, `{"data":[]}` })
	redirect := httptest.NewServer(http.RedirectHandler(redirectTarget.URL+"/models", http.StatusFound))
	defer redirect.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	client := upstream.New(upstream.Options{Timeout: 300 * time.Millisecond})
	for _, c := range []struct {
		name       string
		typ        keybridge.ProviderType
		base       string
		wantStatus int
		wantErr    string
	}{
		{"unauthorized", keybridge.ProviderOpenAI, unauthorized.URL, 401, "unauthorized: the provider rejected the key (HTTP 401, invalid_api_key)"},
		{"metadata address", keybridge.ProviderOpenAI, "http://169.254.169.254/latest", 0, "egress refused: 169.254.169.254 is a link-local or cloud metadata address"},
		{"metadata ipv6", keybridge.ProviderAnthropic, "http://[fd00:ec2::254]/", 0, "egress refused: fd00:ec2::254 is a link-local or cloud metadata address"},
		{"timeout", keybridge.ProviderOpenAI, slow.URL, 0, upstream.ErrUnreachable},
		{"redirect not followed", keybridge.ProviderOpenAI, redirect.URL, 302, "the provider redirected (not followed): check base_url (HTTP 302)"},
		{"nothing listening", keybridge.ProviderOpenAI, closedURL, 0, upstream.ErrUnreachable},
		{"azure needs a base url", keybridge.ProviderAzureOpenAI, "", 0, "base_url is required for azure-openai providers"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := client.Probe(ctx, upstream.Target{Type: c.typ, BaseURL: c.base, APIKey: keybridge.NewSecret(testKey)})
			if res.Reachable || res.StatusCode != c.wantStatus || res.Error != c.wantErr {
				t.Errorf("Probe = reachable %v, status %d, error %q; want unreachable, %d, %q", res.Reachable, res.StatusCode, res.Error, c.wantStatus, c.wantErr)
			}
			if strings.Contains(res.Error, "MNOP") || strings.Contains(res.Error, testKey) {
				t.Errorf("Probe error %q holds part of the key", res.Error)
			}
			if res.Models == nil {
				t.Errorf("Probe models = nil, want an empty list")
			}
		})
	}
	if n := redirectCalls.Load(); n != 0 {
		t.Errorf("the redirect target was called %d times; the key must not follow a redirect", n)
	}
}

func TestCachedProbe(t *testing.T) {
	srv, calls := fakeProvider(t, func(r *http.Request) (int, string) { return 200, `{"data":[{"id":"m"}]}` })
	client := upstream.New(upstream.Options{CacheTTL: 500 * time.Millisecond})
	target := upstream.Target{Type: keybridge.ProviderOpenAI, BaseURL: srv.URL, APIKey: keybridge.NewSecret(testKey)}
	ctx := context.Background()

	steps := []struct {
		key        string
		refresh    bool
		sleep      time.Duration
		wantCached bool
		wantCalls  int32
	}{
		{"k1", false, 0, false, 1},
		{"k1", false, 0, true, 1},
		{"k2", false, 0, false, 2}, // another key has its own entry
		{"k1", true, 0, false, 3},  // refresh skips the cache
		{"k1", false, 0, true, 3},  // and stores what it found
		{"k1", false, 600 * time.Millisecond, false, 4},
	}
	for i, s := range steps {
		time.Sleep(s.sleep)
		res, cached := client.CachedProbe(ctx, s.key, s.refresh, target)
		if cached != s.wantCached || calls.Load() != s.wantCalls || !res.Reachable {
			t.Errorf("step %d: CachedProbe(%s, refresh=%v) cached %v after %d calls (reachable %v); want cached %v after %d",
				i, s.key, s.refresh, cached, calls.Load(), res.Reachable, s.wantCached, s.wantCalls)
		}
	}
}

// TestProbeDefaultEndpoints checks where each type goes when it names no
// base URL, without leaving the machine: a fake resolver records the name
// asked for and points it at loopback, where nothing listens on 443.
func TestProbeDefaultEndpoints(t *testing.T) {
	for _, c := range []struct {
		typ      keybridge.ProviderType
		settings keybridge.ProviderSettings
		host     string
	}{
		{keybridge.ProviderOpenAI, keybridge.ProviderSettings{}, "api.openai.com"},
		{keybridge.ProviderAnthropic, keybridge.ProviderSettings{}, "api.anthropic.com"},
		{keybridge.ProviderGoogle, keybridge.ProviderSettings{}, "generativelanguage.googleapis.com"},
		// The model list is on Bedrock's control plane, not the runtime.
		{keybridge.ProviderBedrock, keybridge.ProviderSettings{Region: "eu-north-1",
			AccessKey: keybridge.NewSecret("AKIAEXAMPLE"), AccessKeySecret: keybridge.NewSecret("s")}, "bedrock.eu-north-1.amazonaws.com"},
	} {
		t.Run(string(c.typ), func(t *testing.T) {
			addr, asked := recordingDNS(t, [4]byte{127, 0, 0, 1})
			client := upstream.New(upstream.Options{Resolver: resolverAt(addr), Timeout: 2 * time.Second})
			res := client.Probe(context.Background(), upstream.Target{Type: c.typ, APIKey: keybridge.NewSecret(testKey), Settings: c.settings})
			if res.Reachable {
				t.Errorf("Probe reached something on 127.0.0.1:443: %+v", res)
			}
			if names := asked(); !slices.Contains(names, c.host) {
				t.Errorf("Probe resolved %v, want %s", names, c.host)
			}
		})
	}
}

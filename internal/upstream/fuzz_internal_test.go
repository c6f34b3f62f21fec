package upstream

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// FuzzProbeRequest builds the credential test's request from arbitrary
// provider settings and base URLs the API accepts: it must never panic,
// and a request it builds goes to the base URL's own scheme and host (the
// only rewrite is Bedrock's runtime host to its control-plane twin), so no
// setting can steer a probe elsewhere. Run it with scripts/fuzz.sh
// (docs/testing.md).
func FuzzProbeRequest(f *testing.F) {
	f.Add(uint8(0), "https://api.openai.com/v1", "", "", "sk-x")
	f.Add(uint8(1), "https://proxy.example.test/anthropic/", "", "", "sk-ant-x")
	f.Add(uint8(2), "", "us-east-1", "", "")
	f.Add(uint8(3), "https://generativelanguage.googleapis.com", "", "", "AIza")
	f.Add(uint8(4), "https://res.openai.azure.com/openai", "", "2024-10-21", "k")
	f.Add(uint8(5), "http://10.0.0.1:8080/v1?x=1#f", "", "", "k")
	f.Fuzz(func(t *testing.T, typ uint8, base, region, apiVersion, key string) {
		pt := keybridge.ProviderTypes[int(typ)%len(keybridge.ProviderTypes)]
		if base != "" && keybridge.ValidateBaseURL(base) != nil {
			return // the API refuses it before any probe
		}
		set := keybridge.ProviderSettings{Region: region, APIVersion: apiVersion,
			AccessKey: keybridge.NewSecret("AKIAFUZZ"), AccessKeySecret: keybridge.NewSecret("fuzz-secret")}
		req, err := newProbeRequest(context.Background(), Target{Type: pt, BaseURL: base, APIKey: keybridge.NewSecret(key), Settings: set})
		if err != nil {
			if strings.Contains(err.Error(), "fuzz-secret") || (len(key) > 3 && strings.Contains(err.Error(), key)) {
				t.Fatalf("newProbeRequest's error %q holds a secret", err)
			}
			return
		}
		want := base
		if want == "" {
			want = keybridge.DefaultBaseURL(pt, region)
		}
		u, err := url.Parse(want)
		if err != nil {
			t.Fatalf("newProbeRequest built a request from %q, which does not parse: %v", want, err)
		}
		// Compared as host name and port: "http://h:" and "http://h" are
		// the same place.
		host := u.Hostname()
		if pt == keybridge.ProviderBedrock && host == "bedrock-runtime."+region+".amazonaws.com" {
			if req.URL.Hostname() == "bedrock."+region+".amazonaws.com" {
				host = req.URL.Hostname()
			}
		}
		if req.URL.Scheme != u.Scheme || req.URL.Hostname() != host || req.URL.Port() != u.Port() {
			t.Fatalf("%s probe of %q goes to %s://%s, want %s://%s port %q", pt, want, req.URL.Scheme, req.URL.Host, u.Scheme, host, u.Port())
		}
	})
}

// FuzzParseModels reads arbitrary model-list answers, which come from an
// upstream the caller chose: never a panic, never a nil list with no error.
func FuzzParseModels(f *testing.F) {
	f.Add(uint8(0), []byte(`{"data":[{"id":"gpt-4o"}]}`))
	f.Add(uint8(1), []byte(`{"data":[{"id":"claude"}],"has_more":false}`))
	f.Add(uint8(2), []byte(`{"modelSummaries":[{"modelId":"anthropic.claude"}]}`))
	f.Add(uint8(3), []byte(`{"models":[{"name":"models/gemini-2.0-flash"}]}`))
	f.Fuzz(func(t *testing.T, typ uint8, body []byte) {
		pt := keybridge.ProviderTypes[int(typ)%len(keybridge.ProviderTypes)]
		models, err := parseModels(pt, body)
		if err == nil && models == nil {
			t.Fatalf("parseModels(%s, %q) = nil, nil", pt, body)
		}
	})
}

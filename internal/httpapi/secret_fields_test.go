package httpapi_test

import (
	"net/http"
	"testing"
)

// badSecretChars are characters no provider key holds and that would
// split or smuggle a header line if a secret carrying them were sent: CR,
// LF, NEL (U+0085), LINE SEPARATOR (U+2028), PARAGRAPH SEPARATOR (U+2029),
// a tab and a space.
var badSecretChars = map[string]string{
	"CR": "\r", "LF": "\n", "CRLF": "\r\n", "NEL": "\u0085", "LS": "\u2028", "PS": "\u2029", "tab": "\t", "space": " ",
}

// TestSecretFieldsRefuseLineBreaks sends every secret field of every
// provider type, on the test endpoint and where it is stored, with each
// character of badSecretChars inside it: each is a 400 naming the field as
// the API spells it, and nothing reaches the provider.
func TestSecretFieldsRefuseLineBreaks(t *testing.T) {
	up := newFakeUpstream(t)
	forEachEngine(t, func(t *testing.T, e *env) {
		before := up.calls.Load()
		bedrock := e.addProvider(map[string]any{"name": "br", "type": "bedrock", "base_url": up.URL,
			"settings": map[string]any{"region": "us-east-1"}})
		keyed := map[string]providerJSON{}
		for _, typ := range []string{"openai", "anthropic", "google", "azure-openai", "openai-compatible"} {
			keyed[typ] = e.addProvider(map[string]any{"name": "p-" + typ, "type": typ, "base_url": up.URL + "/v1"})
		}
		for name, bad := range badSecretChars {
			secret := "sk-abcdefgh" + bad + "X-Injected: yes"
			t.Run(name, func(t *testing.T) {
				for typ, p := range keyed {
					resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey,
						map[string]any{"type": typ, "base_url": up.URL + "/v1", "api_key": secret})
					wantInvalidField(t, resp, body, "api_key")
					resp, body = e.do("POST", e.providersPath("/"+p.ID+"/keys"), e.OwnerKey, map[string]any{"api_key": secret})
					wantInvalidField(t, resp, body, "api_key")
					resp, body = e.do("POST", "/api/v1/users/me/credentials", e.OwnerKey,
						map[string]any{"org": e.Org.Slug, "provider": p.ID, "api_key": secret})
					wantInvalidField(t, resp, body, "api_key")
				}
				for _, field := range []string{"access_key", "access_key_secret"} {
					settings := map[string]any{"region": "us-east-1", "access_key": "AKIAIOSFODNN7EXAMPLE",
						"access_key_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
					settings[field] = secret
					want := "settings." + field
					resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey,
						map[string]any{"type": "bedrock", "base_url": up.URL, "settings": settings})
					wantInvalidField(t, resp, body, want)
					resp, body = e.do("POST", e.providersPath(""), e.OwnerKey,
						map[string]any{"name": "br-new", "type": "bedrock", "settings": settings})
					wantInvalidField(t, resp, body, want)
					resp, body = e.do("PATCH", e.providersPath("/"+bedrock.ID), e.OwnerKey,
						map[string]any{"settings": map[string]any{field: secret}})
					wantInvalidField(t, resp, body, want)
				}
			})
		}
		if n := up.calls.Load() - before; n != 0 {
			t.Errorf("the provider was called %d times, want 0", n)
		}
		// A clean key still works, so the rule is not too broad.
		resp, body := e.do("POST", e.providersPath("/test"), e.OwnerKey,
			map[string]any{"type": "openai", "base_url": up.URL + "/v1", "api_key": goodUpstreamKey})
		wantStatus(t, resp, body, http.StatusOK)
		if res := decodeAs[probeResult](t, body); !res.Reachable {
			t.Errorf("test with a clean key = %+v, want reachable", res)
		}
	})
}

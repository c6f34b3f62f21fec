package httpapi_test

import (
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/store/storetest"
)

// TestRefusalsDoNotEchoSecrets sends secrets where they are refused — a
// credential in Authorization that is not one, a provider's secret
// settings that break its rules, on create, PATCH and test — and checks
// that no answer and no log line repeats the value: an error says what is
// wrong with a secret without quoting it.
func TestRefusalsDoNotEchoSecrets(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	bedrock := e.addProvider(map[string]any{"name": "br", "type": "bedrock", "settings": map[string]any{"region": "us-east-1"}})
	var canaries []string
	canary := func(prefix string) string {
		c := prefix + "canary" + hex.EncodeToString(randomBytes(t, 12))
		canaries = append(canaries, c)
		return c
	}
	var answers strings.Builder
	record := func(what string, resp *http.Response, raw []byte) {
		t.Helper()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("%s = %d %.300s, want a 4xx", what, resp.StatusCode, raw)
		}
		answers.WriteString(what + "\n")
		for k, v := range resp.Header {
			answers.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		answers.Write(raw)
		answers.WriteString("\n")
	}

	// Credentials that are not ones: a platform key's shape with a bad
	// checksum, an AI key secret's, a provider key, noise.
	for _, token := range []string{canary("kb_"), canary("kbs_"), canary("sk-"), canary(""), canary("kb_") + "\u00e9"} {
		for _, h := range []string{"Bearer " + token, token, "Basic " + token} {
			if strings.ContainsRune(token, '\u00e9') {
				continue // not a cookie value net/http sends
			}
			resp, raw := e.send("GET", "/api/v1/users/me", nil, func(r *http.Request) { r.Header.Set("Authorization", h) })
			record("Authorization "+h[:6], resp, raw)
		}
		if strings.ContainsRune(token, '\u00e9') {
			continue // not a cookie value net/http sends
		}
		resp, raw := e.send("GET", "/api/v1/users/me", nil, func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: "keybridge_session", Value: token})
		})
		record("cookie", resp, raw)
	}

	// Secret settings that break the rules, on every route that takes them.
	for _, field := range []string{"access_key", "access_key_secret"} {
		for _, bad := range []func() any{
			func() any { return canary("") + "\u00e9" },
			func() any { return canary("") + " x" },
			func() any { return canary("") + strings.Repeat("k", 5000) },
			func() any { return []string{canary("")} },
			func() any { return map[string]string{"v": canary("")} },
		} {
			settings := func() map[string]any {
				s := map[string]any{"region": "us-east-1", "access_key": "AKIAIOSFODNN7EXAMPLE", "access_key_secret": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}
				s[field] = bad()
				return s
			}
			resp, raw := e.do("POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "br-new", "type": "bedrock", "settings": settings()})
			record("POST providers settings."+field, resp, raw)
			resp, raw = e.do("PATCH", e.providersPath("/"+bedrock.ID), e.OwnerKey, map[string]any{"settings": settings()})
			record("PATCH provider settings."+field, resp, raw)
			resp, raw = e.do("POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "bedrock", "settings": settings()})
			record("POST test settings."+field, resp, raw)
			// A secret setting on a type that has none.
			resp, raw = e.do("POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "oa-new", "type": "openai",
				"settings": map[string]any{field: canary("")}})
			record("POST openai settings."+field, resp, raw)
		}
	}
	for _, c := range canaries {
		if strings.Contains(answers.String(), c) {
			t.Errorf("an answer repeats the secret %s...:\n%.3000s", c[:16], answers.String())
			break
		}
		if strings.Contains(e.logs(), c) {
			t.Errorf("the log repeats the secret %s...", c[:16])
		}
	}
}

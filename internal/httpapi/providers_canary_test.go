package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlite"
)

// TestProviderSecretsCanary plants provider keys, Bedrock secrets and
// personal keys through every endpoint of providers, keys, tests, usage
// and credentials — including requests that fail and an upstream that
// echoes whatever key it gets — and then looks for them, and for their
// ciphertexts, in every answer, every log line and every byte of the
// SQLite files.
func TestProviderSecretsCanary(t *testing.T) {
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "keybridge.db")
	st, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := newEnv(t, st)

	canary := func(prefix string) string { return prefix + hex.EncodeToString(randomBytes(t, 12)) }
	// Letters and digits only, so that an upstream echoing one as its
	// error code looks like an identifier worth showing.
	var (
		orgKey        = canary("SKcanaryorg")
		orgKey2       = canary("SKcanaryorgtwo")
		wrongOrgKey   = canary("SKcanarywrong")
		accessKey     = "AKIA" + strings.ToUpper(hex.EncodeToString(randomBytes(t, 8)))
		accessSecret  = canary("canarybedrocksecret")
		accessSecret2 = canary("canarybedrockrotated")
		personalKey   = canary("SKcanarypersonal")
		personalKey2  = canary("SKcanarypersonaltwo")
		testKey       = canary("SKcanarytest")
		testSecret    = canary("canarytestbedrocksecret")
	)
	secrets := []string{orgKey, orgKey2, wrongOrgKey, accessKey, accessSecret, accessSecret2, personalKey, personalKey2, testKey, testSecret}

	// An upstream that hands every credential it receives straight back:
	// in its error body, as its error code, and in a header.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if got == "" {
			got = r.Header.Get("x-api-key")
		}
		w.Header().Set("X-Echo", got)
		w.Header().Set("Content-Type", "application/json")
		if got == orgKey {
			w.Write([]byte(`{"data":[{"id":"gpt-4o"}]}`))
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error":{"message":"Incorrect API key provided: ` + got + `","type":"` + got + `","code":"` + got + `"}}`))
	}))
	defer echo.Close()

	var answers bytes.Buffer
	call := func(method, path, key string, body any) (*http.Response, []byte) {
		t.Helper()
		resp, b := e.do(method, path, key, body)
		answers.WriteString(method + " " + path + "\n")
		for k, v := range resp.Header {
			answers.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		answers.Write(b)
		answers.WriteString("\n")
		return resp, b
	}
	must := func(status int, method, path, key string, body any) []byte {
		t.Helper()
		resp, b := call(method, path, key, body)
		wantStatus(t, resp, b, status)
		return b
	}
	memberID, memberKey := e.addMember("member")
	_ = memberID

	// Providers, with secret settings on create and on PATCH.
	openai := decodeAs[providerJSON](t, must(201, "POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "openai", "type": "openai", "base_url": echo.URL + "/v1", "key_source": "user_or_org"}))
	bedrock := decodeAs[providerJSON](t, must(201, "POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "bedrock", "type": "bedrock",
		"settings": map[string]any{"region": "us-east-1", "access_key": accessKey, "access_key_secret": accessSecret}}))
	must(200, "PATCH", e.providersPath("/bedrock"), e.OwnerKey, map[string]any{"settings": map[string]any{"access_key_secret": accessSecret2}})
	must(200, "PATCH", e.providersPath("/bedrock"), e.OwnerKey, map[string]any{"settings": map[string]any{"access_key": "", "model": "m"}})
	call("PATCH", e.providersPath("/bedrock"), e.OwnerKey, map[string]any{"settings": map[string]any{"access_key": accessKey, "region": "nowhere"}})
	call("POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "bad", "type": "bedrock", "settings": map[string]any{"access_key": accessKey, "access_key_secret": accessSecret}})
	call("POST", e.providersPath(""), e.OwnerKey, map[string]any{"name": "bad", "type": "openai", "api_key": orgKey})
	must(200, "GET", e.providersPath(""), e.OwnerKey, nil)
	must(200, "GET", e.providersPath(""), memberKey, nil)
	must(200, "GET", e.providersPath("/"+bedrock.ID), e.OwnerKey, nil)

	// Upstream keys: created, duplicated, refused, listed, changed.
	must(201, "POST", e.providersPath("/openai/keys"), e.OwnerKey, map[string]any{"api_key": orgKey, "name": "main"})
	k2 := decodeAs[providerKeyJSON](t, must(201, "POST", e.providersPath("/openai/keys"), e.OwnerKey, map[string]any{"api_key": orgKey2}))
	must(201, "POST", e.providersPath("/openai/keys"), e.OwnerKey, map[string]any{"api_key": wrongOrgKey})
	call("POST", e.providersPath("/openai/keys"), e.OwnerKey, map[string]any{"api_key": orgKey})
	call("POST", e.providersPath("/openai/keys"), e.OwnerKey, map[string]any{"api_key": orgKey + " x"})
	call("POST", e.providersPath("/openai/keys"), e.OwnerKey, map[string]any{"api_key": orgKey, "secret": orgKey})
	call("POST", e.providersPath("/bedrock/keys"), e.OwnerKey, map[string]any{"api_key": orgKey})
	call("POST", e.providersPath("/openai/keys"), memberKey, map[string]any{"api_key": orgKey})
	must(200, "GET", e.providersPath("/openai/keys"), e.OwnerKey, nil)
	must(200, "PATCH", e.providersPath("/openai/keys/"+k2.ID), e.OwnerKey, map[string]any{"priority": 5})

	// Tests and live usage, against the echoing upstream.
	must(200, "POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "openai", "base_url": echo.URL + "/v1", "api_key": testKey})
	must(200, "POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "anthropic", "base_url": echo.URL, "api_key": testKey})
	must(200, "POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "bedrock", "base_url": echo.URL,
		"settings": map[string]any{"region": "us-east-1", "access_key": accessKey, "access_key_secret": testSecret}})
	call("POST", e.providersPath("/test"), e.OwnerKey, map[string]any{"type": "bedrock", "api_key": testKey, "settings": map[string]any{"region": "us-east-1"}})
	must(200, "GET", e.providersPath("/openai/usage"), e.OwnerKey, nil)
	must(200, "GET", e.providersPath("/openai/usage?refresh=true"), e.OwnerKey, nil)

	// Personal credentials.
	cred := decodeAs[credentialJSON](t, must(201, "POST", credentialsPath, memberKey, map[string]any{"org": e.Org.Slug, "provider": "openai", "api_key": personalKey}))
	call("POST", credentialsPath, memberKey, map[string]any{"org": e.Org.Slug, "provider": "openai", "api_key": personalKey})
	call("POST", credentialsPath, memberKey, map[string]any{"org": e.Org.Slug, "provider": "bedrock", "api_key": personalKey})
	call("POST", credentialsPath, memberKey, map[string]any{"org": "nowhere", "provider": "openai", "api_key": personalKey})
	must(200, "PATCH", credentialsPath+"/"+cred.ID, memberKey, map[string]any{"api_key": personalKey2})
	call("PATCH", credentialsPath+"/"+cred.ID, e.OwnerKey, map[string]any{"api_key": personalKey})
	must(200, "GET", credentialsPath, memberKey, nil)
	must(200, "GET", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, nil)
	call("GET", "/api/v1/orgs/"+e.Org.Slug+"/audit-events?limit=500", e.OwnerKey, nil)
	_ = openai

	// What must not hold a secret: the answers, the log, the audit log,
	// and the database files (the WAL holds the newest pages).
	events, _, err := e.Store.ListAuditEvents(ctx, store.AuditFilter{OrgID: e.Org.ID}, store.Page{Limit: store.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	var eventText bytes.Buffer
	for _, ev := range events {
		eventText.WriteString(ev.Action + " ")
		for k, c := range ev.Changes {
			eventText.WriteString(k + "=" + anyText(c.Old) + "/" + anyText(c.New) + " ")
		}
	}
	files := map[string][]byte{}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if b, err := os.ReadFile(dbPath + suffix); err == nil {
			files["sqlite file "+filepath.Base(dbPath+suffix)] = b
		}
	}
	if len(files["sqlite file keybridge.db"]) == 0 {
		t.Fatalf("read no database file at %s", dbPath)
	}
	places := map[string][]byte{"answers": answers.Bytes(), "log": []byte(e.logs()), "audit events": eventText.Bytes()}
	for name, b := range files {
		places[name] = b
	}
	for _, s := range secrets {
		for where, b := range places {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s hold the secret %s...", where, s[:12])
			}
		}
	}

	// Ciphertexts stay in the database: no answer or log line holds one.
	var sealed [][]byte
	sp, _ := e.Store.Provider(ctx, e.Org.ID, bedrock.ID)
	sealed = append(sealed, sp.SettingsSealed)
	keys, _ := e.Store.ProviderKeys(ctx, openai.ID)
	for _, k := range keys {
		sealed = append(sealed, k.Sealed)
	}
	if c, err := e.Store.CredentialFor(ctx, memberID, openai.ID); err == nil {
		sealed = append(sealed, c.Sealed)
	}
	if len(sealed) != 5 {
		t.Fatalf("found %d sealed values, want 5", len(sealed))
	}
	for i, c := range sealed {
		for _, form := range []string{base64.StdEncoding.EncodeToString(c), base64.RawURLEncoding.EncodeToString(c), hex.EncodeToString(c)} {
			for _, where := range []string{"answers", "log", "audit events"} {
				if bytes.Contains(places[where], []byte(form[:24])) {
					t.Errorf("%s hold sealed value %d", where, i)
				}
			}
		}
	}

	// After a checkpoint everything is in the main file; look again. The
	// services go first: they end when the store closes under them.
	e.Stop()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("the closed database file holds the secret %s...", s[:12])
		}
	}
	// The test must have planted what it looks for.
	if !strings.Contains(answers.String(), "access_key_set") || !strings.Contains(answers.String(), `"reachable":false`) {
		t.Errorf("the canary run did not reach the endpoints it meant to")
	}
}

// anyText renders an audit change value for searching.
func anyText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

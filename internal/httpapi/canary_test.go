package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/store/sqlite"
)

// TestSecretsNeverLeak plants distinctive values — passwords, the master
// key, every platform key's plaintext, setup and invitation tokens — and
// drives the identity and key API through all of it. None may appear in a
// response body (except a key in the one answer that creates it, and a
// token in the one answer that issues it), in the server's logs, or in the
// raw bytes of the SQLite files afterwards.
func TestSecretsNeverLeak(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "keybridge.db")
	st, err := sqlite.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	var e *env
	canaries := map[string]string{} // value -> what it is
	// Registered first, so it runs last: after the server and its
	// background work stopped, with the database closed and checkpointed.
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		for _, suffix := range []string{"", "-wal", "-shm"} {
			b, err := os.ReadFile(dbPath + suffix)
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for v, what := range canaries {
				if bytes.Contains(b, []byte(v)) {
					t.Errorf("%s holds %s", filepath.Base(dbPath+suffix), what)
				}
			}
			for _, form := range masterForms(e.MasterKey) {
				if bytes.Contains(b, form) {
					t.Errorf("%s holds the master key", filepath.Base(dbPath+suffix))
				}
			}
		}
	})
	e = newEnvWith(t, st, envOptions{Empty: true})

	// allowed is what one response may hold: the secret it issues.
	type call struct {
		body    []byte
		allowed string
	}
	var calls []call
	do := func(method, path, key string, body any, want int) []byte {
		t.Helper()
		resp, raw := e.do(method, path, key, body)
		wantStatus(t, resp, raw, want)
		calls = append(calls, call{body: raw})
		return raw
	}
	issued := func(raw []byte, field string) string {
		t.Helper()
		v := decodeAs[map[string]any](t, raw)[field].(string)
		calls[len(calls)-1].allowed = v
		return v
	}

	const ownerPassword = "canary-owner-password-7f3a"
	const inviteePassword = "canary-invitee-password-91bc"
	const wrongPassword = "canary-wrong-password-c0de"
	canaries[ownerPassword] = "the owner's password"
	canaries[inviteePassword] = "the invitee's password"
	canaries[wrongPassword] = "a mistyped password"

	token, err := httpapi.NewSetupToken(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	canaries[token] = "the setup token"
	resp, raw := e.do("POST", "/api/v1/setup", "", map[string]string{"token": token, "org": "acme", "email": "owner@acme.test", "password": ownerPassword})
	wantStatus(t, resp, raw, http.StatusCreated)
	calls = append(calls, call{body: raw})
	canaries[e.sessionFrom(resp, raw).Cookie.Value] = "the setup session's token"

	do("POST", "/api/v1/auth/login", "", map[string]string{"email": "owner@acme.test", "password": wrongPassword}, 401)
	do("POST", "/api/v1/auth/login", "", map[string]string{"email": "nobody@acme.test", "password": wrongPassword}, 401)
	resp, lraw := e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": "owner@acme.test", "password": ownerPassword})
	wantStatus(t, resp, lraw, 200)
	calls = append(calls, call{body: lraw})
	s := e.sessionFrom(resp, lraw)
	canaries[s.Cookie.Value] = "a session token"

	created := func(raw []byte) string {
		k := issued(raw, "key")
		canaries[k] = "a platform key"
		return k
	}
	sessionDo := func(method, path string, body any, want int) []byte {
		t.Helper()
		resp, raw := s.do(method, path, body)
		wantStatus(t, resp, raw, want)
		calls = append(calls, call{body: raw})
		return raw
	}
	ownerKey := created(sessionDo("POST", "/api/v1/api-keys", map[string]any{"name": "all", "permissions": []string{
		"providers:read", "providers:write", "projects:read", "projects:write", "members:read", "members:write",
		"audit:read", "usage:read", "gateway:invoke", "api_keys:write"}}, 201))
	k2raw := do("POST", "/api/v1/api-keys", ownerKey, map[string]any{"name": "ci", "permissions": []string{"gateway:invoke"}}, 201)
	k2 := created(k2raw)
	k2id := decodeAs[keyJSON](t, k2raw).ID
	rotated := created(do("POST", "/api/v1/api-keys/"+k2id+"/rotate", ownerKey, map[string]int{"grace_period_seconds": 60}, 201))
	do("GET", "/api/v1/api-keys", ownerKey, nil, 200)
	do("GET", "/api/v1/api-keys/"+k2id, ownerKey, nil, 200)
	do("PATCH", "/api/v1/api-keys/"+k2id, ownerKey, map[string]any{"description": "rotated"}, 200)
	do("GET", "/api/v1/users/me", rotated, nil, 200)
	do("GET", "/api/v1/users/me", k2, nil, 200)
	do("POST", "/api/v1/leaked-keys", "", []map[string]string{{"token": rotated, "type": "t", "url": "https://example.test/leak", "source": "content"}}, 200)
	do("GET", "/api/v1/users/me", rotated, nil, 401)

	inv := do("POST", "/api/v1/orgs/acme/members", ownerKey, map[string]string{"email": "new@acme.test", "role": "admin"}, 201)
	invToken := issued(inv, "invite_token")
	canaries[invToken] = "an invitation token"
	do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": invToken, "password": inviteePassword}, 200)
	do("GET", "/api/v1/orgs/acme/members", ownerKey, nil, 200)
	do("GET", "/api/v1/orgs/acme/api-keys", ownerKey, nil, 200)
	do("POST", "/api/v1/api-keys/"+k2id+"/revoke", ownerKey, nil, 200)
	do("GET", "/api/v1/users/me", k2, nil, 401)

	// Every response holds at most the one secret it issues.
	for i, c := range calls {
		for v, what := range canaries {
			if v != c.allowed && strings.Contains(string(c.body), v) {
				t.Errorf("response %d holds %s: %.300s", i, what, c.body)
			}
		}
		for _, form := range masterForms(e.MasterKey) {
			if bytes.Contains(c.body, form) {
				t.Errorf("response %d holds the master key", i)
			}
		}
	}
	logs := e.logs()
	for v, what := range canaries {
		if strings.Contains(logs, v) {
			t.Errorf("the logs hold %s", what)
		}
	}
	if len(calls) < 20 || len(canaries) < 9 {
		t.Fatalf("only %d calls and %d canaries: the test lost its teeth", len(calls), len(canaries))
	}
}

// masterForms are the encodings in which a master key could leak.
func masterForms(key []byte) [][]byte {
	return [][]byte{
		key,
		[]byte(base64.StdEncoding.EncodeToString(key)),
		[]byte(base64.RawURLEncoding.EncodeToString(key)),
		[]byte(hex.EncodeToString(key)),
	}
}

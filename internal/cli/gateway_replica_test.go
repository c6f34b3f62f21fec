package cli_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
)

// propagation is how long a change made on one replica may take to reach
// the gateway of another: the spec's "every replica, within one second".
const propagation = time.Second

// TestGatewayReplicas runs two serve replicas on one PostgreSQL schema and
// one master key, changes credentials and providers through the management
// API of the first, and checks that the gateway of the second, with warm
// caches, follows each change within a second: on PostgreSQL alone, and
// with Redis too (SPEC §10: revocations reach every replica within a
// second either way).
func TestGatewayReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers on PostgreSQL; skipped with -short")
	}
	t.Run("postgres", func(t *testing.T) { gatewayReplicas(t) })
	t.Run("postgres and redis", func(t *testing.T) { gatewayReplicas(t, "--redis-url", testRedisURL(t)) })
}

func gatewayReplicas(t *testing.T, flags ...string) {
	dbURL := postgresURL(t)
	env, owner := setupReplicas(t, dbURL)

	up := newRecordingUpstream(t)
	upKeyA := "sk-replica-upstream-key-AAAAAAAAAAAAAAAA"
	upKeyB := "sk-replica-upstream-key-BBBBBBBBBBBBBBBB"
	personal1 := "sk-replica-personal-key-1111111111111111"
	personal2 := "sk-replica-personal-key-2222222222222222"

	r1 := startServeEnv(t, env, append([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, flags...)...)
	// Replica 2 logs at debug, which adds the requests' headers: the
	// credentials in them must be redacted.
	r2 := startServeEnv(t, env, append([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--log-level", "debug"}, flags...)...)

	// manage calls replica 1's management API and wants the given status.
	manage := func(method, path string, body any, want int) []byte {
		t.Helper()
		resp, out := r1.call(t, method, path, owner, body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s on replica 1 = %d %s, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}
	idOf := func(b []byte) string {
		t.Helper()
		var v struct{ ID string }
		if err := json.Unmarshal(b, &v); err != nil || v.ID == "" {
			t.Fatalf("no id in %s", b)
		}
		return v.ID
	}
	// invoke sends one chat completion through replica 2's gateway and
	// returns its status and the upstream credential it was given (empty
	// when nothing reached the upstream).
	provider := "oai"
	invoke := func(key string) (int, string) {
		t.Helper()
		n := up.count()
		resp, out := r2.call(t, "POST", "/gateway/"+provider+"/chat/completions", key,
			map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": "hi"}}})
		if resp.StatusCode == http.StatusOK && !strings.Contains(string(out), `"chat.completion"`) {
			t.Fatalf("gateway answered 200 with %s", out)
		}
		return resp.StatusCode, up.since(n)
	}
	// warm calls the gateway a few times with key and wants upstream
	// credential want each time, so replica 2 has it cached.
	warm := func(key, want string) {
		t.Helper()
		for range 3 {
			if status, got := invoke(key); status != http.StatusOK || got != "Bearer "+want {
				t.Fatalf("gateway on replica 2 = %d with upstream credential %q, want 200 with %q", status, got, "Bearer "+want)
			}
		}
	}
	// within polls replica 2's gateway with key until ok holds for its
	// answer, and fails unless that happens within the propagation bound.
	within := func(what, key string, ok func(status int, upstreamAuth string) bool) {
		t.Helper()
		start := time.Now()
		for {
			status, got := invoke(key)
			if ok(status, got) {
				t.Logf("%s: reached replica 2 after %v", what, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > propagation {
				t.Fatalf("%s: replica 2 still answers %d (upstream credential %q) after %v", what, status, got, time.Since(start).Round(time.Millisecond))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	statusIs := func(want int) func(int, string) bool {
		return func(status int, _ string) bool { return status == want }
	}
	usesUpstream := func(key string) func(int, string) bool {
		return func(status int, got string) bool { return status == http.StatusOK && got == "Bearer "+key }
	}

	// 1. A provider with one upstream key, made on replica 1.
	manage("POST", "/api/v1/orgs/acme/providers", map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}, http.StatusCreated)
	keyA := idOf(manage("POST", "/api/v1/orgs/acme/providers/oai/keys", map[string]any{"api_key": upKeyA, "name": "a", "priority": 10}, http.StatusCreated))

	// 2. Replica 2 serves it, and caches the key, the route and the caller.
	warm(owner, upKeyA)

	// 3. Upstream key changes.
	keyB := idOf(manage("POST", "/api/v1/orgs/acme/providers/oai/keys", map[string]any{"api_key": upKeyB, "name": "b", "priority": 0}, http.StatusCreated))
	within("a new upstream key ahead of the one in use", owner, usesUpstream(upKeyB))
	warm(owner, upKeyB)
	manage("DELETE", "/api/v1/orgs/acme/providers/oai/keys/"+keyB, nil, http.StatusNoContent)
	within("deleting the upstream key in use", owner, usesUpstream(upKeyA))
	manage("PATCH", "/api/v1/orgs/acme/providers/oai/keys/"+keyA, map[string]any{"enabled": false}, http.StatusOK)
	within("disabling the only upstream key", owner, func(status int, got string) bool { return status != http.StatusOK && got == "" })
	manage("PATCH", "/api/v1/orgs/acme/providers/oai/keys/"+keyA, map[string]any{"enabled": true}, http.StatusOK)
	within("enabling it again", owner, usesUpstream(upKeyA))

	// 4. A platform key: suspend, reactivate, revoke.
	var k2 struct{ ID, Key string }
	if err := json.Unmarshal(manage("POST", "/api/v1/api-keys", map[string]any{"org": "acme", "name": "k2", "permissions": []string{"gateway:invoke"}}, http.StatusCreated), &k2); err != nil {
		t.Fatal(err)
	}
	warm(k2.Key, upKeyA)
	manage("POST", "/api/v1/api-keys/"+k2.ID+"/suspend", nil, http.StatusOK)
	within("suspending a platform key", k2.Key, statusIs(http.StatusUnauthorized))
	manage("POST", "/api/v1/api-keys/"+k2.ID+"/reactivate", nil, http.StatusOK)
	within("reactivating it", k2.Key, usesUpstream(upKeyA))
	warm(k2.Key, upKeyA)
	manage("POST", "/api/v1/api-keys/"+k2.ID+"/revoke", nil, http.StatusOK)
	within("revoking it", k2.Key, statusIs(http.StatusUnauthorized))

	// A platform key's permissions, its rotation without a grace, and
	// its deletion.
	var k4 struct{ ID, Key string }
	if err := json.Unmarshal(manage("POST", "/api/v1/api-keys", map[string]any{"org": "acme", "name": "k4", "permissions": []string{"gateway:invoke", "usage:read"}}, http.StatusCreated), &k4); err != nil {
		t.Fatal(err)
	}
	warm(k4.Key, upKeyA)
	manage("PATCH", "/api/v1/api-keys/"+k4.ID, map[string]any{"permissions": []string{"usage:read"}}, http.StatusOK)
	within("taking gateway:invoke from a platform key", k4.Key, statusIs(http.StatusForbidden))
	manage("PATCH", "/api/v1/api-keys/"+k4.ID, map[string]any{"permissions": []string{"gateway:invoke"}}, http.StatusOK)
	within("giving it back", k4.Key, usesUpstream(upKeyA))
	warm(k4.Key, upKeyA)
	var k5 struct{ ID, Key string }
	if err := json.Unmarshal(manage("POST", "/api/v1/api-keys/"+k4.ID+"/rotate", map[string]any{"grace_period_seconds": 0}, http.StatusCreated), &k5); err != nil || k5.Key == "" {
		t.Fatalf("rotate: no key (%v)", err)
	}
	within("rotating a platform key without a grace: the old key", k4.Key, statusIs(http.StatusUnauthorized))
	warm(k5.Key, upKeyA)
	manage("DELETE", "/api/v1/api-keys/"+k5.ID, nil, http.StatusNoContent)
	within("deleting the rotated key", k5.Key, statusIs(http.StatusUnauthorized))

	// An AI key secret: delete.
	project := idOf(manage("POST", "/api/v1/orgs/acme/projects", map[string]any{"name": "svc"}, http.StatusCreated))
	var ai struct{ ID, Secret string }
	if err := json.Unmarshal(manage("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", map[string]any{"name": "ci", "ai_type": "OPENAI"}, http.StatusCreated), &ai); err != nil {
		t.Fatal(err)
	}
	warm(ai.Secret, upKeyA)
	manage("DELETE", "/api/v1/orgs/acme/projects/"+project+"/ai-keys/"+ai.ID, nil, http.StatusNoContent)
	within("deleting an AI key", ai.Secret, statusIs(http.StatusUnauthorized))
	// An AI key's project, deleted.
	var ai2 struct{ ID, Secret string }
	if err := json.Unmarshal(manage("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", map[string]any{"name": "ci2", "ai_type": "OPENAI"}, http.StatusCreated), &ai2); err != nil {
		t.Fatal(err)
	}
	warm(ai2.Secret, upKeyA)
	manage("DELETE", "/api/v1/orgs/acme/projects/"+project, nil, http.StatusNoContent)
	within("deleting an AI key's project", ai2.Secret, statusIs(http.StatusUnauthorized))

	// A replica whose LISTEN connection drops misses what is published
	// until it is back, so it must not trust its caches meanwhile nor
	// after. Every LISTEN on the schema is cut, and a key suspended at once.
	var k3 struct{ ID, Key string }
	if err := json.Unmarshal(manage("POST", "/api/v1/api-keys", map[string]any{"org": "acme", "name": "k3", "permissions": []string{"gateway:invoke"}}, http.StatusCreated), &k3); err != nil {
		t.Fatal(err)
	}
	warm(k3.Key, upKeyA)
	if n := cutListeners(t, dbURL); n != 2 {
		t.Fatalf("cut %d LISTEN connections, want one per replica", n)
	}
	manage("POST", "/api/v1/api-keys/"+k3.ID+"/suspend", nil, http.StatusOK)
	within("suspending a platform key while the replicas' LISTEN is cut", k3.Key, statusIs(http.StatusUnauthorized))
	manage("POST", "/api/v1/api-keys/"+k3.ID+"/reactivate", nil, http.StatusOK)
	within("reactivating it", k3.Key, usesUpstream(upKeyA))
	warm(k3.Key, upKeyA)
	manage("POST", "/api/v1/api-keys/"+k3.ID+"/revoke", nil, http.StatusOK)
	within("revoking it once the LISTEN is back", k3.Key, statusIs(http.StatusUnauthorized))

	// A personal credential, on a provider that prefers one to the org's
	// keys: added, changed and deleted through replica 1.
	manage("POST", "/api/v1/orgs/acme/providers", map[string]any{"name": "mine", "type": "openai", "base_url": up.URL + "/v1", "key_source": "user_or_org"}, http.StatusCreated)
	manage("POST", "/api/v1/orgs/acme/providers/mine/keys", map[string]any{"api_key": upKeyA}, http.StatusCreated)
	provider = "mine"
	warm(owner, upKeyA)
	cred := idOf(manage("POST", "/api/v1/users/me/credentials", map[string]any{"org": "acme", "provider": "mine", "api_key": personal1}, http.StatusCreated))
	within("adding a personal credential", owner, usesUpstream(personal1))
	warm(owner, personal1)
	manage("PATCH", "/api/v1/users/me/credentials/"+cred, map[string]any{"api_key": personal2}, http.StatusOK)
	within("changing the personal credential's key", owner, usesUpstream(personal2))
	warm(owner, personal2)
	manage("DELETE", "/api/v1/users/me/credentials/"+cred, nil, http.StatusNoContent)
	within("deleting the personal credential", owner, usesUpstream(upKeyA))
	provider = "oai"

	// 5. The provider itself.
	warm(owner, upKeyA)
	manage("PATCH", "/api/v1/orgs/acme/providers/oai", map[string]any{"enabled": false}, http.StatusOK)
	within("disabling the provider", owner, statusIs(http.StatusNotFound))
	manage("PATCH", "/api/v1/orgs/acme/providers/oai", map[string]any{"enabled": true}, http.StatusOK)
	within("enabling it again", owner, usesUpstream(upKeyA))
	manage("DELETE", "/api/v1/orgs/acme/providers/oai", nil, http.StatusNoContent)
	within("deleting the provider", owner, statusIs(http.StatusNotFound))

	// No replica wrote an upstream key, or a key of the caller, anywhere.
	for name, r := range map[string]*server{"replica 1": r1, "replica 2": r2} {
		out := r.stdout.String() + r.stderr.String()
		for _, secret := range []string{upKeyA, upKeyB, personal1, personal2, owner, k2.Key, k3.Key, k4.Key, k5.Key, ai.Secret, ai2.Secret} {
			if strings.Contains(out, secret) {
				t.Errorf("%s's output holds a secret (%.6s...)", name, secret)
			}
		}
	}
}

// setupReplicas sets up org acme on the PostgreSQL schema dbURL names, as
// the first of several replicas would, and returns the environment every
// replica of it runs with (that database, one master key) and the owner's
// key.
func setupReplicas(t *testing.T, dbURL string) (env func(string) string, owner string) {
	t.Helper()
	master := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32))
	env = envOf(map[string]string{"KEYBRIDGE_DATABASE_URL": dbURL, "KEYBRIDGE_MASTER_KEY": master})
	var stdout, stderr bytes.Buffer
	if err := cli.Run(context.Background(), []string{"keybridge", "setup", "--org", "acme", "--email", "admin@acme.test"},
		env, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("setup: %v\n%s", err, stderr.String())
	}
	return env, strings.TrimSpace(stdout.String())
}

// cutListeners ends the server side of every LISTEN connection on the
// schema dbURL selects, as a failover of the database would, and returns
// how many it ended.
func cutListeners(t *testing.T, dbURL string) int {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	schema := u.Query().Get("search_path")
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	err = db.QueryRow(`SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN %' AND position($1 in query) > 0) AS cut`, schema).Scan(&n)
	if err != nil {
		t.Fatalf("cut LISTEN connections: %v", err)
	}
	return n
}

// recordingUpstream is an OpenAI-style provider on loopback that answers
// every request and keeps the Authorization each one carried.
type recordingUpstream struct {
	*httptest.Server
	mu    sync.Mutex
	auths []string
}

func newRecordingUpstream(t *testing.T) *recordingUpstream {
	t.Helper()
	u := &recordingUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.auths = append(u.auths, r.Header.Get("Authorization"))
		u.mu.Unlock()
		if r.URL.Path != "/v1/chat/completions" {
			http.Error(w, `{"error":{"message":"no such path","type":"invalid_request_error"}}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini",`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	}))
	t.Cleanup(u.Close)
	return u
}

// count is how many requests have arrived so far.
func (u *recordingUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.auths)
}

// since returns the Authorization of the last request after the first n,
// or "" when none came.
func (u *recordingUpstream) since(n int) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.auths) <= n {
		return ""
	}
	return u.auths[len(u.auths)-1]
}

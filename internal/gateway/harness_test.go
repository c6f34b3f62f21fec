package gateway_test

// The harness every gateway test shares: one running Keybridge (the
// management API and the gateway beside it, as serve mounts them) over a
// fresh real store, with an org, its owner and an owner key holding every
// permission. Providers, keys and credentials are provisioned through the
// management API, as a user would. Logs are captured, so canary tests can
// look for secrets in them.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/testsupport"
	"github.com/keybridge/keybridge/internal/upstream"
)

func TestMain(m *testing.M) {
	auth.PasswordParams = auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
	os.Exit(m.Run())
}

// env is one running Keybridge and the org it was set up with.
type env struct {
	t       testing.TB
	Store   store.Store
	Ring    *secrets.Ring
	Auth    *auth.Service
	Gateway *gateway.Gateway
	URL     string

	Org      *keybridge.Org
	Owner    *keybridge.User
	OwnerKey string

	logBuf *testsupport.SyncBuffer
}

// envOptions tunes newEnvWith.
type envOptions struct {
	Gateway gateway.Options
	// Auth's Logger and Ring are the env's own.
	Auth auth.Options
}

func newEnv(t testing.TB) *env { return newEnvWith(t, storetest.SQLite(t), envOptions{}) }

func newEnvWith(t testing.TB, st store.Store, opts envOptions) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, Store: st, logBuf: &testsupport.SyncBuffer{}}
	logger := slog.New(slog.NewJSONHandler(e.logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ring, err := secrets.OpenRing(ctx, st, randomBytes(t, 32), secrets.Options{Logger: logger})
	if err != nil {
		cancel()
		t.Fatalf("open key ring: %v", err)
	}
	e.Ring = ring
	aopts := opts.Auth
	aopts.Logger, aopts.Ring = logger, ring
	e.Auth = auth.New(st, aopts)
	gopts := opts.Gateway
	gopts.Store, gopts.Ring, gopts.Auth, gopts.Logger = st, ring, e.Auth, logger
	if gopts.RequestLog == nil {
		gopts.RequestLog = e.logBuf
	}
	if e.Gateway, err = gateway.New(gopts); err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for name, run := range map[string]func(context.Context) error{"auth": e.Auth.Run, "gateway": e.Gateway.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("%s.Run: %v", name, err)
			}
		}()
	}
	api := httpapi.New(httpapi.Config{Store: st, Ring: ring, Auth: e.Auth, Logger: logger,
		Upstream: upstream.New(upstream.Options{Timeout: 5 * time.Second}), PublicURL: "http://keybridge.test"})
	// Served as serve serves it: Front takes the gateway's connections,
	// net/http the rest.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := e.Gateway.Front(ln)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // as serve: HTTP/2 with prior knowledge goes to net/http
	srv := &http.Server{Handler: e.Gateway.Beside(api), Protocols: &protocols}
	go front.Serve()
	go srv.Serve(front.Listener())
	e.URL = "http://" + ln.Addr().String()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		front.Shutdown(sctx)
		srv.Shutdown(sctx)
		cancel()
		wg.Wait()
	})
	e.Org, e.Owner, e.OwnerKey = e.newOrg("acme", "admin@acme.test")
	return e
}

// newOrg creates an org with an owner and an owner key with every
// permission, straight through the store.
func (e *env) newOrg(slug, email string) (*keybridge.Org, *keybridge.User, string) {
	e.t.Helper()
	ctx := context.Background()
	org := &keybridge.Org{Slug: slug, Name: slug}
	u := &keybridge.User{Email: email, Name: "Owner of " + slug}
	var key string
	err := e.Store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateOrg(ctx, org); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: u.ID, Role: keybridge.RoleOwner}); err != nil {
			return err
		}
		var err error
		key, err = createKey(ctx, tx, org.ID, u.ID, keybridge.AllPermissions)
		return err
	})
	if err != nil {
		e.t.Fatalf("create org %s: %v", slug, err)
	}
	return org, u, key
}

// addMember adds a member to e.Org with a key of the member role.
func (e *env) addMember(perms keybridge.Permissions) (userID, key string) {
	e.t.Helper()
	ctx := context.Background()
	u := &keybridge.User{Email: "member-" + hex.EncodeToString(randomBytes(e.t, 4)) + "@acme.test", Name: "Member"}
	err := e.Store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: e.Org.ID, UserID: u.ID, Role: keybridge.RoleMember}); err != nil {
			return err
		}
		var err error
		key, err = createKey(ctx, tx, e.Org.ID, u.ID, perms)
		return err
	})
	if err != nil {
		e.t.Fatalf("add member: %v", err)
	}
	return u.ID, key
}

func createKey(ctx context.Context, st store.Store, orgID, userID string, perms keybridge.Permissions) (string, error) {
	token, err := apikey.Generate(apikey.PlatformPrefix)
	if err != nil {
		return "", err
	}
	h := apikey.Hash(token)
	k := &keybridge.APIKey{OrgID: orgID, UserID: userID, Name: "test key", Prefix: apikey.Display(token),
		Hash: h[:], Permissions: perms, Status: keybridge.KeyActive}
	return token, st.CreateAPIKey(ctx, k)
}

// api calls the management API with key and decodes a JSON answer into a
// map; it fails the test unless the status is want.
func (e *env) api(method, path, key string, body any, want int) map[string]any {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	var out map[string]any
	if len(b) > 0 {
		json.Unmarshal(b, &out)
	}
	return out
}

// provider creates a provider through the API and returns its ID.
func (e *env) provider(fields map[string]any) string {
	e.t.Helper()
	out := e.api("POST", "/api/v1/orgs/acme/providers", e.OwnerKey, fields, http.StatusCreated)
	return out["id"].(string)
}

// addKey adds an upstream key to a provider and returns its ID.
func (e *env) addKey(provider, key string, priority int) string {
	e.t.Helper()
	out := e.api("POST", "/api/v1/orgs/acme/providers/"+provider+"/keys", e.OwnerKey,
		map[string]any{"api_key": key, "priority": priority}, http.StatusCreated)
	return out["id"].(string)
}

// do sends a gateway request and returns the answer with its body read.
func (e *env) do(req *http.Request) (*http.Response, []byte) {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// post builds a gateway POST of a JSON body with a bearer key.
func (e *env) post(path, key, body string) *http.Request {
	req, err := http.NewRequest("POST", e.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// logs returns every log line so far.
func (e *env) logs() string { return e.logBuf.String() }

// waitLog waits until the logs hold n gateway request lines (each is
// written just after its answer went out) and returns the logs.
func (e *env) waitLog(n int) string {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := e.logs()
		if strings.Count(l, `"msg":"gateway request"`) >= n {
			return l
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d gateway log lines, want %d:\n%s", strings.Count(l, `"msg":"gateway request"`), n, l)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// canary returns a provider-key-shaped secret that must never be seen
// outside the upstream.
func canary(t testing.TB, prefix string) string {
	return prefix + "CANARY" + hex.EncodeToString(randomBytes(t, 16))
}

// noCanary fails if secret appears in any of texts.
func noCanary(t testing.TB, secret string, texts ...string) {
	t.Helper()
	for i, s := range texts {
		if strings.Contains(s, secret) {
			t.Errorf("text %d holds the canary secret", i)
		}
	}
}

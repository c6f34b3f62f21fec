package httpapi_test

// The test harness every resource test of the API shares. One env is one
// running API over a fresh real store (SQLite, and PostgreSQL when
// KEYBRIDGE_TEST_POSTGRES_URL is set), with an org, its owner and an owner
// platform key holding every permission:
//
//	forEachEngine(t, func(t *testing.T, e *env) {
//		resp, body := e.do("GET", "/api/v1/orgs/"+e.Org.Slug, e.OwnerKey, nil)
//		wantStatus(t, resp, body, http.StatusOK)
//		org := decodeAs[keybridge.Org](t, body)
//
//		_, memberKey := e.addMember(keybridge.RoleMember)
//		resp, body = e.do("DELETE", "/api/v1/orgs/"+e.Org.Slug, memberKey, nil)
//		wantError(t, resp, body, keybridge.EForbidden)
//
//		other := e.otherOrg()
//		resp, body = e.do("GET", "/api/v1/orgs/"+other.Org.ID, e.OwnerKey, nil)
//		wantError(t, resp, body, keybridge.ENotFound)
//	})
//
// The server's JSON logs are captured (e.logs()) for canary tests that check
// no secret reaches a log line.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/testsupport"
	"github.com/keybridge/keybridge/internal/upstream"
)

// TestMain makes password hashing cheap: argon2id at its production cost
// (64 MiB) would dominate every test that creates a user. Tests in this
// package must not declare their own TestMain; add set-up here.
func TestMain(m *testing.M) {
	auth.PasswordParams = auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
	os.Exit(m.Run())
}

// env is one running API and the org it was set up with.
type env struct {
	t      testing.TB
	Engine string
	Store  store.Store
	Ring   *secrets.Ring
	Auth   *auth.Service
	API    *httpapi.Server
	Server *httptest.Server
	// MasterKey opened Ring; canary tests look for it where it must not be.
	MasterKey []byte

	// Org is the org set up for the test; Owner owns it with OwnerPassword.
	Org           *keybridge.Org
	Owner         *keybridge.User
	OwnerPassword string
	// OwnerKey is a platform key of Owner in Org with every permission.
	OwnerKey string

	logBuf *testsupport.SyncBuffer
	// Stop ends the server and the services behind it, for tests that
	// close the store before they end; it runs when t ends otherwise.
	Stop func()
}

// envOptions tunes newEnvWith; the zero value is what newEnv uses.
type envOptions struct {
	// Config is passed to httpapi.New after Store, Ring, Auth, Logger and
	// (when empty) PublicURL are filled in; set its other fields (Metrics,
	// Registerer, UI...) to test them.
	Config httpapi.Config
	// Empty leaves the store without any org (for setup tests): Org,
	// Owner and OwnerKey stay nil.
	Empty bool
}

// forEachEngine runs fn in a subtest per store engine, each with a fresh env.
func forEachEngine(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Helper()
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			e := newEnv(t, eng.New(t))
			e.Engine = eng.Name
			fn(t, e)
		})
	}
}

// newEnv starts the API over st, a fresh store, and sets up an org, its
// owner and an owner key. Everything stops when t ends.
func newEnv(t testing.TB, st store.Store) *env {
	return newEnvWith(t, st, envOptions{})
}

// newEnvWith is newEnv with options.
func newEnvWith(t testing.TB, st store.Store, opts envOptions) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, Store: st, logBuf: &testsupport.SyncBuffer{}}
	e.MasterKey = randomBytes(t, 32)
	logger := slog.New(slog.NewJSONHandler(e.logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	ring, err := secrets.OpenRing(ctx, st, e.MasterKey, secrets.Options{Logger: logger})
	if err != nil {
		cancel()
		t.Fatalf("open key ring: %v", err)
	}
	e.Ring = ring
	e.Auth = auth.New(st, auth.Options{Logger: logger, Ring: ring})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.Auth.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("auth.Run: %v", err)
		}
	}()

	cfg := opts.Config
	cfg.Store, cfg.Ring, cfg.Auth, cfg.Logger = st, ring, e.Auth, logger
	if cfg.Upstream == nil {
		cfg.Upstream = upstream.New(upstream.Options{Timeout: 5 * time.Second})
	}
	// The unstarted server already listens, so its address can go into
	// PublicURL (invite links) before the handler is built.
	e.Server = httptest.NewUnstartedServer(nil)
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://" + e.Server.Listener.Addr().String()
	}
	e.API = httpapi.New(cfg)
	e.Server.Config.Handler = e.API
	e.Server.Start()
	e.Stop = sync.OnceFunc(func() {
		e.Server.Close()
		cancel()
		<-done
	})
	t.Cleanup(e.Stop)

	if opts.Empty {
		return e
	}
	e.OwnerPassword = "owner-password-" + hex.EncodeToString(randomBytes(t, 8))
	e.Org, e.Owner, e.OwnerKey = e.newOrg("acme", "admin@acme.test", e.OwnerPassword)
	return e
}

// newOrg creates an org with an owner (with password, when not empty) and
// an owner key with every permission, straight through the store.
func (e *env) newOrg(slug, email, password string) (*keybridge.Org, *keybridge.User, string) {
	e.t.Helper()
	ctx := context.Background()
	org := &keybridge.Org{Slug: slug, Name: strings.ToUpper(slug[:1]) + slug[1:]}
	u := &keybridge.User{Email: email, Name: "Owner of " + slug}
	if password != "" {
		h, err := auth.HashPassword(password)
		if err != nil {
			e.t.Fatalf("hash password: %v", err)
		}
		u.PasswordHash = h
	}
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
		key, err = e.createKey(ctx, tx, org.ID, u.ID, keybridge.AllPermissions)
		return err
	})
	if err != nil {
		e.t.Fatalf("create org %s: %v", slug, err)
	}
	return org, u, key
}

// createKey stores a new active platform key and returns its plaintext.
func (e *env) createKey(ctx context.Context, st store.Store, orgID, userID string, perms keybridge.Permissions) (string, error) {
	token, err := apikey.Generate(apikey.PlatformPrefix)
	if err != nil {
		return "", err
	}
	h := apikey.Hash(token)
	k := &keybridge.APIKey{
		OrgID: orgID, UserID: userID, Name: "test key", Prefix: apikey.Display(token),
		Hash: h[:], Permissions: perms, Status: keybridge.KeyActive,
	}
	return token, st.CreateAPIKey(ctx, k)
}

// addMember adds a new user with role to e.Org, with a password
// (memberPassword) and a platform key holding every permission of the role.
func (e *env) addMember(role keybridge.Role) (userID, key string) {
	e.t.Helper()
	return e.addMemberTo(e.Org, role)
}

// memberPassword is the password of every user addMember creates.
const memberPassword = "member-password-1234"

// addMemberTo is addMember for any org.
func (e *env) addMemberTo(org *keybridge.Org, role keybridge.Role) (userID, key string) {
	e.t.Helper()
	ctx := context.Background()
	h, err := auth.HashPassword(memberPassword)
	if err != nil {
		e.t.Fatalf("hash password: %v", err)
	}
	u := &keybridge.User{
		Email:        string(role) + "-" + hex.EncodeToString(randomBytes(e.t, 4)) + "@" + org.Slug + ".test",
		Name:         "A " + string(role),
		PasswordHash: h,
	}
	err = e.Store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: u.ID, Role: role}); err != nil {
			return err
		}
		key, err = e.createKey(ctx, tx, org.ID, u.ID, role.Permissions())
		return err
	})
	if err != nil {
		e.t.Fatalf("add %s to %s: %v", role, org.Slug, err)
	}
	return u.ID, key
}

// userEmail returns the email of a user, for logging in as them.
func (e *env) userEmail(userID string) string {
	e.t.Helper()
	u, err := e.Store.User(context.Background(), userID)
	if err != nil {
		e.t.Fatalf("user %s: %v", userID, err)
	}
	return u.Email
}

// tenant is another org with its own owner, for cross-org tests.
type tenant struct {
	Org      *keybridge.Org
	Owner    *keybridge.User
	OwnerKey string
}

// otherOrg creates another org (with its own owner and owner key) in the
// same store: what it holds must be invisible to e.Org's callers (404), and
// the reverse.
func (e *env) otherOrg() tenant {
	e.t.Helper()
	n := hex.EncodeToString(randomBytes(e.t, 4))
	org, owner, key := e.newOrg("other-"+n, "owner-"+n+"@other.test", "")
	return tenant{Org: org, Owner: owner, OwnerKey: key}
}

// do sends a request to the API and returns the response with its body read.
// key, when not empty, goes in Authorization: Bearer. body is sent as is
// when it is a string or []byte, else JSON-encoded; nil sends no body.
func (e *env) do(method, path, key string, body any) (*http.Response, []byte) {
	e.t.Helper()
	return e.send(method, path, body, func(r *http.Request) {
		if key != "" {
			r.Header.Set("Authorization", "Bearer "+key)
		}
	})
}

// send is do with a hook to set what the request needs (headers, cookies).
func (e *env) send(method, path string, body any, prepare func(*http.Request)) (*http.Response, []byte) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatalf("encode request body: %v", err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.Server.URL+path, rd)
	if err != nil {
		e.t.Fatalf("new request: %v", err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if prepare != nil {
		prepare(req)
	}
	resp, err := e.Server.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, out
}

// session is a logged-in web UI user: its cookie and CSRF token.
type session struct {
	e      *env
	Cookie *http.Cookie
	CSRF   string
	// User is the user object the login answered with.
	User json.RawMessage
}

// login logs in through POST /api/v1/auth/login and fails the test if it
// does not answer 200 with a session cookie.
func (e *env) login(email, password string) *session {
	e.t.Helper()
	resp, body := e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": email, "password": password})
	wantStatus(e.t, resp, body, http.StatusOK)
	return e.sessionFrom(resp, body)
}

// sessionFrom reads the session cookie and csrf_token of a login-like answer.
func (e *env) sessionFrom(resp *http.Response, body []byte) *session {
	e.t.Helper()
	var out struct {
		User json.RawMessage `json:"user"`
		CSRF string          `json:"csrf_token"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.CSRF == "" {
		e.t.Fatalf("login answer %s: want {user, csrf_token} (err %v)", body, err)
	}
	for _, c := range resp.Cookies() {
		if c.Name == auth.SessionCookie {
			return &session{e: e, Cookie: c, CSRF: out.CSRF, User: out.User}
		}
	}
	e.t.Fatalf("login answer has no %s cookie", auth.SessionCookie)
	return nil
}

// do sends a request with the session cookie and, for unsafe methods, the
// X-CSRF-Token header.
func (s *session) do(method, path string, body any) (*http.Response, []byte) {
	s.e.t.Helper()
	return s.e.send(method, path, body, func(r *http.Request) {
		r.AddCookie(&http.Cookie{Name: s.Cookie.Name, Value: s.Cookie.Value})
		if method != "GET" && method != "HEAD" && method != "OPTIONS" {
			r.Header.Set("X-CSRF-Token", s.CSRF)
		}
	})
}

// logs returns everything the server logged so far (JSON lines).
func (e *env) logs() string { return e.logBuf.String() }

// auditActions returns the actions of org's audit events, newest first.
func (e *env) auditActions(orgID string) []string {
	e.t.Helper()
	events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: orgID}, store.Page{Limit: store.MaxLimit})
	if err != nil {
		e.t.Fatalf("list audit events: %v", err)
	}
	var actions []string
	for _, ev := range events {
		actions = append(actions, ev.Action)
	}
	return actions
}

// wantStatus fails the test unless resp has status want.
func wantStatus(t testing.TB, resp *http.Response, body []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("%s %s = %d %s, want %d", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, body, want)
	}
}

// apiError is the one error shape of SPEC §1.
type apiError struct {
	Error struct {
		Code    string            `json:"code"`
		Message string            `json:"message"`
		Fields  map[string]string `json:"fields"`
	} `json:"error"`
}

// wantError fails the test unless the answer is an error in the SPEC's
// shape with code, the status that code maps to, a message and an
// X-Request-Id. It returns the decoded error for checks on its fields.
func wantError(t testing.TB, resp *http.Response, body []byte, code string) apiError {
	t.Helper()
	req := resp.Request.Method + " " + resp.Request.URL.Path
	if want := httpapi.Status(code); resp.StatusCode != want {
		t.Fatalf("%s = %d %s, want %d (%s)", req, resp.StatusCode, body, want, code)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type = %q, want application/json", req, ct)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s: no X-Request-Id", req)
	}
	var got apiError
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%s: error body %s is not the SPEC's shape: %v", req, body, err)
	}
	if got.Error.Code != code {
		t.Errorf("%s: error code = %q, want %q", req, got.Error.Code, code)
	}
	if got.Error.Message == "" {
		t.Errorf("%s: error has no message", req)
	}
	if code == keybridge.ERateLimited && resp.Header.Get("Retry-After") == "" {
		t.Errorf("%s: 429 without Retry-After", req)
	}
	return got
}

// decodeAs decodes a JSON answer, failing the test if it does not decode.
func decodeAs[T any](t testing.TB, body []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, body, err)
	}
	return v
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return b
}

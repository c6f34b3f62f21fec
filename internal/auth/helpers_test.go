package auth_test

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// productionParams are the password parameters the package ships with,
// saved before TestMain lowers them so that tests stay fast.
var productionParams auth.Argon2Params

func TestMain(m *testing.M) {
	productionParams = auth.PasswordParams
	auth.PasswordParams = auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
	os.Exit(m.Run())
}

// fixture is an org with its owner, in a real store.
type fixture struct {
	st    store.Store
	org   *keybridge.Org
	owner *keybridge.User
}

const ownerPassword = "correct horse battery staple"

func newFixture(t testing.TB, st store.Store) *fixture {
	t.Helper()
	f := &fixture{st: st}
	f.org = f.addOrg(t, "acme")
	f.owner = f.addUser(t, "owner@acme.test", ownerPassword)
	f.join(t, f.org, f.owner, keybridge.RoleOwner)
	return f
}

func (f *fixture) addOrg(t testing.TB, slug string) *keybridge.Org {
	t.Helper()
	o := &keybridge.Org{Slug: slug, Name: slug}
	if err := f.st.CreateOrg(context.Background(), o); err != nil {
		t.Fatalf("CreateOrg(%q): %v", slug, err)
	}
	return o
}

// addUser creates a user; an empty password leaves it without one.
func (f *fixture) addUser(t testing.TB, email, password string) *keybridge.User {
	t.Helper()
	u := &keybridge.User{Email: email, Name: email}
	if password != "" {
		h, err := auth.HashPassword(password)
		if err != nil {
			t.Fatalf("HashPassword: %v", err)
		}
		u.PasswordHash = h
	}
	if err := f.st.CreateUser(context.Background(), u); err != nil {
		t.Fatalf("CreateUser(%q): %v", email, err)
	}
	return u
}

func (f *fixture) join(t testing.TB, o *keybridge.Org, u *keybridge.User, role keybridge.Role) {
	t.Helper()
	if err := f.st.CreateMembership(context.Background(), &keybridge.Membership{OrgID: o.ID, UserID: u.ID, Role: role}); err != nil {
		t.Fatalf("CreateMembership: %v", err)
	}
}

func (f *fixture) setRole(t testing.TB, u *keybridge.User, role keybridge.Role) {
	t.Helper()
	if err := f.st.UpdateMembership(context.Background(), &keybridge.Membership{OrgID: f.org.ID, UserID: u.ID, Role: role}); err != nil {
		t.Fatalf("UpdateMembership: %v", err)
	}
}

// newKey stores a platform key of u in f.org and returns its token; edit,
// when set, changes the key before it is stored.
func (f *fixture) newKey(t testing.TB, u *keybridge.User, perms keybridge.Permissions, edit func(*keybridge.APIKey)) (string, *keybridge.APIKey) {
	t.Helper()
	return newKeyIn(t, f.st, f.org, u, perms, edit)
}

func newKeyIn(t testing.TB, st store.Store, org *keybridge.Org, u *keybridge.User, perms keybridge.Permissions, edit func(*keybridge.APIKey)) (string, *keybridge.APIKey) {
	t.Helper()
	tok, k := keyFor(t, org, u, perms)
	if edit != nil {
		edit(k)
	}
	if err := st.CreateAPIKey(context.Background(), k); err != nil {
		t.Fatalf("CreateAPIKey: %v", err)
	}
	return tok, k
}

// keyFor makes a new, unsaved active key of u in org.
func keyFor(t testing.TB, org *keybridge.Org, u *keybridge.User, perms keybridge.Permissions) (string, *keybridge.APIKey) {
	t.Helper()
	tok, err := apikey.Generate(apikey.PlatformPrefix)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	h := apikey.Hash(tok)
	return tok, &keybridge.APIKey{
		OrgID: org.ID, UserID: u.ID, Name: "test key", Prefix: apikey.Display(tok),
		Hash: h[:], Permissions: perms, Status: keybridge.KeyActive,
	}
}

// update changes a stored key the way the API does, through UpdateAPIKey
// (which publishes the invalidation).
func (f *fixture) update(t testing.TB, k *keybridge.APIKey, edit func(*keybridge.APIKey)) {
	t.Helper()
	edit(k)
	if err := f.st.UpdateAPIKey(context.Background(), k); err != nil {
		t.Fatalf("UpdateAPIKey: %v", err)
	}
}

// newAIKey stores a project and an AI key in f.org and returns the secret.
func (f *fixture) newAIKey(t testing.TB, aiType keybridge.AIType) (string, *keybridge.AIKey) {
	t.Helper()
	ctx := context.Background()
	p := &keybridge.Project{OrgID: f.org.ID, Name: "project " + time.Now().Format(time.RFC3339Nano)}
	if err := f.st.CreateProject(ctx, p); err != nil {
		t.Fatalf("CreateProject: %v", err)
	}
	secret, err := apikey.Generate(apikey.AISecretPrefix)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	pub, err := apikey.Generate(apikey.AIKeyPrefix)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	h := apikey.Hash(secret)
	k := &keybridge.AIKey{
		ProjectID: p.ID, OrgID: f.org.ID, Name: "ci", AIType: aiType, Key: pub, SecretHash: h[:],
		Limits: keybridge.Limits{RateLimitRPM: 60}, CreatedBy: f.owner.ID,
	}
	if err := f.st.CreateAIKey(ctx, k); err != nil {
		t.Fatalf("CreateAIKey: %v", err)
	}
	return secret, k
}

// fastOptions are Options for tests: the flusher stays out of the way
// unless a test calls Flush.
func fastOptions() auth.Options {
	return auth.Options{TouchInterval: time.Hour}
}

// startService runs a Service over st until the test ends, and waits until
// its cache is live.
func startService(t testing.TB, st store.Store, opts auth.Options) *auth.Service {
	t.Helper()
	s := auth.New(st, opts)
	stop := runService(t, s)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitLive(t, s)
	return s
}

// runService starts s.Run and returns a function that stops it and
// returns Run's error.
func runService(t testing.TB, s *auth.Service) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
}

func waitLive(t testing.TB, s *auth.Service) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.CacheStats().Live {
		if time.Now().After(deadline) {
			t.Fatal("the cache did not go live within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countingStore is a real store that also counts the calls the cache is
// meant to save, and can act in the middle of a key lookup.
type countingStore struct {
	store.Store
	keyLookups  atomic.Int64
	afterLookup func() // called once a key lookup returns, when set

	mu      sync.Mutex
	batches []map[string]time.Time
}

func (c *countingStore) APIKeyByHash(ctx context.Context, hash []byte) (*keybridge.APIKey, error) {
	c.keyLookups.Add(1)
	k, err := c.Store.APIKeyByHash(ctx, hash)
	if c.afterLookup != nil {
		c.afterLookup()
	}
	return k, err
}

func (c *countingStore) TouchAPIKeys(ctx context.Context, lastUsed map[string]time.Time) error {
	c.mu.Lock()
	batch := make(map[string]time.Time, len(lastUsed))
	for id, t := range lastUsed {
		batch[id] = t
	}
	c.batches = append(c.batches, batch)
	c.mu.Unlock()
	return c.Store.TouchAPIKeys(ctx, lastUsed)
}

func (c *countingStore) touchBatches() []map[string]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]time.Time(nil), c.batches...)
}

// wantCode fails t unless err carries code.
func wantCode(t testing.TB, what string, err error, code string) {
	t.Helper()
	if got := keybridge.ErrorCode(err); got != code {
		t.Fatalf("%s: error %v (code %q), want code %q", what, err, got, code)
	}
}

package auth_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

func ptr[T any](v T) *T { return &v }

// flip changes the character at i to another base62 character.
func flip(tok string, i int) string {
	b := []byte(tok)
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestVerifyAPIKey(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			s := startService(t, f.st, fastOptions())
			hour := time.Now().Add(time.Hour)
			past := time.Now().Add(-time.Second)
			limits := keybridge.Limits{RateLimitRPM: 10, TokenBudget: 1000, BudgetPeriod: keybridge.BudgetDay}

			valid, validKey := f.newKey(t, f.owner, keybridge.PermGatewayInvoke|keybridge.PermProvidersRead, func(k *keybridge.APIKey) { k.Limits = limits })
			unknown, _ := apikey.Generate(apikey.PlatformPrefix)
			aiSecret, _ := apikey.Generate(apikey.AISecretPrefix)
			suspended, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) { k.Status = keybridge.KeySuspended })
			revoked, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) {
				k.Status, k.RevokedAt = keybridge.KeyRevoked, &past
			})
			expired, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) { k.ExpiresAt = &past })
			pastGrace, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) { k.GraceUntil = &past })
			inGrace, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) { k.GraceUntil = &hour })
			notYetExpired, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) { k.ExpiresAt = &hour })

			tests := []struct {
				name  string
				token string
				ok    bool
			}{
				{"valid", valid, true},
				{"in rotation grace", inGrace, true},
				{"expires later", notYetExpired, true},
				{"unknown", unknown, false},
				{"bad checksum", flip(valid, len(valid)-1), false},
				{"tampered body", flip(valid, 10), false},
				{"truncated", valid[:len(valid)-1], false},
				{"AI key secret", aiSecret, false},
				{"empty", "", false},
				{"garbage", "Bearer hello", false},
				{"suspended", suspended, false},
				{"revoked", revoked, false},
				{"expired", expired, false},
				{"past grace", pastGrace, false},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					// Twice: from the store, then from the cache.
					for i := range 2 {
						p, err := s.VerifyAPIKey(ctx, tt.token)
						if !tt.ok {
							wantCode(t, "VerifyAPIKey", err, keybridge.EUnauthenticated)
							if got, want := keybridge.ErrorMessage(err), "invalid API key"; got != want {
								t.Errorf("VerifyAPIKey message = %q, want the one generic %q", got, want)
							}
							continue
						}
						if err != nil {
							t.Fatalf("VerifyAPIKey (call %d): %v", i+1, err)
						}
						if p.Type != keybridge.ActorAPIKey || p.UserID != f.owner.ID || p.Email != f.owner.Email || p.OrgID != f.org.ID || p.Role != keybridge.RoleOwner {
							t.Errorf("VerifyAPIKey = %+v, want the owner's key in %s", p, f.org.ID)
						}
					}
				})
			}

			p, err := s.VerifyAPIKey(ctx, valid)
			if err != nil {
				t.Fatalf("VerifyAPIKey: %v", err)
			}
			want := keybridge.Principal{
				Type: keybridge.ActorAPIKey, UserID: f.owner.ID, Email: f.owner.Email, KeyID: validKey.ID,
				OrgID: f.org.ID, Permissions: keybridge.PermGatewayInvoke | keybridge.PermProvidersRead,
				Role: keybridge.RoleOwner, Limits: limits,
			}
			if *p != want {
				t.Errorf("VerifyAPIKey = %+v, want %+v", *p, want)
			}
			if st := s.CacheStats(); st.Hits == 0 {
				t.Errorf("CacheStats = %+v, want hits after verifying keys twice", st)
			}
		})
	}
}

// A key is refused from the instant it expires, even while it is cached.
func TestVerifyAPIKeyExpiresWhileCached(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	s := startService(t, f.st, fastOptions())
	expires := time.Now().Add(300 * time.Millisecond).Truncate(time.Microsecond)
	tok, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) { k.ExpiresAt = &expires })
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		t.Fatalf("VerifyAPIKey before expiry: %v", err)
	}
	time.Sleep(time.Until(expires) + time.Millisecond)
	_, err := s.VerifyAPIKey(ctx, tok)
	wantCode(t, "VerifyAPIKey after expiry", err, keybridge.EUnauthenticated)
}

// Suspending, reactivating, revoking and changing a key reach a cached
// copy as soon as the change commits.
func TestVerifyAPIKeyChangesReachCache(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			s := startService(t, f.st, fastOptions())
			tok, k := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
			verify := func() (*keybridge.Principal, error) {
				t.Helper()
				for range 3 { // load, then hits
					if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
						return nil, err
					}
				}
				return s.VerifyAPIKey(ctx, tok)
			}
			if _, err := verify(); err != nil {
				t.Fatalf("VerifyAPIKey: %v", err)
			}

			f.update(t, k, func(k *keybridge.APIKey) { k.Status = keybridge.KeySuspended })
			_, err := s.VerifyAPIKey(ctx, tok)
			wantCode(t, "VerifyAPIKey after suspend", err, keybridge.EUnauthenticated)

			f.update(t, k, func(k *keybridge.APIKey) { k.Status = keybridge.KeyActive })
			if _, err := verify(); err != nil {
				t.Fatalf("VerifyAPIKey after reactivate: %v", err)
			}

			f.update(t, k, func(k *keybridge.APIKey) { k.Permissions = keybridge.PermProvidersRead })
			p, err := verify()
			if err != nil {
				t.Fatalf("VerifyAPIKey after permission change: %v", err)
			}
			if p.Permissions != keybridge.PermProvidersRead {
				t.Errorf("Permissions after change = %v, want providers:read", p.Permissions)
			}

			f.update(t, k, func(k *keybridge.APIKey) { k.Status, k.RevokedAt = keybridge.KeyRevoked, ptr(time.Now()) })
			_, err = s.VerifyAPIKey(ctx, tok)
			wantCode(t, "VerifyAPIKey after revoke", err, keybridge.EUnauthenticated)
		})
	}
}

// "A demoted user's keys lose the power at once"; a removed user's keys
// stop working; a user added back gets them back.
func TestRoleChangesReachKeys(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			opts := fastOptions()
			opts.NegativeTTL = 50 * time.Millisecond
			s := startService(t, f.st, opts)
			admin := f.addUser(t, "admin@acme.test", "")
			f.join(t, f.org, admin, keybridge.RoleAdmin)
			tok, _ := f.newKey(t, admin, keybridge.AllPermissions, nil)
			tok2, _ := f.newKey(t, admin, keybridge.PermProvidersWrite|keybridge.PermGatewayInvoke, nil)

			for _, tk := range []string{tok, tok, tok2, tok2} {
				p, err := s.VerifyAPIKey(ctx, tk)
				if err != nil {
					t.Fatalf("VerifyAPIKey: %v", err)
				}
				if _, err := s.Authorize(ctx, p, f.org, keybridge.PermProvidersWrite); err != nil {
					t.Fatalf("Authorize(providers:write) as admin: %v", err)
				}
			}

			f.setRole(t, admin, keybridge.RoleMember)
			p, err := s.VerifyAPIKey(ctx, tok)
			if err != nil {
				t.Fatalf("VerifyAPIKey after demotion: %v", err)
			}
			if want := keybridge.RoleMember.Permissions(); p.Permissions != want || p.Role != keybridge.RoleMember {
				t.Errorf("after demotion: permissions %v, role %q; want %v, member", p.Permissions, p.Role, want)
			}
			_, err = s.Authorize(ctx, p, f.org, keybridge.PermProvidersWrite)
			wantCode(t, "Authorize(providers:write) after demotion", err, keybridge.EForbidden)
			p2, err := s.VerifyAPIKey(ctx, tok2)
			if err != nil {
				t.Fatalf("VerifyAPIKey(second key) after demotion: %v", err)
			}
			if p2.Permissions != keybridge.PermGatewayInvoke {
				t.Errorf("second key after demotion: permissions %v, want gateway:invoke", p2.Permissions)
			}

			if err := f.st.DeleteMembership(ctx, f.org.ID, admin.ID); err != nil {
				t.Fatalf("DeleteMembership: %v", err)
			}
			_, err = s.VerifyAPIKey(ctx, tok)
			wantCode(t, "VerifyAPIKey after removal", err, keybridge.EUnauthenticated)

			f.join(t, f.org, admin, keybridge.RoleAdmin)
			deadline := time.Now().Add(2 * time.Second)
			for {
				if _, err := s.VerifyAPIKey(ctx, tok); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("key of a user added back still refused after 2 s")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// A change that commits while a cache miss is reading the store must not
// leave the miss's stale answer in the cache.
func TestChangeDuringLoadIsNotCached(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: storetest.SQLite(t)}
	f := newFixture(t, cs)
	s := startService(t, cs, fastOptions())
	tok, k := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	cs.afterLookup = func() {
		cs.afterLookup = nil
		f.update(t, k, func(k *keybridge.APIKey) { k.Status = keybridge.KeySuspended })
	}
	// The first call read the key before the suspension: it may pass.
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		t.Fatalf("VerifyAPIKey during suspension: %v", err)
	}
	_, err := s.VerifyAPIKey(ctx, tok)
	wantCode(t, "VerifyAPIKey after the suspension committed", err, keybridge.EUnauthenticated)
}

func TestInvalidateAllClearsCache(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	s := startService(t, f.st, fastOptions())
	tok, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		t.Fatalf("VerifyAPIKey: %v", err)
	}
	if got := s.CacheStats().Entries; got != 1 {
		t.Fatalf("Entries = %d, want 1", got)
	}
	if err := f.st.Publish(ctx, store.Invalidation{Kind: store.InvalidateAll}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := s.CacheStats().Entries; got != 0 {
		t.Errorf("Entries after InvalidateAll = %d, want 0", got)
	}
}

// Provider, upstream key and credential changes concern where requests go,
// not who sends them: they leave the caller cache alone.
func TestRoutingInvalidationsKeepCache(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	s := startService(t, f.st, fastOptions())
	tok, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		t.Fatalf("VerifyAPIKey: %v", err)
	}
	// Each change below publishes its invalidation, which this process's
	// subscribers hear before the change returns.
	p := &keybridge.Provider{OrgID: f.org.ID, Name: "openai", DisplayName: "OpenAI", Type: keybridge.ProviderOpenAI,
		BaseURL: "https://api.openai.com/v1", Enabled: true, KeySource: keybridge.KeySourceUserOrOrg, SettingsSealed: []byte("sealed")}
	if err := f.st.CreateProvider(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := f.st.CreateProviderKey(ctx, &keybridge.ProviderKey{ProviderID: p.ID, Hint: "...", Sealed: []byte("sealed"), Fingerprint: []byte("fp")}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.CreateCredential(ctx, &keybridge.Credential{UserID: f.owner.ID, OrgID: f.org.ID, ProviderID: p.ID,
		Hint: "...", Sealed: []byte("sealed"), Fingerprint: []byte("fp")}); err != nil {
		t.Fatal(err)
	}
	if st := s.CacheStats(); st.Entries != 1 || !st.Live {
		t.Errorf("CacheStats after provider, key and credential changes = %+v, want 1 entry, live", st)
	}
	// A kind this version does not know still clears it.
	if err := f.st.Publish(ctx, store.Invalidation{Kind: "unknown"}); err != nil {
		t.Fatal(err)
	}
	if got := s.CacheStats().Entries; got != 0 {
		t.Errorf("Entries after an unknown invalidation = %d, want 0", got)
	}
}

// Without Run nothing is cached: every verification reads the store, so
// no change can be missed.
func TestNoCacheWithoutRun(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: storetest.SQLite(t)}
	f := newFixture(t, cs)
	s := auth.New(cs, fastOptions())
	tok, k := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	for range 3 {
		if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
			t.Fatalf("VerifyAPIKey: %v", err)
		}
	}
	if got := cs.keyLookups.Load(); got != 3 {
		t.Errorf("store lookups = %d, want 3", got)
	}
	f.update(t, k, func(k *keybridge.APIKey) { k.Status = keybridge.KeySuspended })
	_, err := s.VerifyAPIKey(ctx, tok)
	wantCode(t, "VerifyAPIKey after suspend", err, keybridge.EUnauthenticated)
	if st := s.CacheStats(); st.Live || st.Entries != 0 {
		t.Errorf("CacheStats without Run = %+v, want off and empty", st)
	}
}

func TestNegativeCache(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: storetest.SQLite(t)}
	opts := fastOptions()
	opts.NegativeTTL = 100 * time.Millisecond
	opts.NegativeCacheSize = 10
	s := startService(t, cs, opts)

	unknown, _ := apikey.Generate(apikey.PlatformPrefix)
	for range 3 {
		_, err := s.VerifyAPIKey(ctx, unknown)
		wantCode(t, "VerifyAPIKey(unknown)", err, keybridge.EUnauthenticated)
	}
	if got := cs.keyLookups.Load(); got != 1 {
		t.Errorf("store lookups for one unknown token verified 3 times = %d, want 1", got)
	}
	deadline := time.Now().Add(2 * time.Second)
	for cs.keyLookups.Load() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("an unknown token is still remembered 2 s later, want 100 ms")
		}
		time.Sleep(20 * time.Millisecond)
		s.VerifyAPIKey(ctx, unknown)
	}

	// Tokens with a valid checksum cost nothing to make: memory must not
	// grow with them.
	for range 100 {
		tok, _ := apikey.Generate(apikey.PlatformPrefix)
		s.VerifyAPIKey(ctx, tok)
	}
	if got := s.CacheStats().NegativeEntries; got > 10 {
		t.Errorf("NegativeEntries after 100 unknown tokens = %d, want at most 10", got)
	}
}

// The cache stays within its size and keeps answering right when it
// evicts.
func TestCacheBound(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	opts := fastOptions()
	opts.CacheSize = 1 // two per shard: at most 512 in all
	s := startService(t, f.st, opts)
	var toks []string
	err := f.st.InTx(ctx, func(tx store.Store) error {
		for range 700 {
			tok, k := keyFor(t, f.org, f.owner, keybridge.AllPermissions)
			if err := tx.CreateAPIKey(ctx, k); err != nil {
				return err
			}
			toks = append(toks, tok)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("create keys: %v", err)
	}
	for _, tok := range append(toks, toks...) {
		if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
			t.Fatalf("VerifyAPIKey: %v", err)
		}
	}
	if got := s.CacheStats().Entries; got > 512 || got == 0 {
		t.Errorf("Entries after 700 keys = %d, want 1..512", got)
	}
}

func TestVerifyAISecret(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			s := startService(t, f.st, fastOptions())
			secret, k := f.newAIKey(t, keybridge.AIAnthropic)
			platform, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
			unknown, _ := apikey.Generate(apikey.AISecretPrefix)

			for range 2 {
				p, err := s.VerifyAISecret(ctx, secret)
				if err != nil {
					t.Fatalf("VerifyAISecret: %v", err)
				}
				want := keybridge.Principal{
					Type: keybridge.ActorAIKey, KeyID: k.ID, OrgID: f.org.ID, ProjectID: k.ProjectID,
					AIType: keybridge.AIAnthropic, Permissions: keybridge.PermGatewayInvoke, Limits: k.Limits,
				}
				if *p != want {
					t.Errorf("VerifyAISecret = %+v, want %+v", *p, want)
				}
			}
			for _, tc := range []struct{ name, token string }{
				{"unknown", unknown},
				{"bad checksum", flip(secret, len(secret)-2)},
				{"platform key", platform},
				{"public key id", k.Key},
			} {
				_, err := s.VerifyAISecret(ctx, tc.token)
				wantCode(t, "VerifyAISecret("+tc.name+")", err, keybridge.EUnauthenticated)
			}
			// An AI secret is no platform key, even when cached.
			_, err := s.VerifyAPIKey(ctx, secret)
			wantCode(t, "VerifyAPIKey(AI secret)", err, keybridge.EUnauthenticated)

			if err := f.st.DeleteAIKey(ctx, k.ProjectID, k.ID); err != nil {
				t.Fatalf("DeleteAIKey: %v", err)
			}
			_, err = s.VerifyAISecret(ctx, secret)
			wantCode(t, "VerifyAISecret after delete", err, keybridge.EUnauthenticated)
		})
	}
}

func TestSessions(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			s := auth.New(f.st, fastOptions())

			sess, tok, err := s.StartSession(ctx, f.owner, "192.0.2.1", "test-agent")
			if err != nil {
				t.Fatalf("StartSession: %v", err)
			}
			if len(tok) != 43 || sess.CSRFToken == "" || sess.CSRFToken == tok {
				t.Errorf("StartSession: token %d chars, CSRF %q; want 43 chars and a distinct CSRF token", len(tok), sess.CSRFToken)
			}
			if d := time.Until(sess.ExpiresAt); d < 11*time.Hour || d > 13*time.Hour {
				t.Errorf("session expires in %v, want 12 h", d)
			}
			p, err := s.VerifySession(ctx, tok)
			if err != nil {
				t.Fatalf("VerifySession: %v", err)
			}
			want := keybridge.Principal{
				Type: keybridge.ActorUser, UserID: f.owner.ID, Email: f.owner.Email, KeyID: sess.ID,
				Permissions: keybridge.AllPermissions, SessionCSRF: sess.CSRFToken,
			}
			if *p != want {
				t.Errorf("VerifySession = %+v, want %+v", *p, want)
			}

			for _, bad := range []string{"", "short", flip(tok, 0), tok + "x"} {
				_, err := s.VerifySession(ctx, bad)
				wantCode(t, "VerifySession(bad token)", err, keybridge.EUnauthenticated)
			}

			if err := s.Logout(ctx, tok); err != nil {
				t.Fatalf("Logout: %v", err)
			}
			_, err = s.VerifySession(ctx, tok)
			wantCode(t, "VerifySession after Logout", err, keybridge.EUnauthenticated)
			if err := s.Logout(ctx, tok); err != nil {
				t.Errorf("second Logout = %v, want nil", err)
			}

			expiring := auth.New(f.st, auth.Options{SessionTTL: -time.Second})
			_, old, err := expiring.StartSession(ctx, f.owner, "", "")
			if err != nil {
				t.Fatalf("StartSession: %v", err)
			}
			_, err = s.VerifySession(ctx, old)
			wantCode(t, "VerifySession(expired)", err, keybridge.EUnauthenticated)
		})
	}
}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	s := startService(t, f.st, fastOptions())
	key, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	_, session, err := s.StartSession(ctx, f.owner, "", "")
	if err != nil {
		t.Fatalf("StartSession: %v", err)
	}
	tests := []struct {
		name          string
		authorization string
		cookie        string
		want          keybridge.ActorType
		wantMessage   string
	}{
		{name: "bearer key", authorization: "Bearer " + key, want: keybridge.ActorAPIKey},
		{name: "scheme in lower case", authorization: "bearer " + key, want: keybridge.ActorAPIKey},
		{name: "session cookie", cookie: session, want: keybridge.ActorUser},
		{name: "header wins over cookie", authorization: "Bearer " + key, cookie: session, want: keybridge.ActorAPIKey},
		{name: "nothing", wantMessage: "missing credentials"},
		{name: "bad key", authorization: "Bearer " + flip(key, 5), wantMessage: "invalid API key"},
		{name: "bad key and good cookie", authorization: "Bearer " + flip(key, 5), cookie: session, wantMessage: "invalid API key"},
		{name: "basic auth", authorization: "Basic dXNlcjpwYXNz", wantMessage: `the Authorization header must be "Bearer <API key>"`},
		{name: "bearer alone", authorization: "Bearer", wantMessage: `the Authorization header must be "Bearer <API key>"`},
		{name: "bad cookie", cookie: "nope", wantMessage: "invalid or expired session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/api/v1/users/me", nil)
			if tt.authorization != "" {
				r.Header.Set("Authorization", tt.authorization)
			}
			if tt.cookie != "" {
				r.Header.Set("Cookie", auth.SessionCookie+"="+tt.cookie)
			}
			p, err := s.Authenticate(r)
			if tt.want == "" {
				wantCode(t, "Authenticate", err, keybridge.EUnauthenticated)
				if got := keybridge.ErrorMessage(err); got != tt.wantMessage {
					t.Errorf("Authenticate message = %q, want %q", got, tt.wantMessage)
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if p.Type != tt.want || p.UserID != f.owner.ID {
				t.Errorf("Authenticate = %s of %s, want %s of %s", p.Type, p.UserID, tt.want, f.owner.ID)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	s := startService(t, f.st, fastOptions())
	other := f.addOrg(t, "other")
	member := f.addUser(t, "member@acme.test", "")
	f.join(t, f.org, member, keybridge.RoleMember)

	keyTok, _ := f.newKey(t, f.owner, keybridge.PermProvidersRead|keybridge.PermGatewayInvoke, nil)
	key, err := s.VerifyAPIKey(ctx, keyTok)
	if err != nil {
		t.Fatalf("VerifyAPIKey: %v", err)
	}
	otherOwner := f.addUser(t, "owner@other.test", "")
	f.join(t, other, otherOwner, keybridge.RoleOwner)
	otherTok, _ := newKeyIn(t, f.st, other, otherOwner, keybridge.AllPermissions, nil)
	otherKey, err := s.VerifyAPIKey(ctx, otherTok)
	if err != nil {
		t.Fatalf("VerifyAPIKey: %v", err)
	}
	aiSecret, _ := f.newAIKey(t, keybridge.AIOpenAI)
	ai, err := s.VerifyAISecret(ctx, aiSecret)
	if err != nil {
		t.Fatalf("VerifyAISecret: %v", err)
	}
	session := func(u *keybridge.User) *keybridge.Principal {
		_, tok, err := s.StartSession(ctx, u, "", "")
		if err != nil {
			t.Fatalf("StartSession: %v", err)
		}
		p, err := s.VerifySession(ctx, tok)
		if err != nil {
			t.Fatalf("VerifySession: %v", err)
		}
		return p
	}
	ownerSession, memberSession := session(f.owner), session(member)

	tests := []struct {
		name     string
		p        *keybridge.Principal
		org      *keybridge.Org
		perm     keybridge.Permission
		wantRole keybridge.Role
		wantCode string
	}{
		{"key with the permission", key, f.org, keybridge.PermProvidersRead, keybridge.RoleOwner, ""},
		{"key without the permission", key, f.org, keybridge.PermProvidersWrite, "", keybridge.EForbidden},
		{"key of another org", otherKey, f.org, keybridge.PermProvidersRead, "", keybridge.ENotFound},
		{"key in its own org", otherKey, other, keybridge.PermAuditRead, keybridge.RoleOwner, ""},
		{"AI key invoking", ai, f.org, keybridge.PermGatewayInvoke, "", ""},
		{"AI key reading providers", ai, f.org, keybridge.PermProvidersRead, "", keybridge.EForbidden},
		{"AI key in another org", ai, other, keybridge.PermGatewayInvoke, "", keybridge.ENotFound},
		{"owner session", ownerSession, f.org, keybridge.PermMembersWrite, keybridge.RoleOwner, ""},
		{"member session reading", memberSession, f.org, keybridge.PermProvidersRead, keybridge.RoleMember, ""},
		{"member session writing", memberSession, f.org, keybridge.PermProvidersWrite, "", keybridge.EForbidden},
		{"session in an org it is not in", memberSession, other, keybridge.PermProvidersRead, "", keybridge.ENotFound},
		{"no principal", nil, f.org, keybridge.PermProvidersRead, "", keybridge.EUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role, err := s.Authorize(ctx, tt.p, tt.org, tt.perm)
			if got := keybridge.ErrorCode(err); got != tt.wantCode {
				t.Fatalf("Authorize = %v (code %q), want code %q", err, got, tt.wantCode)
			}
			if role != tt.wantRole {
				t.Errorf("Authorize role = %q, want %q", role, tt.wantRole)
			}
		})
	}

	// Not found for an org the caller may not see names neither its slug
	// nor its ID: the caller knows only the one it sent.
	_, keyErr := s.Authorize(ctx, otherKey, f.org, keybridge.PermProvidersRead)
	_, sessionErr := s.Authorize(ctx, memberSession, other, keybridge.PermProvidersRead)
	for _, err := range []error{keyErr, sessionErr} {
		msg := keybridge.ErrorMessage(err)
		for _, secret := range []string{f.org.Slug, f.org.ID, other.Slug, other.ID} {
			if strings.Contains(msg, secret) {
				t.Errorf("Authorize message = %q, names %q; want one that names no org", msg, secret)
			}
		}
	}

	// A member removed from the org no longer sees it.
	if err := f.st.DeleteMembership(ctx, f.org.ID, member.ID); err != nil {
		t.Fatalf("DeleteMembership: %v", err)
	}
	_, err = s.Authorize(ctx, memberSession, f.org, keybridge.PermProvidersRead)
	wantCode(t, "Authorize after removal", err, keybridge.ENotFound)
}

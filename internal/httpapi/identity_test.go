package httpapi_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// meJSON is GET /users/me.
type meJSON struct {
	User struct {
		ID    string `json:"id"`
		Email string `json:"email"`
		Name  string `json:"name"`
	} `json:"user"`
	Orgs []struct {
		ID          string   `json:"id"`
		Slug        string   `json:"slug"`
		Role        string   `json:"role"`
		Permissions []string `json:"permissions"`
	} `json:"orgs"`
	APIKey *struct {
		ID          string   `json:"id"`
		OrgID       string   `json:"org_id"`
		Permissions []string `json:"permissions"`
		Effective   []string `json:"effective_permissions"`
	} `json:"api_key"`
}

// checkSessionCookie checks the attributes SPEC §2 asks of the cookie.
func checkSessionCookie(t *testing.T, resp *http.Response, wantSecure bool) {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name != auth.SessionCookie {
			continue
		}
		if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure != wantSecure || c.Path != "/" {
			t.Errorf("session cookie HttpOnly=%v SameSite=%v Secure=%v Path=%q; want HttpOnly, Lax, Secure=%v, /",
				c.HttpOnly, c.SameSite, c.Secure, c.Path, wantSecure)
		}
		return
	}
	t.Errorf("no %s cookie set", auth.SessionCookie)
}

func TestSetup(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			e := newEnvWith(t, eng.New(t), envOptions{Empty: true})
			ctx := context.Background()
			body := map[string]string{"org": "acme", "email": "Admin@Acme.test", "name": "Ada", "password": "correct horse battery"}

			// Before any token exists, setup is not there.
			body["token"] = "anything"
			resp, raw := e.do("POST", "/api/v1/setup", "", body)
			wantError(t, resp, raw, keybridge.ENotFound)

			token, err := httpapi.NewSetupToken(ctx, e.Store)
			if err != nil || len(token) < 32 {
				t.Fatalf("NewSetupToken = %q, %v; want a long token", token, err)
			}
			resp, raw = e.do("POST", "/api/v1/setup", "", body)
			wantError(t, resp, raw, keybridge.ENotFound)

			body["token"] = token
			for field, bad := range map[string]string{"org": "Not A Slug", "email": "nope", "password": "short"} {
				b := map[string]string{}
				for k, v := range body {
					b[k] = v
				}
				b[field] = bad
				resp, raw = e.do("POST", "/api/v1/setup", "", b)
				if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields[field] == "" {
					t.Errorf("setup with bad %s: error names fields %v", field, got.Error.Fields)
				}
			}

			resp, raw = e.do("POST", "/api/v1/setup", "", body)
			wantStatus(t, resp, raw, http.StatusCreated)
			checkSessionCookie(t, resp, false)
			s := e.sessionFrom(resp, raw)
			resp, raw = s.do("GET", "/api/v1/users/me", nil)
			wantStatus(t, resp, raw, http.StatusOK)
			me := decodeAs[meJSON](t, raw)
			if me.User.Email != "admin@acme.test" || me.User.Name != "Ada" || len(me.Orgs) != 1 || me.Orgs[0].Slug != "acme" || me.Orgs[0].Role != "owner" || me.APIKey != nil {
				t.Errorf("after setup, /users/me = %s", raw)
			}
			if got := e.auditActions(me.Orgs[0].ID); !slices.Equal(got, []string{"setup"}) {
				t.Errorf("audit actions = %v, want [setup]", got)
			}

			// Once done, setup answers 404, with the old token too.
			resp, raw = e.do("POST", "/api/v1/setup", "", body)
			wantError(t, resp, raw, keybridge.ENotFound)
			if token, err := httpapi.NewSetupToken(ctx, e.Store); err != nil || token != "" {
				t.Errorf("NewSetupToken after setup = %q, %v; want none", token, err)
			}
			// The owner can log in with the password.
			e.login("admin@acme.test", "correct horse battery")
		})
	}
}

// TestSetupRace: setups racing with the one valid token, each for a
// different org and owner, end with exactly one org.
func TestSetupRace(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) { testSetupRace(t, newEnvWith(t, eng.New(t), envOptions{Empty: true})) })
	}
}

func testSetupRace(t *testing.T, e *env) {
	token, err := httpapi.NewSetupToken(context.Background(), e.Store)
	if err != nil {
		t.Fatal(err)
	}
	const racers = 6
	codes := make([]int, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			resp, _ := e.do("POST", "/api/v1/setup", "", map[string]string{"token": token,
				"org": fmt.Sprintf("org-%d", i), "email": fmt.Sprintf("owner%d@acme.test", i), "name": "Owner", "password": "correct horse battery"})
			codes[i] = resp.StatusCode
		})
	}
	close(start)
	wg.Wait()
	created := 0
	for _, c := range codes {
		switch c {
		case http.StatusCreated:
			created++
		case http.StatusNotFound:
		default:
			t.Errorf("racing setup answered %d, want 201 or 404", c)
		}
	}
	if n, err := e.Store.CountOrgs(context.Background()); err != nil || n != 1 || created != 1 {
		t.Errorf("after %d racing setups: %d answered 201 and %d orgs exist (%v); want exactly 1 and 1", racers, created, n, err)
	}
}

func TestSetupFunction(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		res, err := httpapi.Setup(ctx, e.Store, httpapi.SetupInput{Org: "beta", Email: "boss@beta.test", WithKey: true})
		if err != nil {
			t.Fatalf("Setup: %v", err)
		}
		if res.User.Name != "boss" || res.Key == nil || res.Key.Permissions != keybridge.AllPermissions {
			t.Errorf("Setup = user %+v key %+v; want name boss and a key with every permission", res.User, res.Key)
		}
		if !e.works(res.KeyToken) {
			t.Error("the setup key does not work")
		}
		for _, in := range []httpapi.SetupInput{
			{Org: "beta", Email: "other@beta.test"},
			{Org: "gamma", Email: "boss@beta.test"},
		} {
			if _, err := httpapi.Setup(ctx, e.Store, in); !keybridge.IsCode(err, keybridge.EConflict) {
				t.Errorf("Setup(%+v) = %v, want conflict", in, err)
			}
		}
		if _, err := httpapi.Setup(ctx, e.Store, httpapi.SetupInput{Org: "Bad Slug", Email: "x@y.test"}); !keybridge.IsCode(err, keybridge.EInvalid) {
			t.Errorf("Setup with a bad slug = %v, want invalid_argument", err)
		}
	})
}

func TestLoginLogout(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		for name, body := range map[string]map[string]string{
			"wrong password": {"email": e.Owner.Email, "password": "wrong password!"},
			"unknown email":  {"email": "nobody@acme.test", "password": e.OwnerPassword},
		} {
			resp, raw := e.do("POST", "/api/v1/auth/login", "", body)
			if resp.StatusCode != 401 {
				t.Errorf("%s: status %d, want 401", name, resp.StatusCode)
			}
			wantError(t, resp, raw, keybridge.EUnauthenticated)
			if len(resp.Cookies()) != 0 {
				t.Errorf("%s: a failed login set a cookie", name)
			}
		}
		resp, raw := e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": e.Owner.Email})
		wantError(t, resp, raw, keybridge.EInvalid)

		resp, raw = e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": strings.ToUpper(e.Owner.Email), "password": e.OwnerPassword})
		wantStatus(t, resp, raw, http.StatusOK)
		checkSessionCookie(t, resp, false)
		s := e.sessionFrom(resp, raw)
		if strings.Contains(string(s.User), "password") {
			t.Errorf("login answer shows a password field: %s", s.User)
		}
		resp, raw = s.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)

		resp, raw = s.do("POST", "/api/v1/auth/logout", nil)
		wantStatus(t, resp, raw, http.StatusNoContent)
		cleared := false
		for _, c := range resp.Cookies() {
			cleared = cleared || (c.Name == auth.SessionCookie && c.MaxAge < 0)
		}
		if !cleared {
			t.Error("logout did not clear the cookie")
		}
		resp, raw = s.do("GET", "/api/v1/users/me", nil)
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		// Logging out with no session is fine too.
		resp, raw = e.do("POST", "/api/v1/auth/logout", "", nil)
		wantStatus(t, resp, raw, http.StatusNoContent)

		// Over TLS the cookie is Secure.
		tlsSrv := httptest.NewTLSServer(e.API)
		defer tlsSrv.Close()
		req, _ := http.NewRequest("POST", tlsSrv.URL+"/api/v1/auth/login", strings.NewReader(`{"email":"`+e.Owner.Email+`","password":"`+e.OwnerPassword+`"}`))
		req.Header.Set("Content-Type", "application/json")
		tresp, err := tlsSrv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		tresp.Body.Close()
		checkSessionCookie(t, tresp, true)

		// Behind a proxy that ends TLS, the public URL says https.
		proxied := newEnvWith(t, storetest.SQLite(t), envOptions{Config: httpapi.Config{PublicURL: "https://keybridge.example.test"}})
		resp, raw = proxied.do("POST", "/api/v1/auth/login", "", map[string]string{"email": proxied.Owner.Email, "password": proxied.OwnerPassword})
		wantStatus(t, resp, raw, http.StatusOK)
		checkSessionCookie(t, resp, true)

		// Failed logins are rate limited.
		limited := false
		for i := 0; i < 12 && !limited; i++ {
			resp, raw = e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": e.Owner.Email, "password": "guess " + time.Now().String()})
			if resp.StatusCode == http.StatusTooManyRequests {
				wantError(t, resp, raw, keybridge.ERateLimited)
				limited = true
			}
		}
		if !limited {
			t.Error("12 failed logins for one account from one IP were never rate limited")
		}
	})
}

func TestAcceptInvite(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		resp, raw := e.do("POST", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, map[string]string{"email": "New@Acme.test", "name": "Newt", "role": "member"})
		wantStatus(t, resp, raw, http.StatusCreated)
		inv := decodeAs[struct {
			UserID string `json:"user_id"`
			Email  string `json:"email"`
			Role   string `json:"role"`
			Token  string `json:"invite_token"`
			URL    string `json:"invite_url"`
		}](t, raw)
		if inv.Email != "new@acme.test" || inv.Role != "member" || inv.Token == "" || inv.URL != e.Server.URL+"/invite?token="+inv.Token {
			t.Fatalf("POST members = %s", raw)
		}
		resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if !strings.Contains(string(raw), `"invited":true`) {
			t.Errorf("member list does not show the invitation: %s", raw)
		}

		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": inv.Token + "x", "password": "a good password"})
		wantError(t, resp, raw, keybridge.ENotFound)
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": inv.Token, "password": "short"})
		wantError(t, resp, raw, keybridge.EInvalid)
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": inv.Token, "password": "a good password", "name": "Newton"})
		wantStatus(t, resp, raw, http.StatusOK)
		checkSessionCookie(t, resp, false)
		s := e.sessionFrom(resp, raw)
		resp, raw = s.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if me := decodeAs[meJSON](t, raw); me.User.Name != "Newton" || len(me.Orgs) != 1 || me.Orgs[0].Role != "member" {
			t.Errorf("after accepting, /users/me = %s", raw)
		}
		// Single use.
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": inv.Token, "password": "another password"})
		wantError(t, resp, raw, keybridge.ENotFound)
		e.login("new@acme.test", "a good password")
		if got := e.auditActions(e.Org.ID); !slices.Contains(got, "member.accept_invite") || !slices.Contains(got, "member.create") {
			t.Errorf("audit actions = %v, want member.create and member.accept_invite", got)
		}
		// The new account has the member ID the inviter was given.
		if me := decodeAs[meJSON](t, s.User); me.User.ID != "" && me.User.ID != inv.UserID {
			t.Errorf("accepted user's ID = %s, want the invited member ID %s", me.User.ID, inv.UserID)
		}

		// An invitation lasts seven days; an expired one does not work.
		resp, raw = e.do("POST", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, map[string]string{"email": "late@acme.test", "role": "member"})
		wantStatus(t, resp, raw, http.StatusCreated)
		token := decodeAs[struct {
			Token string `json:"invite_token"`
		}](t, raw).Token
		h := sha256.Sum256([]byte(token))
		late, err := e.Store.InvitationByHash(ctx, h[:])
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(late.ExpiresAt); d < keybridge.InvitationTTL-time.Minute || d > keybridge.InvitationTTL {
			t.Errorf("invitation expires in %v, want %v", d, keybridge.InvitationTTL)
		}
		late.ExpiresAt = time.Now().Add(-time.Minute)
		if err := e.Store.UpdateInvitation(ctx, late); err != nil {
			t.Fatal(err)
		}
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": token, "password": "a good password"})
		wantError(t, resp, raw, keybridge.ENotFound)
	})
}

func TestMe(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		memberID, memberKey := e.addMember(keybridge.RoleMember)
		other := e.otherOrg()
		// The member also belongs to the other org, which its key must not show.
		err := e.Store.CreateMembership(context.Background(), &keybridge.Membership{OrgID: other.Org.ID, UserID: memberID, Role: keybridge.RoleAdmin})
		if err != nil {
			t.Fatal(err)
		}
		resp, raw := e.do("GET", "/api/v1/users/me", memberKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		me := decodeAs[meJSON](t, raw)
		wantPerms := keybridge.RoleMember.Permissions().Names()
		if me.User.ID != memberID || len(me.Orgs) != 1 || me.Orgs[0].ID != e.Org.ID || me.Orgs[0].Role != "member" ||
			!slices.Equal(me.Orgs[0].Permissions, wantPerms) || me.APIKey == nil || me.APIKey.OrgID != e.Org.ID ||
			!slices.Equal(me.APIKey.Effective, wantPerms) {
			t.Errorf("member key's /users/me = %s", raw)
		}
		s := e.login(e.userEmail(memberID), memberPassword)
		resp, raw = s.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		me = decodeAs[meJSON](t, raw)
		if len(me.Orgs) != 2 || me.APIKey != nil {
			t.Errorf("session's /users/me = %s, want both orgs and no api_key", raw)
		}
	})
}

// TestHiddenOrgAnswersLikeMissing: an org the caller may not see answers
// exactly like one that does not exist, message included, wherever the org
// is named — in the path or in the body.
func TestHiddenOrgAnswersLikeMissing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		other := e.otherOrg()
		requests := []struct {
			method, path string
			body         func(ref string) any
		}{
			{"GET", "/api/v1/orgs/%s", nil},
			{"GET", "/api/v1/orgs/%s/providers", nil},
			{"GET", "/api/v1/orgs/%s/members", nil},
			{"POST", "/api/v1/api-keys", func(ref string) any {
				return map[string]any{"org": ref, "name": "k", "permissions": []string{"providers:read"}}
			}},
			{"POST", "/api/v1/users/me/credentials", func(ref string) any {
				return map[string]any{"org": ref, "provider": "openai", "api_key": "sk-hidden-org-test"}
			}},
		}
		for _, req := range requests {
			for _, ref := range []string{other.Org.Slug, other.Org.ID, "no-such-org", "01a20000-0000-7000-8000-000000000000"} {
				path, body := req.path, any(nil)
				if req.body != nil {
					body = req.body(ref)
				} else {
					path = fmt.Sprintf(req.path, ref)
				}
				resp, raw := e.do(req.method, path, e.OwnerKey, body)
				got := wantError(t, resp, raw, keybridge.ENotFound)
				if want := fmt.Sprintf("org %q not found", ref); got.Error.Message != want {
					t.Errorf("%s %s naming %s: message %q, want %q", req.method, req.path, ref, got.Error.Message, want)
				}
			}
		}
	})
}

// TestInviteVoidOnceRemoved checks that an invitation is void once it is
// withdrawn (the pending member removed), even after the address is invited
// again: only the newest link works.
func TestInviteVoidOnceRemoved(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		type invite struct {
			UserID string `json:"user_id"`
			Token  string `json:"invite_token"`
		}
		addMember := func(org, key string) invite {
			t.Helper()
			resp, raw := e.do("POST", "/api/v1/orgs/"+org+"/members", key, map[string]string{"email": "drifter@x.test", "role": "member"})
			wantStatus(t, resp, raw, http.StatusCreated)
			return decodeAs[invite](t, raw)
		}
		accept := func(token string) (*http.Response, []byte) {
			return e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": token, "password": "a good password"})
		}
		kept := addMember(e.Org.Slug, e.OwnerKey)
		resp, raw := e.do("DELETE", "/api/v1/orgs/"+e.Org.Slug+"/members/"+kept.UserID, e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusNoContent)

		// Withdrawn: the kept link no longer works.
		resp, raw = accept(kept.Token)
		wantError(t, resp, raw, keybridge.ENotFound)

		// Another org invites the same person; then the first invites
		// them again: the kept link stays void.
		other := e.otherOrg()
		theirs := addMember(other.Org.Slug, other.OwnerKey)
		again := addMember(e.Org.Slug, e.OwnerKey)
		resp, raw = accept(kept.Token)
		wantError(t, resp, raw, keybridge.ENotFound)

		// The other org's invitation works, and sets the new account's
		// password; the first org's new one then needs that password.
		resp, raw = accept(theirs.Token)
		wantStatus(t, resp, raw, http.StatusOK)
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": again.Token, "password": "not the password"})
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		resp, raw = accept(again.Token)
		wantStatus(t, resp, raw, http.StatusOK)
	})
}

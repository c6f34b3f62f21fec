package httpapi_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

const passwordPath = "/api/v1/users/me/password"

// TestChangePassword: POST /users/me/password sets or changes the caller's
// password, needs the current one when there is one, ends the user's other
// sessions and keeps the calling one.
func TestChangePassword(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		userID, memberKey := e.addMember(keybridge.RoleMember)
		email := e.userEmail(userID)
		first := e.login(email, memberPassword)
		second := e.login(email, memberPassword)

		for name, c := range map[string]struct {
			body map[string]string
			code string
		}{
			"no current password": {map[string]string{"new_password": "brand-new-pass"}, keybridge.EInvalid},
			"short new password":  {map[string]string{"current_password": memberPassword, "new_password": "short"}, keybridge.EInvalid},
			"wrong current":       {map[string]string{"current_password": "not it at all", "new_password": "brand-new-pass"}, keybridge.EForbidden},
		} {
			resp, raw := first.do("POST", passwordPath, c.body)
			got := wantError(t, resp, raw, c.code)
			if name == "wrong current" && got.Error.Fields["current_password"] == "" {
				t.Errorf("%s: %s; want fields.current_password", name, raw)
			}
		}
		// A session needs its CSRF token here as everywhere.
		resp, raw := e.send("POST", passwordPath, map[string]string{"current_password": memberPassword, "new_password": "brand-new-pass"},
			func(r *http.Request) { r.AddCookie(&http.Cookie{Name: first.Cookie.Name, Value: first.Cookie.Value}) })
		wantError(t, resp, raw, keybridge.EForbidden)
		// A key narrower than every permission may not set a password.
		resp, raw = e.do("POST", passwordPath, memberKey, map[string]string{"current_password": memberPassword, "new_password": "brand-new-pass"})
		wantError(t, resp, raw, keybridge.EForbidden)

		resp, raw = first.do("POST", passwordPath, map[string]string{"current_password": memberPassword, "new_password": "brand-new-pass"})
		wantStatus(t, resp, raw, http.StatusNoContent)
		// The calling session stays; the other one ended.
		resp, raw = first.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		resp, raw = second.do("GET", "/api/v1/users/me", nil)
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		resp, raw = e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": email, "password": memberPassword})
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		e.login(email, "brand-new-pass")
		if got := e.auditActions(e.Org.ID); !slices.Contains(got, "user.password_change") {
			t.Errorf("audit actions = %v, want user.password_change", got)
		}
	})
}

// TestSetPasswordWithKey: an owner made by `keybridge setup` without a
// password sets one with the owner key, then signs in; every session of
// theirs ends, since a key has none to keep.
func TestSetPasswordWithKey(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		other := e.otherOrg() // its owner has no password and an all-permission key
		resp, raw := e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": other.Owner.Email, "password": "chosen-password-1"})
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		resp, raw = e.do("POST", passwordPath, other.OwnerKey, map[string]string{"new_password": "chosen-password-1"})
		wantStatus(t, resp, raw, http.StatusNoContent)
		s := e.login(other.Owner.Email, "chosen-password-1")
		// Now that one is set, the key must give it to change it.
		resp, raw = e.do("POST", passwordPath, other.OwnerKey, map[string]string{"new_password": "chosen-password-2"})
		wantError(t, resp, raw, keybridge.EInvalid)
		resp, raw = e.do("POST", passwordPath, other.OwnerKey, map[string]string{"current_password": "chosen-password-1", "new_password": "chosen-password-2"})
		wantStatus(t, resp, raw, http.StatusNoContent)
		resp, raw = s.do("GET", "/api/v1/users/me", nil)
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		e.login(other.Owner.Email, "chosen-password-2")
		found := false
		for _, a := range e.auditActions(other.Org.ID) {
			found = found || a == "user.password_change"
		}
		if !found {
			t.Errorf("audit actions = %v, want user.password_change", e.auditActions(other.Org.ID))
		}
	})
}

// TestChangePasswordRateLimited: wrong current passwords count like
// failed logins, so the endpoint is no way around their limits.
func TestChangePasswordRateLimited(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		s := e.login(e.Owner.Email, e.OwnerPassword)
		limited := false
		for i := 0; i < 12 && !limited; i++ {
			resp, raw := s.do("POST", passwordPath, map[string]string{"current_password": "wrong guess", "new_password": "brand-new-pass"})
			if resp.StatusCode == http.StatusTooManyRequests {
				wantError(t, resp, raw, keybridge.ERateLimited)
				limited = true
			} else {
				wantError(t, resp, raw, keybridge.EForbidden)
			}
		}
		if !limited {
			t.Error("12 wrong current passwords from one IP were never rate limited")
		}
	})
}

// TestCSRFTokenNotStored: the store holds no session's CSRF token, yet
// the token from login keeps working.
func TestCSRFTokenNotStored(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		s := e.login(e.Owner.Email, e.OwnerPassword)
		h := sha256.Sum256([]byte(s.Cookie.Value))
		// Touches the session's row only if its CSRF column is empty.
		storetest.RawOf(t, e.Store).Exec(t, `UPDATE sessions SET ip = ip WHERE token_hash = ? AND csrf_token = ''`, h[:])
		resp, raw := s.do("PATCH", "/api/v1/orgs/"+e.Org.Slug, map[string]string{"name": "Acme Two"})
		wantStatus(t, resp, raw, http.StatusOK)
		wrong := *s
		wrong.CSRF = strings.ToUpper(s.CSRF[:8]) + strings.ToLower(s.CSRF[8:]) + "x"
		resp, raw = wrong.do("PATCH", "/api/v1/orgs/"+e.Org.Slug, map[string]string{"name": "Acme Three"})
		wantError(t, resp, raw, keybridge.EForbidden)
	})
}

// TestStrangerCannotLockOwnerOut drives the login route as clients from
// two addresses do: a stranger hammering wrong passwords — some claiming
// the owner's address in X-Forwarded-For, which is not trusted — is slowed
// down, and the owner still signs in from theirs.
func TestStrangerCannotLockOwnerOut(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		login := func(remote, forwarded, password string) *httptest.ResponseRecorder {
			t.Helper()
			body, _ := json.Marshal(map[string]string{"email": e.Owner.Email, "password": password})
			req := httptest.NewRequest("POST", "/api/v1/auth/login", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.RemoteAddr = remote
			if forwarded != "" {
				req.Header.Set("X-Forwarded-For", forwarded)
			}
			rec := httptest.NewRecorder()
			e.API.ServeHTTP(rec, req)
			return rec
		}
		const stranger, owner = "203.0.113.7:40000", "198.51.100.2:50000"
		limited := 0
		for i := range 30 {
			forwarded := ""
			if i%2 == 1 {
				forwarded = "198.51.100.2"
			}
			switch rec := login(stranger, forwarded, "guess-"+strconv.Itoa(i)); rec.Code {
			case http.StatusTooManyRequests:
				limited++
				if rec.Header().Get("Retry-After") == "" {
					t.Errorf("429 without Retry-After: %s", rec.Body)
				}
			case http.StatusUnauthorized:
			default:
				t.Fatalf("stranger's guess %d = %d %s", i+1, rec.Code, rec.Body)
			}
		}
		if limited == 0 {
			t.Error("30 wrong passwords from one address were never rate limited")
		}
		if rec := login(owner, "", e.OwnerPassword); rec.Code != http.StatusOK {
			t.Errorf("owner's login from their address after the stranger's guesses = %d %s, want 200", rec.Code, rec.Body)
		}
		if rec := login(stranger, "198.51.100.2", e.OwnerPassword); rec.Code != http.StatusTooManyRequests {
			t.Errorf("stranger's address with the right password and a forged X-Forwarded-For = %d, want 429", rec.Code)
		}
	})
}

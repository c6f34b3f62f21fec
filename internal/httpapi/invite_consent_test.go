package httpapi_test

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keybridge/keybridge/internal/keybridge"
)

// inviteJSON is the answer of POST .../members.
type inviteJSON struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
	Role   string `json:"role"`
	Token  string `json:"invite_token"`
	URL    string `json:"invite_url"`
}

// TestInviteExistingUserAnswersLikeNew: the owner of an unrelated org
// inviting an address learns nothing of whether it has an account, and the
// account is not added — not even as owner — until its user accepts.
func TestInviteExistingUserAnswersLikeNew(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		stranger := e.otherOrg()
		base := "/api/v1/orgs/" + stranger.Org.Slug + "/members"
		victim := e.Owner // an owner of acme, with a password
		invite := func(email, name string) (inviteJSON, map[string]any) {
			t.Helper()
			before := time.Now().Add(-time.Second)
			resp, raw := e.do("POST", base, stranger.OwnerKey, map[string]string{"email": email, "name": name, "role": "owner"})
			wantStatus(t, resp, raw, http.StatusCreated)
			var fields map[string]any
			if err := json.Unmarshal(raw, &fields); err != nil {
				t.Fatal(err)
			}
			inv := decodeAs[inviteJSON](t, raw)
			// The ID is fresh: its UUIDv7 time is now, not the account's
			// creation, so even the ID's shape says nothing.
			id, err := uuid.Parse(inv.UserID)
			if err != nil || id.Version() != 7 {
				t.Fatalf("user_id %q: want a UUIDv7 (%v)", inv.UserID, err)
			}
			if ts := time.Unix(id.Time().UnixTime()); ts.Before(before) {
				t.Errorf("user_id %s dates from %v, before the invitation", inv.UserID, ts)
			}
			return inv, fields
		}
		existing, existingFields := invite(strings.ToUpper(victim.Email), "Whoever")
		fresh, freshFields := invite("nobody-yet@new.test", "Someone")

		if got, want := slices.Sorted(maps.Keys(existingFields)), slices.Sorted(maps.Keys(freshFields)); !slices.Equal(got, want) {
			t.Errorf("fields for an existing account %v, for a new address %v; want the same", got, want)
		}
		for _, inv := range []inviteJSON{existing, fresh} {
			if inv.Token == "" || len(inv.Token) != len(fresh.Token) || inv.URL != e.Server.URL+"/invite?token="+inv.Token || inv.Role != "owner" {
				t.Errorf("invitation %+v: want a token, its URL and role owner", inv)
			}
		}
		if existing.UserID == victim.ID || existing.Email != victim.Email {
			t.Errorf("invitation of an existing account = %+v; want its own ID (not %s) and the address", existing, victim.ID)
		}

		// The member list shows an invited member with the inviter's name.
		resp, raw := e.do("GET", base, stranger.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		var listed *memberJSON
		for _, m := range decodeAs[struct{ Items []memberJSON }](t, raw).Items {
			if m.Email == victim.Email {
				listed = &m
			}
		}
		if listed == nil || !listed.Invited || listed.Name != "Whoever" || listed.UserID != existing.UserID {
			t.Errorf("member list entry for the invited account = %+v; want invited, named Whoever, ID %s", listed, existing.UserID)
		}
		if strings.Contains(string(raw), victim.Name) || strings.Contains(string(raw), victim.ID) {
			t.Errorf("member list shows the account's real name or ID: %s", raw)
		}

		// Pending, it grants nothing: the org is invisible to the victim.
		victimSession := e.login(victim.Email, e.OwnerPassword)
		for _, do := range []func(string, string, any) (*http.Response, []byte){
			func(m, p string, b any) (*http.Response, []byte) { return e.do(m, p, e.OwnerKey, b) },
			victimSession.do,
		} {
			resp, raw = do("GET", "/api/v1/users/me", nil)
			wantStatus(t, resp, raw, http.StatusOK)
			for _, o := range decodeAs[meJSON](t, raw).Orgs {
				if o.ID == stranger.Org.ID {
					t.Errorf("/users/me lists the org that only invited: %s", raw)
				}
			}
			resp, raw = do("GET", "/api/v1/orgs", nil)
			wantStatus(t, resp, raw, http.StatusOK)
			if strings.Contains(string(raw), stranger.Org.ID) {
				t.Errorf("GET /orgs lists the org that only invited: %s", raw)
			}
			for _, path := range []string{"/api/v1/orgs/" + stranger.Org.Slug, base, "/api/v1/orgs/" + stranger.Org.Slug + "/providers"} {
				resp, raw = do("GET", path, nil)
				wantError(t, resp, raw, keybridge.ENotFound)
			}
		}

		// Whoever holds the link cannot set or replace the account's
		// password, nor sign in as it.
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": existing.Token, "password": "attacker-chosen-1"})
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": existing.Token})
		wantError(t, resp, raw, keybridge.EInvalid)
		resp, raw = e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": victim.Email, "password": "attacker-chosen-1"})
		wantError(t, resp, raw, keybridge.EUnauthenticated)
		// A session without its CSRF token vouches for nothing.
		resp, raw = e.send("POST", "/api/v1/auth/accept-invite", map[string]string{"token": existing.Token}, func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: victimSession.Cookie.Name, Value: victimSession.Cookie.Value})
		})
		wantError(t, resp, raw, keybridge.EInvalid)
		// Signed in as someone else: refused.
		otherUser, _ := e.addMember(keybridge.RoleMember)
		resp, raw = e.login(e.userEmail(otherUser), memberPassword).do("POST", "/api/v1/auth/accept-invite", map[string]string{"token": existing.Token})
		wantError(t, resp, raw, keybridge.EForbidden)

		// The victim accepts, signed in, with no password: they join with
		// the invitation's role, under their own ID, and keep their session.
		resp, raw = victimSession.do("POST", "/api/v1/auth/accept-invite", map[string]string{"token": existing.Token})
		wantStatus(t, resp, raw, http.StatusOK)
		if got := decodeAs[struct {
			CSRF string `json:"csrf_token"`
		}](t, raw).CSRF; got != victimSession.CSRF {
			t.Errorf("accept signed in: csrf_token %q, want the session's %q", got, victimSession.CSRF)
		}
		resp, raw = victimSession.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		var role string
		for _, o := range decodeAs[meJSON](t, raw).Orgs {
			if o.ID == stranger.Org.ID {
				role = o.Role
			}
		}
		if role != "owner" {
			t.Errorf("after accepting, role in the org = %q, want owner: %s", role, raw)
		}
		resp, raw = e.do("GET", base, stranger.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if !strings.Contains(string(raw), victim.ID) || strings.Contains(string(raw), existing.UserID) {
			t.Errorf("after accepting, the member list = %s; want the account under its own ID", raw)
		}
		// Single use.
		resp, raw = victimSession.do("POST", "/api/v1/auth/accept-invite", map[string]string{"token": existing.Token})
		wantError(t, resp, raw, keybridge.ENotFound)
		// The password never changed.
		e.login(victim.Email, e.OwnerPassword)
	})
}

// TestAcceptInviteWithCurrentPassword: by the link, not signed in, an
// existing account accepts with its current password, which stays.
func TestAcceptInviteWithCurrentPassword(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		other := e.otherOrg()
		userID, _ := e.addMember(keybridge.RoleMember)
		email := e.userEmail(userID)
		resp, raw := e.do("POST", "/api/v1/orgs/"+other.Org.Slug+"/members", other.OwnerKey, map[string]string{"email": email, "role": "admin"})
		wantStatus(t, resp, raw, http.StatusCreated)
		inv := decodeAs[inviteJSON](t, raw)
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": inv.Token, "password": memberPassword})
		wantStatus(t, resp, raw, http.StatusOK)
		s := e.sessionFrom(resp, raw)
		resp, raw = s.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		me := decodeAs[meJSON](t, raw)
		if me.User.ID != userID || len(me.Orgs) != 2 {
			t.Errorf("after accepting: /users/me = %s; want %s in both orgs", raw, userID)
		}
		e.login(email, memberPassword)

		// An account with keys but no password must set one first.
		resp, raw = e.do("POST", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, map[string]string{"email": other.Owner.Email, "role": "member"})
		wantStatus(t, resp, raw, http.StatusCreated)
		inv = decodeAs[inviteJSON](t, raw)
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": inv.Token, "password": "would-take-over-1"})
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("POST", "/api/v1/auth/login", "", map[string]string{"email": other.Owner.Email, "password": "would-take-over-1"})
		wantError(t, resp, raw, keybridge.EUnauthenticated)
	})
}

// TestInvitationRules: re-inviting renews, the invitation's role is the
// one given (owner only by owners, also when changed while pending), an
// invited owner is no owner for the last-owner rule, and withdrawing an
// invitation voids its link.
func TestInvitationRules(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		base := "/api/v1/orgs/" + e.Org.Slug + "/members"
		invite := func(key, email, name, role string) inviteJSON {
			t.Helper()
			resp, raw := e.do("POST", base, key, map[string]string{"email": email, "name": name, "role": role})
			wantStatus(t, resp, raw, http.StatusCreated)
			return decodeAs[inviteJSON](t, raw)
		}
		accept := func(token string) (*http.Response, []byte) {
			return e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": token, "password": "a good password"})
		}

		first := invite(adminKey, "pat@acme.test", "Pat", "member")
		again := invite(adminKey, "pat@acme.test", "Patricia", "admin")
		if again.UserID != first.UserID || again.Token == first.Token {
			t.Errorf("re-invitation = %+v; want the same member ID %s and a new token", again, first.UserID)
		}
		resp, raw := accept(first.Token)
		wantError(t, resp, raw, keybridge.ENotFound)

		// Owner invitations are for owners, also when changed while pending.
		resp, raw = e.do("POST", base, adminKey, map[string]string{"email": "pat@acme.test", "role": "owner"})
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("PATCH", base+"/"+again.UserID, adminKey, map[string]string{"role": "owner"})
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("PATCH", base+"/"+again.UserID, adminKey, map[string]string{"role": "member"})
		wantStatus(t, resp, raw, http.StatusOK)
		if m := decodeAs[memberJSON](t, raw); !m.Invited || m.Role != "member" || m.Name != "Patricia" {
			t.Errorf("PATCH of a pending member = %s", raw)
		}
		resp, raw = accept(again.Token)
		wantStatus(t, resp, raw, http.StatusOK)
		resp, raw = e.sessionFrom(resp, raw).do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, raw, http.StatusOK)
		if me := decodeAs[meJSON](t, raw); len(me.Orgs) != 1 || me.Orgs[0].Role != "member" || me.User.Name != "Patricia" {
			t.Errorf("after accepting: /users/me = %s; want a member named Patricia", raw)
		}
		resp, raw = e.do("POST", base, adminKey, map[string]string{"email": "pat@acme.test", "role": "member"})
		wantError(t, resp, raw, keybridge.EConflict)

		// An invited owner does not count as an owner.
		co := invite(e.OwnerKey, "co-owner@acme.test", "", "owner")
		resp, raw = e.do("DELETE", base+"/"+e.Owner.ID, e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.EConflict)
		resp, raw = e.do("PATCH", base+"/"+e.Owner.ID, e.OwnerKey, map[string]string{"role": "admin"})
		wantError(t, resp, raw, keybridge.EConflict)
		// Only owners withdraw an owner invitation; withdrawn, it is void.
		resp, raw = e.do("DELETE", base+"/"+co.UserID, adminKey, nil)
		wantError(t, resp, raw, keybridge.EForbidden)
		resp, raw = e.do("DELETE", base+"/"+co.UserID, e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusNoContent)
		resp, raw = accept(co.Token)
		wantError(t, resp, raw, keybridge.ENotFound)
		resp, raw = e.do("DELETE", base+"/"+co.UserID, e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound)

		// Another org's pending member is not reachable from here.
		other := e.otherOrg()
		resp, raw = e.do("POST", "/api/v1/orgs/"+other.Org.Slug+"/members", other.OwnerKey, map[string]string{"email": "theirs@x.test", "role": "member"})
		wantStatus(t, resp, raw, http.StatusCreated)
		theirs := decodeAs[inviteJSON](t, raw)
		resp, raw = e.do("DELETE", base+"/"+theirs.UserID, e.OwnerKey, nil)
		wantError(t, resp, raw, keybridge.ENotFound)
		resp, raw = e.do("PATCH", base+"/"+theirs.UserID, e.OwnerKey, map[string]string{"role": "admin"})
		wantError(t, resp, raw, keybridge.ENotFound)
	})
}

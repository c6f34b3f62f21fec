package httpapi_test

import (
	"context"
	"crypto/sha256"
	"net/http"
	"reflect"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TestInvitationNeedsInviterAuthority: an invitation gives its role only
// while whoever last set that role (invited, re-invited or changed it) may
// still grant it. Demoted below it or removed from the org, the inviter's
// invitations answer like an unknown token and make nobody a member; one
// renewed or changed by someone who may grant the role works.
func TestInvitationNeedsInviterAuthority(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		base := "/api/v1/orgs/" + e.Org.Slug + "/members"
		invite := func(t *testing.T, key, email, role string) inviteJSON {
			t.Helper()
			resp, raw := e.do("POST", base, key, map[string]string{"email": email, "role": role})
			wantStatus(t, resp, raw, http.StatusCreated)
			return decodeAs[inviteJSON](t, raw)
		}
		setRole := func(t *testing.T, key, id, role string) {
			t.Helper()
			resp, raw := e.do("PATCH", base+"/"+id, key, map[string]string{"role": role})
			wantStatus(t, resp, raw, http.StatusOK)
		}
		remove := func(t *testing.T, userID string) {
			t.Helper()
			resp, raw := e.do("DELETE", base+"/"+userID, e.OwnerKey, nil)
			wantStatus(t, resp, raw, http.StatusNoContent)
		}
		accept := func(token string) (*http.Response, []byte) {
			return e.do("POST", "/api/v1/auth/accept-invite", "", map[string]string{"token": token, "password": "a good password"})
		}
		// What an unknown token answers: a void invitation answers the same.
		resp, raw := accept("not-an-invitation")
		unknown := wantError(t, resp, raw, keybridge.ENotFound)
		wantVoid := func(t *testing.T, inv inviteJSON) {
			t.Helper()
			resp, raw := accept(inv.Token)
			if got := wantError(t, resp, raw, keybridge.ENotFound); !reflect.DeepEqual(got, unknown) {
				t.Errorf("accept-invite = %+v, want what an unknown token answers, %+v", got, unknown)
			}
			resp, raw = e.do("GET", base, e.OwnerKey, nil)
			wantStatus(t, resp, raw, http.StatusOK)
			for _, m := range decodeAs[struct{ Items []memberJSON }](t, raw).Items {
				if m.Email == inv.Email && !m.Invited {
					t.Errorf("%s became a member (%s) through a void invitation", m.Email, m.Role)
				}
			}
		}
		wantJoins := func(t *testing.T, inv inviteJSON, role string) {
			t.Helper()
			resp, raw := accept(inv.Token)
			wantStatus(t, resp, raw, http.StatusOK)
			resp, raw = e.sessionFrom(resp, raw).do("GET", "/api/v1/users/me", nil)
			wantStatus(t, resp, raw, http.StatusOK)
			if me := decodeAs[meJSON](t, raw); len(me.Orgs) != 1 || me.Orgs[0].ID != e.Org.ID || me.Orgs[0].Role != role {
				t.Errorf("after accepting, /users/me = %s; want %s of %s", raw, role, e.Org.Slug)
			}
		}

		t.Run("owner demoted to admin", func(t *testing.T) {
			// No longer grants owner, still grants admin.
			ownerID, ownerKey := e.addMember(keybridge.RoleOwner)
			asOwner := invite(t, ownerKey, "would-be-owner@x.test", "owner")
			asAdmin := invite(t, ownerKey, "would-be-admin@x.test", "admin")
			setRole(t, e.OwnerKey, ownerID, "admin")
			wantVoid(t, asOwner)
			wantJoins(t, asAdmin, "admin")
		})
		t.Run("owner demoted to member", func(t *testing.T) {
			// A member grants nothing.
			ownerID, ownerKey := e.addMember(keybridge.RoleOwner)
			inv := invite(t, ownerKey, "demoted-inviter@x.test", "admin")
			setRole(t, e.OwnerKey, ownerID, "member")
			wantVoid(t, inv)
		})
		t.Run("admin removed", func(t *testing.T) {
			adminID, adminKey := e.addMember(keybridge.RoleAdmin)
			inv := invite(t, adminKey, "removed-inviter@x.test", "admin")
			remove(t, adminID)
			wantVoid(t, inv)
		})
		t.Run("inviter still owner", func(t *testing.T) {
			_, ownerKey := e.addMember(keybridge.RoleOwner)
			wantJoins(t, invite(t, ownerKey, "still-fine@x.test", "owner"), "owner")
		})
		t.Run("renewed by another admin", func(t *testing.T) {
			// The renewed invitation stands on the new inviter's authority.
			_, secondKey := e.addMember(keybridge.RoleAdmin)
			ownerID, ownerKey := e.addMember(keybridge.RoleOwner)
			orphan := invite(t, ownerKey, "renewed@x.test", "admin")
			remove(t, ownerID)
			renewed := invite(t, secondKey, "renewed@x.test", "admin")
			wantVoid(t, orphan)
			wantJoins(t, renewed, "admin")
		})
		t.Run("no inviter recorded", func(t *testing.T) {
			// As invitations carried over from before inviters were recorded.
			ctx := context.Background()
			inv := invite(t, e.OwnerKey, "carried-over@x.test", "member")
			h := sha256.Sum256([]byte(inv.Token))
			stored, err := e.Store.InvitationByHash(ctx, h[:])
			if err != nil {
				t.Fatal(err)
			}
			stored.InvitedBy = ""
			if err := e.Store.UpdateInvitation(ctx, stored); err != nil {
				t.Fatal(err)
			}
			wantVoid(t, inv)
		})
		t.Run("role changed by another admin", func(t *testing.T) {
			// Whoever changes the role of a pending invitation vouches for it.
			_, secondKey := e.addMember(keybridge.RoleAdmin)
			adminID, adminKey := e.addMember(keybridge.RoleAdmin)
			inv := invite(t, adminKey, "changed@x.test", "admin")
			setRole(t, e.OwnerKey, adminID, "member")
			setRole(t, secondKey, inv.UserID, "member")
			wantJoins(t, inv, "member")
		})
	})
}

package httpapi_test

import (
	"net/http"
	"slices"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TestRemovedMemberKeysStayDead checks that removing a member revokes the
// platform keys they hold in the org (SPEC §2, §3): the rows stay, with
// status revoked, and inviting the same person back does not bring them
// back to life. Their keys in other orgs are not touched.
func TestRemovedMemberKeysStayDead(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		org := "/api/v1/orgs/" + e.Org.Slug
		memberID, memberKey := e.addMember(keybridge.RoleMember)
		// The same user in another org, with a key there.
		other := e.otherOrg()
		elsewhere := e.memberKeyIn(other.Org, memberID)

		resp, raw := e.do("DELETE", org+"/members/"+memberID, e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusNoContent)

		resp, raw = e.do("GET", org+"/api-keys", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		var found bool
		for _, k := range decodeAs[struct{ Items []keyJSON }](t, raw).Items {
			if k.UserID != memberID {
				continue
			}
			found = true
			if k.Status != "revoked" || k.RevokedAt == nil {
				t.Errorf("removed member's key %s: status %q, revoked_at %v; want revoked", k.ID, k.Status, k.RevokedAt)
			}
		}
		if !found {
			t.Fatalf("the removed member's key is no longer listed: %s", raw)
		}
		if !slices.Contains(e.auditActions(e.Org.ID), "api_key.revoke") {
			t.Errorf("audit actions %v: want an api_key.revoke for the removed member's key", e.auditActions(e.Org.ID))
		}

		// Invited back and accepted: the old key stays dead.
		resp, raw = e.do("POST", org+"/members", e.OwnerKey, map[string]any{"email": e.userEmail(memberID), "name": "M", "role": "member"})
		wantStatus(t, resp, raw, http.StatusCreated)
		tok := decodeAs[struct {
			Token string `json:"invite_token"`
		}](t, raw).Token
		resp, raw = e.do("POST", "/api/v1/auth/accept-invite", "", map[string]any{"token": tok, "password": memberPassword})
		wantStatus(t, resp, raw, http.StatusOK)
		resp, raw = e.do("GET", org+"/providers", memberKey, nil)
		wantError(t, resp, raw, keybridge.EUnauthenticated)

		// The key in the other org still works.
		resp, raw = e.do("GET", "/api/v1/orgs/"+other.Org.Slug+"/providers", elsewhere, nil)
		wantStatus(t, resp, raw, http.StatusOK)
	})
}

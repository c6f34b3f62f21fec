package httpapi_test

import (
	"net/http"
	"testing"
)

// TestHarness checks the harness itself: the owner key it sets up works,
// and a member key and another org's key are what they claim to be.
func TestHarness(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		resp, body := e.do("GET", "/api/v1/users/me", e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)

		_, memberKey := e.addMember("member")
		resp, body = e.do("GET", "/api/v1/users/me", memberKey, nil)
		wantStatus(t, resp, body, http.StatusOK)

		other := e.otherOrg()
		resp, body = e.do("GET", "/api/v1/orgs/"+e.Org.ID, other.OwnerKey, nil)
		wantError(t, resp, body, "not_found")

		resp, body = e.do("GET", "/api/v1/users/me", "", nil)
		wantError(t, resp, body, "unauthenticated")

		s := e.login(e.Owner.Email, e.OwnerPassword)
		resp, body = s.do("GET", "/api/v1/users/me", nil)
		wantStatus(t, resp, body, http.StatusOK)
	})
}

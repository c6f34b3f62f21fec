package httpapi_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// TestEveryChangeNeedsItsEvent sends every route that changes something a
// request that would succeed, with every audit write refused by the
// database: none may land without its event (SPEC §8), so each answers a
// bare 500 and the database is exactly as it was. Logging out is the one
// change that is not audited; it must still work.
func TestEveryChangeNeedsItsEvent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		f := newSweepFixture(t, e)
		ids := f.ids
		suspended := createdID(t, e, "POST", "/api/v1/api-keys", `{"name":"suspended","permissions":["gateway:invoke"]}`)
		resp, body := e.do("POST", "/api/v1/api-keys/"+suspended+"/suspend", e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		leaked, err := e.createKey(ctx, e.Store, e.Org.ID, e.Owner.ID, keybridge.PermGatewayInvoke)
		if err != nil {
			t.Fatal(err)
		}
		resp, body = e.do("POST", "/api/v1/orgs/"+e.Org.ID+"/members", e.OwnerKey, `{"email":"invited@acme.test","role":"member"}`)
		wantStatus(t, resp, body, http.StatusCreated)
		invite := decodeAs[struct {
			Token string `json:"invite_token"`
		}](t, body).Token
		second := createdID(t, e, "POST", "/api/v1/orgs/"+e.Org.ID+"/providers", `{"name":"second","type":"openai","key_source":"user_or_org"}`)
		sess := e.login(e.Owner.Email, e.OwnerPassword)

		storetest.RawOf(t, e.Store).RefuseAuditWrites(t)
		state := dbSnapshot(t, e.Store)
		org := "/api/v1/orgs/" + e.Org.ID
		prov := org + "/providers/" + ids["{provider}"]
		project := org + "/projects/" + ids["{projectID}"]
		key := "/api/v1/api-keys/" + ids["api-keys"]
		for _, c := range []struct{ method, path, body string }{
			{"POST", "/api/v1/auth/login", `{"email":"` + e.Owner.Email + `","password":"` + e.OwnerPassword + `"}`},
			{"POST", "/api/v1/auth/login", `{"email":"` + e.Owner.Email + `","password":"wrong-password"}`},
			{"POST", "/api/v1/auth/login", `{"email":"nobody@acme.test","password":"wrong-password"}`},
			{"POST", "/api/v1/auth/accept-invite", `{"token":"` + invite + `","password":"pass-word-1234","name":"N"}`},
			{"PATCH", "/api/v1/users/me", `{"name":"Renamed"}`},
			{"POST", "/api/v1/users/me/password", `{"current_password":"` + e.OwnerPassword + `","new_password":"new-password-1234"}`},
			{"POST", "/api/v1/orgs", `{"slug":"new-org","name":"New"}`},
			{"PATCH", org, `{"name":"Renamed"}`},
			{"POST", org + "/members", `{"email":"new@acme.test","name":"New","role":"member"}`},
			{"PATCH", org + "/members/" + ids["{userID}"], `{"role":"admin"}`},
			{"DELETE", org + "/members/" + ids["{userID}"], ``},
			{"POST", "/api/v1/api-keys", `{"name":"k","permissions":["gateway:invoke"]}`},
			{"PATCH", key, `{"name":"k2"}`},
			{"POST", key + "/suspend", ``},
			{"POST", "/api/v1/api-keys/" + suspended + "/reactivate", ``},
			{"POST", key + "/rotate", `{"grace_period_seconds":0}`},
			{"POST", key + "/revoke", ``},
			{"DELETE", key, ``},
			{"POST", "/api/v1/leaked-keys", `[{"token":"` + leaked + `","type":"t","url":"https://example.test/x","source":"scan"}]`},
			{"POST", org + "/providers", `{"name":"o2","type":"openai"}`},
			{"PATCH", prov, `{"display_name":"Renamed"}`},
			{"POST", prov + "/keys", `{"api_key":"sk-refused-0000000000000000000000"}`},
			{"PATCH", prov + "/keys/" + ids["{keyID}"], `{"enabled":false}`},
			{"DELETE", prov + "/keys/" + ids["{keyID}"], ``},
			{"POST", "/api/v1/users/me/credentials", `{"org":"` + e.Org.ID + `","provider":"` + second + `","api_key":"sk-refused-1111111111111111111111"}`},
			{"PATCH", "/api/v1/users/me/credentials/" + ids["credentials"], `{"api_key":"sk-refused-2222222222222222222222"}`},
			{"DELETE", "/api/v1/users/me/credentials/" + ids["credentials"], ``},
			{"POST", org + "/projects", `{"name":"p"}`},
			{"PATCH", project, `{"description":"d2"}`},
			{"POST", project + "/ai-keys", `{"name":"a","ai_type":"OPENAI"}`},
			{"PATCH", project + "/ai-keys/" + ids["ai-keys"], `{"name":"a2"}`},
			{"DELETE", project + "/ai-keys/" + ids["ai-keys"], ``},
			{"DELETE", project, ``},
			{"DELETE", prov, ``},
			{"DELETE", org, ``},
		} {
			var body any
			if c.body != "" {
				body = c.body
			}
			var resp *http.Response
			var raw []byte
			if strings.HasPrefix(c.path, "/api/v1/auth/") {
				resp, raw = e.do(c.method, c.path, "", body)
			} else {
				resp, raw = sess.do(c.method, c.path, body)
			}
			what := c.method + " " + c.path
			if resp.StatusCode != http.StatusInternalServerError {
				t.Errorf("%s with audit writes refused = %d %.300s, want 500", what, resp.StatusCode, raw)
			}
			if changed := changedTables(state, dbSnapshot(t, e.Store)); len(changed) > 0 {
				t.Fatalf("%s with audit writes refused changed %v: a change landed without its event", what, changed)
			}
		}
		resp, body = sess.do("POST", "/api/v1/auth/logout", nil)
		wantStatus(t, resp, body, http.StatusNoContent)
	})
}

// createdID sends a request as the owner that must answer 201, and returns
// the ID it created.
func createdID(t *testing.T, e *env, method, path, body string) string {
	t.Helper()
	resp, raw := e.do(method, path, e.OwnerKey, body)
	wantStatus(t, resp, raw, http.StatusCreated)
	return decodeAs[struct {
		ID string `json:"id"`
	}](t, raw).ID
}

// TestAccountChangesInNoOrgAudited: a user who belongs to no org (left or
// removed from every one) still logs in and changes their account; each
// change has its event, in the chain of no org.
func TestAccountChangesInNoOrgAudited(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		h, err := auth.HashPassword(memberPassword)
		if err != nil {
			t.Fatal(err)
		}
		u := &keybridge.User{Email: "loner@nowhere.test", Name: "Loner", PasswordHash: h}
		if err := e.Store.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		sess := e.login(u.Email, memberPassword)
		resp, body := sess.do("PATCH", "/api/v1/users/me", map[string]any{"name": "Still here"})
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = sess.do("POST", "/api/v1/users/me/password", map[string]any{"current_password": memberPassword, "new_password": "another-password-1234"})
		wantStatus(t, resp, body, http.StatusNoContent)
		var actions []string
		err = e.Store.AuditChain(ctx, "", func(ev *keybridge.AuditEvent) error {
			if ev.Resource.ID == u.ID {
				actions = append(actions, ev.Action)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"auth.login", "user.update", "user.password_change"}; !slices.Equal(actions, want) {
			t.Errorf("events of the user in no org = %v, want %v", actions, want)
		}
	})
}

package httpapi_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

const mePath = "/api/v1/users/me"

// userUpdates returns org's user.update events about userID, newest first.
func userUpdates(t *testing.T, e *env, orgID, userID string) []keybridge.AuditEvent {
	t.Helper()
	events, _, err := e.Store.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: orgID}, store.Page{Limit: store.MaxLimit})
	if err != nil {
		t.Fatalf("list audit events: %v", err)
	}
	var out []keybridge.AuditEvent
	for _, ev := range events {
		if ev.Action == "user.update" && ev.Resource.ID == userID {
			out = append(out, ev)
		}
	}
	return out
}

// TestUpdateMe: PATCH /users/me changes the caller's own name, trimmed,
// for a session with its CSRF token or any key of the user, answers as
// GET /users/me, refuses bad names at the field, and audits the change in
// every org of the user.
func TestUpdateMe(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		userID, memberKey := e.addMember(keybridge.RoleMember)
		email := e.userEmail(userID)
		// The member is in a second org too: the change is audited there.
		other := e.otherOrg()
		if err := e.Store.CreateMembership(ctx, &keybridge.Membership{OrgID: other.Org.ID, UserID: userID, Role: keybridge.RoleMember}); err != nil {
			t.Fatal(err)
		}
		s := e.login(email, memberPassword)

		// A session needs its CSRF token here as everywhere.
		resp, raw := e.send("PATCH", mePath, map[string]string{"name": "No Token"},
			func(r *http.Request) { r.AddCookie(&http.Cookie{Name: s.Cookie.Name, Value: s.Cookie.Value}) })
		wantError(t, resp, raw, keybridge.EForbidden)
		// No credential at all.
		resp, raw = e.do("PATCH", mePath, "", map[string]string{"name": "Nobody"})
		wantError(t, resp, raw, keybridge.EUnauthenticated)

		long := strings.Repeat("n", 201)
		for name, body := range map[string]any{
			"empty":         map[string]string{"name": ""},
			"only spaces":   map[string]string{"name": " \t "},
			"too long":      map[string]string{"name": long},
			"too long trim": map[string]string{"name": " " + long + " "},
			"not a string":  `{"name": 42}`,
			"null":          `{"name": null}`,
			"missing":       `{}`,
		} {
			resp, raw := s.do("PATCH", mePath, body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: PATCH /users/me = %d %s, want 400", name, resp.StatusCode, raw)
				continue
			}
			if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["name"] == "" {
				t.Errorf("%s: %s; want fields.name", name, raw)
			}
		}
		resp, raw = s.do("PATCH", mePath, `{"name": "Ada", "email": "ada@x.test"}`)
		if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields["email"] == "" {
			t.Errorf("unknown field: %s; want fields.email", raw)
		}
		if n := len(userUpdates(t, e, e.Org.ID, userID)); n != 0 {
			t.Errorf("%d user.update events after refused requests, want 0", n)
		}
		if u, err := e.Store.User(ctx, userID); err != nil || u.Name != "A member" {
			t.Errorf("name after refused requests = %q, %v; want %q", u.Name, err, "A member")
		}

		// The session renames; the answer is GET /users/me's.
		resp, raw = s.do("PATCH", mePath, map[string]string{"name": "  Ada Lovelace  "})
		wantStatus(t, resp, raw, http.StatusOK)
		gresp, graw := s.do("GET", mePath, nil)
		wantStatus(t, gresp, graw, http.StatusOK)
		if !bytes.Equal(raw, graw) {
			t.Errorf("PATCH /users/me answered\n%s\nGET /users/me answers\n%s\nwant the same", raw, graw)
		}
		me := decodeAs[struct {
			User keybridge.User `json:"user"`
			Orgs []struct {
				ID string `json:"id"`
			} `json:"orgs"`
		}](t, raw)
		if me.User.Name != "Ada Lovelace" || me.User.ID != userID || len(me.Orgs) != 2 {
			t.Errorf("PATCH /users/me = %s, want user %s named %q in 2 orgs", raw, userID, "Ada Lovelace")
		}
		for _, org := range []*keybridge.Org{e.Org, other.Org} {
			evs := userUpdates(t, e, org.ID, userID)
			if len(evs) != 1 {
				t.Errorf("org %s: %d user.update events, want 1", org.Slug, len(evs))
				continue
			}
			ev := evs[0]
			want := keybridge.Change{Old: "A member", New: "Ada Lovelace"}
			if got := ev.Changes["name"]; got != want || len(ev.Changes) != 1 {
				t.Errorf("org %s: changes = %v, want {name: %v}", org.Slug, ev.Changes, want)
			}
			if ev.Actor.Type != keybridge.ActorUser || ev.Actor.ID != userID || ev.Resource.Type != "user" || ev.Resource.Name != email {
				t.Errorf("org %s: actor %+v resource %+v, want the user acting on themself", org.Slug, ev.Actor, ev.Resource)
			}
		}
		// The org's member list shows the new name.
		resp, raw = e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, nil)
		wantStatus(t, resp, raw, http.StatusOK)
		found := false
		for _, m := range decodeAs[struct{ Items []keybridge.Member }](t, raw).Items {
			if m.UserID == userID {
				found = true
				if m.Name != "Ada Lovelace" {
					t.Errorf("member list: name = %q, want %q", m.Name, "Ada Lovelace")
				}
			}
		}
		if !found {
			t.Errorf("member list %s does not hold %s", raw, userID)
		}

		// The same name again changes nothing and records nothing.
		resp, raw = s.do("PATCH", mePath, map[string]string{"name": "Ada Lovelace"})
		wantStatus(t, resp, raw, http.StatusOK)
		if n := len(userUpdates(t, e, e.Org.ID, userID)); n != 1 {
			t.Errorf("%d user.update events after an unchanged name, want 1", n)
		}

		// Any key of the user may, the role's key and one holding a single
		// unrelated permission; a 200-character name is the longest.
		narrow, err := e.createKey(ctx, e.Store, e.Org.ID, userID, keybridge.PermUsageRead)
		if err != nil {
			t.Fatal(err)
		}
		for i, key := range []string{memberKey, narrow} {
			name := strings.Repeat("k", 199) + string(rune('0'+i))
			resp, raw := e.do("PATCH", mePath, key, map[string]string{"name": name})
			wantStatus(t, resp, raw, http.StatusOK)
			got := decodeAs[struct {
				User   keybridge.User `json:"user"`
				APIKey *struct{}      `json:"api_key"`
			}](t, raw)
			if got.User.Name != name || got.APIKey == nil {
				t.Errorf("key %d: PATCH /users/me = %s, want the key's answer with the 200-character name", i, raw)
			}
		}
		evs := userUpdates(t, e, e.Org.ID, userID)
		if len(evs) != 3 || evs[0].Actor.Type != keybridge.ActorAPIKey {
			t.Errorf("user.update events = %d, newest by %q; want 3, newest by a key", len(evs), evs[0].Actor.Type)
		}
		// Only the caller's own name changed.
		if u, err := e.Store.User(ctx, e.Owner.ID); err != nil || u.Name != e.Owner.Name {
			t.Errorf("owner's name = %q, %v; want %q", u.Name, err, e.Owner.Name)
		}
	})
}

package httpapi_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// credentialJSON is a personal credential as the API answers it.
type credentialJSON struct {
	ID         string  `json:"id"`
	OrgID      string  `json:"org_id"`
	ProviderID string  `json:"provider_id"`
	Hint       string  `json:"hint"`
	CreatedAt  string  `json:"created_at"`
	UpdatedAt  string  `json:"updated_at"`
	LastUsedAt *string `json:"last_used_at"`
}

const credentialsPath = "/api/v1/users/me/credentials"

func TestCredentials(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		openai := e.addProvider(map[string]any{"name": "openai", "type": "openai", "key_source": "user"})
		anthropic := e.addProvider(map[string]any{"name": "anthropic", "type": "anthropic", "key_source": "user_or_org"})
		e.addProvider(map[string]any{"name": "bedrock", "type": "bedrock", "settings": map[string]any{"region": "us-east-1"}})
		memberID, memberKey := e.addMember(keybridge.RoleMember)
		other := e.otherOrg()
		theirs := e.otherProvider(other)

		for _, c := range []struct {
			name  string
			body  any
			code  string
			field string
		}{
			{"no org", map[string]any{"provider": "openai", "api_key": "sk-personal-000000000000000001"}, keybridge.EInvalid, "org"},
			{"no provider", map[string]any{"org": e.Org.Slug, "api_key": "sk-personal-000000000000000001"}, keybridge.EInvalid, "provider"},
			{"no key", map[string]any{"org": e.Org.Slug, "provider": "openai"}, keybridge.EInvalid, "api_key"},
			{"blank key", map[string]any{"org": e.Org.Slug, "provider": "openai", "api_key": "  "}, keybridge.EInvalid, "api_key"},
			{"unknown field", map[string]any{"org": e.Org.Slug, "provider": "openai", "api_key": "sk-x", "user_id": memberID}, keybridge.EInvalid, "user_id"},
			{"bedrock", map[string]any{"org": e.Org.Slug, "provider": "bedrock", "api_key": "sk-personal-000000000000000001"}, keybridge.EInvalid, "provider"},
			{"org not mine", map[string]any{"org": other.Org.Slug, "provider": "theirs", "api_key": "sk-personal-000000000000000001"}, keybridge.ENotFound, ""},
			{"unknown org", map[string]any{"org": "nowhere", "provider": "openai", "api_key": "sk-personal-000000000000000001"}, keybridge.ENotFound, ""},
			{"provider of another org", map[string]any{"org": e.Org.Slug, "provider": theirs.ID, "api_key": "sk-personal-000000000000000001"}, keybridge.ENotFound, ""},
			{"unknown provider", map[string]any{"org": e.Org.Slug, "provider": "mistral", "api_key": "sk-personal-000000000000000001"}, keybridge.ENotFound, ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp, body := e.do("POST", credentialsPath, memberKey, c.body)
				got := wantError(t, resp, body, c.code)
				if _, ok := got.Error.Fields[c.field]; c.field != "" && !ok {
					t.Errorf("error fields = %v, want one for %q", got.Error.Fields, c.field)
				}
			})
		}

		create := func(key string, body map[string]any) credentialJSON {
			t.Helper()
			resp, b := e.do("POST", credentialsPath, key, body)
			wantStatus(t, resp, b, http.StatusCreated)
			return decodeExact[credentialJSON](t, b)
		}
		mine := create(memberKey, map[string]any{"org": e.Org.Slug, "provider": "openai", "api_key": "sk-personal-openai-0000000000000001"})
		if mine.OrgID != e.Org.ID || mine.ProviderID != openai.ID || mine.Hint != "sk-p...0001" || mine.LastUsedAt != nil || mine.UpdatedAt != mine.CreatedAt {
			t.Errorf("POST credential = %+v", mine)
		}
		// By id, and for another provider.
		second := create(memberKey, map[string]any{"org": e.Org.ID, "provider": anthropic.ID, "api_key": "sk-personal-anthropic-000000000002"})
		resp, body := e.do("POST", credentialsPath, memberKey, map[string]any{"org": e.Org.Slug, "provider": openai.ID, "api_key": "sk-personal-openai-other-000000003"})
		wantError(t, resp, body, keybridge.EConflict)
		// The owner may hold their own for the same provider.
		ownerCred := create(e.OwnerKey, map[string]any{"org": e.Org.Slug, "provider": "openai", "api_key": "sk-owner-personal-0000000000000004"})

		listed := func(key string) []string {
			t.Helper()
			resp, b := e.do("GET", credentialsPath, key, nil)
			wantStatus(t, resp, b, http.StatusOK)
			var ids []string
			for _, c := range decodeExact[provList[credentialJSON]](t, b).Items {
				ids = append(ids, c.ID)
			}
			return ids
		}
		if got, want := listed(memberKey), []string{second.ID, mine.ID}; !slices.Equal(got, want) {
			t.Errorf("member's credentials = %v, want %v (newest first)", got, want)
		}
		if got, want := listed(e.OwnerKey), []string{ownerCred.ID}; !slices.Equal(got, want) {
			t.Errorf("owner's credentials = %v, want only their own %v", got, want)
		}

		// Only the owner changes or deletes; anyone else gets 404.
		for _, c := range []struct {
			method string
			body   any
		}{{"PATCH", map[string]any{"api_key": "sk-stolen-000000000000000000000"}}, {"DELETE", nil}} {
			resp, body := e.do(c.method, credentialsPath+"/"+mine.ID, e.OwnerKey, c.body)
			wantError(t, resp, body, keybridge.ENotFound)
			resp, body = e.do(c.method, credentialsPath+"/"+mine.ID, other.OwnerKey, c.body)
			wantError(t, resp, body, keybridge.ENotFound)
		}
		for _, c := range []struct {
			name  string
			body  any
			field string
		}{
			{"empty", map[string]any{}, ""},
			{"blank key", map[string]any{"api_key": ""}, "api_key"},
			{"other fields", map[string]any{"api_key": "sk-x", "provider": "anthropic"}, "provider"},
		} {
			resp, body := e.do("PATCH", credentialsPath+"/"+mine.ID, memberKey, c.body)
			wantInvalidField(t, resp, body, c.field)
		}
		resp, body = e.do("PATCH", credentialsPath+"/"+mine.ID, memberKey, map[string]any{"api_key": "sk-personal-openai-rotated-00000005"})
		wantStatus(t, resp, body, http.StatusOK)
		rotated := decodeExact[credentialJSON](t, body)
		if rotated.ID != mine.ID || rotated.Hint != "sk-p...0005" || rotated.UpdatedAt == mine.UpdatedAt {
			t.Errorf("PATCH credential = %+v", rotated)
		}
		stored, err := e.Store.Credential(ctx, memberID, mine.ID)
		if err != nil {
			t.Fatal(err)
		}
		if plain, err := e.Ring.Open(stored.Sealed, keybridge.SealedCredential.AD(mine.ID)); err != nil || string(plain) != "sk-personal-openai-rotated-00000005" {
			t.Errorf("stored credential opens to %q, %v; want the rotated key", plain, err)
		}

		// Admins see only whether a member has one, in the member list.
		resp, body = e.do("GET", "/api/v1/orgs/"+e.Org.Slug+"/members", e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		var memberCreds map[string]bool
		for _, m := range decodeAs[provList[keybridge.Member]](t, body).Items {
			if m.UserID == memberID {
				memberCreds = m.Credentials
			}
		}
		if len(memberCreds) != 2 || !memberCreds[openai.ID] || !memberCreds[anthropic.ID] {
			t.Errorf("member list credentials of the member = %v, want the two providers", memberCreds)
		}

		// A platform key is bound to its org: the same user's key for
		// another org sees none of these.
		otherKey := e.memberKeyIn(other.Org, memberID)
		if got := listed(otherKey); len(got) != 0 {
			t.Errorf("credentials through a key of another org = %v, want none", got)
		}
		resp, body = e.do("DELETE", credentialsPath+"/"+mine.ID, otherKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)
		// A session sees the user's credentials in every org.
		s := e.login(e.userEmail(memberID), memberPassword)
		resp, body = s.do("GET", credentialsPath, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if n := len(decodeExact[provList[credentialJSON]](t, body).Items); n != 2 {
			t.Errorf("session credentials = %d, want 2", n)
		}

		resp, body = e.do("DELETE", credentialsPath+"/"+second.ID, memberKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		resp, body = e.do("DELETE", credentialsPath+"/"+second.ID, memberKey, nil)
		wantError(t, resp, body, keybridge.ENotFound)

		// Deleting the provider deletes the credentials for it.
		resp, body = e.do("DELETE", e.providersPath("/openai"), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusNoContent)
		if got := listed(memberKey); len(got) != 0 {
			t.Errorf("credentials after their provider was deleted = %v, want none", got)
		}

		var got []string
		for _, a := range e.auditActions(e.Org.ID) {
			if strings.HasPrefix(a, "credential.") {
				got = append(got, a)
			}
		}
		if want := []string{"credential.delete", "credential.update", "credential.create", "credential.create", "credential.create"}; !slices.Equal(got, want) {
			t.Errorf("credential audit actions = %v, want %v", got, want)
		}
		resp, body = e.do("GET", credentialsPath, "", nil)
		wantError(t, resp, body, keybridge.EUnauthenticated)
	})
}

// memberKeyIn makes userID a member of org and returns a platform key of
// theirs bound to it.
func (e *env) memberKeyIn(org *keybridge.Org, userID string) string {
	e.t.Helper()
	ctx := context.Background()
	var key string
	err := e.Store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: userID, Role: keybridge.RoleMember}); err != nil {
			return err
		}
		var err error
		key, err = e.createKey(ctx, tx, org.ID, userID, keybridge.RoleMember.Permissions())
		return err
	})
	if err != nil {
		e.t.Fatalf("make %s a member of %s: %v", userID, org.Slug, err)
	}
	return key
}

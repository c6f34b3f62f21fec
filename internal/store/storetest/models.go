package storetest

import (
	"context"
	"slices"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// testAllowedModels checks that a key's model allowlist survives every
// write and read, including the characters JSON escapes, and that an empty
// list reads back empty, never as a list of one empty name.
func testAllowedModels(t *testing.T, newStore Factory) {
	ctx := context.Background()
	lists := []keybridge.ModelAllowlist{
		{"gpt-4o-mini", "claude-*", `odd "quoted" \ name`, "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude*"},
		{"gemini-2.5-flash"},
		nil,
	}

	t.Run("APIKey", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		u := baseUser(t, st, "a@example.com")
		plain := &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: "plain", Prefix: "kb_plain", Hash: baseHash("plain"),
			Permissions: keybridge.PermGatewayInvoke}
		if err := st.CreateAPIKey(ctx, plain); err != nil {
			t.Fatalf("CreateAPIKey(no list) = %v", err)
		}
		if got, err := st.APIKey(ctx, plain.ID); err != nil || len(got.AllowedModels) != 0 {
			t.Errorf("APIKey(no list).AllowedModels = %q, %v; want empty", got.AllowedModels, err)
		}
		k := &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: "ci", Prefix: "kb_ci", Hash: baseHash("ci"),
			Permissions: keybridge.PermGatewayInvoke, AllowedModels: lists[0]}
		if err := st.CreateAPIKey(ctx, k); err != nil {
			t.Fatalf("CreateAPIKey = %v", err)
		}
		check := func(step string, want keybridge.ModelAllowlist) {
			t.Helper()
			reads := map[string]func() (*keybridge.APIKey, error){
				"APIKey":       func() (*keybridge.APIKey, error) { return st.APIKey(ctx, k.ID) },
				"APIKeyByHash": func() (*keybridge.APIKey, error) { return st.APIKeyByHash(ctx, baseHash("ci")) },
				"ListAPIKeys": func() (*keybridge.APIKey, error) {
					keys, _, err := st.ListAPIKeys(ctx, store.APIKeyFilter{UserID: u.ID}, store.Page{})
					for i := range keys {
						if keys[i].ID == k.ID {
							return &keys[i], err
						}
					}
					return nil, err
				},
			}
			for name, read := range reads {
				got, err := read()
				if err != nil || got == nil {
					t.Fatalf("%s: %s = %v, %v", step, name, got, err)
				}
				if !slices.Equal(got.AllowedModels, want) {
					t.Errorf("%s: %s.AllowedModels = %q, want %q", step, name, got.AllowedModels, want)
				}
			}
		}
		check("after create", lists[0])
		for _, l := range lists[1:] {
			k.AllowedModels = l
			if err := st.UpdateAPIKey(ctx, k); err != nil {
				t.Fatalf("UpdateAPIKey(%q) = %v", l, err)
			}
			check("after update", l)
		}
	})

	t.Run("AIKey", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		p := projProject(t, st, org.ID, "web")
		k := &keybridge.AIKey{ProjectID: p.ID, OrgID: org.ID, Name: "ci", AIType: keybridge.AIAWS,
			Key: "kbk_ci", SecretHash: baseHash("secret ci"), CreatedBy: "user-1", AllowedModels: lists[0]}
		if err := st.CreateAIKey(ctx, k); err != nil {
			t.Fatalf("CreateAIKey = %v", err)
		}
		check := func(step string, want keybridge.ModelAllowlist) {
			t.Helper()
			reads := map[string]func() (*keybridge.AIKey, error){
				"AIKey":             func() (*keybridge.AIKey, error) { return st.AIKey(ctx, p.ID, k.ID) },
				"AIKeyBySecretHash": func() (*keybridge.AIKey, error) { return st.AIKeyBySecretHash(ctx, baseHash("secret ci")) },
				"AIKeyByKey":        func() (*keybridge.AIKey, error) { return st.AIKeyByKey(ctx, "kbk_ci") },
				"ListAIKeys": func() (*keybridge.AIKey, error) {
					keys, _, err := st.ListAIKeys(ctx, p.ID, false, store.Page{})
					if len(keys) != 1 {
						return nil, err
					}
					return &keys[0], err
				},
			}
			for name, read := range reads {
				got, err := read()
				if err != nil || got == nil {
					t.Fatalf("%s: %s = %v, %v", step, name, got, err)
				}
				if !slices.Equal(got.AllowedModels, want) {
					t.Errorf("%s: %s.AllowedModels = %q, want %q", step, name, got.AllowedModels, want)
				}
			}
		}
		check("after create", lists[0])
		ch := baseSubscribe(t, st, st)
		for _, l := range lists[1:] {
			k.AllowedModels = l
			if err := st.UpdateAIKey(ctx, k); err != nil {
				t.Fatalf("UpdateAIKey(%q) = %v", l, err)
			}
			baseExpect(t, "UpdateAIKey", ch, store.Invalidation{Kind: store.InvalidateAIKey, ID: k.ID})
			check("after update", l)
		}
	})
}

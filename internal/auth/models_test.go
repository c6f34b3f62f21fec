package auth_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// A key's model allowlist rides on its principal, and a change to it
// reaches the cached principal as soon as it commits.
func TestPrincipalCarriesAllowedModels(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, eng.New(t))
			s := startService(t, f.st, fastOptions())
			list := keybridge.ModelAllowlist{"gpt-4o-mini", "claude-*"}

			tok, k := f.newKey(t, f.owner, keybridge.PermGatewayInvoke, func(k *keybridge.APIKey) { k.AllowedModels = list })
			for i := range 3 { // a load, then cache hits
				p, err := s.VerifyAPIKey(ctx, tok)
				if err != nil {
					t.Fatalf("VerifyAPIKey: %v", err)
				}
				if got := p.AllowedModels.List(); !slices.Equal(got, list) {
					t.Errorf("VerifyAPIKey (call %d).AllowedModels = %q, want %q", i+1, got, list)
				}
			}
			f.update(t, k, func(k *keybridge.APIKey) { k.AllowedModels = nil })
			p, err := s.VerifyAPIKey(ctx, tok)
			if err != nil {
				t.Fatalf("VerifyAPIKey after clearing the list: %v", err)
			}
			if p.AllowedModels.Restricted() {
				t.Errorf("after clearing the list, AllowedModels = %q, want every model", p.AllowedModels.List())
			}

			secret, ak := f.newAIKey(t, keybridge.AIOpenAI)
			ak.AllowedModels = list
			if err := f.st.UpdateAIKey(ctx, ak); err != nil {
				t.Fatalf("UpdateAIKey: %v", err)
			}
			p, err = s.VerifyAISecret(ctx, secret)
			if err != nil {
				t.Fatalf("VerifyAISecret: %v", err)
			}
			if got := p.AllowedModels.List(); !slices.Equal(got, list) {
				t.Errorf("VerifyAISecret.AllowedModels = %q, want %q", got, list)
			}
			if !p.AllowsModel("claude-sonnet-4-5") || p.AllowsModel("gpt-4o") {
				t.Errorf("AllowsModel(claude-sonnet-4-5, gpt-4o) = %v, %v; want true, false",
					p.AllowsModel("claude-sonnet-4-5"), p.AllowsModel("gpt-4o"))
			}
		})
	}
}

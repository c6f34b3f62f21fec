package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// BenchmarkAPIKeyByHash measures the authentication read behind a cache
// miss, for a key that exists (hit) and one that does not (miss: a forged
// or revoked-and-purged token), among 1000 keys.
func BenchmarkAPIKeyByHash(b *testing.B, newStore Factory) {
	ctx := context.Background()
	st := newStore(b)
	org := baseOrg(b, st, "acme")
	u := baseUser(b, st, "bench@example.com")
	const keys = 1000
	hashes := make([][]byte, keys)
	for i := range hashes {
		hashes[i] = baseHash(fmt.Sprint("bench ", i))
	}
	if err := st.InTx(ctx, func(tx store.Store) error {
		for i := range keys {
			k := &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: fmt.Sprint("k", i), Prefix: "kb_bench",
				Hash: hashes[i], Permissions: keybridge.AllPermissions, Status: keybridge.KeyActive}
			if err := tx.CreateAPIKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatalf("create keys: %v", err)
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := st.APIKeyByHash(ctx, hashes[i%keys]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		missing := baseHash("not a key")
		for b.Loop() {
			if _, err := st.APIKeyByHash(ctx, missing); !keybridge.IsCode(err, keybridge.ENotFound) {
				b.Fatalf("APIKeyByHash(unknown) = %v, want not found", err)
			}
		}
	})
}

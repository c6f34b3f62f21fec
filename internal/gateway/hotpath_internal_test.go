package gateway

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// BenchmarkHotPath is the gateway's own work on a request before it
// forwards: the caller's key found among the five places, verified from
// auth's cache, and the route found in the route cache. It must stay a
// few microseconds and flat however many keys are stored.
//
//	go test -run '^$' -bench HotPath -benchmem ./internal/gateway
func BenchmarkHotPath(b *testing.B) {
	for _, n := range []int{10, 1000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			g, tokens := hotPathGateway(b, n)
			req, _ := http.NewRequest("POST", "/gateway/oai/chat/completions", nil)
			req.RequestURI = "/gateway/oai/chat/completions"
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("User-Agent", "OpenAI/Go 3.0")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				req.Header["Authorization"] = []string{"Bearer " + tokens[i%len(tokens)]}
				x := exchange{g: g, r: req}
				if !x.parseTarget() {
					b.Fatal("parse")
				}
				tok, sig := callerToken(req, x.queryKey)
				p, err := g.verify(req.Context(), req, tok, sig, nil)
				if err != nil {
					b.Fatal(err)
				}
				rt, err := g.routes.route(req.Context(), p.OrgID, x.name)
				if err != nil || rt == nil {
					b.Fatal("no route", err)
				}
			}
		})
	}
}

// hotPathGateway stores an org with a provider and n platform keys,
// warms the caches with every key and returns the gateway and the keys.
func hotPathGateway(b *testing.B, n int) (*Gateway, []string) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	st := storetest.SQLite(b)
	master := make([]byte, 32)
	rand.Read(master)
	ring, err := secrets.OpenRing(ctx, st, master, secrets.Options{})
	if err != nil {
		b.Fatal(err)
	}
	as := auth.New(st, auth.Options{CacheTTL: time.Hour})
	g, err := New(Options{Store: st, Ring: ring, Auth: as})
	if err != nil {
		b.Fatal(err)
	}
	go as.Run(ctx)
	go g.Run(ctx)
	org := &keybridge.Org{Slug: "acme", Name: "Acme"}
	u := &keybridge.User{Email: "a@acme.test", Name: "A"}
	tokens := make([]string, n)
	err = st.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateOrg(ctx, org); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: u.ID, Role: keybridge.RoleOwner}); err != nil {
			return err
		}
		for i := range tokens {
			tok, err := apikey.Generate(apikey.PlatformPrefix)
			if err != nil {
				return err
			}
			h := apikey.Hash(tok)
			if err := tx.CreateAPIKey(ctx, &keybridge.APIKey{OrgID: org.ID, UserID: u.ID, Name: "k", Prefix: apikey.Display(tok),
				Hash: h[:], Permissions: keybridge.AllPermissions, Status: keybridge.KeyActive}); err != nil {
				return err
			}
			tokens[i] = tok
		}
		p := &keybridge.Provider{ID: "019ad000-0000-7000-8000-000000000001", OrgID: org.ID, Name: "oai", DisplayName: "oai",
			Type: keybridge.ProviderOpenAI, BaseURL: "http://127.0.0.1:9/v1", Enabled: true, KeySource: keybridge.KeySourceOrg}
		var set keybridge.ProviderSettings
		if p.SettingsSealed, err = ring.Seal(set.MarshalSealed(), keybridge.SealedProviderSettings.AD(p.ID)); err != nil {
			return err
		}
		if err := tx.CreateProvider(ctx, p); err != nil {
			return err
		}
		k := &keybridge.ProviderKey{ID: "019ad000-0000-7000-8000-000000000002", ProviderID: p.ID, Name: "k", Enabled: true, Fingerprint: []byte("f")}
		if k.Sealed, err = ring.Seal([]byte("sk-bench"), keybridge.SealedProviderKey.AD(k.ID)); err != nil {
			return err
		}
		return tx.CreateProviderKey(ctx, k)
	})
	if err != nil {
		b.Fatal(err)
	}
	// The caches turn on once the subscriptions hear every change.
	deadline := time.Now().Add(5 * time.Second)
	for !as.CacheStats().Live || !g.routes.live.Load() {
		if time.Now().After(deadline) {
			b.Fatal("caches did not turn on")
		}
		time.Sleep(time.Millisecond)
	}
	for _, tok := range tokens {
		if _, err := as.VerifyAPIKey(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
	if rt, err := g.routes.route(ctx, org.ID, "oai"); err != nil || rt == nil || !strings.HasPrefix(rt.basePath, "/v1") {
		b.Fatalf("route = %v, %v", rt, err)
	}
	return g, tokens
}

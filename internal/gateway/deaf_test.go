package gateway_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// relayStore is a real store whose subscriptions are driven by the test:
// each subscriber hears InvalidateAll, then only what the test sends,
// never what the store itself publishes.
type relayStore struct {
	store.Store
	mu   sync.Mutex
	subs []func(store.Invalidation)
}

func (r *relayStore) Subscribe(ctx context.Context, fn func(store.Invalidation)) error {
	r.mu.Lock()
	fn(store.Invalidation{Kind: store.InvalidateAll})
	r.subs = append(r.subs, fn)
	r.mu.Unlock()
	<-ctx.Done()
	return nil
}

// send has every subscriber hear inv once n have subscribed.
func (r *relayStore) send(t *testing.T, n int, inv store.Invalidation) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		if len(r.subs) >= n {
			for _, fn := range r.subs {
				fn(inv)
			}
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers after 10 s, want %d", len(r.subs), n)
		}
	}
}

// A routing cache whose subscription stopped hearing changes answers from
// the store, not from what it held: a provider disabled meanwhile, whose
// invalidation is missed, answers 404 at once.
func TestRoutesOffWhileDeaf(t *testing.T) {
	st := &relayStore{Store: storetest.SQLite(t)}
	e := newEnvWith(t, st, envOptions{})
	okProvider(t, e)
	call := func() int {
		t.Helper()
		resp, _ := e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"gpt"}`))
		return resp.StatusCode
	}
	// Auth and the gateway subscribe.
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	for range 2 {
		if got := call(); got != http.StatusOK {
			t.Fatalf("gateway = %d, want 200", got)
		}
	}

	st.send(t, 2, store.Invalidation{Kind: store.InvalidateDeaf})
	// A request while deaf must not fill the cache again.
	if got := call(); got != http.StatusOK {
		t.Fatalf("gateway while deaf = %d, want 200", got)
	}
	e.api("PATCH", "/api/v1/orgs/acme/providers/oai", e.OwnerKey, map[string]any{"enabled": false}, http.StatusOK)
	if got := call(); got != http.StatusNotFound {
		t.Errorf("gateway after the provider was disabled while deaf = %d, want 404", got)
	}
}

// downStore is a relayStore whose reads of routes and keys fail, while
// down is set, as they do when the database cannot be reached.
type downStore struct {
	*relayStore
	down atomic.Bool
}

var errDBRefused = fmt.Errorf("connect: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})

func (d *downStore) Provider(ctx context.Context, orgID, idOrName string) (*keybridge.Provider, error) {
	if d.down.Load() {
		return nil, errDBRefused
	}
	return d.relayStore.Provider(ctx, orgID, idOrName)
}

func (d *downStore) ProviderKeys(ctx context.Context, providerID string) ([]keybridge.ProviderKey, error) {
	if d.down.Load() {
		return nil, errDBRefused
	}
	return d.relayStore.ProviderKeys(ctx, providerID)
}

func (d *downStore) APIKeyByHash(ctx context.Context, hash []byte) (*keybridge.APIKey, error) {
	if d.down.Load() {
		return nil, errDBRefused
	}
	return d.relayStore.APIKeyByHash(ctx, hash)
}

func (d *downStore) AIKeyBySecretHash(ctx context.Context, hash []byte) (*keybridge.AIKey, error) {
	if d.down.Load() {
		return nil, errDBRefused
	}
	return d.relayStore.AIKeyBySecretHash(ctx, hash)
}

func (d *downStore) AIKeyByKey(ctx context.Context, key string) (*keybridge.AIKey, error) {
	if d.down.Load() {
		return nil, errDBRefused
	}
	return d.relayStore.AIKeyByKey(ctx, key)
}

// While the store cannot be reached, the routes cached before the
// subscription went deaf keep serving for the gateway's OutageGrace; a
// provider not cached answers 503 (the store could not say it does not
// exist), and so does every route once the grace is over. Once the store
// is back and heard again, everything is served from it.
func TestRoutesStaleWhileStoreDown(t *testing.T) {
	const grace = 1500 * time.Millisecond
	st := &downStore{relayStore: &relayStore{Store: storetest.SQLite(t)}}
	e := newEnvWith(t, st, envOptions{Gateway: gateway.Options{OutageGrace: grace}})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer up.Close()
	for _, name := range []string{"oai", "cold"} {
		e.provider(map[string]any{"name": name, "type": "openai", "base_url": up.URL + "/v1"})
		e.addKey(name, canary(t, "sk-"), 0)
	}
	call := func(provider string) (int, string) {
		t.Helper()
		resp, body := e.do(e.post("/gateway/"+provider+"/chat/completions", e.OwnerKey, `{"model":"gpt"}`))
		return resp.StatusCode, string(body)
	}
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	if got, body := call("oai"); got != http.StatusOK {
		t.Fatalf("gateway = %d %s, want 200", got, body)
	}

	st.down.Store(true)
	deaf := time.Now()
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateDeaf})
	if got, body := call("oai"); got != http.StatusOK {
		t.Errorf("gateway to a cached route with the store down = %d %s, want 200", got, body)
	}
	if got, body := call("cold"); got != http.StatusServiceUnavailable || !strings.Contains(body, "database") {
		t.Errorf("gateway to a route never cached with the store down = %d %s, want 503 naming the database", got, body)
	}
	// A reconnect that fails says deaf again: the grace is not extended.
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateDeaf})
	time.Sleep(time.Until(deaf.Add(grace + 100*time.Millisecond)))
	if got, body := call("oai"); got != http.StatusServiceUnavailable {
		t.Errorf("gateway to a cached route %v into the outage (grace %v) = %d %s, want 503",
			time.Since(deaf).Round(time.Millisecond), grace, got, body)
	}

	st.down.Store(false)
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	for _, p := range []string{"oai", "cold"} {
		if got, body := call(p); got != http.StatusOK {
			t.Errorf("gateway to %s after the store is back = %d %s, want 200", p, got, body)
		}
	}
}

// An AWS AI key pair that signed requests (SigV4) before the store went
// away keeps signing them for auth's OutageGrace, as a bearer key does:
// its signature is still checked against its secret, from the cache. A
// pair never verified, or one revoked before the outage (and heard), gets
// 503, never 401; so does every pair once the grace is over.
func TestSigV4StaleWhileStoreDown(t *testing.T) {
	const grace = 1500 * time.Millisecond
	ctx := context.Background()
	st := &downStore{relayStore: &relayStore{Store: storetest.SQLite(t)}}
	// The routes' grace is the default minute: a 503 past auth's grace is
	// the key's.
	b := newBrEnvWith(t, st, envOptions{Auth: auth.Options{OutageGrace: grace}})
	newPair := func(project string) (id, key, secret string) {
		t.Helper()
		pid := b.api("POST", "/api/v1/orgs/acme/projects", b.OwnerKey, map[string]any{"name": project}, 201)["id"].(string)
		out := b.api("POST", "/api/v1/orgs/acme/projects/"+pid+"/ai-keys", b.OwnerKey,
			map[string]any{"name": "k", "ai_type": "AWS"}, 201)
		return pid + "/ai-keys/" + out["id"].(string), out["key"].(string), out["secret"].(string)
	}
	revoked, revokedKey, revokedSecret := newPair("revoked")
	_, neverKey, neverSecret := newPair("never")
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	for _, pair := range [][2]string{{b.awsKey, b.awsSecr}, {revokedKey, revokedSecret}} {
		if _, err := b.client("br", pair[0], pair[1]).Converse(ctx, brConverse(brModel)); err != nil {
			t.Fatalf("Converse before the outage: %v", err)
		}
	}
	// Revoked, and heard by this replica, before the outage.
	b.api("DELETE", "/api/v1/orgs/acme/projects/"+revoked, b.OwnerKey, nil, http.StatusNoContent)
	revokedID := revoked[strings.LastIndexByte(revoked, '/')+1:]
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAIKey, ID: revokedID})

	st.down.Store(true)
	deaf := time.Now()
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateDeaf})
	served := len(b.mock.Requests())
	for range 2 {
		if _, err := b.client("br", b.awsKey, b.awsSecr).Converse(ctx, brConverse(brModel)); err != nil {
			t.Errorf("Converse signed by a pair verified before the outage, with the store down: %v, want served", err)
		}
	}
	if got := len(b.mock.Requests()) - served; got != 2 {
		t.Errorf("the provider got %d requests during the outage, want 2", got)
	}
	_, err := b.client("br", b.awsKey, b.awsSecr+"x").Converse(ctx, brConverse(brModel))
	brAPIError(t, err, 401, "UnrecognizedClientException", "unauthenticated", "AWS signature does not verify")
	_, err = b.client("br", neverKey, neverSecret).Converse(ctx, brConverse(brModel))
	brAPIError(t, err, 503, "ServiceUnavailableException", "unavailable", "database")
	_, err = b.client("br", revokedKey, revokedSecret).Converse(ctx, brConverse(brModel))
	brAPIError(t, err, 503, "ServiceUnavailableException", "unavailable", "database")
	// A reconnect that fails says deaf again: the grace is not extended.
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateDeaf})

	time.Sleep(time.Until(deaf.Add(grace + 100*time.Millisecond)))
	_, err = b.client("br", b.awsKey, b.awsSecr).Converse(ctx, brConverse(brModel))
	brAPIError(t, err, 503, "ServiceUnavailableException", "unavailable", "database")

	st.down.Store(false)
	st.send(t, 2, store.Invalidation{Kind: store.InvalidateAll})
	for _, pair := range [][2]string{{b.awsKey, b.awsSecr}, {neverKey, neverSecret}} {
		if _, err := b.client("br", pair[0], pair[1]).Converse(ctx, brConverse(brModel)); err != nil {
			t.Errorf("Converse after the store is back: %v", err)
		}
	}
	_, err = b.client("br", revokedKey, revokedSecret).Converse(ctx, brConverse(brModel))
	brAPIError(t, err, 401, "UnrecognizedClientException", "unauthenticated", "AWS signature does not verify")
	b.noKeybridgeSecrets(t, revokedKey, revokedSecret, neverKey, neverSecret)
	logs := b.waitLog(len(b.mock.Requests()))
	for _, secret := range []string{b.awsSecr, revokedSecret, neverSecret} {
		noCanary(t, secret, logs)
	}
}

package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

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
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
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

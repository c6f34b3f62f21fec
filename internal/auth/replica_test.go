package auth_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// Two replicas share one PostgreSQL schema: a change made through one
// reaches the other's cache within a second (SPEC §3).
func TestInvalidationAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	first, open := storetest.SharedPostgres(t)
	second := open()
	f := newFixture(t, first)
	member := f.addUser(t, "member@acme.test", "")
	f.join(t, f.org, member, keybridge.RoleAdmin)

	// Replica B caches only once its LISTEN is in place.
	b := startService(t, second, fastOptions())

	// within polls until check passes on replica B, failing after 1 s.
	within := func(what string, check func() bool) {
		t.Helper()
		start := time.Now()
		for !check() {
			if time.Since(start) > time.Second {
				t.Fatalf("%s: replica B still disagrees after 1 s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s reached replica B in %v", what, time.Since(start).Round(time.Millisecond))
	}
	cached := func(tok string) {
		t.Helper()
		before := b.CacheStats().Hits
		for range 3 {
			if _, err := b.VerifyAPIKey(ctx, tok); err != nil {
				t.Fatalf("VerifyAPIKey on replica B: %v", err)
			}
		}
		if b.CacheStats().Hits == before {
			t.Fatal("replica B did not answer from its cache")
		}
	}

	t.Run("suspend", func(t *testing.T) {
		tok, k := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
		cached(tok)
		f.update(t, k, func(k *keybridge.APIKey) { k.Status = keybridge.KeySuspended })
		within("suspension", func() bool {
			_, err := b.VerifyAPIKey(ctx, tok)
			return keybridge.IsCode(err, keybridge.EUnauthenticated)
		})
	})
	t.Run("demotion", func(t *testing.T) {
		tok, _ := f.newKey(t, member, keybridge.AllPermissions, nil)
		cached(tok)
		f.setRole(t, member, keybridge.RoleMember)
		within("demotion", func() bool {
			p, err := b.VerifyAPIKey(ctx, tok)
			return err == nil && p.Role == keybridge.RoleMember && !p.Permissions.Has(keybridge.PermProvidersWrite)
		})
	})
	t.Run("AI key delete", func(t *testing.T) {
		secret, k := f.newAIKey(t, keybridge.AIOpenAI)
		for range 2 {
			if _, err := b.VerifyAISecret(ctx, secret); err != nil {
				t.Fatalf("VerifyAISecret on replica B: %v", err)
			}
		}
		if err := first.DeleteAIKey(ctx, k.ProjectID, k.ID); err != nil {
			t.Fatalf("DeleteAIKey: %v", err)
		}
		within("AI key deletion", func() bool {
			_, err := b.VerifyAISecret(ctx, secret)
			return keybridge.IsCode(err, keybridge.EUnauthenticated)
		})
	})
}

// Uses are written in one batch per flush, never one write per request.
func TestLastUsedBatching(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := context.Background()
			cs := &countingStore{Store: eng.New(t)}
			f := newFixture(t, cs)
			s := auth.New(cs, fastOptions())
			stop := runService(t, s)
			defer stop()
			waitLive(t, s)
			tok1, k1 := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
			tok2, k2 := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
			secret, ai := f.newAIKey(t, keybridge.AIOpenAI)

			start := time.Now()
			for i := range 100 {
				tok := tok1
				if i%4 == 0 {
					tok = tok2
				}
				if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
					t.Fatalf("VerifyAPIKey: %v", err)
				}
			}
			if _, err := s.VerifyAISecret(ctx, secret); err != nil {
				t.Fatalf("VerifyAISecret: %v", err)
			}
			if got := len(cs.touchBatches()); got != 0 {
				t.Fatalf("%d last-used writes before Flush, want 0", got)
			}
			lastUsed := func(k *keybridge.APIKey) *time.Time {
				t.Helper()
				got, err := cs.APIKey(ctx, k.ID)
				if err != nil {
					t.Fatalf("APIKey: %v", err)
				}
				return got.LastUsedAt
			}
			if lu := lastUsed(k1); lu != nil {
				t.Fatalf("last_used_at before Flush = %v, want none", lu)
			}

			if err := s.Flush(ctx); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			end := time.Now()
			batches := cs.touchBatches()
			if len(batches) != 1 || len(batches[0]) != 2 {
				t.Fatalf("Flush wrote %d batches (%v), want one batch of both keys", len(batches), batches)
			}
			for _, k := range []*keybridge.APIKey{k1, k2} {
				lu := lastUsed(k)
				if lu == nil || lu.Before(start.Add(-time.Second)) || lu.After(end) {
					t.Errorf("last_used_at of %s = %v, want between %v and %v", k.ID, lu, start.Add(-time.Second), end)
				}
			}
			got, err := cs.AIKey(ctx, ai.ProjectID, ai.ID)
			if err != nil {
				t.Fatalf("AIKey: %v", err)
			}
			if got.LastUsedAt == nil {
				t.Error("AI key last_used_at after Flush = nil, want set")
			}

			if err := s.Flush(ctx); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			if got := len(cs.touchBatches()); got != 1 {
				t.Errorf("a Flush with no new use wrote; %d batches, want 1", got)
			}

			// Run writes what is pending when it stops.
			tok3, k3 := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
			if _, err := s.VerifyAPIKey(ctx, tok3); err != nil {
				t.Fatalf("VerifyAPIKey: %v", err)
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if lastUsed(k3) == nil {
				t.Error("last_used_at after Run stopped = nil, want set")
			}
		})
	}
}

// The flusher runs by itself every TouchInterval.
func TestLastUsedFlushedPeriodically(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: storetest.SQLite(t)}
	f := newFixture(t, cs)
	opts := fastOptions()
	opts.TouchInterval = 20 * time.Millisecond
	s := startService(t, cs, opts)
	tok, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		t.Fatalf("VerifyAPIKey: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(cs.touchBatches()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no last-used batch written within 5 s at a 20 ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A flush of very many keys is cut into transactions of at most 1,000, so
// it never holds the database's writer for long.
func TestLastUsedLargeFlushIsBatched(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: storetest.SQLite(t)}
	f := newFixture(t, cs)
	s := startService(t, cs, fastOptions())
	var keys []*keybridge.APIKey
	var toks []string
	err := cs.InTx(ctx, func(tx store.Store) error {
		for range 2500 {
			tok, k := keyFor(t, f.org, f.owner, keybridge.AllPermissions)
			if err := tx.CreateAPIKey(ctx, k); err != nil {
				return err
			}
			keys, toks = append(keys, k), append(toks, tok)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("create keys: %v", err)
	}
	for _, tok := range toks {
		if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
			t.Fatalf("VerifyAPIKey: %v", err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	written := map[string]bool{}
	batches := cs.touchBatches()
	for _, b := range batches {
		if len(b) > 1000 {
			t.Errorf("a batch of %d keys, want at most 1000", len(b))
		}
		for id := range b {
			written[id] = true
		}
	}
	if len(batches) != 3 || len(written) != len(keys) {
		t.Errorf("Flush wrote %d keys in %d batches, want %d in 3", len(written), len(batches), len(keys))
	}
	for _, k := range []*keybridge.APIKey{keys[0], keys[len(keys)-1]} {
		got, err := cs.APIKey(ctx, k.ID)
		if err != nil || got.LastUsedAt == nil {
			t.Errorf("last_used_at of %s = %v (%v), want set", k.ID, got, err)
		}
	}
}

// relayStore is a real store whose subscription is driven by the test:
// it announces InvalidateAll, then relays what the test sends, in order,
// and nothing the store itself publishes.
type relayStore struct {
	store.Store
	relay   chan store.Invalidation
	applied chan struct{}
}

// send has the subscriber hear inv, and returns once it has.
func (r *relayStore) send(inv store.Invalidation) {
	r.relay <- inv
	<-r.applied
}

func (r *relayStore) Subscribe(ctx context.Context, fn func(store.Invalidation)) error {
	fn(store.Invalidation{Kind: store.InvalidateAll})
	for {
		select {
		case <-ctx.Done():
			return nil
		case inv := <-r.relay:
			fn(inv)
			r.applied <- struct{}{}
		}
	}
}

// A cache whose subscription says it stopped hearing changes drops what it
// holds and answers from the store until it hears everything again: a
// revocation published meanwhile is missed, and must not be answered from
// a stale entry.
func TestCacheOffWhileDeaf(t *testing.T) {
	ctx := context.Background()
	st := &relayStore{Store: storetest.SQLite(t), relay: make(chan store.Invalidation), applied: make(chan struct{})}
	f := newFixture(t, st)
	s := startService(t, st, fastOptions())
	tok, k := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	for range 2 {
		if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
			t.Fatalf("VerifyAPIKey: %v", err)
		}
	}
	if got := s.CacheStats(); !got.Live || got.Hits == 0 {
		t.Fatalf("before: CacheStats = %+v, want live with a hit", got)
	}

	st.send(store.Invalidation{Kind: store.InvalidateDeaf})
	if got := s.CacheStats(); got.Live || got.Entries != 0 {
		t.Errorf("deaf: CacheStats = %+v, want off and empty", got)
	}
	// A verification while deaf must not fill the cache again: the
	// suspension's invalidation is not relayed, the cache never hears it.
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		t.Fatalf("VerifyAPIKey while deaf: %v", err)
	}
	f.update(t, k, func(k *keybridge.APIKey) { k.Status = keybridge.KeySuspended })
	_, err := s.VerifyAPIKey(ctx, tok)
	wantCode(t, "VerifyAPIKey of a key suspended while deaf", err, keybridge.EUnauthenticated)

	st.send(store.Invalidation{Kind: store.InvalidateAll})
	if got := s.CacheStats(); !got.Live {
		t.Errorf("hearing again: CacheStats = %+v, want live", got)
	}
}

// outageStore is a relayStore whose lookups of credentials fail, while
// down is set, as they do when the database cannot be reached.
type outageStore struct {
	*relayStore
	down atomic.Bool
}

var errRefused = fmt.Errorf("connect: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})

func (o *outageStore) APIKeyByHash(ctx context.Context, hash []byte) (*keybridge.APIKey, error) {
	if o.down.Load() {
		return nil, errRefused
	}
	return o.relayStore.APIKeyByHash(ctx, hash)
}

func (o *outageStore) AIKeyBySecretHash(ctx context.Context, hash []byte) (*keybridge.AIKey, error) {
	if o.down.Load() {
		return nil, errRefused
	}
	return o.relayStore.AIKeyBySecretHash(ctx, hash)
}

// While the database cannot be reached, keys verified before it went away
// keep verifying for OutageGrace from the moment the subscription went
// deaf, and no longer; a key the cache did not hold, or one that reaches
// its own expiry meanwhile, is refused with the store's error (a 503 at the
// edges), never answered 401 as if it were bad. When the subscription
// hears again, the stale set is gone.
func TestOutageGrace(t *testing.T) {
	ctx := context.Background()
	const grace = 2 * time.Second
	relay := &relayStore{Store: storetest.SQLite(t), relay: make(chan store.Invalidation), applied: make(chan struct{})}
	st := &outageStore{relayStore: relay}
	f := newFixture(t, st)
	opts := fastOptions()
	opts.OutageGrace = grace
	s := startService(t, st, opts)
	tok, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	expiring, _ := f.newKey(t, f.owner, keybridge.AllPermissions, func(k *keybridge.APIKey) {
		at := time.Now().Add(grace / 2)
		k.ExpiresAt = &at
	})
	aiTok, _ := f.newAIKey(t, keybridge.AIOpenAI)
	uncached, _ := f.newKey(t, f.owner, keybridge.AllPermissions, nil)
	for _, verify := range []func() error{
		func() error { _, err := s.VerifyAPIKey(ctx, tok); return err },
		func() error { _, err := s.VerifyAPIKey(ctx, expiring); return err },
		func() error { _, err := s.VerifyAISecret(ctx, aiTok); return err },
	} {
		if err := verify(); err != nil {
			t.Fatalf("verify before the outage: %v", err)
		}
	}

	st.down.Store(true)
	wentDeaf := time.Now()
	relay.send(store.Invalidation{Kind: store.InvalidateDeaf})
	if p, err := s.VerifyAPIKey(ctx, tok); err != nil || p.UserID != f.owner.ID {
		t.Errorf("VerifyAPIKey of a cached key during the outage = %v, %v; want its principal", p, err)
	}
	if _, err := s.VerifyAISecret(ctx, aiTok); err != nil {
		t.Errorf("VerifyAISecret of a cached AI key during the outage = %v, want nil", err)
	}
	_, err := s.VerifyAPIKey(ctx, uncached)
	if !store.Unavailable(err) {
		t.Errorf("VerifyAPIKey of a key not cached during the outage = %v, want the store's unavailability", err)
	}
	// A reconnect that fails says deaf again: that must not extend the grace.
	relay.send(store.Invalidation{Kind: store.InvalidateDeaf})
	if got := s.CacheStats(); got.Live || got.StaleHits < 2 {
		t.Errorf("during the outage CacheStats = %+v, want off with 2 stale hits", got)
	}

	time.Sleep(time.Until(wentDeaf.Add(grace/2 + 100*time.Millisecond)))
	if _, err := s.VerifyAPIKey(ctx, expiring); !store.Unavailable(err) {
		t.Errorf("VerifyAPIKey of a key past its expiry during the outage = %v, want the store's unavailability", err)
	}
	time.Sleep(time.Until(wentDeaf.Add(grace + 100*time.Millisecond)))
	if _, err := s.VerifyAPIKey(ctx, tok); !store.Unavailable(err) {
		t.Errorf("VerifyAPIKey of a cached key %v into the outage (grace %v) = %v, want the store's unavailability",
			time.Since(wentDeaf).Round(time.Millisecond), grace, err)
	}

	// The database is back and the subscription hears again.
	st.down.Store(false)
	relay.send(store.Invalidation{Kind: store.InvalidateAll})
	for _, k := range []string{tok, uncached} {
		if _, err := s.VerifyAPIKey(ctx, k); err != nil {
			t.Errorf("VerifyAPIKey after the outage = %v, want nil", err)
		}
	}
	// A later outage starts a grace of its own, from what is cached then.
	st.down.Store(true)
	relay.send(store.Invalidation{Kind: store.InvalidateDeaf})
	if _, err := s.VerifyAPIKey(ctx, uncached); err != nil {
		t.Errorf("VerifyAPIKey of a key cached since, in a second outage = %v, want nil", err)
	}
	st.down.Store(false)
}

func (o *outageStore) AIKeyByKey(ctx context.Context, key string) (*keybridge.AIKey, error) {
	if o.down.Load() {
		return nil, errRefused
	}
	return o.relayStore.AIKeyByKey(ctx, key)
}

// A SigV4 pair verified before the database went away verifies from the
// stale set for OutageGrace, as its secret does as a bearer token, its
// signature still checked; a pair never verified gets the store's error.
func TestOutageGraceSigV4(t *testing.T) {
	ctx := context.Background()
	const grace = time.Second
	relay := &relayStore{Store: storetest.SQLite(t), relay: make(chan store.Invalidation), applied: make(chan struct{})}
	st := &outageStore{relayStore: relay}
	f := newFixture(t, st)
	ring := f.openRing(t)
	opts := fastOptions()
	opts.OutageGrace, opts.Ring = grace, ring
	s := startService(t, st, opts)
	srv, verdicts := sigV4Server(t, s)
	secret, k := f.newSealedAIKey(t, ring, keybridge.AIAWS)
	neverSecret, never := f.newSealedAIKey(t, ring, keybridge.AIAWS)
	if err := invoke(ctx, bedrockClient(srv, k.Key, secret, nil), modelWithColon); err != nil {
		t.Fatalf("invoke before the outage: %v", err)
	}
	verdicts()

	st.down.Store(true)
	wentDeaf := time.Now()
	relay.send(store.Invalidation{Kind: store.InvalidateDeaf})
	invoke(ctx, bedrockClient(srv, k.Key, secret, nil), modelWithColon)
	invoke(ctx, bedrockClient(srv, k.Key, secret+"x", nil), modelWithColon)
	invoke(ctx, bedrockClient(srv, never.Key, neverSecret, nil), modelWithColon)
	v := verdicts()
	if len(v) != 3 {
		t.Fatalf("%d verdicts, want 3", len(v))
	}
	if v[0].err != nil || v[0].p.KeyID != k.ID {
		t.Errorf("VerifySigV4 of a pair verified before the outage = %v, %v; want its principal", v[0].p, v[0].err)
	}
	wantCode(t, "VerifySigV4 with a wrong secret during the outage", v[1].err, keybridge.EUnauthenticated)
	if !store.Unavailable(v[2].err) {
		t.Errorf("VerifySigV4 of a pair never verified during the outage = %v, want the store's unavailability", v[2].err)
	}
	if got := s.CacheStats(); got.StaleHits < 2 {
		t.Errorf("CacheStats = %+v, want 2 stale hits", got)
	}

	time.Sleep(time.Until(wentDeaf.Add(grace + 100*time.Millisecond)))
	invoke(ctx, bedrockClient(srv, k.Key, secret, nil), modelWithColon)
	if v := verdicts(); len(v) != 1 || !store.Unavailable(v[0].err) {
		t.Errorf("VerifySigV4 past the grace = %+v, want the store's unavailability", v)
	}
	st.down.Store(false)
}

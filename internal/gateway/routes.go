package gateway

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
)

// A route is everything the gateway needs to forward to one provider,
// read once from the store and held in memory: the provider, where it
// lives, its opened settings and its enabled upstream keys in the order
// they are tried. Routes are immutable; a change in the store replaces them.
type route struct {
	provider *keybridge.Provider
	settings keybridge.ProviderSettings
	// keys are the enabled upstream keys, by priority then creation.
	keys []*upstreamKey

	pool     poolKey
	hostHdr  string // the Host header: the base URL's host[:port]
	basePath string // the base URL's path, without a trailing slash
}

// upstreamKey is one opened upstream key.
type upstreamKey struct {
	id     string
	secret keybridge.Secret
	// credential is the id of the personal credential this key is (""
	// for the org's keys), for its last_used_at. id stays "" for one:
	// cooldowns are for the org's keys.
	credential string
}

// routeKey names a route: a provider name within an org.
type routeKey struct{ org, name string }

// credKey names a personal credential: a user's, for a provider.
type credKey struct{ user, provider string }

// cached is one cache entry: a route or credential, or a remembered
// absence (nil), until its deadline.
type cached[T any] struct {
	v        *T
	deadline int64
}

// cacheTTL bounds how long an entry is trusted without news from the
// store. Changes arrive at once through invalidations; the TTL only limits
// the harm of one that was lost.
const cacheTTL = int64(time.Minute)

// routes caches routes and personal credentials. Reads are lock-free
// loads of immutable maps; a miss reads the store and publishes a copy
// of the map with the new entry. Misses are rare (one per provider per
// minute at most), so copying is cheaper than locking every read.
type routes struct {
	st    store.Store
	ring  *secrets.Ring
	epoch time.Time

	// live is set once the store's subscription hears every change;
	// until then nothing is cached, because a change could be missed.
	live atomic.Bool
	// gen changes with every invalidation, so that a load that raced
	// one is used once but not cached.
	gen atomic.Uint64

	mu     sync.Mutex // serializes writers of the maps
	byName atomic.Pointer[map[routeKey]cached[route]]
	creds  atomic.Pointer[map[credKey]cached[upstreamKey]]
}

func newRoutes(st store.Store, ring *secrets.Ring) *routes {
	r := &routes{st: st, ring: ring, epoch: time.Now()}
	r.byName.Store(&map[routeKey]cached[route]{})
	r.creds.Store(&map[credKey]cached[upstreamKey]{})
	return r
}

func (r *routes) now() int64 { return int64(time.Since(r.epoch)) }

// route returns the enabled provider named name in org, or nil.
func (r *routes) route(ctx context.Context, org, name string) (*route, error) {
	k := routeKey{org, name}
	if e, ok := (*r.byName.Load())[k]; ok && r.now() < e.deadline {
		return e.v, nil
	}
	gen := r.gen.Load()
	rt, err := r.loadRoute(ctx, org, name)
	if err != nil {
		return nil, err
	}
	storeEntry(r, &r.byName, gen, k, rt)
	return rt, nil
}

// credential returns user's personal key for provider, or nil. It is
// shared: callers must not change it.
func (r *routes) credential(ctx context.Context, user, provider string) (*upstreamKey, error) {
	k := credKey{user, provider}
	if e, ok := (*r.creds.Load())[k]; ok && r.now() < e.deadline {
		return e.v, nil
	}
	gen := r.gen.Load()
	c, err := r.st.CredentialFor(ctx, user, provider)
	var sec *upstreamKey
	switch {
	case keybridge.IsCode(err, keybridge.ENotFound):
	case err != nil:
		return nil, fmt.Errorf("look up personal credential: %w", err)
	default:
		plain, err := r.ring.Open(c.Sealed, keybridge.SealedCredential.AD(c.ID))
		if err != nil {
			return nil, fmt.Errorf("open personal credential: %w", err)
		}
		sec = &upstreamKey{secret: keybridge.NewSecret(string(plain)), credential: c.ID}
	}
	storeEntry(r, &r.creds, gen, k, sec)
	return sec, nil
}

// storeEntry publishes a copy of m with k set to v, unless the cache is
// off or an invalidation came after the value was read.
func storeEntry[K comparable, T any](r *routes, m *atomic.Pointer[map[K]cached[T]], gen uint64, k K, v *T) {
	if !r.live.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen.Load() != gen {
		return
	}
	old := *m.Load()
	next := make(map[K]cached[T], len(old)+1)
	now := r.now()
	for ok, ov := range old {
		if now < ov.deadline {
			next[ok] = ov
		}
	}
	next[k] = cached[T]{v: v, deadline: now + cacheTTL}
	m.Store(&next)
}

// loadRoute reads a provider and its keys from the store and opens their
// secrets. A missing or disabled provider is nil.
func (r *routes) loadRoute(ctx context.Context, org, name string) (*route, error) {
	p, err := r.st.Provider(ctx, org, name)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up provider: %w", err)
	}
	if !p.Enabled {
		return nil, nil
	}
	rt := &route{provider: p}
	if len(p.SettingsSealed) > 0 {
		plain, err := r.ring.Open(p.SettingsSealed, keybridge.SealedProviderSettings.AD(p.ID))
		if err != nil {
			return nil, fmt.Errorf("open provider settings: %w", err)
		}
		if err := rt.settings.UnmarshalSealed(plain); err != nil {
			return nil, fmt.Errorf("read provider settings: %w", err)
		}
	}
	base := p.BaseURL
	if base == "" {
		base = keybridge.DefaultBaseURL(p.Type, rt.settings.Region)
	}
	if err := rt.setBase(base); err != nil {
		return nil, err
	}
	if p.Type == keybridge.ProviderBedrock {
		return rt, nil // Bedrock signs with its settings; it has no keys.
	}
	keys, err := r.st.ProviderKeys(ctx, p.ID)
	if err != nil {
		return nil, fmt.Errorf("list provider keys: %w", err)
	}
	for _, k := range keys {
		if !k.Enabled {
			continue
		}
		plain, err := r.ring.Open(k.Sealed, keybridge.SealedProviderKey.AD(k.ID))
		if err != nil {
			return nil, fmt.Errorf("open provider key: %w", err)
		}
		rt.keys = append(rt.keys, &upstreamKey{id: k.ID, secret: keybridge.NewSecret(string(plain))})
	}
	return rt, nil
}

// setBase parses the provider's base URL into where to connect and what
// to prefix paths with.
func (rt *route) setBase(base string) error {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("provider %s: base URL is not an absolute http(s) URL", rt.provider.ID)
	}
	host, port := u.Hostname(), u.Port()
	tls := u.Scheme == "https"
	if port == "" {
		port = "80"
		if tls {
			port = "443"
		}
	}
	rt.pool = poolKey{tls: tls, addr: net.JoinHostPort(host, port), host: host}
	rt.hostHdr = u.Host
	rt.basePath = strings.TrimRight(u.EscapedPath(), "/")
	return nil
}

// invalidate applies one invalidation from the store.
func (r *routes) invalidate(inv store.Invalidation) {
	switch inv.Kind {
	case store.InvalidateProvider, store.InvalidateProviderKey:
		r.drop(func(k routeKey) bool { return k.org == inv.Org }, nil)
	case store.InvalidateCredential:
		r.drop(nil, func(k credKey) bool { return k.user == inv.ID })
	case store.InvalidateAll:
		r.drop(func(routeKey) bool { return true }, func(credKey) bool { return true })
		r.live.Store(true)
	case store.InvalidateDeaf:
		r.stop()
	case store.InvalidateAPIKey, store.InvalidateAIKey, store.InvalidateUser, store.InvalidateKeyRing:
		// Caller credentials are auth's; the ring's rotation leaves opened
		// secrets as they were.
	default:
		// A kind this version does not know may concern a route.
		r.drop(func(routeKey) bool { return true }, func(credKey) bool { return true })
	}
}

// drop removes the entries the predicates match (nil matches none).
func (r *routes) drop(routeMatch func(routeKey) bool, credMatch func(credKey) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen.Add(1)
	if routeMatch != nil {
		dropFrom(&r.byName, routeMatch)
	}
	if credMatch != nil {
		dropFrom(&r.creds, credMatch)
	}
}

func dropFrom[K comparable, T any](m *atomic.Pointer[map[K]cached[T]], match func(K) bool) {
	old := *m.Load()
	next := make(map[K]cached[T], len(old))
	for k, v := range old {
		if !match(k) {
			next[k] = v
		}
	}
	m.Store(&next)
}

// stop turns the cache off, when the subscription ends or stops hearing
// changes.
func (r *routes) stop() {
	r.live.Store(false)
	r.drop(func(routeKey) bool { return true }, func(credKey) bool { return true })
}

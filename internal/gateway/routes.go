package gateway

import (
	"context"
	"fmt"
	"maps"
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

	// grace is how long, once the subscription went deaf, what was
	// cached then stands in for a store that cannot be reached; staleUntil
	// ends it, and staleRoutes and staleCreds hold it (mu guards the three;
	// only requests that found the store down read them).
	grace       int64
	staleUntil  int64
	staleRoutes map[routeKey]cached[route]
	staleCreds  map[credKey]cached[upstreamKey]
}

func newRoutes(st store.Store, ring *secrets.Ring, grace time.Duration) *routes {
	r := &routes{st: st, ring: ring, epoch: time.Now(), grace: int64(grace)}
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
		var v *route
		if r.stale(err, func() bool { e, ok := r.staleRoutes[k]; v = e.v; return ok }) {
			return v, nil
		}
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
		var v *upstreamKey
		if r.stale(err, func() bool { e, ok := r.staleCreds[k]; v = e.v; return ok }) {
			return v, nil
		}
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

// stale reports whether look, run under r.mu, found an answer among what
// was cached when the subscription went deaf: only when err says the store
// cannot be reached, and only until the grace ends.
func (r *routes) stale(err error, look func() bool) bool {
	if !store.Unavailable(err) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.now() < r.staleUntil && look()
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
		r.mu.Lock()
		r.staleUntil, r.staleRoutes, r.staleCreds = 0, nil, nil
		r.mu.Unlock()
		r.live.Store(true)
	case store.InvalidateDeaf:
		r.goDeaf()
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
	// A change this process commits reaches it even while deaf: the
	// stale entries it concerns go too.
	if routeMatch != nil {
		dropFrom(&r.byName, routeMatch)
		maps.DeleteFunc(r.staleRoutes, func(k routeKey, _ cached[route]) bool { return routeMatch(k) })
	}
	if credMatch != nil {
		dropFrom(&r.creds, credMatch)
		maps.DeleteFunc(r.staleCreds, func(k credKey, _ cached[upstreamKey]) bool { return credMatch(k) })
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

// stop turns the cache off, and forgets what it set aside, when the
// subscription ends.
func (r *routes) stop() {
	r.live.Store(false)
	r.drop(func(routeKey) bool { return true }, func(credKey) bool { return true })
	r.mu.Lock()
	r.staleUntil, r.staleRoutes, r.staleCreds = 0, nil, nil
	r.mu.Unlock()
}

// goDeaf turns the cache off when the subscription stops hearing changes.
// If it was live, what it holds that is still valid is kept aside for the
// grace, for requests that find the store down (docs/scaling.md); a cache
// already deaf keeps what it set aside, so that failed reconnects never
// extend the grace.
func (r *routes) goDeaf() {
	wasLive := r.live.Swap(false)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen.Add(1)
	if wasLive {
		r.staleUntil, r.staleRoutes, r.staleCreds = 0, nil, nil
		if r.grace > 0 {
			now := r.now()
			r.staleUntil = now + r.grace
			r.staleRoutes = validAt(*r.byName.Load(), now)
			r.staleCreds = validAt(*r.creds.Load(), now)
		}
	}
	r.byName.Store(&map[routeKey]cached[route]{})
	r.creds.Store(&map[credKey]cached[upstreamKey]{})
}

// validAt is a copy of m's entries whose deadline is after now.
func validAt[K comparable, T any](m map[K]cached[T], now int64) map[K]cached[T] {
	out := make(map[K]cached[T], len(m))
	for k, v := range m {
		if now < v.deadline {
			out[k] = v
		}
	}
	return out
}

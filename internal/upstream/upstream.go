// Package upstream is how Keybridge talks to providers outside the gateway's
// request path: an egress-guarded HTTP client, each provider type's
// model-list probe, and the parsing of provider rate-limit headers.
//
// Every outbound connection goes through a Guard (egress.go), which checks
// the resolved address at dial time; the gateway builds its own connections
// from the same Guard, so there is one egress policy.
package upstream

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Options configures a Client.
type Options struct {
	// DenyCIDRs are refused at dial time in addition to link-local and
	// metadata addresses, which are always refused.
	DenyCIDRs []netip.Prefix
	// Timeout bounds one probe (default 10 s).
	Timeout time.Duration
	// CacheTTL is how long CachedProbe keeps a result (default 60 s).
	CacheTTL time.Duration
	// Resolver resolves provider hostnames; nil means the system's.
	Resolver *net.Resolver
}

// Default values of Options.
const (
	DefaultTimeout  = 10 * time.Second
	DefaultCacheTTL = 60 * time.Second
)

// Client calls providers. It is safe for concurrent use.
type Client struct {
	opts  Options
	guard *Guard
	http  *http.Client

	mu    sync.Mutex
	cache map[string]cacheEntry
}

// maxCacheEntries bounds the cache: past it, expired entries go, and if
// that is not enough, all of them (a burst of distinct keys costs one
// round of fresh probes, never unbounded memory).
const maxCacheEntries = 4096

type cacheEntry struct {
	res     Result
	expires time.Time
}

// New returns a Client.
func New(opts Options) *Client {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	g := NewGuard(opts.DenyCIDRs)
	return &Client{
		opts:  opts,
		guard: g,
		http: &http.Client{
			Transport: g.Transport(opts.Resolver),
			// A redirect would carry provider headers (x-api-key,
			// api-key) to wherever the provider points; a probe
			// reports the redirect instead of following it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		cache: map[string]cacheEntry{},
	}
}

// Guard returns the client's egress guard, for the gateway to dial with.
func (c *Client) Guard() *Guard { return c.guard }

// Resolver returns the resolver the client dials with (nil: the system's).
func (c *Client) Resolver() *net.Resolver { return c.opts.Resolver }

// Target is what a probe calls: a provider's type, base URL, key and
// settings. An empty BaseURL means the type's default.
type Target struct {
	Type     keybridge.ProviderType
	BaseURL  string
	APIKey   keybridge.Secret
	Settings keybridge.ProviderSettings
}

// Result is what a probe found (SPEC §4, "test without saving").
type Result struct {
	// Reachable is true when the provider answered the model list with
	// a 2xx status.
	Reachable bool `json:"reachable"`
	// Error says what went wrong, in words safe to show: it never holds
	// the key or anything the provider echoed back.
	Error string `json:"error,omitempty"`
	// StatusCode is the provider's HTTP status, when it answered.
	StatusCode int   `json:"status_code,omitempty"`
	LatencyMS  int64 `json:"latency_ms"`
	// Models are the model IDs the provider listed.
	Models     []string   `json:"models"`
	RateLimits RateLimits `json:"rate_limits"`
	// CheckedAt is when the provider was asked; with CachedProbe it may
	// be up to the cache's TTL ago.
	CheckedAt time.Time `json:"checked_at"`

	cause error
}

// Cause is the transport error behind a Result whose provider could not be
// reached (or whose model list was cut), for the server's log: the answer
// shows only ErrUnreachable. It never holds a header, so never a key; the
// URL it may name holds none.
func (r Result) Cause() error { return r.cause }

// Cached reports whether CachedProbe would answer key from the cache now.
func (c *Client) Cached(key string) bool {
	_, ok := c.cached(key, time.Now())
	return ok
}

// cached is key's result in the cache, if it is still fresh at now.
func (c *Client) cached(key string, now time.Time) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[key]
	if !ok || !now.Before(e.expires) {
		return Result{}, false
	}
	return e.res, true
}

// CachedProbe is Probe behind a cache of the client's TTL, keyed by key
// (callers put in it whatever must change the answer: the upstream key's
// ID, the provider's last update). refresh skips the cache and stores the
// new result. It reports whether the result came from the cache.
func (c *Client) CachedProbe(ctx context.Context, key string, refresh bool, t Target) (Result, bool) {
	now := time.Now()
	if !refresh {
		if res, ok := c.cached(key, now); ok {
			return res, true
		}
	}
	res := c.Probe(ctx, t)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cache) >= maxCacheEntries {
		for k, e := range c.cache {
			if !now.Before(e.expires) {
				delete(c.cache, k)
			}
		}
		if len(c.cache) >= maxCacheEntries {
			clear(c.cache)
		}
	}
	c.cache[key] = cacheEntry{res: res, expires: time.Now().Add(c.opts.CacheTTL)}
	return res, false
}

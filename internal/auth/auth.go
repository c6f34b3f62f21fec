// Package auth decides who is calling: it verifies platform keys, AI key
// secrets and sessions (from an in-memory cache on the hot path), hashes
// passwords, rate-limits failed logins, batches last_used_at writes and
// checks permissions.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/redis/go-redis/v9"
)

// SessionCookie is the name of the web UI's session cookie.
const SessionCookie = "keybridge_session"

// Options configures a Service. Zero fields take the defaults named.
type Options struct {
	// Logger receives warnings: a flush that failed, Redis unreachable.
	// Nil discards them.
	Logger *slog.Logger
	// TouchInterval is how often batched last_used_at times are written
	// (default 30 s; SPEC allows up to a minute of lag).
	TouchInterval time.Duration
	// SessionTTL is how long a login lasts (default 12 h).
	SessionTTL time.Duration

	// Redis, when set, keeps the failed-login counters there, so that
	// every replica counts the same failures. Without it they are kept in
	// this process.
	Redis *redis.Client
	// The failed-login limits (each a count of failures in LoginWindow,
	// after which attempts get rate_limited until the window passes):
	// LoginAccountIPLimit per account and client IP, the one a user
	// mistyping meets (default 10); LoginIPLimit per IP over every account
	// (default 100); LoginAccountLimit per account over every IP, a
	// ceiling only a guess attack from many addresses reaches (default
	// 300). A stranger's failures from one IP therefore never block the
	// account's owner from another.
	LoginAccountIPLimit int
	LoginAccountLimit   int
	LoginIPLimit        int
	LoginWindow         time.Duration

	// CacheSize bounds, roughly, how many verified keys are cached
	// (default 1,048,576); past it a random entry makes room.
	CacheSize int
	// CacheTTL is how long a cached key is trusted without news of it
	// (default 1 min). Changes reach the cache at once through the store's
	// invalidations; the TTL only bounds the harm of one that was lost.
	CacheTTL time.Duration
	// NegativeTTL is how long a token the store does not know is
	// remembered as unknown (default 5 s), and NegativeCacheSize how many
	// such tokens are remembered (default 10,000; negative: none).
	NegativeTTL       time.Duration
	NegativeCacheSize int
	// OutageGrace is how long keys verified before the database went
	// away keep verifying while it cannot be reached (default 1 min;
	// negative: not at all). It starts when the store's subscription
	// stops hearing changes; a key reaching its own expiry meanwhile
	// stops at once. See docs/scaling.md.
	OutageGrace time.Duration

	// Ring opens the sealed secrets of AWS AI keys, which VerifySigV4
	// needs; nil refuses every SigV4 request.
	Ring *secrets.Ring
}

const (
	defaultTouchInterval = 30 * time.Second
	defaultSessionTTL    = 12 * time.Hour
	defaultCacheSize     = 1 << 20
	defaultCacheTTL      = time.Minute
	defaultNegativeTTL   = 5 * time.Second
	defaultNegativeSize  = 10_000
	defaultOutageGrace   = time.Minute

	// clockTick is how often Run advances the coarse clock, and
	// clockSlack how far behind it may fall before a hit stops trusting
	// it: a hit within clockSlack of its entry's deadline reads the
	// precise clock instead.
	clockTick  = 100 * time.Millisecond
	clockSlack = int64(2 * time.Second)
)

// Service authenticates and authorizes callers.
//
// Platform keys and AI key secrets are verified from an in-memory cache
// while Run is running, from the moment the store's subscription says it
// hears every change (its first InvalidateAll); before that, and without
// Run, the cache is off and every verification reads the store.
type Service struct {
	store store.Store
	opts  Options
	log   *slog.Logger

	cache *cache
	// epoch is the origin of the cache's clock; time.Since(epoch) reads
	// only the monotonic clock, half the cost of time.Now.
	epoch time.Time
	// clock is the coarse cache clock, nanoseconds since epoch, advanced
	// by Run every clockTick: reading it costs an atomic load, where even
	// time.Since costs a fifth of the hit path's budget.
	clock   atomic.Int64
	running atomic.Bool
	misses  atomic.Uint64

	limiter limiter

	flushMu    sync.Mutex
	pendingAPI map[string]time.Time // last uses not yet written (a failed flush)
	pendingAI  map[string]time.Time
}

// New returns a Service over st. Call Run to start its background work.
func New(st store.Store, opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&opts.TouchInterval, defaultTouchInterval)
	setDefault(&opts.SessionTTL, defaultSessionTTL)
	setDefault(&opts.CacheSize, defaultCacheSize)
	setDefault(&opts.CacheTTL, defaultCacheTTL)
	setDefault(&opts.NegativeTTL, defaultNegativeTTL)
	setDefault(&opts.NegativeCacheSize, defaultNegativeSize)
	setDefault(&opts.OutageGrace, defaultOutageGrace)
	setDefault(&opts.LoginAccountIPLimit, defaultAccountIPLimit)
	setDefault(&opts.LoginAccountLimit, defaultAccountLimit)
	setDefault(&opts.LoginIPLimit, defaultIPLimit)
	setDefault(&opts.LoginWindow, defaultLoginWindow)
	s := &Service{
		store:      st,
		opts:       opts,
		log:        opts.Logger,
		cache:      newCache(opts.CacheSize, opts.NegativeCacheSize),
		epoch:      time.Now(),
		pendingAPI: map[string]time.Time{},
		pendingAI:  map[string]time.Time{},
	}
	mem := newMemLimiter(opts.LoginWindow)
	s.limiter = mem
	if opts.Redis != nil {
		s.limiter = &redisLimiter{rdb: opts.Redis, window: opts.LoginWindow, fallback: mem, log: opts.Logger}
	}
	return s
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// Errors of verification. Every refusal of a credential gives the same
// message: a caller must not learn whether a key is unknown, suspended,
// revoked or expired. They are shared values, so a hit that fails does not
// allocate; callers must not change them.
var (
	errBadAPIKey     = keybridge.Errorf(keybridge.EUnauthenticated, "invalid API key")
	errBadAISecret   = keybridge.Errorf(keybridge.EUnauthenticated, "invalid AI key secret")
	errBadSession    = keybridge.Errorf(keybridge.EUnauthenticated, "invalid or expired session")
	errNoCredentials = keybridge.Errorf(keybridge.EUnauthenticated, "missing credentials")
	errBadAuthHeader = keybridge.Errorf(keybridge.EUnauthenticated, `the Authorization header must be "Bearer <API key>"`)
)

// now returns the precise cache clock: nanoseconds since s.epoch.
func (s *Service) now() int64 { return int64(time.Since(s.epoch)) }

// at turns a wall-clock time into the cache clock.
func (s *Service) at(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

// Run subscribes to invalidations and flushes last_used_at batches until
// ctx ends, then flushes once more. Uses of keys are recorded while it runs. The cache is on only while Run runs,
// and only once the subscription is in place, which the store announces
// with an InvalidateAll: a cache that could miss a revocation must not
// answer. Run returns early, with an error, if the subscription ends.
func (s *Service) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("auth: Run is already running")
	}
	defer s.running.Store(false)
	s.clock.Store(s.now())
	s.cache.setAccepting(true)
	// The first login of an unknown address would otherwise pay for
	// making the dummy hash too, and stand out by its time.
	warmed := make(chan struct{})
	go func() {
		defer close(warmed)
		dummyHash()
		// Its 64 MiB of argon2 memory is garbage now: hand it back to
		// the system, or an idle server holds it until the scavenger
		// gets to it, minutes later.
		debug.FreeOSMemory()
	}()
	defer func() { <-warmed }() // Run leaves nothing running behind it

	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	subDone := make(chan error, 1)
	go func() { subDone <- s.store.Subscribe(subCtx, s.invalidate) }()
	// The clock has its own goroutine: a slow flush must not hold it back
	// past clockSlack.
	clockDone := make(chan struct{})
	go func() {
		defer close(clockDone)
		tick := time.NewTicker(clockTick)
		defer tick.Stop()
		for {
			select {
			case <-subCtx.Done():
				return
			case <-tick.C:
				s.clock.Store(s.now())
			}
		}
	}()

	flush := time.NewTicker(s.opts.TouchInterval)
	defer flush.Stop()

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-flush.C:
			if err := s.Flush(ctx); err != nil {
				s.log.WarnContext(ctx, "write last used times of keys", "err", err)
			}
		case err := <-subDone:
			subDone = nil
			if ctx.Err() == nil {
				// No more news of changes: nothing cached may be trusted.
				if err == nil {
					err = errors.New("subscription ended")
				}
				runErr = fmt.Errorf("subscribe to invalidations: %w", err)
				break loop
			}
		}
	}
	cancel()
	if subDone != nil {
		<-subDone
	}
	<-clockDone
	s.cache.setAccepting(false)
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer fcancel()
	if err := s.Flush(fctx); err != nil {
		runErr = errors.Join(runErr, err)
	}
	return runErr
}

// invalidate applies one invalidation from the store. It runs in the
// goroutine that committed the change (this process) or in the store's
// listener (other processes), so it only takes locks, briefly.
func (s *Service) invalidate(inv store.Invalidation) {
	switch inv.Kind {
	case store.InvalidateAPIKey:
		s.cache.dropID(kindAPIKey, inv.ID)
	case store.InvalidateAIKey:
		s.cache.dropID(kindAIKey, inv.ID)
		s.cache.dropID(kindSigV4, inv.ID)
	case store.InvalidateUser:
		s.cache.dropUser(inv.ID)
	case store.InvalidateKeyRing:
		// The key ring protects provider secrets, not caller credentials.
	case store.InvalidateProvider, store.InvalidateProviderKey, store.InvalidateCredential:
		// Where the gateway sends a request, not who may send it: the
		// routing cache hears these. Clearing here, as for an unknown kind,
		// would empty this cache at every provider edit.
	case store.InvalidateAll:
		s.cache.clear(true)
	case store.InvalidateDeaf:
		s.cache.goDeaf(s.now(), int64(s.opts.OutageGrace))
	default:
		// A kind this version does not know may still concern a key.
		s.cache.clear(false)
	}
}

// touchBatch bounds the keys written in one transaction: a flush after a
// busy interval may hold very many, and one huge transaction would hold
// SQLite's only writer (or PostgreSQL's row locks) for seconds.
const touchBatch = 1000

// Flush writes pending last_used_at times now: one batch per table, or
// batches of touchBatch keys when there are more. Times that could not be
// written are kept for the next flush.
func (s *Service) Flush(ctx context.Context) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	wall := s.epoch.Round(0)
	s.cache.drainDirty(func(e *entry, sec int64) {
		if sec == 0 {
			return
		}
		t := wall.Add(time.Duration(sec-1) * time.Second).UTC()
		pending := s.pendingAPI
		if e.kind == kindAIKey || e.kind == kindSigV4 {
			pending = s.pendingAI
		}
		if old, ok := pending[e.id]; !ok || t.After(old) {
			pending[e.id] = t
		}
	})
	var errs []error
	if err := writeTouches(ctx, s.pendingAPI, s.store.TouchAPIKeys); err != nil {
		errs = append(errs, fmt.Errorf("touch API keys: %w", err))
	}
	if err := writeTouches(ctx, s.pendingAI, s.store.TouchAIKeys); err != nil {
		errs = append(errs, fmt.Errorf("touch AI keys: %w", err))
	}
	// Fresh maps: an emptied map keeps the memory of its largest batch.
	if len(s.pendingAPI) == 0 {
		s.pendingAPI = map[string]time.Time{}
	}
	if len(s.pendingAI) == 0 {
		s.pendingAI = map[string]time.Time{}
	}
	return errors.Join(errs...)
}

// writeTouches writes pending in batches, removing what was written.
func writeTouches(ctx context.Context, pending map[string]time.Time, touch func(context.Context, map[string]time.Time) error) error {
	for len(pending) > 0 {
		batch := pending
		if len(pending) > touchBatch {
			batch = make(map[string]time.Time, touchBatch)
			for id, t := range pending {
				if len(batch) == touchBatch {
					break
				}
				batch[id] = t
			}
		}
		if err := touch(ctx, batch); err != nil {
			return err
		}
		for id := range batch {
			delete(pending, id)
		}
	}
	return nil
}

// CacheStats describes the credential cache, for metrics and tests.
type CacheStats struct {
	// Live is true while verified keys are being cached.
	Live bool
	// Entries counts cached keys (refused ones included) and
	// NegativeEntries the tokens remembered as unknown.
	Entries         int
	NegativeEntries int
	// Hits and Misses count verifications answered from the cache and
	// from the store since New.
	Hits   uint64
	Misses uint64
	// StaleHits counts verifications answered, while the database could
	// not be reached, from the keys cached before it went away.
	StaleHits uint64
}

// CacheStats returns the cache's current figures.
func (s *Service) CacheStats() CacheStats {
	entries, hits := s.cache.stats()
	return CacheStats{
		Live:            s.cache.isLive(),
		Entries:         entries,
		NegativeEntries: s.cache.neg.len(),
		Hits:            hits,
		Misses:          s.misses.Load(),
		StaleHits:       s.cache.staleHits.Load(),
	}
}

// VerifyAPIKey returns the principal of a platform key, or unauthenticated.
//
// The principal is a snapshot shared by every request using the key until
// the key or its owner's role changes: callers must not modify it.
// Verification is constant time in what matters: the token is compared
// only as its SHA-256, so timing tells nothing about a valid token.
func (s *Service) VerifyAPIKey(ctx context.Context, token string) (*keybridge.Principal, error) {
	if !apikey.Valid(token, apikey.PlatformPrefix) {
		return nil, errBadAPIKey
	}
	h := apikey.Hash(token)
	if p, ok := s.cached(&h, kindAPIKey); ok {
		if p == nil {
			return nil, errBadAPIKey
		}
		return p, nil
	}
	return s.verifySlow(ctx, h, kindAPIKey)
}

// VerifyAISecret returns the principal of an AI key secret, or
// unauthenticated. Like VerifyAPIKey's, the principal is shared and must
// not be modified.
func (s *Service) VerifyAISecret(ctx context.Context, token string) (*keybridge.Principal, error) {
	if !apikey.Valid(token, apikey.AISecretPrefix) {
		return nil, errBadAISecret
	}
	h := apikey.Hash(token)
	if p, ok := s.cached(&h, kindAIKey); ok {
		if p == nil {
			return nil, errBadAISecret
		}
		return p, nil
	}
	return s.verifySlow(ctx, h, kindAIKey)
}

// cached answers from the cache when it can do so on the coarse clock:
// ok is false when the entry is missing or near its deadline.
// It is cache.get and cache.touch written out, so that the hit path makes
// no call of its own.
func (s *Service) cached(h *[32]byte, kind credKind) (p *keybridge.Principal, ok bool) {
	i, key := slot(h)
	sh := &s.cache.shards[i]
	e := sh.t.Load().find(h, key)
	if e == nil || e.kind != kind {
		return nil, false
	}
	now := s.clock.Load()
	if now >= e.fastUntil {
		return nil, false
	}
	sh.hits.Add(1)
	if e.p != nil {
		if sec := now/1e9 + 1; e.lastUsed.Load() != sec {
			s.cache.markUsed(e, sec)
		}
	}
	return e.p, true
}

func refusal(kind credKind) error {
	if kind == kindAIKey {
		return errBadAISecret
	}
	return errBadAPIKey
}

// verifySlow is the rest of verification: the precise clock for entries
// near their deadline, then the negative cache, then the store. h is
// passed by value so that the hit path's copy stays on its stack.
func (s *Service) verifySlow(ctx context.Context, h [32]byte, kind credKind) (*keybridge.Principal, error) {
	now := s.now()
	if e, sh := s.cache.get(&h); e != nil && e.kind == kind && now < e.deadline {
		sh.hits.Add(1)
		if e.p == nil {
			return nil, refusal(kind)
		}
		s.cache.touch(e, now)
		return e.p, nil
	}
	if s.cache.neg.has(&h, now) {
		return nil, refusal(kind)
	}
	s.misses.Add(1)
	gen := s.cache.gen.Load()
	var e *entry
	var err error
	if kind == kindAIKey {
		e, err = s.loadAIKey(ctx, h, now)
	} else {
		e, err = s.loadAPIKey(ctx, h, now)
	}
	if err != nil {
		if store.Unavailable(err) {
			// The database is away: a key verified before it went keeps
			// working for a while (docs/scaling.md); others get the 503.
			if p, ok := s.cache.staleGet(&h, kind, now); ok {
				return p, nil
			}
		}
		return nil, err
	}
	if e == nil {
		s.cache.neg.add(&h, now+int64(s.opts.NegativeTTL))
		return nil, refusal(kind)
	}
	e.fastUntil = e.deadline - clockSlack
	if e.deadline > now {
		s.cache.put(e, gen)
	}
	if e.p == nil {
		return nil, refusal(kind)
	}
	if s.running.Load() {
		// Without Run nothing would ever flush the use.
		s.cache.touch(e, now)
	}
	return e.p, nil
}

// loadAPIKey reads a platform key, its owner and the owner's role from the
// store. It returns nil for an unknown hash, and an entry with a nil
// principal for a key that exists but is refused.
func (s *Service) loadAPIKey(ctx context.Context, h [32]byte, now int64) (*entry, error) {
	k, err := s.store.APIKeyByHash(ctx, h[:])
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up API key: %w", err)
	}
	e := &entry{hash: h, kind: kindAPIKey, id: k.ID, userID: k.UserID, deadline: now + int64(s.opts.CacheTTL), hard: math.MaxInt64}
	if !k.Usable(time.Now()) {
		// Refused until the key changes, which invalidates it.
		return e, nil
	}
	m, err := s.store.Membership(ctx, k.OrgID, k.UserID)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		// The owner left the org. Re-adding them publishes an
		// invalidation that drops this refusal; it is also remembered
		// only briefly, so a lost notice cannot lock them out for long.
		e.deadline = now + int64(s.opts.NegativeTTL)
		return e, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up key owner's membership: %w", err)
	}
	u, err := s.store.User(ctx, k.UserID)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		e.deadline = now + int64(s.opts.NegativeTTL)
		return e, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up key owner: %w", err)
	}
	if k.ExpiresAt != nil {
		e.hard = min(e.hard, s.at(*k.ExpiresAt))
	}
	if k.GraceUntil != nil {
		e.hard = min(e.hard, s.at(*k.GraceUntil))
	}
	e.deadline = min(e.deadline, e.hard)
	e.p = &keybridge.Principal{
		Type:        keybridge.ActorAPIKey,
		UserID:      k.UserID,
		Email:       u.Email,
		KeyID:       k.ID,
		OrgID:       k.OrgID,
		Permissions: k.Permissions & m.Role.Permissions(),
		Role:        m.Role,
		Limits:      k.Limits,
		// Compiled once per cache load, not per request.
		AllowedModels: k.AllowedModels.Matcher(),
	}
	return e, nil
}

// loadAIKey reads an AI key by its secret's hash; nil when the store has no
// undeleted key with it.
func (s *Service) loadAIKey(ctx context.Context, h [32]byte, now int64) (*entry, error) {
	k, err := s.store.AIKeyBySecretHash(ctx, h[:])
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up AI key: %w", err)
	}
	e := &entry{hash: h, kind: kindAIKey, id: k.ID, deadline: now + int64(s.opts.CacheTTL), hard: math.MaxInt64}
	if k.DeletedAt != nil {
		return e, nil
	}
	e.p = aiPrincipal(k)
	return e, nil
}

// aiPrincipal is who an AI key acts as, however it proved itself.
func aiPrincipal(k *keybridge.AIKey) *keybridge.Principal {
	return &keybridge.Principal{
		Type:        keybridge.ActorAIKey,
		KeyID:       k.ID,
		OrgID:       k.OrgID,
		ProjectID:   k.ProjectID,
		AIType:      k.AIType,
		Permissions: keybridge.PermGatewayInvoke,
		Limits:      k.Limits,
		// SigV4 and bearer secrets both come here, so both carry the list.
		AllowedModels: k.AllowedModels.Matcher(),
	}
}

// sessionTokenLen is the length of a session token: 32 random bytes in
// unpadded base64url.
const sessionTokenLen = 43

// VerifySession returns the principal of a session cookie value, or
// unauthenticated. Sessions are not cached: they serve the web UI, not the
// gateway, and a logout must end them on every replica at once.
func (s *Service) VerifySession(ctx context.Context, token string) (*keybridge.Principal, error) {
	if len(token) != sessionTokenLen {
		return nil, errBadSession
	}
	h := sha256.Sum256([]byte(token))
	sess, err := s.store.SessionByHash(ctx, h[:])
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, errBadSession
	}
	if err != nil {
		return nil, fmt.Errorf("look up session: %w", err)
	}
	if !time.Now().Before(sess.ExpiresAt) {
		return nil, errBadSession
	}
	u, err := s.store.User(ctx, sess.UserID)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, errBadSession
	}
	if err != nil {
		return nil, fmt.Errorf("look up session user: %w", err)
	}
	return &keybridge.Principal{
		Type:        keybridge.ActorUser,
		UserID:      u.ID,
		Email:       u.Email,
		KeyID:       sess.ID,
		Permissions: keybridge.AllPermissions,
		SessionCSRF: csrfToken(token),
	}, nil
}

// Authenticate reads the management API's credentials from r: a bearer
// platform key, or the session cookie. It returns unauthenticated when
// there are none or they are not valid. An Authorization header, when
// present, is the credential: a bad one is not excused by a cookie.
func (s *Service) Authenticate(r *http.Request) (*keybridge.Principal, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		const scheme = "Bearer "
		if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
			return nil, errBadAuthHeader
		}
		return s.VerifyAPIKey(r.Context(), strings.TrimSpace(h[len(scheme):]))
	}
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
		return s.VerifySession(r.Context(), c.Value)
	}
	return nil, errNoCredentials
}

// Authorize checks that p may use perm in org: not_found when p cannot see
// the org at all, permission_denied when it can but lacks perm. It returns
// the caller's role in the org (empty for an AI key, which has none).
//
// A key's permissions were already intersected with its owner's current
// role when it was verified (a role change invalidates the cached key); a
// session's role is read here, per org.
func (s *Service) Authorize(ctx context.Context, p *keybridge.Principal, org *keybridge.Org, perm keybridge.Permission) (keybridge.Role, error) {
	if p == nil {
		return "", errNoCredentials
	}
	if org == nil {
		return "", errors.New("authorize: no org")
	}
	switch p.Type {
	case keybridge.ActorAPIKey, keybridge.ActorAIKey:
		if p.OrgID != org.ID {
			return "", errOrgNotFound
		}
		if !p.Permissions.Has(perm) {
			return "", keybridge.Errorf(keybridge.EForbidden, "this key lacks the %s permission", perm)
		}
		return p.Role, nil
	case keybridge.ActorUser:
		m, err := s.store.Membership(ctx, org.ID, p.UserID)
		if keybridge.IsCode(err, keybridge.ENotFound) {
			return "", errOrgNotFound
		}
		if err != nil {
			return "", fmt.Errorf("look up membership: %w", err)
		}
		if !m.Role.Permissions().Has(perm) {
			return "", keybridge.Errorf(keybridge.EForbidden, "the %s role lacks the %s permission", m.Role, perm)
		}
		return m.Role, nil
	}
	return "", errNoCredentials
}

// errOrgNotFound is the answer for an org the caller may not see. It names
// neither the slug nor the ID: the caller addressed the org by one of them,
// and must not learn the other. (The API layer words it as the store words
// a missing org, with what the caller sent, so the two read alike.)
var errOrgNotFound = keybridge.Errorf(keybridge.ENotFound, "org not found")

// StartSession creates a session for a user who just proved who they are
// (accept-invite, setup) and returns it with its token.
func (s *Service) StartSession(ctx context.Context, u *keybridge.User, ip, userAgent string) (*keybridge.Session, string, error) {
	return s.startSession(ctx, s.store, u, ip, userAgent)
}

func (s *Service) startSession(ctx context.Context, st store.Store, u *keybridge.User, ip, userAgent string) (*keybridge.Session, string, error) {
	token := randomToken()
	h := sha256.Sum256([]byte(token))
	sess := &keybridge.Session{
		UserID:    u.ID,
		TokenHash: h[:],
		CSRFToken: csrfToken(token),
		ExpiresAt: st.Now().Add(s.opts.SessionTTL),
		IP:        ip,
		UserAgent: userAgent,
	}
	if err := st.CreateSession(ctx, sess); err != nil {
		return nil, "", fmt.Errorf("create session: %w", err)
	}
	return sess, token, nil
}

// csrfToken derives a session's CSRF token from its token: an HMAC-SHA256
// keyed by the session token, so nothing about it is stored (the database
// keeps only the session token's SHA-256, from which it cannot be made),
// and whoever lacks the cookie cannot compute it.
func csrfToken(sessionToken string) string {
	m := hmac.New(sha256.New, []byte(sessionToken))
	m.Write([]byte("keybridge session csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// randomToken returns 32 bytes from crypto/rand in unpadded base64url.
func randomToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Logout ends the session with this token. An unknown or expired token is
// not an error: the session is over either way.
func (s *Service) Logout(ctx context.Context, token string) error {
	if len(token) != sessionTokenLen {
		return nil
	}
	h := sha256.Sum256([]byte(token))
	sess, err := s.store.SessionByHash(ctx, h[:])
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up session: %w", err)
	}
	if err := s.store.DeleteSession(ctx, sess.ID); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

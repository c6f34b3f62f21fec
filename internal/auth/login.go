package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/redis/go-redis/v9"
)

const (
	defaultAccountIPLimit = 10
	defaultAccountLimit   = 300
	defaultIPLimit        = 100
	defaultLoginWindow    = 15 * time.Minute
)

// The audit actions of logins (SPEC §8).
const (
	ActionLogin       = "auth.login"
	ActionLoginFailed = "auth.login_failed"
)

var errBadLogin = keybridge.Errorf(keybridge.EUnauthenticated, "invalid email or password")

// Login checks email and password (rate limited, see checkPassword),
// creates a session and returns it with its token.
func (s *Service) Login(ctx context.Context, email, password, ip string) (*keybridge.User, *keybridge.Session, string, error) {
	email = keybridge.NormalizeEmail(email)
	info := keybridge.RequestInfoFromContext(ctx)
	if ip == "" {
		ip = info.IP
	}
	if info.IP == "" {
		info.IP = ip
		ctx = keybridge.NewContextWithRequestInfo(ctx, info)
	}
	u, err := s.checkPassword(ctx, email, password, ip)
	if err != nil {
		return nil, nil, "", err
	}

	var sess *keybridge.Session
	var token string
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		sess, token, err = s.startSession(ctx, tx, u, ip, info.UserAgent)
		if err != nil {
			return err
		}
		actx := keybridge.NewContextWithPrincipal(ctx, &keybridge.Principal{Type: keybridge.ActorUser, UserID: u.ID, Email: u.Email})
		// A user in no org still starts a session: like a failed login,
		// its event then goes to the chain of no org.
		return audit.RecordUser(actx, tx, u, ActionLogin, nil)
	})
	if err != nil {
		return nil, nil, "", err
	}
	return u, sess, token, nil
}

// VerifyUserPassword checks the password of the user with this address for a
// step that needs it proved again (accepting an invitation, changing the
// password), under the same limits as Login, and returns the user.
func (s *Service) VerifyUserPassword(ctx context.Context, email, password, ip string) (*keybridge.User, error) {
	return s.checkPassword(ctx, keybridge.NormalizeEmail(email), password, ip)
}

// checkPassword checks a password under the failed-login limits.
//
// Failures are counted per (account, client IP), per IP and per account.
// Once one of those counters is at its limit, attempts that it covers are
// refused with rate_limited (Retry-After: until its window passes), the
// right password too. The (account, IP) limit is the one a user mistyping
// meets; the IP limit stops one address guessing at many accounts; the
// account limit is a ceiling high enough that only a guess attack from
// many addresses reaches it. So a stranger who knows an address can no
// longer lock its owner out: their failures fill their own (account, IP)
// counter, not the owner's. A success clears its (account, IP) counter
// only: it must buy no guesses at other accounts, nor from other places.
//
// An unknown address costs the same argon2 check as a wrong password, and
// counts against the same limits, so neither time nor answers tell which
// addresses have accounts. An attempt counts as a failure from its start
// until its password proves right, so guesses sent all at once cannot
// pass the check together before the first of them is counted.
func (s *Service) checkPassword(ctx context.Context, email, password, ip string) (*keybridge.User, error) {
	account := hashName(email)
	keys := []limitKey{{name: "account:" + account, limit: s.opts.LoginAccountLimit}}
	if ip != "" {
		bucket := ipBucket(ip)
		keys = append(keys,
			limitKey{name: "account_ip:" + hashName(account+"|"+bucket), limit: s.opts.LoginAccountIPLimit},
			limitKey{name: "ip:" + bucket, limit: s.opts.LoginIPLimit})
	}
	if wait := s.limiter.acquire(ctx, keys); wait > 0 {
		return nil, &keybridge.Error{
			Code:              keybridge.ERateLimited,
			Message:           "too many failed logins; try again later",
			RetryAfterSeconds: int(math.Ceil(wait.Seconds())),
		}
	}

	u, err := s.store.UserByEmail(ctx, email)
	if err != nil && !keybridge.IsCode(err, keybridge.ENotFound) {
		// Nothing was guessed: the attempt is not a failure.
		s.limiter.release(ctx, keys)
		return nil, fmt.Errorf("look up user: %w", err)
	}
	if err != nil {
		u = nil
	}
	var ok bool
	if u != nil && u.PasswordHash != "" {
		ok = CheckPassword(u.PasswordHash, password)
	} else {
		CheckPassword(dummyHash(), password)
	}
	if !ok {
		// acquire already counted the failure.
		if err := s.auditFailedLogin(ctx, u, email); err != nil {
			return nil, err
		}
		return nil, errBadLogin
	}
	s.limiter.release(ctx, keys[:1])
	if len(keys) > 1 {
		s.limiter.reset(ctx, keys[1])
		s.limiter.release(ctx, keys[2:])
	}
	return u, nil
}

// auditFailedLogin records a failed login in each org of a known user, or
// in the chain of no org ("") for an address with no account (or no org).
// The actor is the system: whoever tried is not authenticated.
func (s *Service) auditFailedLogin(ctx context.Context, u *keybridge.User, email string) error {
	ctx = keybridge.NewContextWithPrincipal(ctx, nil)
	err := s.store.InTx(ctx, func(tx store.Store) error {
		res := keybridge.Resource{Type: "user", Name: truncate(email, 254)}
		orgIDs := []string{""}
		if u != nil {
			res.ID, res.Name = u.ID, u.Email
			orgs, err := tx.OrgsForUser(ctx, u.ID)
			if err != nil {
				return fmt.Errorf("list user's orgs: %w", err)
			}
			if len(orgs) > 0 {
				orgIDs = orgIDs[:0]
				for _, om := range orgs {
					orgIDs = append(orgIDs, om.Org.ID)
				}
			}
		}
		for _, id := range orgIDs {
			if err := audit.Record(ctx, tx, id, ActionLoginFailed, res, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit failed login: %w", err)
	}
	return nil
}

// truncate cuts s to at most n bytes without splitting a character: an
// address typed into the login form is recorded, however long it is.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// hashName keeps addresses out of limiter keys (and so out of Redis).
func hashName(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:16])
}

// ipBucket is the unit an IP limit counts: the address itself for IPv4, the
// /64 for IPv6, since one host commonly holds a whole /64.
func ipBucket(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return hashName(ip)
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// limitKey is one failed-login counter and how many failures it allows.
type limitKey struct {
	name  string
	limit int
}

// limiter counts failed logins per key over a fixed window that starts at
// the first failure.
type limiter interface {
	// acquire counts an attempt against each key, as a failure until
	// release takes it back, and returns zero: checking and counting are
	// one step, so concurrent attempts cannot all see a count below the
	// limit. When some key is already at its limit it counts nothing and
	// returns how long until every key is below it.
	acquire(ctx context.Context, keys []limitKey) time.Duration
	// release takes back an attempt acquire counted against each key,
	// for an attempt that turned out not to be a failure.
	release(ctx context.Context, keys []limitKey)
	// reset forgets key's failures.
	reset(ctx context.Context, key limitKey)
}

// maxWindows bounds the in-process limiter's memory: addresses and IPs are
// chosen by whoever calls, so their number must not be.
const maxWindows = 100_000

type failWindow struct {
	count int
	until time.Time
}

type memLimiter struct {
	window time.Duration
	mu     sync.Mutex
	m      map[string]*failWindow
}

func newMemLimiter(window time.Duration) *memLimiter {
	return &memLimiter{window: window, m: map[string]*failWindow{}}
}

func (l *memLimiter) acquire(_ context.Context, keys []limitKey) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	var d time.Duration
	for _, k := range keys {
		if w := l.m[k.name]; w != nil && now.Before(w.until) && w.count >= k.limit {
			d = max(d, w.until.Sub(now))
		}
	}
	if d > 0 {
		return d
	}
	for _, k := range keys {
		w := l.m[k.name]
		if w != nil && now.Before(w.until) {
			w.count++
			continue
		}
		if w == nil && len(l.m) >= maxWindows {
			l.evict(now)
		}
		l.m[k.name] = &failWindow{count: 1, until: now.Add(l.window)}
	}
	return 0
}

func (l *memLimiter) release(_ context.Context, keys []limitKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	for _, k := range keys {
		if w := l.m[k.name]; w != nil {
			if w.count--; w.count <= 0 || !now.Before(w.until) {
				delete(l.m, k.name)
			}
		}
	}
}

// evict makes room: expired windows first, then arbitrary ones, down to
// nine tenths of the bound so that the sweep is not repeated on every
// failure of a flood.
func (l *memLimiter) evict(now time.Time) {
	for k, w := range l.m {
		if !now.Before(w.until) {
			delete(l.m, k)
		}
	}
	for k := range l.m {
		if len(l.m) < maxWindows*9/10 {
			break
		}
		delete(l.m, k)
	}
}

func (l *memLimiter) reset(_ context.Context, key limitKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, key.name)
}

// redisLimiter keeps the counters in Redis, shared by every replica. When
// Redis fails it falls back to this process's counters rather than refuse
// every login or allow unlimited guesses.
type redisLimiter struct {
	rdb      *redis.Client
	window   time.Duration
	fallback *memLimiter
	log      *slog.Logger
}

const redisPrefix = "keybridge:login_failures:"

// acquireScript is memLimiter.acquire in Redis, in one step: it returns
// the milliseconds until every key (KEYS, limits in ARGV[2...]) is below
// its limit, or counts an attempt against each and returns 0. A window
// starts with its first count, in the same step, so a crash cannot leave
// a counter that never expires.
var acquireScript = redis.NewScript(`
local wait = 0
for i, k in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', k) or '0')
  if n >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('PTTL', k)
    if ttl < 0 then
      ttl = tonumber(ARGV[1])
      redis.call('PEXPIRE', k, ttl)
    end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for _, k in ipairs(KEYS) do
  if redis.call('INCR', k) == 1 then redis.call('PEXPIRE', k, ARGV[1]) end
end
return 0`)

// releaseScript takes back one count from each key that still exists.
var releaseScript = redis.NewScript(`
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 and redis.call('DECR', k) <= 0 then
    redis.call('DEL', k)
  end
end
return 0`)

func (l *redisLimiter) acquire(ctx context.Context, keys []limitKey) time.Duration {
	names := make([]string, len(keys))
	limits := make([]int, len(keys))
	for i, k := range keys {
		names[i], limits[i] = redisPrefix+k.name, k.limit
	}
	wait, err := AcquireInRedis(ctx, l.rdb, names, limits, l.window)
	if err != nil {
		l.log.WarnContext(ctx, "count login attempt in redis; counting in this process", "err", err)
		return l.fallback.acquire(ctx, keys)
	}
	return wait
}

// AcquireInRedis counts one attempt against each of keys in Redis, in
// windows of window that start with their first count, unless one is at
// its limit (limits[i]): then it counts nothing and returns the wait
// until every key is below its limit. It is the failed-login counters'
// step (acquireScript), for other counters of the same kind.
func AcquireInRedis(ctx context.Context, rdb redis.Scripter, keys []string, limits []int, window time.Duration) (time.Duration, error) {
	args := make([]any, 1, len(limits)+1)
	args[0] = window.Milliseconds()
	for _, n := range limits {
		args = append(args, n)
	}
	ms, err := acquireScript.Run(ctx, rdb, keys, args...).Int64()
	return time.Duration(ms) * time.Millisecond, err
}

func (l *redisLimiter) release(ctx context.Context, keys []limitKey) {
	if len(keys) == 0 {
		return
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = redisPrefix + k.name
	}
	if err := releaseScript.Run(ctx, l.rdb, names).Err(); err != nil {
		l.log.WarnContext(ctx, "take back login attempt in redis", "err", err)
	}
	l.fallback.release(ctx, keys)
}

func (l *redisLimiter) reset(ctx context.Context, key limitKey) {
	if err := l.rdb.Del(ctx, redisPrefix+key.name).Err(); err != nil {
		l.log.WarnContext(ctx, "clear failed-login counter in redis", "err", err)
	}
	l.fallback.reset(ctx, key)
}

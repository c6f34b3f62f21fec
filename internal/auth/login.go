package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	defaultAccountLimit = 5
	defaultIPLimit      = 30
	defaultLoginWindow  = 15 * time.Minute
)

// The audit actions of logins (SPEC §8).
const (
	ActionLogin       = "auth.login"
	ActionLoginFailed = "auth.login_failed"
)

var errBadLogin = keybridge.Errorf(keybridge.EUnauthenticated, "invalid email or password")

// Login checks email and password (rate limited per account and per IP),
// creates a session and returns it with its token.
//
// An unknown address costs the same argon2 check as a wrong password, and
// counts against the same limits, so neither time nor answers tell which
// addresses have accounts. Once an account or an IP has too many recent
// failures every attempt is refused with rate_limited, the right password
// too, until the window passes; a success clears the account's count (not
// the IP's: one valid account must not buy more guesses at others).
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
	keys := []limitKey{{name: "account:" + hashName(email), limit: s.opts.LoginAccountLimit}}
	if ip != "" {
		keys = append(keys, limitKey{name: "ip:" + ipBucket(ip), limit: s.opts.LoginIPLimit})
	}
	if wait := s.limiter.wait(ctx, keys); wait > 0 {
		return nil, nil, "", &keybridge.Error{
			Code:              keybridge.ERateLimited,
			Message:           "too many failed logins; try again later",
			RetryAfterSeconds: int(math.Ceil(wait.Seconds())),
		}
	}

	u, err := s.store.UserByEmail(ctx, email)
	if err != nil && !keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, nil, "", fmt.Errorf("look up user: %w", err)
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
		s.limiter.fail(ctx, keys)
		if err := s.auditFailedLogin(ctx, u, email); err != nil {
			return nil, nil, "", err
		}
		return nil, nil, "", errBadLogin
	}
	s.limiter.reset(ctx, keys[0])

	var sess *keybridge.Session
	var token string
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		sess, token, err = s.startSession(ctx, tx, u, ip, info.UserAgent)
		if err != nil {
			return err
		}
		orgs, err := tx.OrgsForUser(ctx, u.ID)
		if err != nil {
			return fmt.Errorf("list user's orgs: %w", err)
		}
		actx := keybridge.NewContextWithPrincipal(ctx, &keybridge.Principal{Type: keybridge.ActorUser, UserID: u.ID, Email: u.Email})
		res := keybridge.Resource{Type: "user", ID: u.ID, Name: u.Email}
		for _, om := range orgs {
			if err := audit.Record(actx, tx, om.Org.ID, ActionLogin, res, nil); err != nil {
				return fmt.Errorf("audit login: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, "", err
	}
	return u, sess, token, nil
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
	// wait returns how long until every key is below its limit; zero
	// when a login may be tried now.
	wait(ctx context.Context, keys []limitKey) time.Duration
	// fail counts one failure against each key.
	fail(ctx context.Context, keys []limitKey)
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

func (l *memLimiter) wait(_ context.Context, keys []limitKey) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	var d time.Duration
	for _, k := range keys {
		if w := l.m[k.name]; w != nil && now.Before(w.until) && w.count >= k.limit {
			d = max(d, w.until.Sub(now))
		}
	}
	return d
}

func (l *memLimiter) fail(_ context.Context, keys []limitKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
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

// failScript counts a failure and starts the window on the first one, in
// one step, so a crash between the two cannot leave a counter that never
// expires.
var failScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)

func (l *redisLimiter) wait(ctx context.Context, keys []limitKey) time.Duration {
	pipe := l.rdb.Pipeline()
	counts := make([]*redis.StringCmd, len(keys))
	ttls := make([]*redis.DurationCmd, len(keys))
	for i, k := range keys {
		counts[i] = pipe.Get(ctx, redisPrefix+k.name)
		ttls[i] = pipe.PTTL(ctx, redisPrefix+k.name)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		l.log.WarnContext(ctx, "read failed-login counters from redis; using this process's", "err", err)
		return l.fallback.wait(ctx, keys)
	}
	var d time.Duration
	for i, k := range keys {
		n, err := counts[i].Int()
		if err != nil || n < k.limit {
			continue
		}
		if ttl := ttls[i].Val(); ttl > 0 {
			d = max(d, ttl)
		}
	}
	return d
}

func (l *redisLimiter) fail(ctx context.Context, keys []limitKey) {
	for _, k := range keys {
		if err := failScript.Run(ctx, l.rdb, []string{redisPrefix + k.name}, l.window.Milliseconds()).Err(); err != nil {
			l.log.WarnContext(ctx, "count failed login in redis; counting in this process", "err", err)
			l.fallback.fail(ctx, []limitKey{k})
		}
	}
}

func (l *redisLimiter) reset(ctx context.Context, key limitKey) {
	if err := l.rdb.Del(ctx, redisPrefix+key.name).Err(); err != nil {
		l.log.WarnContext(ctx, "clear failed-login counter in redis", "err", err)
	}
	l.fallback.reset(ctx, key)
}

package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// What the gateway does with limits when Redis cannot be reached
// (--limits-when-redis-down).
const (
	// LimitsLocal counts on this replica's own counters until Redis is back.
	LimitsLocal = "local"
	// LimitsRefuse refuses limited keys' requests with 503.
	LimitsRefuse = "refuse"
)

// errLimitsDown is admit's error when Redis is down and the policy is
// to refuse; the gateway answers 503.
var errLimitsDown = errors.New("limit counters unreachable")

// redisLimiter keeps the counters in Redis, so every replica enforces one
// limit. Each admit and each settle is one script call: one round trip
// (EVALSHA; EVAL once more only after Redis lost its script cache).
//
// A key's counters live under {kb:<keyID>}:…, one hash slot, so a Redis
// Cluster can run the scripts. Every one expires: the windows 60 s after
// their last entry, reservations and the sequence after reserveTTL, a
// budget an hour after its period ends (the hour absorbs replicas'
// clock skew).
type redisLimiter struct {
	rdb    redis.Scripter
	refuse bool
	local  *memLimiter
	log    *slog.Logger
	m      *limitMetrics
	down   atomic.Bool
}

// newRedisLimiter returns a limiter on rdb; whenDown is LimitsLocal (also
// for "") or LimitsRefuse.
func newRedisLimiter(rdb redis.Scripter, whenDown string, log *slog.Logger) (*redisLimiter, error) {
	if whenDown != "" && whenDown != LimitsLocal && whenDown != LimitsRefuse {
		return nil, fmt.Errorf("limits when redis is down: %q is not %s or %s", whenDown, LimitsLocal, LimitsRefuse)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := newLimitMetrics()
	return &redisLimiter{rdb: rdb, refuse: whenDown == LimitsRefuse, local: newMemLimiterMetrics(m), log: log, m: m}, nil
}

func (l *redisLimiter) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.m.refusals, l.m.redisDown, l.m.redisOutage}
}

// limitLua is shared by both scripts. KEYS: 1 RPM log (member: seq), 2
// TPM log (member: seq:tokens, score: settled at), 3 its sum, 4
// reservations (member: seq:tokens, score: expires at), 5 their sum, 6
// sequence, 7 the budget of the current period.
const limitLua = `
local function num(m) return tonumber(string.match(m, ':(%d+)$')) end
-- trim drops the entries of log scored at or before cut, keeps sumKey the
-- sum of the rest, and returns it.
local function trim(log, sumKey, cut)
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cut)
  if #old > 0 then
    local n = 0
    for _, m in ipairs(old) do n = n + num(m) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cut)
    redis.call('DECRBY', sumKey, n)
  end
  if redis.call('EXISTS', log) == 0 then
    redis.call('DEL', sumKey)
    return 0
  end
  return tonumber(redis.call('GET', sumKey) or '0')
end
`

// admitScript: ARGV 1 now (ms), 2 RPM, 3 TPM, 4 budget (0: none), 5
// reservation, 6 ms until the budget period ends, 7 reserveTTL (ms), 8
// pendingRetry (ms). It returns {admitted, seq, rpm, rpm wait, tpm, tpm
// wait, budget, budget wait} as in tally.
var admitScript = redis.NewScript(limitLua + `
local now, rpm, tpm, bud = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local from = now - 60000
local rpmN, rpmWait, tpmN, tpmWait, budN, budWait = 0, 0, 0, 0, 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', from)
  rpmN = redis.call('ZCARD', KEYS[1])
  if rpmN >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], rpmN - rpm, rpmN - rpm, 'WITHSCORES')
    rpmWait = tonumber(e[2]) + 60000 - now
  end
end
local pend = 0
if tpm > 0 or bud > 0 then pend = trim(KEYS[4], KEYS[5], now) end
if tpm > 0 then
  tpmN = trim(KEYS[2], KEYS[3], from) + pend
  if tpmN >= tpm then
    tpmWait = tonumber(ARGV[8])
    local need, acc, i = tpmN - tpm + 1, 0, 0
    while true do
      local page = redis.call('ZRANGE', KEYS[2], i, i + 99, 'WITHSCORES')
      if #page == 0 then break end
      for j = 1, #page, 2 do
        acc = acc + num(page[j])
        if acc >= need then
          tpmWait = tonumber(page[j + 1]) + 60000 - now
          break
        end
      end
      if acc >= need then break end
      i = i + 100
    end
  end
end
if bud > 0 then
  local used = tonumber(redis.call('GET', KEYS[7]) or '0')
  budN = used + pend
  if budN >= bud then
    budWait = tonumber(ARGV[6])
    if used < bud then budWait = math.min(budWait, tonumber(ARGV[8])) end
  end
end
if rpmWait > 0 or tpmWait > 0 or budWait > 0 then
  return {0, 0, rpmN, rpmWait, tpmN, tpmWait, budN, budWait}
end
local seq = redis.call('INCR', KEYS[6])
redis.call('PEXPIRE', KEYS[6], ARGV[7])
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, seq)
  redis.call('PEXPIRE', KEYS[1], 60000)
  rpmN = rpmN + 1
end
local reserve = tonumber(ARGV[5])
if (tpm > 0 or bud > 0) and reserve > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), seq .. ':' .. ARGV[5])
  redis.call('INCRBY', KEYS[5], reserve)
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
  redis.call('PEXPIRE', KEYS[5], ARGV[7])
  tpmN = tpmN + reserve
  budN = budN + reserve
end
return {1, seq, rpmN, 0, tpmN, 0, budN, 0}
`)

// settleScript: ARGV 1 now (ms), 2 seq, 3 reservation, 4 tokens used, 5
// "1" to count them in TPM, 6 the budget's TTL in ms (0: no budget), 7
// reserveTTL (ms).
var settleScript = redis.NewScript(limitLua + `
local now, used = tonumber(ARGV[1]), tonumber(ARGV[4])
if tonumber(ARGV[3]) > 0 and redis.call('ZREM', KEYS[4], ARGV[2] .. ':' .. ARGV[3]) == 1 then
  if redis.call('DECRBY', KEYS[5], ARGV[3]) <= 0 or redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('DEL', KEYS[5])
  end
end
if used > 0 then
  if ARGV[5] == '1' then
    trim(KEYS[2], KEYS[3], now - 60000)
    if redis.call('ZADD', KEYS[2], now, ARGV[2] .. ':' .. ARGV[4]) == 1 then
      redis.call('INCRBY', KEYS[3], used)
    end
    redis.call('PEXPIRE', KEYS[2], 60000)
    redis.call('PEXPIRE', KEYS[3], 60000)
  end
  if tonumber(ARGV[6]) > 0 then
    redis.call('INCRBY', KEYS[7], used)
    redis.call('PEXPIRE', KEYS[7], ARGV[6])
  end
end
redis.call('PEXPIRE', KEYS[6], ARGV[7])
return 0
`)

// limitKeys are a key's counters in Redis, with the budget of the period
// that holds ms (its start in seconds names it).
func limitKeys(keyID string, ms int64, p keybridge.BudgetPeriod) []string {
	pre := "{kb:" + keyID + "}:"
	bud := pre + "bud"
	if p != "" {
		start, _ := period(ms, p)
		bud += ":" + string(p) + ":" + strconv.FormatInt(start/1000, 10)
	}
	return []string{pre + "rpm", pre + "tpm", pre + "tpms", pre + "res", pre + "pend", pre + "seq", bud}
}

const budgetSlack = int64(time.Hour / time.Millisecond)

func (l *redisLimiter) admit(ctx context.Context, keyID string, lim keybridge.Limits, reserve int64, now time.Time) (ticket, decision, error) {
	limited, tokens := hasLimits(lim)
	if !limited {
		return ticket{}, unlimited, nil
	}
	reserve = max(reserve, 0)
	ms := now.UnixMilli()
	var bud, budLeft int64
	var p keybridge.BudgetPeriod
	if hasBudget(lim) {
		bud, p = lim.TokenBudget, lim.BudgetPeriod
		_, end := period(ms, p)
		budLeft = end - ms
	}
	r, err := admitScript.Run(ctx, l.rdb, limitKeys(keyID, ms, p),
		ms, max(lim.RateLimitRPM, 0), max(lim.RateLimitTPM, 0), bud, reserve, budLeft,
		reserveTTL.Milliseconds(), pendingRetry.Milliseconds()).Int64Slice()
	if err == nil && len(r) != 8 {
		err = fmt.Errorf("admit script answered %d values, want 8", len(r))
	}
	if err != nil {
		if ctx.Err() != nil {
			return ticket{}, decision{}, fmt.Errorf("count request in redis: %w", ctx.Err())
		}
		l.unreachable(ctx, err)
		if l.refuse {
			return ticket{}, decision{}, fmt.Errorf("count request: %w: %w", errLimitsDown, err)
		}
		return l.local.admit(ctx, keyID, lim, reserve, now)
	}
	l.reachable(ctx)
	ms2d := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	t := tally{rpm: r[2], rpmWait: ms2d(r[3]), tpm: r[4], tpmWait: ms2d(r[5]), bud: r[6], budWait: ms2d(r[7])}
	d := t.decision(lim)
	if r[0] != 1 {
		l.m.refused(d.limit)
		return ticket{}, d, nil
	}
	if !tokens {
		return ticket{}, d, nil
	}
	return ticket{keyID: keyID, seq: r[1], reserved: reserve, tpm: lim.RateLimitTPM > 0, budget: p}, d, nil
}

func (l *redisLimiter) settle(ctx context.Context, t ticket, used int64, now time.Time) error {
	if t.keyID == "" {
		return nil
	}
	if t.local {
		return l.local.settle(ctx, t, used, now)
	}
	used = max(used, 0)
	ms := now.UnixMilli()
	var budTTL int64
	if t.budget != "" {
		_, end := period(ms, t.budget)
		budTTL = end - ms + budgetSlack
	}
	tpm := "0"
	if t.tpm {
		tpm = "1"
	}
	err := settleScript.Run(ctx, l.rdb, limitKeys(t.keyID, ms, t.budget),
		ms, t.seq, t.reserved, used, tpm, budTTL, reserveTTL.Milliseconds()).Err()
	if err == nil {
		l.reachable(ctx)
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("settle request in redis: %w", ctx.Err())
	}
	l.unreachable(ctx, err)
	if l.refuse {
		return fmt.Errorf("settle request: %w: %w", errLimitsDown, err)
	}
	// The reservation stays in Redis until reserveTTL; the tokens at
	// least count here.
	return l.local.settle(ctx, t, used, now)
}

// unreachable counts a call that failed, and logs the first of an outage.
func (l *redisLimiter) unreachable(ctx context.Context, err error) {
	l.m.redisDown.Inc()
	if l.down.CompareAndSwap(false, true) {
		l.m.redisOutage.Set(1)
		how := "counting limits in this process"
		if l.refuse {
			how = "refusing limited keys with 503"
		}
		l.log.WarnContext(ctx, "redis unreachable for gateway limits; "+how+" until it is back", "err", err)
	}
}

func (l *redisLimiter) reachable(ctx context.Context) {
	if l.down.Load() && l.down.CompareAndSwap(true, false) {
		l.m.redisOutage.Set(0)
		l.log.InfoContext(ctx, "redis reachable again for gateway limits")
	}
}

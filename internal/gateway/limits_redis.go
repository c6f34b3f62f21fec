package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
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
// limit. An admission that Redis decides is one script call: one round
// trip (EVALSHA; EVAL once more only after Redis lost its script cache).
// While a key is far from its limits, that call also hands the replica a
// lease of capacity, and the key's next requests on this replica are
// admitted from it in memory, with no round trip (see lease).
//
// A key's counters live under {kb:<keyID>}:…, one hash slot, so a Redis
// Cluster can run the scripts. Every one expires: the windows 60 s after
// their last entry, reservations after reserveTTL, a budget an hour
// after its period ends (the hour absorbs replicas' clock skew).
type redisLimiter struct {
	rdb    redis.Scripter
	refuse bool
	local  *memLimiter
	log    *slog.Logger
	m      *limitMetrics
	// down is set from a call that found Redis unreachable until one
	// finds it back. Meanwhile requests do not wait on Redis: a probe
	// (probe) asks it, in the background, every redisRetry at most.
	down      atomic.Bool
	probing   atomic.Bool
	nextProbe atomic.Int64 // unix ms

	// While run runs, settlements are owed rather than sent: the key's
	// next admission carries them in its own script call, so a busy key
	// settles without a round trip of its own, and run sends what no
	// admission took within settleDelay. Without run, settle is one call.
	async   atomic.Bool
	mu      sync.Mutex
	owed    map[string][]owed        // by key ID
	returns map[string][]leaseReturn // by key ID
	kick    chan struct{}
	// unsent are lease returns that could not reach Redis, and
	// unreserved the reservations of settlements that could not (their
	// tokens counted in process), sent again once it answers (at most
	// maxUnsent keys of each).
	unsent     map[string][]leaseReturn
	unreserved map[string][]owed

	// leases are the keys' current leases on this replica, by key ID.
	lmu    sync.Mutex
	leases map[string]*lease

	// budKeys are the keys' budget keys of the periods now running, so
	// that admissions and settlements do not build them anew.
	bmu     sync.Mutex
	budKeys map[budgetSlot]budgetName

	// seqs names admissions: seqPrefix, random per limiter, and a count.
	seqPrefix string
	seqs      atomic.Uint64
}

// newSeq names an admission in Redis. The replica chooses it, rather than
// Redis, so that what an admission whose answer was lost counted can be
// undone by name (admit).
func (l *redisLimiter) newSeq() string {
	return l.seqPrefix + strconv.FormatUint(l.seqs.Add(1), 36)
}

type budgetSlot struct {
	keyID string
	p     keybridge.BudgetPeriod
}

// budgetName is a budget's Redis key for the period [start, end).
type budgetName struct {
	start, end int64
	key        string
}

// maxBudgetKeys bounds budKeys: past it the cache starts over.
const maxBudgetKeys = 10_000

// budgetKey is budgetKey(keyID, ms, p), from the cache while ms is in
// the period the cached key names, and the end of that period (0
// without one).
func (l *redisLimiter) budgetKey(keyID string, ms int64, p keybridge.BudgetPeriod) (key string, end int64) {
	if p == "" {
		return budgetKey(keyID, ms, p), 0
	}
	slot := budgetSlot{keyID, p}
	l.bmu.Lock()
	n, ok := l.budKeys[slot]
	l.bmu.Unlock()
	if ok && n.start <= ms && ms < n.end {
		return n.key, n.end
	}
	n.start, n.end = period(ms, p)
	n.key = periodKey(keyID, p, n.start)
	l.bmu.Lock()
	if l.budKeys == nil || len(l.budKeys) >= maxBudgetKeys {
		l.budKeys = make(map[budgetSlot]budgetName)
	}
	l.budKeys[slot] = n
	l.bmu.Unlock()
	return n.key, n.end
}

// settleDelay bounds how long a settlement waits for its key's next
// admission to carry it to Redis.
const settleDelay = 5 * time.Millisecond

// redisCallTimeout bounds one script call, whoever waits for it.
const redisCallTimeout = time.Second

// redisRetry is how often, at most, a probe asks a Redis that was found
// unreachable whether it is back: a request's limits come back to Redis
// within about that much of its return, and meanwhile no request waits
// on it.
const redisRetry = 500 * time.Millisecond

// owed is a settlement not yet in Redis.
type owed struct {
	// seq names the request in Redis: its admission's number, or for a
	// request admitted from a lease, the lease's number and its own.
	seq                string
	reserved, used, ms int64
	tpm                bool
	period             keybridge.BudgetPeriod // "": no budget
	budget             string                 // the budget's Redis key
	budTTL             int64                  // ms
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
	var id [8]byte
	rand.Read(id[:])
	return &redisLimiter{rdb: rdb, refuse: whenDown == LimitsRefuse, local: newMemLimiterMetrics(m), log: log, m: m,
		owed: map[string][]owed{}, returns: map[string][]leaseReturn{}, kick: make(chan struct{}, 1),
		unsent: map[string][]leaseReturn{}, unreserved: map[string][]owed{},
		leases:    map[string]*lease{},
		seqPrefix: strconv.FormatUint(binary.BigEndian.Uint64(id[:]), 36) + "-"}, nil
}

// settleWaits: while run carries settlements, settle only queues them.
func (l *redisLimiter) settleWaits() bool { return !l.async.Load() }

func (l *redisLimiter) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.m.refusals, l.m.redisDown, l.m.redisOutage}
}

// limitLua is shared by both scripts. KEYS: 1 RPM log (member:
// seq:count, score: admitted at), 2 TPM log (member: seq:tokens, score:
// settled at), 3 TPM sum, 4 reservations (member: seq:tokens, score:
// expires at), 5 their sum, 6 the budget of the current period, 7 RPM
// sum. seq is the admission's name, chosen by the replica (newSeq); a
// lease's members are named L<seq>.
var limitLua = `
-- int is the decimal text of the integer n. Lua's own text of a number
-- (tostring, ..) has 14 significant digits, so 1e14 and up would come
-- out as 1e+14 (which num reads as 1, and INCRBY refuses), and Redis's
-- text of a number argument is its own: counts are passed as int(n).
local function int(n) return string.format('%d', n) end
-- num is an entry's count: what follows its last colon (1 for an RPM
-- entry written before the log kept counts).
local function num(m) return tonumber(string.match(m, ':(%d+)$')) or 1 end
-- trim drops the entries of log scored at or before cut, keeps sumKey the
-- sum of the rest (made from the log if it has none), and returns it.
local function trim(log, sumKey, cut)
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cut)
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', log, '-inf', cut) end
  if redis.call('EXISTS', log) == 0 then
    redis.call('DEL', sumKey)
    return 0
  end
  if redis.call('EXISTS', sumKey) == 0 then
    local n = 0
    for _, m in ipairs(redis.call('ZRANGE', log, 0, -1)) do n = n + num(m) end
    redis.call('SET', sumKey, int(n), 'PX', math.max(redis.call('PTTL', log), 1))
    return n
  end
  if #old == 0 then return tonumber(redis.call('GET', sumKey)) end
  local n = 0
  for _, m in ipairs(old) do n = n + num(m) end
  return redis.call('DECRBY', sumKey, int(n))
end
-- add counts n at score ms in log as member id, with sumKey its sum, both
-- kept ttl ms.
local function add(log, sumKey, ms, id, n, ttl)
  if redis.call('ZADD', log, ms, id .. ':' .. int(n)) == 1 then
    redis.call('INCRBY', sumKey, int(n))
  end
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', sumKey, ttl)
end
-- wait is how long from now until the oldest entries of log holding need
-- counts have left the window; dflt when it holds fewer.
local function wait(log, need, now, dflt)
  local acc, i = 0, 0
  while true do
    local page = redis.call('ZRANGE', log, i, i + 99, 'WITHSCORES')
    if #page == 0 then return dflt end
    for j = 1, #page, 2 do
      acc = acc + num(page[j])
      if acc >= need then return math.max(tonumber(page[j + 1]) + 60000 - now, 1) end
    end
    i = i + 100
  end
end
-- unreserve drops the reservation of res tokens named id.
local function unreserve(id, res)
  if res > 0 and redis.call('ZREM', KEYS[4], id .. ':' .. int(res)) == 1 then
    if redis.call('DECRBY', KEYS[5], int(res)) <= 0 or redis.call('EXISTS', KEYS[4]) == 0 then
      redis.call('DEL', KEYS[5])
    end
  end
end
-- apply applies what a replica owes the key, from ARGV[i] on, and returns
-- the index after it: a count of settlements, 6 values each (seq,
-- reservation, tokens used, 1 to count them in TPM, when (ms), the
-- budget's TTL in ms (0: no budget)); then a count of lease returns, each
-- 4 values (lease, slots granted, tokens to release, k) and k pairs (ms,
-- slots used in that millisecond); then a count of admissions forgotten,
-- each its seq.
local function apply(i)
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local seq, used = ARGV[i], tonumber(ARGV[i + 2])
    unreserve(seq, tonumber(ARGV[i + 1]))
    if used > 0 then
      if ARGV[i + 3] == '1' then
        local ms = tonumber(ARGV[i + 4])
        trim(KEYS[2], KEYS[3], ms - 60000)
        add(KEYS[2], KEYS[3], ms, seq, used, 60000)
      end
      if tonumber(ARGV[i + 5]) > 0 then
        redis.call('INCRBY', KEYS[6], int(used))
        redis.call('PEXPIRE', KEYS[6], ARGV[i + 5])
      end
    end
    i = i + 6
  end
  n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local id, granted, k = 'L' .. ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3])
    -- The slots leave the log; the used ones come back at the times
    -- they were used (unless the lease's entry left the window already).
    if granted > 0 and redis.call('ZREM', KEYS[1], id .. ':' .. int(granted)) == 1 then
      redis.call('DECRBY', KEYS[7], int(granted))
      for j = 0, k - 1 do
        local ms = ARGV[i + 4 + 2 * j]
        add(KEYS[1], KEYS[7], ms, id .. '.' .. ms, tonumber(ARGV[i + 5 + 2 * j]), ` + rpmTTL + `)
      end
    end
    unreserve(id, tonumber(ARGV[i + 2]))
    i = i + 4 + 2 * k
  end
  n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    -- An admission whose answer never reached its replica: the tokens
    -- of a lease it may have granted are nobody's. (Its own reservation
    -- goes as a settlement's; its lease's slots leave with the window.)
    local id, cur = 'L' .. ARGV[i], '0'
    repeat
      local r = redis.call('ZSCAN', KEYS[4], cur, 'MATCH', id .. ':*', 'COUNT', 100)
      cur = r[1]
      for j = 1, #r[2], 2 do unreserve(id, num(r[2][j])) end
    until cur == '0'
    i = i + 1
  end
  return i
end
`

// rpmTTL is how long the RPM log outlives its last write: the window, and
// a lease's slots, which count until the lease ends.
var rpmTTL = strconv.FormatInt((limitWindow + leaseTTL).Milliseconds(), 10)

// admitScript: ARGV 1 now (ms), 2 RPM, 3 TPM, 4 budget (0: none), 5
// reservation, 6 ms until the budget period ends, 7 reserveTTL (ms), 8
// pendingRetry (ms), 9 "1" to ask for a lease, 10 its slots and 11 tokens
// wanted, 12 when it would end (ms), 13 the admission's seq; then what the
// replica owes (see apply), applied first. It returns {admitted, 0, rpm,
// rpm wait, tpm, tpm wait, budget, budget wait} as in tally, then
// {leased, slots, tokens}: the lease granted, if any.
//
// A lease is granted only to an admitted request of a key that stays at
// or under half of each of its limits with the lease counted, and is at
// most 1% of each: it holds slots (2 at least) when the key has an RPM
// limit, and tokens (maybe none) when it counts tokens. Its slots are one
// entry of the RPM log, scored at the lease's end until it is returned;
// its tokens are one reservation.
var admitScript = redis.NewScript(limitLua + `
apply(14)
local now, rpm, tpm, bud = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local from = now - 60000
local rpmN, rpmWait, tpmN, tpmWait, budN, budWait = 0, 0, 0, 0, 0, 0
if rpm > 0 then
  rpmN = trim(KEYS[1], KEYS[7], from)
  if rpmN >= rpm then rpmWait = wait(KEYS[1], rpmN - rpm + 1, now, 1) end
end
local pend = 0
if tpm > 0 or bud > 0 then pend = trim(KEYS[4], KEYS[5], now) end
if tpm > 0 then
  tpmN = trim(KEYS[2], KEYS[3], from) + pend
  if tpmN >= tpm then tpmWait = wait(KEYS[2], tpmN - tpm + 1, now, tonumber(ARGV[8])) end
end
if bud > 0 then
  local used = tonumber(redis.call('GET', KEYS[6]) or '0')
  budN = used + pend
  if budN >= bud then
    budWait = tonumber(ARGV[6])
    if used < bud then budWait = math.min(budWait, tonumber(ARGV[8])) end
  end
end
if rpmWait > 0 or tpmWait > 0 or budWait > 0 then
  return {0, 0, rpmN, rpmWait, tpmN, tpmWait, budN, budWait, 0, 0, 0}
end
local seq = ARGV[13]
if rpm > 0 then
  add(KEYS[1], KEYS[7], now, seq, 1, ` + rpmTTL + `)
  rpmN = rpmN + 1
end
local reserve = tonumber(ARGV[5])
if (tpm > 0 or bud > 0) and reserve > 0 then
  add(KEYS[4], KEYS[5], now + tonumber(ARGV[7]), seq, reserve, ARGV[7])
  tpmN = tpmN + reserve
  budN = budN + reserve
end
local leased, slots, toks = 0, 0, 0
if ARGV[9] == '1' then
  slots, toks = tonumber(ARGV[10]), tonumber(ARGV[11])
  local ok = true
  if rpm > 0 then
    slots = math.min(slots, math.floor(rpm / 100), math.floor(rpm / 2) - rpmN)
    ok = slots >= 2
  else
    slots = 0
  end
  if tpm > 0 then toks = math.min(toks, math.floor(tpm / 100), math.floor(tpm / 2) - tpmN) end
  if bud > 0 then toks = math.min(toks, math.floor(bud / 100), math.floor(bud / 2) - budN) end
  if tpm == 0 and bud == 0 then toks = 0 end
  if ok and toks >= 0 then
    leased = 1
    if slots > 0 then add(KEYS[1], KEYS[7], tonumber(ARGV[12]), 'L' .. seq, slots, ` + rpmTTL + `) end
    if toks > 0 then add(KEYS[4], KEYS[5], now + tonumber(ARGV[7]), 'L' .. seq, toks, ARGV[7]) end
  else
    slots, toks = 0, 0
  end
end
return {1, 0, rpmN, 0, tpmN, 0, budN, 0, leased, slots, toks}
`)

// settleScript: ARGV what the replica owes (see apply).
var settleScript = redis.NewScript(limitLua + `
apply(1)
return 0
`)

// limitKeys are a key's counters in Redis, with the budget of the period
// that holds ms (its start in seconds names it).
func limitKeys(keyID string, ms int64, p keybridge.BudgetPeriod) []string {
	return withBudget(keyID, budgetKey(keyID, ms, p))
}

// withBudget is limitKeys with the budget's key already made.
func withBudget(keyID, bud string) []string {
	pre := "{kb:" + keyID + "}:"
	return []string{pre + "rpm", pre + "tpm", pre + "tpms", pre + "res", pre + "pend", bud, pre + "rpms"}
}

// budgetKey is the Redis key of keyID's budget in the period p holding ms
// (its start in seconds names it), "{kb:<keyID>}:bud" without one.
func budgetKey(keyID string, ms int64, p keybridge.BudgetPeriod) string {
	if p == "" {
		return "{kb:" + keyID + "}:bud"
	}
	start, _ := period(ms, p)
	return periodKey(keyID, p, start)
}

// periodKey is the Redis key of keyID's budget in the period p that
// starts at start (ms).
func periodKey(keyID string, p keybridge.BudgetPeriod, start int64) string {
	return "{kb:" + keyID + "}:bud:" + string(p) + ":" + strconv.FormatInt(start/1000, 10)
}

const budgetSlack = int64(time.Hour / time.Millisecond)

func (l *redisLimiter) admit(ctx context.Context, keyID string, lim keybridge.Limits, reserve int64, now time.Time) (ticket, decision, error) {
	limited, tokens := hasLimits(lim)
	if !limited {
		return ticket{}, unlimited, nil
	}
	// Every number the scripts see is an integer under 2^53, which Lua's
	// numbers hold exactly.
	reserve = reservation(lim, reserve)
	ms := now.UnixMilli()
	var bud, budLeft int64
	var p keybridge.BudgetPeriod
	if hasBudget(lim) {
		bud, p = min(lim.TokenBudget, maxLimit), lim.BudgetPeriod
	}
	if t, d, ok := l.fromLease(keyID, lim, reserve, ms, p); ok {
		return t, d, nil
	}
	if l.down.Load() {
		return l.admitDown(ctx, keyID, lim, reserve, now)
	}
	want, ret := l.endLease(keyID, lim, reserve)
	bk, end := l.budgetKey(keyID, ms, p)
	if p != "" {
		budLeft = end - ms
	}
	keys := withBudget(keyID, bk)
	carried, returns := l.take(keyID, keys[5])
	returns = append(returns, ret...)
	asks := "0"
	if want.ask {
		asks = "1"
	}
	seq := l.newSeq()
	args := append(make([]any, 0, 16+6*len(carried)+4*len(returns)),
		ms, min(max(lim.RateLimitRPM, 0), maxLimit), min(max(lim.RateLimitTPM, 0), maxLimit), bud, reserve, budLeft,
		reserveTTL.Milliseconds(), pendingRetry.Milliseconds(), asks, want.slots, want.tokens, ms+leaseTTL.Milliseconds(), seq)
	// Once sent, the script counts the request and its reservation
	// whether or not its caller still waits for the answer: a caller that
	// leaves meanwhile must not leave them in Redis with no ticket to
	// settle them, so the call is seen through, for at most its own time.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redisCallTimeout)
	defer cancel()
	r, err := admitScript.Run(ctx, l.rdb, keys, appendDebts(args, carried, returns)...).Int64Slice()
	if err == nil && len(r) != 11 {
		return ticket{}, decision{}, fmt.Errorf("count request in redis: the admit script answered %d values, want 11", len(r))
	}
	if err != nil && !unavailable(err) {
		// Redis is up and ran the script, which failed: what it applied
		// of the carried settlements stays applied, and sent again they
		// could count twice (or fail again).
		return ticket{}, decision{}, fmt.Errorf("count request in redis: %w", err)
	}
	if err != nil {
		// Whether the script ran is not known: should it have, what it
		// counted of this admission must not stay (its reservation up to
		// reserveTTL, a lease's tokens). Both go once Redis answers;
		// dropping what was never made is harmless.
		l.keepForRedis(keyID, append(carried, owed{seq: seq, reserved: reserve}), returns)
		if want.ask {
			l.returnLater(keyID, []leaseReturn{{seq: seq, forget: true}})
		}
		l.unreachable(ctx, err) // no answer in redisCallTimeout is one too
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
	if r[8] == 1 {
		l.grant(keyID, &lease{seq: seq, lim: lim, until: ms + leaseTTL.Milliseconds(), slots: r[9],
			tokens: r[10], free: r[10], base: t})
	} else if want.ask {
		l.grant(keyID, nil)
	}
	if !tokens {
		return ticket{}, d, nil
	}
	return ticket{keyID: keyID, seq: seq, reserved: reserve, tpm: lim.RateLimitTPM > 0, budget: p}, d, nil
}

func (l *redisLimiter) settle(ctx context.Context, t ticket, used int64, now time.Time) error {
	if t.keyID == "" {
		return nil
	}
	if t.local {
		return l.local.settle(ctx, t, used, now)
	}
	ms := now.UnixMilli()
	bk, end := l.budgetKey(t.keyID, ms, t.budget)
	o := owed{seq: t.seq, reserved: t.reserved, used: counted(used), ms: ms, tpm: t.tpm, period: t.budget, budget: bk}
	if t.budget != "" {
		o.budTTL = end - ms + budgetSlack
	}
	var ret []leaseReturn
	if t.lease != nil {
		o.reserved = 0 // the lease holds the reservation
		ret = l.settled(t.lease, o.used, t.reserved)
	} else {
		l.spent(t.keyID, o.used, t.reserved)
	}
	if l.async.Load() {
		l.owe(t.keyID, []owed{o}, ret)
		if !l.async.Load() {
			l.flush(ctx) // run ended meanwhile: nobody else will
		}
		return nil
	}
	return l.send(ctx, t.keyID, withBudget(t.keyID, o.budget), []owed{o}, ret)
}

// owe queues settlements and lease returns for the key's next admission
// or run to carry, and wakes run for the first of a batch.
func (l *redisLimiter) owe(keyID string, os []owed, rs []leaseReturn) {
	if len(os) == 0 && len(rs) == 0 {
		return
	}
	l.mu.Lock()
	first := len(l.owed) == 0 && len(l.returns) == 0
	if len(os) > 0 {
		l.owed[keyID] = append(l.owed[keyID], os...)
	}
	if len(rs) > 0 {
		l.returns[keyID] = append(l.returns[keyID], rs...)
	}
	l.mu.Unlock()
	if first {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// send writes a key's owed settlements and lease returns in one script
// call. With Redis down the settlements count in this process, and their
// reservations and the lease returns are sent again once it answers.
func (l *redisLimiter) send(ctx context.Context, keyID string, keys []string, os []owed, rs []leaseReturn) error {
	if l.down.Load() {
		l.probeSoon()
		l.m.redisDown.Inc()
		l.keepForRedis(keyID, os, rs)
		if l.refuse {
			return fmt.Errorf("settle request: %w", errLimitsDown)
		}
		return nil
	}
	args := make([]any, 0, 3+6*len(os)+4*len(rs))
	ctx, cancel := context.WithTimeout(ctx, redisCallTimeout)
	defer cancel()
	err := settleScript.Run(ctx, l.rdb, keys, appendDebts(args, os, rs)...).Err()
	if err == nil {
		l.reachable(ctx)
		return nil
	}
	if !unavailable(err) {
		return fmt.Errorf("settle request in redis: %w", err) // as in admit
	}
	l.keepForRedis(keyID, os, rs)
	l.unreachable(ctx, err)
	if l.refuse {
		return fmt.Errorf("settle request: %w: %w", errLimitsDown, err)
	}
	return nil
}

// keepForRedis deals with what could not reach Redis: the settlements'
// tokens count in this process's counters, and their reservations and
// the lease returns wait for Redis to answer again.
func (l *redisLimiter) keepForRedis(keyID string, os []owed, rs []leaseReturn) {
	for _, o := range os {
		l.local.settle(context.Background(), ticket{keyID: keyID, tpm: o.tpm, budget: o.period}, o.used, time.UnixMilli(o.ms))
	}
	l.returnLater(keyID, rs)
	l.unreserveLater(keyID, os)
}

// admitDown admits a request while Redis is known to be down, as the
// policy says, without waiting on Redis.
func (l *redisLimiter) admitDown(ctx context.Context, keyID string, lim keybridge.Limits, reserve int64, now time.Time) (ticket, decision, error) {
	l.probeSoon()
	l.m.redisDown.Inc()
	if l.refuse {
		return ticket{}, decision{}, fmt.Errorf("count request: %w", errLimitsDown)
	}
	return l.local.admit(ctx, keyID, lim, reserve, now)
}

// probeSoon starts a probe of Redis in the background, unless one runs
// or one began less than redisRetry ago.
func (l *redisLimiter) probeSoon() {
	now := time.Now().UnixMilli()
	next := l.nextProbe.Load()
	if now < next || !l.nextProbe.CompareAndSwap(next, now+redisRetry.Milliseconds()) || !l.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer l.probing.Store(false)
		l.probe(context.Background())
	}()
}

// probe asks Redis whether it answers again, and if it does, says so:
// the next requests go to it.
func (l *redisLimiter) probe(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, redisCallTimeout)
	defer cancel()
	var err error
	if p, ok := l.rdb.(interface {
		Ping(context.Context) *redis.StatusCmd
	}); ok {
		err = p.Ping(ctx).Err()
	} else {
		err = l.rdb.ScriptExists(ctx, admitScript.Hash()).Err()
	}
	if err == nil || !unavailable(err) {
		l.reachable(ctx)
	}
}

// take removes and returns what keyID owes into budget (the budget key of
// the admission about to carry it; settlements into another period's
// budget are left to run), and its lease returns, with what of either
// could not reach Redis before: the admission about to go must not find
// the key held by what its own replica has given back.
func (l *redisLimiter) take(keyID, budget string) ([]owed, []leaseReturn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rs := l.returns[keyID]
	if len(rs) > 0 {
		delete(l.returns, keyID)
	}
	if u := l.unsent[keyID]; len(u) > 0 {
		rs = append(rs, u...)
		delete(l.unsent, keyID)
	}
	if u := l.unreserved[keyID]; len(u) > 0 {
		l.owed[keyID] = append(l.owed[keyID], u...)
		delete(l.unreserved, keyID)
	}
	os := l.owed[keyID]
	if len(os) == 0 {
		return nil, rs
	}
	carried, rest := partition(os, func(o owed) bool { return o.period == "" || o.budget == budget })
	if len(rest) == 0 {
		delete(l.owed, keyID)
	} else {
		l.owed[keyID] = rest
	}
	return carried, rs
}

// partition splits os into those that match, in a new slice, and the rest,
// kept in os's own array.
func partition(os []owed, match func(owed) bool) (matched, rest []owed) {
	rest = os[:0]
	for _, o := range os {
		if match(o) {
			matched = append(matched, o)
		} else {
			rest = append(rest, o)
		}
	}
	return matched, rest
}

// appendDebts appends the script arguments of settlements, lease returns
// and forgotten leases, as apply reads them.
func appendDebts(args []any, os []owed, rs []leaseReturn) []any {
	os = mergeOwed(os)
	args = append(args, len(os))
	for _, o := range os {
		tpm := "0"
		if o.tpm {
			tpm = "1"
		}
		args = append(args, o.seq, o.reserved, o.used, tpm, o.ms, o.budTTL)
	}
	forgets := 0
	for _, r := range rs {
		if r.forget {
			forgets++
		}
	}
	args = append(args, len(rs)-forgets)
	for _, r := range rs {
		if r.forget {
			continue
		}
		n := len(args)
		args = append(args, r.seq, r.slots, r.tokens, 0)
		// The used slots, as (ms, how many) for each millisecond. They
		// were taken in the order requests came, not always that of their
		// times: sorted, each millisecond is one pair. Two pairs of one ms
		// and one count would name one member, which Redis keeps once,
		// and the window would lose slots: admissions past the limit.
		at := slices.Sorted(slices.Values(r.at))
		for i := 0; i < len(at); {
			j := i + 1
			for j < len(at) && at[j] == at[i] {
				j++
			}
			args = append(args, at[i], j-i)
			args[n+3] = args[n+3].(int) + 1
			i = j
		}
	}
	args = append(args, forgets)
	for _, r := range rs {
		if r.forget {
			args = append(args, r.seq)
		}
	}
	return args
}

// mergeOwed folds the tokens of settlements made in the same millisecond
// into one: one TPM entry and one budget increment for all of them, as the
// in-process window keeps one entry per millisecond. Each reservation is
// still dropped by its own name.
func mergeOwed(os []owed) []owed {
	if len(os) < 2 {
		return os
	}
	type group struct {
		ms, budTTL int64
		tpm        bool
	}
	out := make([]owed, 0, len(os))
	at := make(map[group]int, 4)
	for _, o := range os {
		if o.reserved > 0 {
			out = append(out, owed{seq: o.seq, reserved: o.reserved})
		}
		if o.used <= 0 {
			continue
		}
		g := group{o.ms, o.budTTL, o.tpm}
		if i, ok := at[g]; ok {
			out[i].used += o.used
			continue
		}
		at[g] = len(out)
		o.reserved = 0
		out = append(out, o)
	}
	return out
}

// run carries owed settlements and lease returns to Redis, settleDelay
// after the first of a batch, and ends leases past their time, until ctx
// ends; then it returns every lease, sends what is left and settles
// synchronously again.
func (l *redisLimiter) run(ctx context.Context) {
	l.async.Store(true)
	tick := time.NewTicker(leaseTTL / 2)
	defer tick.Stop()
	for {
		select {
		case <-l.kick:
		case <-tick.C:
			l.expire(time.Now().UnixMilli())
			if l.down.Load() {
				l.probeSoon() // so that Redis's return is seen without traffic
			} else {
				l.retryReturns()
			}
			continue
		case <-ctx.Done():
			l.async.Store(false)
			l.expire(math.MaxInt64)
			l.flush(context.WithoutCancel(ctx))
			return
		}
		select {
		case <-time.After(settleDelay):
		case <-ctx.Done():
		}
		l.flush(context.WithoutCancel(ctx))
	}
}

// takeMap takes what *m holds, for its caller alone, and leaves a new
// map in its place; an empty map is not taken (nil is returned), since it
// is still the one others write to once the lock the caller holds is
// released, and must not be read without it.
func takeMap[K comparable, V any](m *map[K]V) map[K]V {
	taken := *m
	if len(taken) == 0 {
		return nil
	}
	*m = make(map[K]V, len(taken))
	return taken
}

// flush sends everything owed: one script call per key (and budget
// period).
func (l *redisLimiter) flush(ctx context.Context) {
	l.mu.Lock()
	all, returns := takeMap(&l.owed), takeMap(&l.returns)
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sendBatch := func(keyID, budget string, os []owed) {
		keys := withBudget(keyID, budget) // every owed names its budget key
		rs := returns[keyID]
		delete(returns, keyID)
		if err := l.send(ctx, keyID, keys, os, rs); err != nil {
			l.log.WarnContext(ctx, "gateway: settle limits", "err", err)
		}
	}
	for keyID, os := range all {
		// One call per budget key: a key's settlements may straddle a
		// period's end.
		for len(os) > 0 {
			b := os[0].budget
			var batch []owed
			batch, os = partition(os, func(o owed) bool { return o.budget == b })
			sendBatch(keyID, b, batch)
		}
	}
	for keyID := range returns {
		sendBatch(keyID, budgetKey(keyID, 0, ""), nil)
	}
}

// unavailable reports whether err, from a script call, means that Redis
// cannot serve the limits now: no answer (refused, reset, timed out), or
// an answer saying it cannot (loading, busy, read-only, out of memory, no
// access). Any other answer is Redis running the script and the script
// failing, which is no outage: counting such requests in this process, or
// ending the leases, would not help, and its error is the request's.
func unavailable(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return true
	}
	return redis.IsLoadingError(err) || redis.IsReadOnlyError(err) || redis.IsClusterDownError(err) ||
		redis.IsTryAgainError(err) || redis.IsMasterDownError(err) || redis.IsMaxClientsError(err) ||
		redis.IsOOMError(err) || redis.IsAuthError(err) || redis.IsPermissionError(err) ||
		redis.HasErrorPrefix(err, "BUSY") || redis.HasErrorPrefix(err, "MISCONF")
}

// unreachable counts a call that failed, and logs the first of an outage.
func (l *redisLimiter) unreachable(ctx context.Context, err error) {
	l.m.redisDown.Inc()
	l.endLeases() // from now on the policy decides
	if l.down.CompareAndSwap(false, true) {
		l.nextProbe.Store(time.Now().Add(redisRetry).UnixMilli())
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
		l.retryReturns() // held while Redis was down, so as not to keep dialing it
		l.m.redisOutage.Set(0)
		l.log.InfoContext(ctx, "redis reachable again for gateway limits")
	}
}

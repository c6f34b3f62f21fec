package gateway

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Limits of Keybridge keys (SPEC §7.6).
//
// Exact semantics, the same in process and in Redis:
//
//   - Times are counted in whole milliseconds. A request admitted at t
//     counts against RPM in every window that holds t, and the window at
//     now is (now-60s, now]: N requests admitted at t refuse the next one
//     until t+60s, and admit it at t+60s exactly.
//   - A refused request counts against nothing.
//   - TPM counts, in the same window, the tokens that responses reported,
//     at the time their request settled, plus every reservation not yet
//     settled whatever its age. The budget counts the tokens settled in
//     the current UTC day or month plus the same reservations.
//   - A key is refused when it is at or over a limit before the request,
//     so a request is admitted however large its reservation: a declared
//     output cap above TPM must not lock a key out for good. Concurrent
//     requests therefore overshoot by at most their own reservations.
//   - A reservation is at most the key's tightest token limit (see
//     reservation): a cap above it holds the key at its limit while the
//     request runs, as the limit itself would, and no more.
//   - Retry-After is the wait until the key is below every limit it is at:
//     for RPM and TPM until enough of the window's entries leave it, for
//     the budget until the period ends. When only unsettled reservations
//     hold a key at a limit no clock says when they end (their responses
//     do), and the wait is pendingRetry.
const (
	limitWindow = 60 * time.Second
	windowMs    = int64(limitWindow / time.Millisecond)
	// reserveTTL gives up a reservation that no settlement ended, left by
	// a replica that died mid-request; streams rarely run that long.
	reserveTTL   = time.Hour
	pendingRetry = time.Second
	// idleSweep is how often each shard of the in-process counters drops
	// the keys that have nothing left to count.
	idleSweep = time.Minute

	// maxTokens bounds one count of tokens: a reservation, or what one
	// answer reported. No real request comes near it (2^40, over a
	// trillion tokens), and under it the counts and their sums that the
	// Redis scripts make stay integers that Lua's numbers (doubles) hold
	// exactly.
	maxTokens = 1 << 40
	// maxLimit bounds a limit as counted: a larger one counts as this
	// (2^50 tokens or requests: never reached), for the same reason.
	maxLimit = 1 << 50
)

// reservation is what a request that declares cap reserves under lim:
// the cap, but at most the key's tightest token limit. A larger one could
// hold the key no further past its limit than the limit itself does, and
// an unbounded one would overflow the counters that add it.
func reservation(lim keybridge.Limits, cap int64) int64 {
	r := min(max(cap, 0), maxTokens)
	if lim.RateLimitTPM > 0 {
		r = min(r, lim.RateLimitTPM)
	}
	if hasBudget(lim) {
		r = min(r, lim.TokenBudget)
	}
	return r
}

// counted is what one answer's tokens count: used, at most maxTokens.
func counted(used int64) int64 { return min(max(used, 0), maxTokens) }

// addSat is a+b for counts (a, b >= 0), at most math.MaxInt64: counts
// that saturate hold a key at its limits rather than wrap below them.
func addSat(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

// limiter enforces a key's keybridge.Limits (RateLimitRPM, RateLimitTPM,
// TokenBudget with BudgetPeriod).
type limiter interface {
	// admit checks the key (its ID) against lim at now, counting the
	// request against RPM and reserving `reserve` tokens (the request's
	// declared output cap) against TPM and the budget. A key at or over a
	// limit is refused: d.ok false, with d.retryAfter and d.limit ("rpm",
	// "tpm", "budget"). On success it returns a ticket to settle; a zero
	// ticket (nothing reserved) settles as a no-op.
	admit(ctx context.Context, keyID string, lim keybridge.Limits, reserve int64, now time.Time) (t ticket, d decision, err error)
	// settle replaces the ticket's reservation by the tokens the response
	// reported (input + output + cache read + cache write), also for
	// aborted streams: a cancel is never free.
	settle(ctx context.Context, t ticket, used int64, now time.Time) error
	// settleWaits reports whether settle waits for a round trip before it
	// returns, so that the request's end should not wait for it.
	settleWaits() bool
	// collectors are the limiter's metrics, to register once.
	collectors() []prometheus.Collector
}

// Names of the limits, as decision.limit and the refusals metric's label.
const (
	limitRPM    = "rpm"
	limitTPM    = "tpm"
	limitBudget = "budget"
)

// decision is admit's verdict.
type decision struct {
	ok         bool
	limit      string        // refused: the limit with the longest wait
	retryAfter time.Duration // refused: until the key is below every limit it is at

	// For Keybridge's headers (SPEC §7.6): limits and what remains after
	// this request. tok is the tighter of TPM and the budget. -1 when the
	// key has no such limit.
	rpmLimit, rpmRemaining, tokLimit, tokRemaining int64
}

// unlimited is the decision for a key with no limits.
var unlimited = decision{ok: true, rpmLimit: -1, rpmRemaining: -1, tokLimit: -1, tokRemaining: -1}

// ticket is an admitted request's claim, settled when its response ends.
type ticket struct {
	keyID    string // empty: nothing to settle
	seq      string // names the request in Redis (see owed.seq)
	reserved int64
	tpm      bool                   // settle into the TPM window
	budget   keybridge.BudgetPeriod // settle into this budget; empty: none
	// local is true when the reservation is held by this process's
	// counters (no Redis, or Redis down at admission).
	local bool
	// lease is the lease the request was admitted from, which holds its
	// reservation; nil for one that Redis admitted.
	lease *lease
}

// tally is a key's standing at admission: the counts (including this
// request once admitted) and, for each limit it is at or over, the wait.
type tally struct {
	rpm, tpm, bud             int64
	rpmWait, tpmWait, budWait time.Duration
}

func (t *tally) refused() bool { return t.rpmWait > 0 || t.tpmWait > 0 || t.budWait > 0 }

func (t *tally) decision(lim keybridge.Limits) decision {
	d := unlimited
	if lim.RateLimitRPM > 0 {
		d.rpmLimit, d.rpmRemaining = lim.RateLimitRPM, max(lim.RateLimitRPM-t.rpm, 0)
	}
	if lim.RateLimitTPM > 0 {
		d.tokLimit, d.tokRemaining = lim.RateLimitTPM, max(lim.RateLimitTPM-t.tpm, 0)
	}
	if hasBudget(lim) {
		rem := max(lim.TokenBudget-t.bud, 0)
		if d.tokLimit < 0 || rem < d.tokRemaining || rem == d.tokRemaining && lim.TokenBudget < d.tokLimit {
			d.tokLimit, d.tokRemaining = lim.TokenBudget, rem
		}
	}
	d.ok = !t.refused()
	if !d.ok {
		// The longest wait is the one that matters: the key needs every
		// limit to free up.
		d.limit, d.retryAfter = limitRPM, t.rpmWait
		if t.tpmWait > d.retryAfter {
			d.limit, d.retryAfter = limitTPM, t.tpmWait
		}
		if t.budWait > d.retryAfter {
			d.limit, d.retryAfter = limitBudget, t.budWait
		}
	}
	return d
}

func hasBudget(lim keybridge.Limits) bool {
	return lim.TokenBudget > 0 && (lim.BudgetPeriod == keybridge.BudgetDay || lim.BudgetPeriod == keybridge.BudgetMonth)
}

// hasLimits reports whether lim limits anything, and whether it counts
// tokens (TPM or a budget).
func hasLimits(lim keybridge.Limits) (any, tokens bool) {
	tokens = lim.RateLimitTPM > 0 || hasBudget(lim)
	return tokens || lim.RateLimitRPM > 0, tokens
}

// period returns the UTC day or month holding ms, as [start, end) in
// milliseconds.
func period(ms int64, p keybridge.BudgetPeriod) (start, end int64) {
	t := time.UnixMilli(ms).UTC()
	var s, e time.Time
	if p == keybridge.BudgetMonth {
		s = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		e = s.AddDate(0, 1, 0)
	} else {
		s = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		e = s.AddDate(0, 0, 1)
	}
	return s.UnixMilli(), e.UnixMilli()
}

// limitMetrics are shared by a Redis limiter and its in-process fallback,
// so each refusal counts once, where it was decided.
type limitMetrics struct {
	refusals         *prometheus.CounterVec
	rpm, tpm, budget prometheus.Counter
	redisDown        prometheus.Counter
	redisOutage      prometheus.Gauge
}

func newLimitMetrics() *limitMetrics {
	m := &limitMetrics{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybridge_gateway_limit_refusals_total",
			Help: "Gateway requests refused with 429 by a key's own limits, by limit (rpm, tpm, budget).",
		}, []string{"limit"}),
		redisDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybridge_gateway_limits_redis_down_total",
			Help: "Limit checks and settlements that could not reach Redis, and were counted in this process or refused.",
		}),
		redisOutage: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keybridge_gateway_limits_redis_down",
			Help: "1 while Redis, which holds the shared limit counters, cannot be reached.",
		}),
	}
	m.rpm = m.refusals.WithLabelValues(limitRPM)
	m.tpm = m.refusals.WithLabelValues(limitTPM)
	m.budget = m.refusals.WithLabelValues(limitBudget)
	return m
}

func (m *limitMetrics) refused(limit string) {
	switch limit {
	case limitRPM:
		m.rpm.Inc()
	case limitTPM:
		m.tpm.Inc()
	case limitBudget:
		m.budget.Inc()
	}
}

// memLimiter keeps the counters in this process, for a single replica or
// while Redis is down. Keys that have nothing left to count are dropped,
// so memory follows the keys in use.
type memLimiter struct {
	seed   maphash.Seed
	shards [32]limitShard
	m      *limitMetrics
}

type limitShard struct {
	mu    sync.Mutex
	keys  map[string]*keyCounts
	swept int64 // ms
}

// keyCounts are one key's counters.
type keyCounts struct {
	rpm     window // admissions, one count each
	tpm     window // settled tokens
	pending int64  // tokens reserved and not yet settled
	open    int64  // tickets not yet settled: the key is in use
	seen    int64  // ms of the last admission or settlement

	// day and month are the budgets of the current day and month, each
	// kept whichever period the key's limits name now: a key switched to
	// the other kind and back finds what it spent, as in Redis, which
	// keeps a key per period.
	day, month budgetCount
}

// budgetCount is the tokens settled in one period [start, end) (ms).
type budgetCount struct{ start, end, used int64 }

// spent reports whether b holds tokens of a period not ended at ms.
func (b *budgetCount) spent(ms int64) bool { return b.used > 0 && b.end > ms }

func newMemLimiter() *memLimiter { return newMemLimiterMetrics(newLimitMetrics()) }

func newMemLimiterMetrics(m *limitMetrics) *memLimiter {
	l := &memLimiter{seed: maphash.MakeSeed(), m: m}
	for i := range l.shards {
		l.shards[i].keys = map[string]*keyCounts{}
	}
	return l
}

func (l *memLimiter) settleWaits() bool { return false }

func (l *memLimiter) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.m.refusals}
}

func (l *memLimiter) shard(keyID string) *limitShard {
	return &l.shards[maphash.String(l.seed, keyID)&(uint64(len(l.shards))-1)]
}

// counts returns keyID's counters, made on first use; s.mu is held.
func (s *limitShard) counts(keyID string, ms int64) *keyCounts {
	if ms-s.swept >= int64(idleSweep/time.Millisecond) {
		s.sweep(ms)
	}
	k := s.keys[keyID]
	if k == nil {
		k = &keyCounts{}
		s.keys[keyID] = k
	}
	k.seen = max(k.seen, ms)
	return k
}

// sweep drops the keys with no ticket open, nothing in the window and no
// budget spent in the current period.
func (s *limitShard) sweep(ms int64) {
	s.swept = ms
	for id, k := range s.keys {
		if k.open == 0 && k.seen <= ms-windowMs && !k.day.spent(ms) && !k.month.spent(ms) {
			delete(s.keys, id)
		}
	}
}

// budget brings the key's budget of kind p to the period holding ms and
// returns it.
func (k *keyCounts) budget(ms int64, p keybridge.BudgetPeriod) *budgetCount {
	b := &k.day
	if p == keybridge.BudgetMonth {
		b = &k.month
	}
	if ms < b.start || ms >= b.end {
		b.start, b.end = period(ms, p)
		b.used = 0
	}
	return b
}

func (l *memLimiter) admit(_ context.Context, keyID string, lim keybridge.Limits, reserve int64, now time.Time) (ticket, decision, error) {
	limited, tokens := hasLimits(lim)
	if !limited {
		return ticket{}, unlimited, nil
	}
	reserve = reservation(lim, reserve)
	ms := now.UnixMilli()
	from := ms - windowMs
	s := l.shard(keyID)
	var t tally
	s.mu.Lock()
	k := s.counts(keyID, ms)
	if n := min(lim.RateLimitRPM, maxLimit); n > 0 {
		k.rpm.trim(from)
		t.rpm = k.rpm.sum
		if t.rpm >= n {
			w, _ := k.rpm.wait(t.rpm-n+1, ms)
			t.rpmWait = w
		}
	}
	if n := min(lim.RateLimitTPM, maxLimit); n > 0 {
		k.tpm.trim(from)
		t.tpm = addSat(k.tpm.sum, k.pending)
		if t.tpm >= n {
			w, ok := k.tpm.wait(t.tpm-n+1, ms)
			if !ok {
				w = pendingRetry
			}
			t.tpmWait = w
		}
	}
	if hasBudget(lim) {
		n := min(lim.TokenBudget, maxLimit)
		b := k.budget(ms, lim.BudgetPeriod)
		used := b.used
		t.bud = addSat(used, k.pending)
		if t.bud >= n {
			t.budWait = time.Duration(b.end-ms) * time.Millisecond
			if used < n {
				t.budWait = min(t.budWait, pendingRetry)
			}
		}
	}
	admitted := !t.refused()
	if admitted {
		if lim.RateLimitRPM > 0 {
			k.rpm.add(ms, 1)
			t.rpm++
		}
		if tokens {
			k.pending = addSat(k.pending, reserve)
			k.open++
			t.tpm = addSat(t.tpm, reserve)
			t.bud = addSat(t.bud, reserve)
		}
	}
	s.mu.Unlock()
	d := t.decision(lim)
	if !admitted {
		l.m.refused(d.limit)
		return ticket{}, d, nil
	}
	if !tokens {
		return ticket{}, d, nil
	}
	tk := ticket{keyID: keyID, reserved: reserve, tpm: lim.RateLimitTPM > 0, local: true}
	if hasBudget(lim) {
		tk.budget = lim.BudgetPeriod
	}
	return tk, d, nil
}

func (l *memLimiter) settle(_ context.Context, t ticket, used int64, now time.Time) error {
	if t.keyID == "" {
		return nil
	}
	ms, used := now.UnixMilli(), counted(used)
	s := l.shard(t.keyID)
	s.mu.Lock()
	k := s.counts(t.keyID, ms)
	// A ticket from Redis, settled here while Redis is down, holds no
	// reservation in this process: only its tokens are counted.
	if t.local {
		k.pending = max(k.pending-t.reserved, 0)
		k.open = max(k.open-1, 0)
	}
	if used > 0 {
		if t.tpm {
			k.tpm.trim(ms - windowMs)
			k.tpm.add(ms, used)
		}
		if t.budget != "" {
			b := k.budget(ms, t.budget)
			b.used = addSat(b.used, used)
		}
	}
	s.mu.Unlock()
	return nil
}

// window is a log of counts by time (ms), oldest first, with their sum.
// Counts in the same millisecond share an entry, so a window holds at most
// one entry per millisecond whatever the rate.
type window struct {
	e    []windowEntry
	head int
	sum  int64
}

type windowEntry struct{ at, n int64 }

// trim drops the entries at or before from.
func (w *window) trim(from int64) {
	for w.head < len(w.e) && w.e[w.head].at <= from {
		w.sum -= w.e[w.head].n
		w.head++
	}
	switch {
	case w.head == len(w.e):
		w.e, w.head = w.e[:0], 0
	case w.head >= 32 && 2*w.head >= len(w.e):
		n := copy(w.e, w.e[w.head:])
		w.e, w.head = w.e[:n], 0
	}
}

// add counts n at ms. A time before the newest entry (two requests that
// read the clock in one order and took the lock in the other) joins the
// newest entry: it leaves the window later, which errs toward the limit.
func (w *window) add(ms, n int64) {
	if last := len(w.e) - 1; last >= w.head && w.e[last].at >= ms {
		w.e[last].n = addSat(w.e[last].n, n)
	} else {
		w.e = append(w.e, windowEntry{ms, n})
	}
	w.sum = addSat(w.sum, n)
}

// wait returns how long from ms until the oldest entries holding need
// counts have left the window; false when the window holds fewer.
func (w *window) wait(need, ms int64) (time.Duration, bool) {
	var acc int64
	for _, e := range w.e[w.head:] {
		acc += e.n
		if acc >= need {
			return time.Duration(e.at+windowMs-ms) * time.Millisecond, true
		}
	}
	return 0, false
}

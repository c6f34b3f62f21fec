package gateway

import (
	"strconv"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Leases of limit capacity, for limits kept in Redis.
//
// A round trip to Redis for every request costs more than the rest of
// the gateway's work. While a key is far from its limits it does not need
// one: the admission that Redis decides also grants this replica a lease,
// a share of the key's capacity counted in Redis at once, and the key's
// next requests here are admitted from it in memory. A lease
//
//   - is granted only while the key, with the lease counted, stays at or
//     under half of each of its limits, and is at most 1% of each, so a
//     key near a limit is decided by Redis request by request, exactly;
//   - holds RPM slots (2 to leaseMaxSlots) when the key has an RPM limit:
//     they count in the shared window from the grant, scored at the
//     lease's end (never leaving the window early), and on return each
//     used slot is scored at the time it was used and each unused one
//     removed;
//   - holds tokens when the key has a TPM limit or a budget: one
//     reservation, from which each request admitted from the lease
//     reserves its declared output cap, and which what its answers
//     report beyond their caps uses up too; a request whose cap does not
//     fit what is left goes to Redis, as does one without a cap once
//     nothing is left (fits). Its requests' tokens settle into the shared
//     counters as others do; the reservation is released once the lease
//     has ended and its last request has settled;
//   - ends after leaseTTL, when it runs out, when the key's limits
//     change, when a call to Redis fails, or at shutdown, and the next
//     admission asks for a fresh one, sized by what the last one served.
//     A WebSocket's charge (chargeOnly) is not admitted from it, takes no
//     lease of its own and leaves the key's alone.
//
// So every replica still counts against one limit and none can admit
// past it from its leases. What a lease changes: Keybridge's remaining
// headers are this replica's view (the grant's counts plus its own
// requests since), and tokens that answers report beyond their
// reservations reach the other replicas' decisions as settlements always
// do, while a lease keeps admitting for at most leaseTTL on a key that
// crossed half its limit that way.
const (
	leaseTTL      = time.Second
	leaseMinSlots = 8
	leaseMaxSlots = 256
	// maxUnsent bounds the keys whose returns (and, apart, whose
	// un-reserves) are kept while Redis is down; past it they are
	// dropped, and what they held in Redis expires there.
	maxUnsent = 10000
)

// lease is one key's lease on this replica. Its fields are guarded by the
// limiter's lmu.
type lease struct {
	seq   string // the admission that granted it names it in Redis: L<seq>
	lim   keybridge.Limits
	until int64 // ms: admits before this
	slots int64 // RPM slots granted
	at    []int64
	// tokens were reserved in Redis; free is what is left of them.
	tokens, free int64
	reserved     int64 // reserved from it by its requests
	// extra is what the key's settlements on this replica since the grant
	// reported beyond what they had reserved (less, when negative).
	extra    int64
	n        int64 // requests admitted from it
	open     int64 // of them, not yet settled
	base     tally // the key's counts at the grant, its own request included
	ended    bool  // its slots went back (or will, with the next call)
	asking   bool  // ended, and an admission is asking for the next
	released bool  // its tokens went back (or will)
}

// leaseReturn gives a lease's capacity back: its unused slots, its used
// ones rescored at the times in at, and tokens (0: none now). With
// forget, it is the lease an admission whose answer was lost may have
// been granted, of which nothing is known: its tokens go, whatever they
// were.
type leaseReturn struct {
	seq           string
	slots, tokens int64
	at            []int64
	forget        bool
}

// leaseAsk is what an admission asks Redis to lease.
type leaseAsk struct {
	ask           bool
	slots, tokens int64
}

// fromLease admits a request from the key's lease, if it has one that
// holds room for it.
func (l *redisLimiter) fromLease(keyID string, lim keybridge.Limits, reserve, ms int64, p keybridge.BudgetPeriod) (ticket, decision, bool) {
	_, tokens := hasLimits(lim)
	l.lmu.Lock()
	ls := l.leases[keyID]
	if ls == nil || ls.ended || ls.lim != lim || ms >= ls.until || ms < ls.until-leaseTTL.Milliseconds() ||
		lim.RateLimitRPM > 0 && int64(len(ls.at)) >= ls.slots || tokens && !ls.fits(reserve) {
		l.lmu.Unlock()
		return ticket{}, decision{}, false
	}
	ls.n++
	n := ls.n
	if lim.RateLimitRPM > 0 {
		ls.at = append(ls.at, ms)
	}
	if tokens {
		ls.free -= reserve
		ls.reserved += reserve
		ls.open++
	}
	t := tally{rpm: ls.base.rpm + int64(len(ls.at)), tpm: ls.base.tpm + ls.reserved + ls.extra, bud: ls.base.bud + ls.reserved + ls.extra}
	l.lmu.Unlock()
	d := t.decision(lim)
	if !tokens {
		return ticket{}, d, true
	}
	seq := "L" + ls.seq + "." + strconv.FormatInt(n, 10)
	return ticket{keyID: keyID, seq: seq, reserved: reserve, tpm: lim.RateLimitTPM > 0, budget: p, lease: ls}, d, true
}

// endLease ends the key's lease, if any, before an admission goes to
// Redis, and says what to ask for instead: enough for twice what the
// last lease served, and for this request.
func (l *redisLimiter) endLease(keyID string, lim keybridge.Limits, reserve int64) (leaseAsk, []leaseReturn) {
	if charging(lim) {
		// A WebSocket's later response, charged to the key: it takes
		// no lease, and leaves the key's alone.
		return leaseAsk{}, nil
	}
	_, tokens := hasLimits(lim)
	ask := leaseAsk{ask: true, slots: leaseMinSlots}
	if tokens {
		ask.tokens = 8 * reserve
	}
	l.lmu.Lock()
	defer l.lmu.Unlock()
	ls := l.leases[keyID]
	if ls == nil {
		return ask, nil
	}
	// A lease granted under limits the key no longer has ends here too,
	// and goes back with this admission, which Redis decides under the
	// new ones: left to its time, its unused slots and tokens would hold
	// a key whose limits were lowered at them, refused with the
	// Retry-After of slots scored at the lease's end.
	// The ended lease stays until the next grant replaces it, so that of
	// concurrent requests that find it used up, one asks for the next.
	if ls.asking {
		return leaseAsk{}, nil
	}
	ls.asking = true
	ask.slots = min(max(2*int64(len(ls.at)), leaseMinSlots), leaseMaxSlots)
	if tokens {
		// What the last lease's requests took, their answers' tokens
		// beyond their caps included: requests without a cap take only
		// those.
		ask.tokens = max(ask.tokens, 2*(ls.reserved+max(ls.extra, 0))+2*reserve)
	}
	return ask, ls.end()
}

// end ends ls (lmu held) and returns what goes back to Redis now: its
// slots, and its tokens if none of its requests is still open.
func (ls *lease) end() []leaseReturn {
	if ls.ended {
		return nil
	}
	ls.ended = true
	r := leaseReturn{seq: ls.seq, slots: ls.slots, at: ls.at}
	if ls.open == 0 && !ls.released {
		ls.released = true
		r.tokens = ls.tokens
	}
	if r.slots == 0 && r.tokens == 0 {
		return nil
	}
	return []leaseReturn{r}
}

// grant keeps a lease Redis granted for keyID, or with ls nil notes that
// it granted none.
func (l *redisLimiter) grant(keyID string, ls *lease) {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	old := l.leases[keyID]
	if ls == nil {
		if old != nil && old.ended {
			old.asking = false
		}
		return
	}
	if old != nil {
		// The ended lease it follows, or one granted to another
		// admission at the same time, given back.
		l.owe(keyID, nil, old.end())
	}
	l.leases[keyID] = ls
}

// fits reports whether ls (lmu held) has room for a request that
// reserves reserve: what is left of its tokens, less what its answers
// reported beyond their reservations, holds the reservation, and is more
// than nothing. A request without a cap reserves nothing and uses what it
// uses: a lease that admitted such requests whatever its tokens would let
// each replica spend up to half a limit in it, the replicas together past
// the limit, before any of them asked Redis again.
func (ls *lease) fits(reserve int64) bool {
	left := ls.free - max(ls.extra, 0)
	return reserve <= left && left > 0 && ls.underHalf()
}

// underHalf reports whether the key's token counts as this replica sees
// them are still at or under half of its limits: tokens that answers
// reported beyond their reservations end a lease's admissions here.
func (ls *lease) underHalf() bool {
	return (ls.lim.RateLimitTPM <= 0 || 2*(ls.base.tpm+ls.reserved+ls.extra) <= ls.lim.RateLimitTPM) &&
		(!hasBudget(ls.lim) || 2*(ls.base.bud+ls.reserved+ls.extra) <= ls.lim.TokenBudget)
}

// spent notes a settlement of keyID on this replica that Redis admitted:
// what it reported beyond its reservation counts in the key's lease.
func (l *redisLimiter) spent(keyID string, used, reserved int64) {
	l.lmu.Lock()
	if ls := l.leases[keyID]; ls != nil {
		ls.extra += used - reserved
	}
	l.lmu.Unlock()
}

// settled notes that a request admitted from ls has settled, having
// reserved reserved and used used, and returns the lease's tokens to give
// back if it was its last.
func (l *redisLimiter) settled(ls *lease, used, reserved int64) []leaseReturn {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	ls.extra += used - reserved
	ls.open--
	if !ls.ended || ls.open > 0 || ls.released {
		return nil
	}
	ls.released = true
	if ls.tokens == 0 {
		return nil
	}
	return []leaseReturn{{seq: ls.seq, tokens: ls.tokens}}
}

// expire ends the leases whose time is up at ms.
func (l *redisLimiter) expire(ms int64) {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	for keyID, ls := range l.leases {
		if ms >= ls.until {
			delete(l.leases, keyID)
			l.owe(keyID, nil, ls.end())
		}
	}
}

// endLeases ends every lease when Redis cannot be reached: a request
// the policy would refuse is not admitted from a lease, and the returns
// wait for Redis.
func (l *redisLimiter) endLeases() {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	for keyID, ls := range l.leases {
		delete(l.leases, keyID)
		l.returnLater(keyID, ls.end())
	}
}

// returnLater keeps returns that could not reach Redis for run to send
// again.
func (l *redisLimiter) returnLater(keyID string, rs []leaseReturn) {
	if len(rs) == 0 {
		return
	}
	l.mu.Lock()
	if len(l.unsent) < maxUnsent {
		l.unsent[keyID] = append(l.unsent[keyID], rs...)
	}
	l.mu.Unlock()
}

// unreserveLater keeps the reservations of settlements that could not
// reach Redis for run to send again: an un-reserve names its reservation,
// so sending it late, or twice, is harmless. Their tokens were counted in
// this process instead.
func (l *redisLimiter) unreserveLater(keyID string, os []owed) {
	var un []owed
	for _, o := range os {
		if o.reserved > 0 {
			un = append(un, owed{seq: o.seq, reserved: o.reserved, ms: o.ms, budget: budgetKey(keyID, 0, "")})
		}
	}
	if len(un) == 0 {
		return
	}
	l.mu.Lock()
	if _, ok := l.unreserved[keyID]; ok || len(l.unreserved) < maxUnsent {
		l.unreserved[keyID] = append(l.unreserved[keyID], un...)
	}
	l.mu.Unlock()
}

// retryReturns queues the returns and un-reserves that could not reach
// Redis once more.
func (l *redisLimiter) retryReturns() {
	l.mu.Lock()
	unsent, unreserved := takeMap(&l.unsent), takeMap(&l.unreserved)
	l.mu.Unlock()
	for keyID, rs := range unsent {
		l.owe(keyID, nil, rs)
	}
	for keyID, os := range unreserved {
		l.owe(keyID, os, nil)
	}
}

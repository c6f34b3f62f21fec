package gateway

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Cooldowns of upstream keys (SPEC §7.4), kept in memory per replica: a
// key that answered 429 rests for its Retry-After (or retry-after-ms),
// else for 5 s doubling with each 429 in a row up to 5 minutes; a key
// refused with 401 or 403 rests 5 minutes. A success ends the streak.
const (
	cooldownBase    = 5 * time.Second
	cooldownMax     = 5 * time.Minute
	cooldownRefused = 5 * time.Minute
)

type cooldown struct {
	until  time.Time
	streak int
	// limited is true when the rest follows a 429: an exhausted request
	// then answers 429 rather than 502.
	limited bool
}

type cooldowns struct {
	mu   sync.Mutex
	keys map[string]cooldown
	// changed receives keys whose cooldown_until should be written for
	// display; a full channel drops the write, never the request.
	changed chan cooldownChange
}

type cooldownChange struct {
	keyID   string
	until   time.Time // zero: cleared
	limited bool
}

func newCooldowns() *cooldowns {
	return &cooldowns{keys: map[string]cooldown{}, changed: make(chan cooldownChange, 1024)}
}

// check reports whether key is resting at now, and until when.
func (c *cooldowns) check(key string, now time.Time) (cooldown, bool) {
	c.mu.Lock()
	cd, ok := c.keys[key]
	c.mu.Unlock()
	return cd, ok && now.Before(cd.until)
}

// fail records a failover-worthy answer of key and returns its rest;
// rested reports whether the status called for one and key was put to
// rest.
//
// A credential with no ID (a personal key, Bedrock's settings) is not
// rested: it is the request's only candidate, and its state would be
// shared with every other user's. The rest a 429 asks of it is still
// returned, for the answer's Retry-After.
func (c *cooldowns) fail(key string, status int, h http.Header, now time.Time) (rest time.Duration, rested bool) {
	if key == "" {
		if status != http.StatusTooManyRequests {
			return 0, false
		}
		d, ok := retryAfter(h, now)
		if !ok {
			d = cooldownBase
		}
		return min(d, cooldownMax), false
	}
	var d time.Duration
	c.mu.Lock()
	cd := c.keys[key]
	switch status {
	case http.StatusTooManyRequests:
		cd.streak++
		if ra, ok := retryAfter(h, now); ok {
			d = ra
		} else {
			d = cooldownBase << min(cd.streak-1, 6)
		}
		d = min(d, cooldownMax)
		cd.limited = true
	case http.StatusUnauthorized, http.StatusForbidden:
		d = cooldownRefused
		cd.limited = false
	default:
		c.mu.Unlock()
		return 0, false
	}
	cd.until = now.Add(d)
	c.keys[key] = cd
	c.mu.Unlock()
	c.publish(cooldownChange{keyID: key, until: cd.until, limited: cd.limited})
	return d, true
}

// succeed ends key's cooldown streak.
func (c *cooldowns) succeed(key string) {
	c.mu.Lock()
	_, ok := c.keys[key]
	if ok {
		delete(c.keys, key)
	}
	c.mu.Unlock()
	if ok {
		c.publish(cooldownChange{keyID: key})
	}
}

// apply takes a rest that another replica decided (through Redis). It is
// not published again: that replica writes it for display.
func (c *cooldowns) apply(ch cooldownChange) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.until.IsZero() {
		delete(c.keys, ch.keyID)
		return
	}
	cd := c.keys[ch.keyID]
	cd.until, cd.limited = ch.until, ch.limited
	cd.streak = max(cd.streak, 1)
	c.keys[ch.keyID] = cd
}

func (c *cooldowns) publish(ch cooldownChange) {
	if ch.keyID == "" {
		return // a personal credential or Bedrock's settings: not listed
	}
	select {
	case c.changed <- ch:
	default:
	}
}

// retryAfter reads retry-after-ms, then Retry-After (seconds or an HTTP
// date), capped at cooldownMax.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 {
			return capWait(ms * float64(time.Millisecond)), true
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
			return capWait(s * float64(time.Second)), true
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	return 0, false
}

// capWait is a wait of ns nanoseconds capped at cooldownMax, compared as
// a float: a number of seconds too large for a Duration (or +Inf, which
// ParseFloat accepts) would wrap around to a negative rest.
func capWait(ns float64) time.Duration {
	if ns >= float64(cooldownMax) {
		return cooldownMax
	}
	return time.Duration(ns)
}

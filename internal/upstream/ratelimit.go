package upstream

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimit is one limit a provider reported: how much it allows, how much
// is left and when the window resets. A field the provider did not send is
// null.
type RateLimit struct {
	Limit     *int64     `json:"limit"`
	Remaining *int64     `json:"remaining"`
	ResetAt   *time.Time `json:"reset_at"`
}

// RateLimits are the limits read from a provider's response headers
// (SPEC §4). A category appears only when the provider sent a header of it.
type RateLimits struct {
	Requests     *RateLimit `json:"requests,omitempty"`
	Tokens       *RateLimit `json:"tokens,omitempty"`
	InputTokens  *RateLimit `json:"input_tokens,omitempty"`
	OutputTokens *RateLimit `json:"output_tokens,omitempty"`
}

// Empty reports whether no limit was found.
func (r RateLimits) Empty() bool {
	return r.Requests == nil && r.Tokens == nil && r.InputTokens == nil && r.OutputTokens == nil
}

// ParseRateLimits reads the rate-limit headers of OpenAI and of the APIs
// that copy it (Azure OpenAI, most OpenAI-compatible servers):
//
//	x-ratelimit-{limit,remaining,reset}-{requests,tokens}, resets as durations ("6m0s", "12ms", "1s")
//
// and of Anthropic:
//
//	anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}, resets in RFC 3339
//
// now is when the response arrived; relative resets count from it.
// Values that do not parse are left out rather than guessed.
func ParseRateLimits(h http.Header, now time.Time) RateLimits {
	var out RateLimits
	slot := func(category string) **RateLimit {
		switch category {
		case "requests":
			return &out.Requests
		case "tokens":
			return &out.Tokens
		case "input-tokens":
			return &out.InputTokens
		case "output-tokens":
			return &out.OutputTokens
		}
		return nil
	}
	get := func(category string) *RateLimit {
		p := slot(category)
		if *p == nil {
			*p = &RateLimit{}
		}
		return *p
	}
	// OpenAI first, Anthropic second: a response carrying both (a proxy
	// in front of Anthropic) reports Anthropic's own, more precise ones.
	for _, category := range []string{"requests", "tokens"} {
		if v, ok := parseCount(h.Get("x-ratelimit-limit-" + category)); ok {
			get(category).Limit = &v
		}
		if v, ok := parseCount(h.Get("x-ratelimit-remaining-" + category)); ok {
			get(category).Remaining = &v
		}
		if t, ok := parseReset(h.Get("x-ratelimit-reset-"+category), now); ok {
			get(category).ResetAt = &t
		}
	}
	for _, category := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
		prefix := "anthropic-ratelimit-" + category + "-"
		if v, ok := parseCount(h.Get(prefix + "limit")); ok {
			get(category).Limit = &v
		}
		if v, ok := parseCount(h.Get(prefix + "remaining")); ok {
			get(category).Remaining = &v
		}
		if t, ok := parseReset(h.Get(prefix+"reset"), now); ok {
			get(category).ResetAt = &t
		}
	}
	return out
}

// parseCount reads a non-negative count; some servers send "1000.0".
func parseCount(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return n, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > math.MaxInt64/2 {
		return 0, false
	}
	return int64(f), true
}

// parseReset reads a reset time: an RFC 3339 instant (Anthropic), a Go-style
// duration such as "6m0s", "12ms" or "1h2m3.5s" (OpenAI), optionally led by
// whole days ("1d2h"), or bare seconds ("20", "0.5").
func parseReset(s string, now time.Time) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, false
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), true
	}
	d, ok := parseDuration(s)
	if !ok {
		return time.Time{}, false
	}
	return now.Add(d).UTC().Truncate(time.Millisecond), true
}

func parseDuration(s string) (time.Duration, bool) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if secs < 0 || secs > 366*24*3600 {
			return 0, false
		}
		return time.Duration(secs * float64(time.Second)), true
	}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 || n > 366 {
			return 0, false
		}
		days, s = time.Duration(n)*24*time.Hour, s[i+1:]
		if s == "" {
			return days, true
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, false
	}
	return days + d, true
}

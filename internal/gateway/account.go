package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Accounting (SPEC §7.6, §7.7): a key with limits is admitted before
// anything is sent upstream, reserving its declared output cap; the tokens
// the answer reports are read from its bytes as they pass; when the answer
// ends, the reservation is settled with them and one usage row is queued.

// errLimitsUnavailable answers a limited key while Redis cannot be
// reached under --limits-when-redis-down=refuse. Its Retry-After is a
// second: the next call to Redis is tried as soon as it is asked for.
var errLimitsUnavailable = &gwError{status: http.StatusServiceUnavailable, code: keybridge.EUnavailable,
	msg: "the gateway's rate limits cannot be checked now (Redis is unreachable); try again shortly", retryAfter: 1}

// admit checks the caller's limits. It answers the refusal itself and
// reports whether the request may go on.
func (x *exchange) admit() bool {
	p := x.principal
	if p.Limits == (keybridge.Limits{}) {
		return true
	}
	t, d, err := x.g.lim.admit(x.r.Context(), p.KeyID, p.Limits, x.fields().maxTokens, time.Now())
	if err != nil {
		if errors.Is(err, errLimitsDown) {
			x.fail(errLimitsUnavailable)
			return false
		}
		if x.r.Context().Err() != nil {
			x.clientGone = true
			return false
		}
		x.g.log.ErrorContext(x.r.Context(), "gateway: check limits", "request_id", x.id, "err", err)
		x.fail(newError(keybridge.EInternal, "internal error"))
		return false
	}
	x.limits = d
	x.limited = true
	if !d.ok {
		e := newError(keybridge.ERateLimited, refusalMessage(d.limit, p.Limits))
		e.retryAfter = max(1, int((d.retryAfter+time.Second-1)/time.Second))
		x.fail(e) // with the limit headers, as every answer of such a key
		return false
	}
	x.ticket = t
	return true
}

func refusalMessage(limit string, l keybridge.Limits) string {
	switch limit {
	case limitRPM:
		return fmt.Sprintf("this key is at its limit of %d requests per minute", l.RateLimitRPM)
	case limitTPM:
		return fmt.Sprintf("this key is at its limit of %d tokens per minute", l.RateLimitTPM)
	case limitBudget:
		return fmt.Sprintf("this key has spent its budget of %d tokens this %s (UTC)", l.TokenBudget, l.BudgetPeriod)
	}
	return "this key is at one of its limits"
}

// setLimitHeaders puts Keybridge's own x-ratelimit-* headers on an answer
// to a key with limits, replacing the provider's same-named ones (SPEC
// §7.6): requests when it has an RPM limit, tokens when it has a TPM
// limit or a budget (the tighter).
func (x *exchange) setLimitHeaders(h http.Header) {
	if !x.limited {
		return
	}
	d := x.limits
	// The numbers are cut from one string and their value slices from
	// one array: two allocations, not one per header and value.
	var buf [80]byte
	b := buf[:0]
	var names [4]string
	var ends [4]int
	n := 0
	add := func(name string, v int64) {
		b = strconv.AppendInt(b, v, 10)
		names[n], ends[n] = name, len(b)
		n++
	}
	if d.rpmLimit >= 0 {
		add("X-Ratelimit-Limit-Requests", d.rpmLimit)
		add("X-Ratelimit-Remaining-Requests", max(d.rpmRemaining, 0))
	}
	if d.tokLimit >= 0 {
		add("X-Ratelimit-Limit-Tokens", d.tokLimit)
		add("X-Ratelimit-Remaining-Tokens", max(d.tokRemaining, 0))
	}
	str, vals, start := string(b), make([]string, n), 0
	for i := range n {
		vals[i] = str[start:ends[i]]
		h[names[i]] = vals[i : i+1 : i+1]
		start = ends[i]
	}
}

// metered reports whether the answers to path carry usage the gateway
// reads. A compressed answer cannot be read as it passes, so the gateway
// asks for an uncompressed one on these paths.
func metered(t keybridge.ProviderType, path string) bool { return usageFormatFor(t, path) != nil }

// unmeterable reports whether a request header would make the answer
// unreadable as it passes: compression of the body, or of WebSocket
// messages (permessage-deflate).
func unmeterable(name string) bool {
	return name == "Accept-Encoding" || name == "Sec-Websocket-Extensions"
}

// settle ends the request's accounting: its reservation is replaced by
// what the answer reported (a stream cut or abandoned included: a cancel
// is never free), and its usage row is queued.
func (x *exchange) settle(status int, total time.Duration, now time.Time) {
	p := x.principal
	if p == nil {
		return // no key: no org to charge
	}
	var tok tokens
	if x.scan != nil {
		tok, _ = x.scan.Tokens()
	}
	g := x.g
	if x.ticket.keyID != "" {
		if err := g.lim.settle(context.WithoutCancel(x.r.Context()), x.ticket, tok.total(), now); err != nil {
			g.log.WarnContext(x.r.Context(), "gateway: settle limits", "request_id", x.id, "err", err)
		}
	}
	if x.hijacked {
		return // a WebSocket records one row per response it carried
	}
	g.record(x, x.start, status, total, x.upstreamDur, tok, x.model(), now)
}

// storableText is s as the store can keep it in any engine: valid UTF-8
// without NUL, which PostgreSQL refuses in text. A model read from an
// escaped path (%00, %ff) or an escaped JSON string (\u0000) may hold
// either; a row refused for it would be a request nobody was charged for.
func storableText(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// total is what limits count: every token the answer reports.
func (t tokens) total() int64 {
	return addSat(addSat(t.Input, t.Output), addSat(t.CacheRead, t.CacheWrite))
}

// record queues one usage row of x, for an answer that began at start,
// took total (upstream of it), and names model, and the last use at now
// of the upstream credential it went through.
func (g *Gateway) record(x *exchange, start time.Time, status int, total, upstream time.Duration, tok tokens, model string, now time.Time) {
	p := x.principal
	u := keybridge.Usage{
		Time:              start.UTC(),
		OrgID:             p.OrgID,
		ProjectID:         p.ProjectID,
		UserID:            p.UserID,
		ProviderKeyID:     x.upstreamKey,
		Model:             storableText(model),
		Status:            status,
		Stream:            x.stream,
		LatencyMS:         ms(total),
		UpstreamLatencyMS: ms(upstream),
		InputTokens:       tok.Input,
		OutputTokens:      tok.Output,
		CacheReadTokens:   tok.CacheRead,
		CacheWriteTokens:  tok.CacheWrite,
		Failovers:         x.failovers,
	}
	switch p.Type {
	case keybridge.ActorAPIKey:
		u.APIKeyID = p.KeyID
	case keybridge.ActorAIKey:
		u.AIKeyID = p.KeyID
	}
	if x.rt != nil {
		u.ProviderID = x.rt.provider.ID
	}
	g.rec.add(u)
	g.m.countTokens(tok)
	if x.upstreamKey != "" {
		g.rec.touchProviderKey(x.upstreamKey, now)
	}
	if x.credentialID != "" {
		g.rec.touchCredential(x.credentialID, now)
	}
}

// model is the model a request names, as the allowlist reads it: the
// path's where the provider's path picks the model whatever the body says
// (Bedrock's /model/{id}/, Gemini's /models/{model}:, Azure's
// deployment); else the body's top-level model; else a model the path
// names otherwise (GET /v1/models/{model}).
func (x *exchange) model() string {
	if x.rt != nil {
		if m, ok := x.modelInPath(); ok {
			return m
		}
	}
	// What was scanned of the body counts; it is scanned now if no part
	// of the gateway needed it yet (finish records before the body's
	// buffer goes back to its pool).
	if x.scanned || x.body != nil {
		if m := x.fields().model; m != "" {
			return m
		}
	}
	return modelFromPath(x.path)
}

// modelFromPath reads a model from a path of any provider type, as the
// allowlist reads one from its provider's paths (pathModel).
func modelFromPath(path string) string {
	path, _, _ = strings.Cut(path, "?")
	if m, ok := segmentAfter(path, "/model/"); ok {
		return m
	}
	for _, marker := range []string{"/openai/deployments/", "/models/"} {
		if i := strings.Index(path, marker); i >= 0 {
			m, _ := segmentAfter(path[i:], marker)
			m, _, _ = strings.Cut(m, ":")
			return m
		}
	}
	return ""
}

// wsUsage returns the writer that reads usage from a WebSocket tunnel's
// provider-to-client bytes: one usage row per response, each charged to
// the key's limits as a request of its own.
//
// A response is admitted before it starts, as a request is: the first by
// the upgrade, each later one at the end of the one before, before the
// client has that end. When that admission is refused (the key is at a
// limit, or its limits cannot be checked under the refuse policy),
// refused is called: the tunnel must end once this response's last bytes
// have passed. A response the client started anyway (it need not wait for
// the one before) is still charged, at a limit or over.
//
// end is called once the tunnel has closed, with the refusal that closed
// it if one did, and whether the client's side ended first: a response
// under way then is a request too, charged and recorded with what was
// seen of it, as a stream cut over HTTP is.
func (x *exchange) wsUsage(refused func(*gwError)) (w io.Writer, end func(refusal *gwError, clientFirst bool)) {
	if x.principal == nil || x.rt == nil {
		return io.Discard, func(*gwError, bool) {}
	}
	ctx := context.Background()
	admitted := true // the upgrade admitted the first response
	first := true
	var began time.Time // the provider's first bytes of the response under way
	// done records a response that ended with status; last: the tunnel
	// has ended, and no response follows to be admitted.
	done := func(tok tokens, model string, status int, last bool) {
		g := x.g
		now := time.Now()
		// The first response began with the upgrade that asked for it,
		// whose upstream time is its own. Each later one began when the
		// provider's first bytes after the one before came (the client's
		// frames are not read), and its time is all the provider's: the
		// gateway only relays frames.
		start, upstream := x.start, x.upstreamDur
		if !first {
			if start = began; start.IsZero() {
				start = now // its first bytes came with its end
			}
			upstream = now.Sub(start)
		}
		first, began = false, time.Time{}
		p := x.principal
		limited := p.Limits != (keybridge.Limits{})
		switch {
		case admitted:
			if x.ticket.keyID != "" {
				g.lim.settle(ctx, x.ticket, tok.total(), now)
				x.ticket = ticket{}
			}
		case limited:
			if t, _, err := g.lim.admit(ctx, p.KeyID, chargeOnly(p.Limits), 0, now); err == nil {
				g.lim.settle(ctx, t, tok.total(), now)
			}
		}
		admitted = false
		g.record(x, start, status, now.Sub(start), upstream, tok, model, now)
		if !limited || last {
			return
		}
		t, d, err := g.lim.admit(ctx, p.KeyID, p.Limits, 0, now)
		switch {
		case errors.Is(err, errLimitsDown):
			refused(errLimitsUnavailable)
		case err != nil:
			// Unchecked: the next response is charged when it ends.
		case !d.ok:
			refused(newError(keybridge.ERateLimited, refusalMessage(d.limit, p.Limits)))
		default:
			x.ticket, admitted = t, true
		}
	}
	r := newWSUsageReader(func(tok tokens, model string, status int) { done(tok, model, status, false) })
	w = writerFunc(func(p []byte) (int, error) {
		if began.IsZero() {
			began = time.Now()
		}
		return r.Write(p)
	})
	end = func(refusal *gwError, clientFirst bool) {
		if !r.Underway() {
			return
		}
		// Recorded as a cut stream is: with the refusal that ended it,
		// 499 when the client left (hung up, or closed the socket,
		// which the provider answered with a normal close before it
		// hung up too), else 502: the provider hung up.
		status := http.StatusBadGateway
		switch {
		case refusal != nil:
			status = refusal.status
		case clientFirst || r.ClosedNormally():
			status = statusClientClosed
		}
		// Its usage would have come with its end: no tokens, and no
		// model, since the client's frames are not read.
		done(tokens{}, "", status, true)
	}
	return w, end
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// chargeOnly is lim with the same limits counted but none reachable: an
// admission under it always passes and still counts the request and its
// tokens where lim would.
func chargeOnly(lim keybridge.Limits) keybridge.Limits {
	if lim.RateLimitRPM > 0 {
		lim.RateLimitRPM = chargeNever
	}
	if lim.RateLimitTPM > 0 {
		lim.RateLimitTPM = chargeNever
	}
	if lim.TokenBudget > 0 {
		lim.TokenBudget = chargeNever
	}
	return lim
}

// chargeNever is the limit chargeOnly sets: past every count.
const chargeNever = math.MaxInt64 / 4

// charging reports whether lim came from chargeOnly: an admission that
// only charges the key, which takes no lease and leaves the key's alone.
func charging(lim keybridge.Limits) bool {
	return lim.RateLimitRPM == chargeNever || lim.RateLimitTPM == chargeNever || lim.TokenBudget == chargeNever
}

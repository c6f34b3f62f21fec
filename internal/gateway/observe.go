package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// idGen makes request IDs: a random per-process prefix and a counter,
// unique without a call to crypto/rand per request.
type idGen struct {
	prefix [12]byte
	n      atomic.Uint64
}

func (g *idGen) init() {
	var b [6]byte
	rand.Read(b[:])
	hex.Encode(g.prefix[:], b[:])
}

func (g *idGen) next() string {
	var b [12 + 16]byte
	copy(b[:], g.prefix[:])
	n := g.n.Add(1)
	const digits = "0123456789abcdef"
	for i := len(b) - 1; i >= 12; i-- {
		b[i] = digits[n&15]
		n >>= 4
	}
	return string(b[:])
}

// metrics are the gateway's Prometheus metrics (SPEC §7.8). The provider
// label is the provider's type: names are chosen per org, and would make
// the label set grow with every org.
type metrics struct {
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	failovers prometheus.Counter
	cooldowns prometheus.Counter
	streams   prometheus.Gauge
	active    prometheus.Gauge
	added     prometheus.Histogram
	tokens    [4]prometheus.Counter // input, output, cache_read, cache_write

	// The children of requests and responses, by their labels.
	requestsBy  counterCache[requestLabels]
	responsesBy counterCache[responseLabels]
}

type requestLabels struct {
	t     keybridge.ProviderType
	class string
}

type responseLabels struct {
	t      keybridge.ProviderType
	status int
}

// counterCache holds a CounterVec's children by their labels:
// WithLabelValues hashes its labels and takes a lock on every call, and
// a status label is a number to format first. The map is copied on
// write; there are a few dozen label sets at most.
type counterCache[K comparable] struct {
	m  atomic.Pointer[map[K]prometheus.Counter]
	mu sync.Mutex
}

func (c *counterCache[K]) get(k K, child func() prometheus.Counter) prometheus.Counter {
	if m := c.m.Load(); m != nil {
		if ctr, ok := (*m)[k]; ok {
			return ctr
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var old map[K]prometheus.Counter
	if m := c.m.Load(); m != nil {
		old = *m
	}
	if ctr, ok := old[k]; ok {
		return ctr
	}
	m := make(map[K]prometheus.Counter, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	ctr := child()
	m[k] = ctr
	c.m.Store(&m)
	return ctr
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybridge_gateway_requests_total",
			Help: "Gateway requests answered, by provider type and status class.",
		}, []string{"provider", "status"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybridge_gateway_upstream_responses_total",
			Help: "Answers from providers, by provider type and status.",
		}, []string{"provider", "status"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybridge_gateway_failovers_total",
			Help: "Times a request moved on to the next upstream key.",
		}),
		cooldowns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybridge_gateway_cooldowns_total",
			Help: "Times an upstream key was put to rest after a 429, 401 or 403.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keybridge_gateway_active_streams",
			Help: "Streamed answers and WebSocket tunnels open now.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keybridge_gateway_in_flight_requests",
			Help: "Gateway requests being served now.",
		}),
		added: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keybridge_gateway_added_seconds",
			Help:    "Time Keybridge adds to a gateway request before the answer's headers: its own work, not the provider's.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05, .1},
		}),
	}
	tokens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybridge_gateway_tokens_total",
		Help: "Tokens the providers reported, by direction: input (not from cache), output, cache_read, cache_write.",
	}, []string{"direction"})
	for i, d := range []string{"input", "output", "cache_read", "cache_write"} {
		m.tokens[i] = tokens.WithLabelValues(d)
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.responses, m.failovers, m.cooldowns, m.streams, m.active, m.added, tokens)
	}
	return m
}

// countTokens adds a response's tokens to the counters.
func (m *metrics) countTokens(t tokens) {
	for i, n := range [4]int64{t.Input, t.Output, t.CacheRead, t.CacheWrite} {
		if n > 0 {
			m.tokens[i].Add(float64(n))
		}
	}
}

func (m *metrics) upstream(t keybridge.ProviderType, status int) {
	m.responsesBy.get(responseLabels{t, status}, func() prometheus.Counter {
		return m.responses.WithLabelValues(string(t), strconv.Itoa(status))
	}).Inc()
}

// request counts a request answered with status.
func (m *metrics) request(t keybridge.ProviderType, status int) {
	class := statusClass(status)
	m.requestsBy.get(requestLabels{t, class}, func() prometheus.Counter {
		return m.requests.WithLabelValues(string(t), class)
	}).Inc()
}

// statusClass is "2xx" and the like.
func statusClass(status int) string {
	switch {
	case status >= 500:
		return "5xx"
	case status >= 400:
		return "4xx"
	case status >= 300:
		return "3xx"
	case status >= 200:
		return "2xx"
	}
	return "1xx"
}

// finish logs the request and counts it, then aborts an answer that was
// cut short, which makes net/http end the connection without the final
// chunk.
func (x *exchange) finish() {
	g := x.g
	status := x.status
	if x.clientGone {
		status = statusClientClosed
	}
	if status == 0 {
		status = http.StatusOK
	}
	now := time.Now()
	total := now.Sub(x.start)
	own := total - x.upstreamDur
	if !x.headersAt.IsZero() {
		own = x.headersAt.Sub(x.start) - x.upstreamDur
	}
	pt := keybridge.ProviderType("unknown")
	if x.rt != nil {
		pt = x.rt.provider.Type
	}
	g.m.request(pt, status)
	g.m.added.Observe(own.Seconds())
	if x.body != nil {
		if x.principal != nil {
			x.fields() // the usage row names the body's model
		}
		g.putBody(x.body)
		x.body = nil
	}
	if x.ticket.keyID != "" && g.lim.settleWaits() {
		// Settling is a round trip to Redis: the connection's next
		// request does not wait for it. The log line follows the
		// settlement, as it does otherwise. (While the limiter runs,
		// settlements only queue, and the request ends them itself.)
		go x.end(status, total, own, now)
	} else {
		x.end(status, total, own, now)
	}
	if x.aborted {
		panic(http.ErrAbortHandler)
	}
}

// end settles the request's accounting, then logs it; now is when the
// request ended.
func (x *exchange) end(status int, total, own time.Duration, now time.Time) {
	x.settle(status, total, now)
	if ctx := x.r.Context(); x.g.log.Enabled(ctx, slog.LevelInfo) {
		x.logLine(ctx, status, total, own, now)
	}
}

// logLine writes the request's one log line: what identifies it and what
// happened, never a body, a query string or a credential. It has the
// shape of slog's JSON lines, but is built by appending to a pooled
// buffer: slog's generic path cost a tenth of the gateway's own time.
// Without RequestLog the line goes through Logger instead.
func (x *exchange) logLine(ctx context.Context, status int, total, own time.Duration, now time.Time) {
	g := x.g
	bp := lineBufs.Get().(*[]byte)
	defer lineBufs.Put(bp)
	l := logLineBuilder{viaSlog: g.opts.RequestLog == nil}
	if !l.viaSlog {
		l.b = append((*bp)[:0], `{"time":"`...)
		l.b = now.AppendFormat(l.b, time.RFC3339Nano)
		l.b = append(l.b, `","level":"INFO","msg":"gateway request"`...)
	}
	l.str("request_id", x.id)
	l.str("method", x.r.Method)
	l.str("provider", x.name)
	l.str("path", x.rest)
	l.int("status", int64(status))
	l.ms("duration_ms", total)
	l.ms("keybridge_ms", own)
	l.ms("upstream_ms", x.upstreamDur)
	if x.rt != nil {
		l.str("org_id", x.rt.provider.OrgID)
		l.str("provider_type", string(x.rt.provider.Type))
	}
	if p := x.principal; p != nil {
		l.str("caller", string(p.Type))
		l.str("key_id", p.KeyID)
		if p.UserID != "" {
			l.str("user_id", p.UserID)
		}
	}
	if x.upstreamKey != "" {
		l.str("upstream_key_id", x.upstreamKey)
	}
	if x.upstreamSeen != 0 {
		l.int("upstream_status", int64(x.upstreamSeen))
	}
	if x.failovers > 0 {
		l.int("failovers", int64(x.failovers))
	}
	if x.stream {
		l.flag("stream")
	}
	if x.errCode != "" {
		l.str("error", x.errCode)
	}
	if x.clientGone {
		l.flag("client_gone")
	}
	l.int("bytes", x.respBytes)
	debug := g.log.Enabled(ctx, slog.LevelDebug)
	if l.viaSlog {
		attrs := l.attrs
		if debug {
			attrs = append(attrs, slog.Any("headers", redactHeaders(x.r.Header)))
		}
		g.log.LogAttrs(ctx, slog.LevelInfo, "gateway request", attrs...)
		return
	}
	if debug {
		l.headers("headers", x.r.Header)
	}
	l.b = append(l.b, '}', '\n')
	*bp = l.b
	g.opts.RequestLog.Write(l.b)
}

// lineBufs are the buffers log lines are built in.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// logLineBuilder appends a log line's fields as JSON, or, viaSlog, as
// attributes for a Logger.
type logLineBuilder struct {
	viaSlog bool
	b       []byte
	attrs   []slog.Attr
}

func (l *logLineBuilder) key(k string) {
	l.b = append(l.b, ',', '"')
	l.b = append(l.b, k...)
	l.b = append(l.b, '"', ':')
}

func (l *logLineBuilder) str(k, v string) {
	if l.viaSlog {
		l.attrs = append(l.attrs, slog.String(k, v))
		return
	}
	l.key(k)
	l.b = appendJSONString(l.b, v)
}

func (l *logLineBuilder) int(k string, v int64) {
	if l.viaSlog {
		l.attrs = append(l.attrs, slog.Int64(k, v))
		return
	}
	l.key(k)
	l.b = strconv.AppendInt(l.b, v, 10)
}

func (l *logLineBuilder) float(k string, v float64) {
	if l.viaSlog {
		l.attrs = append(l.attrs, slog.Float64(k, v))
		return
	}
	l.key(k)
	l.b = strconv.AppendFloat(l.b, v, 'g', -1, 64)
}

// ms appends d in milliseconds to the microsecond, as float does
// float64(d.Microseconds())/1000, with integer arithmetic: the shortest
// decimal of that quotient is the quotient's exact decimal, below the
// 10⁶ ms where 'g' turns to an exponent.
func (l *logLineBuilder) ms(k string, d time.Duration) {
	us := d.Microseconds()
	if l.viaSlog || us < 0 || us >= 1e9 {
		l.float(k, ms(d))
		return
	}
	l.key(k)
	l.b = appendMillis(l.b, d)
	l.b = bytes.TrimRight(l.b, "0")
	l.b = bytes.TrimSuffix(l.b, []byte("."))
}

// flag appends k: true.
func (l *logLineBuilder) flag(k string) {
	if l.viaSlog {
		l.attrs = append(l.attrs, slog.Bool(k, true))
		return
	}
	l.key(k)
	l.b = append(l.b, "true"...)
}

func (l *logLineBuilder) headers(k string, h http.Header) {
	l.key(k)
	l.b = append(l.b, '{')
	first := true
	for name, v := range redactHeaders(h) {
		if !first {
			l.b = append(l.b, ',')
		}
		first = false
		l.b = appendJSONString(l.b, name)
		l.b = append(l.b, ':')
		l.b = appendJSONString(l.b, v)
	}
	l.b = append(l.b, '}')
}

// jsonSafe marks the ASCII bytes appendJSONString copies as they are:
// all but controls, '"', '\\' and, as encoding/json escapes them, '<',
// '>' and '&'.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				const hex = "0123456789abcdef"
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			switch r {
			case '\u2028':
				b = append(b, `\u2028`...)
			case '\u2029':
				b = append(b, `\u2029`...)
			default:
				b = append(b, `\ufffd`...)
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// redactHeaders is h for a debug log: every header that may carry a
// credential shows [redacted].
func redactHeaders(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for name, vv := range h {
		if secretHeader(name) {
			out[name] = keybridge.Redacted
			continue
		}
		if len(vv) == 0 {
			continue
		}
		v := vv[0]
		if name == "Sec-Websocket-Protocol" {
			v = redactKeyProtocols(v)
		}
		out[name] = v
	}
	return out
}

// secretHeader reports whether a header of this name may carry a
// credential: any name that speaks of one, which covers the places a
// caller's key goes (Authorization, X-Api-Key, Api-Key, X-Goog-Api-Key),
// Cookie and Proxy-Authorization, and those nobody listed
// (Ocp-Apim-Subscription-Key, X-Auth-Token, X-Amz-Security-Token, a
// gateway's own X-Foo-Secret).
func secretHeader(name string) bool {
	for _, word := range secretWords {
		if containsFold(name, word) {
			return true
		}
	}
	return false
}

// secretWords are the parts of a header name that mark it secretHeader.
var secretWords = [...]string{"key", "token", "secret", "auth", "cookie", "credential", "password", "signature", "session"}

// containsFold reports whether s holds the lower-case ASCII word, in any
// case.
func containsFold(s, word string) bool {
	for i := 0; i+len(word) <= len(s); i++ {
		if hasPrefixFold(s[i:], word) {
			return true
		}
	}
	return false
}

// redactKeyProtocols is a Sec-WebSocket-Protocol value with each
// subprotocol that carries a key (isKeyProtocol) redacted.
func redactKeyProtocols(v string) string {
	ps := strings.Split(v, ",")
	for i, p := range ps {
		switch p = strings.TrimSpace(p); {
		case hasPrefixFold(p, keyProtocol):
			p = keyProtocol + keybridge.Redacted
		case isKeyProtocol(p):
			p = keybridge.Redacted
		}
		ps[i] = p
	}
	return strings.Join(ps, ", ")
}

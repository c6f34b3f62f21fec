package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

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
	if reg != nil {
		reg.MustRegister(m.requests, m.responses, m.failovers, m.cooldowns, m.streams, m.active, m.added)
	}
	return m
}

func (m *metrics) upstream(t keybridge.ProviderType, status int) {
	m.responses.WithLabelValues(string(t), strconv.Itoa(status)).Inc()
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
	if x.body != nil {
		g.putBody(x.body)
		x.body = nil
	}
	status := x.status
	if x.clientGone {
		status = statusClientClosed
	}
	if status == 0 {
		status = http.StatusOK
	}
	total := time.Since(x.start)
	own := total - x.upstreamDur
	if !x.headersAt.IsZero() {
		own = x.headersAt.Sub(x.start) - x.upstreamDur
	}
	pt := keybridge.ProviderType("unknown")
	if x.rt != nil {
		pt = x.rt.provider.Type
	}
	g.m.requests.WithLabelValues(string(pt), statusClass(status)).Inc()
	g.m.added.Observe(own.Seconds())

	ctx := x.r.Context()
	if g.log.Enabled(ctx, slog.LevelInfo) {
		x.logLine(ctx, status, total, own)
	}
	if x.aborted {
		panic(http.ErrAbortHandler)
	}
}

// logLine writes the request's one log line: what identifies it and what
// happened, never a body, a query string or a credential.
func (x *exchange) logLine(ctx context.Context, status int, total, own time.Duration) {
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.String("request_id", x.id),
		slog.String("method", x.r.Method),
		slog.String("provider", x.name),
		slog.String("path", x.rest),
		slog.Int("status", status),
		slog.Float64("duration_ms", ms(total)),
		slog.Float64("keybridge_ms", ms(own)),
		slog.Float64("upstream_ms", ms(x.upstreamDur)),
	)
	if x.rt != nil {
		attrs = append(attrs, slog.String("org_id", x.rt.provider.OrgID), slog.String("provider_type", string(x.rt.provider.Type)))
	}
	if p := x.principal; p != nil {
		attrs = append(attrs, slog.String("caller", string(p.Type)), slog.String("key_id", p.KeyID))
		if p.UserID != "" {
			attrs = append(attrs, slog.String("user_id", p.UserID))
		}
	}
	if x.upstreamKey != "" {
		attrs = append(attrs, slog.String("upstream_key_id", x.upstreamKey))
	}
	if x.upstreamSeen != 0 {
		attrs = append(attrs, slog.Int("upstream_status", x.upstreamSeen))
	}
	if x.failovers > 0 {
		attrs = append(attrs, slog.Int("failovers", x.failovers))
	}
	if x.stream {
		attrs = append(attrs, slog.Bool("stream", true))
	}
	if x.errCode != "" {
		attrs = append(attrs, slog.String("error", x.errCode))
	}
	if x.clientGone {
		attrs = append(attrs, slog.Bool("client_gone", true))
	}
	attrs = append(attrs, slog.Int64("bytes", x.respBytes))
	if x.g.log.Enabled(ctx, slog.LevelDebug) {
		attrs = append(attrs, slog.Any("headers", redactHeaders(x.r.Header)))
	}
	x.g.log.LogAttrs(ctx, slog.LevelInfo, "gateway request", attrs...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// redactHeaders is h for a debug log: every header that may carry a
// credential shows [redacted].
func redactHeaders(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for name, vv := range h {
		switch name {
		case hdrAuthorization, hdrXAPIKey, hdrAPIKey, hdrGoogAPIKey, "Cookie", "Proxy-Authorization", "X-Amz-Security-Token":
			out[name] = keybridge.Redacted
			continue
		}
		if len(vv) > 0 {
			out[name] = vv[0]
		}
	}
	return out
}

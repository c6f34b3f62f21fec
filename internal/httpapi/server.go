// Package httpapi is Keybridge's management API: the whole surface is in
// routes.go, one file per resource holds its handlers, and every handler
// returns an error that takes one path to the client (errors.go).
package httpapi

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/upstream"
)

// Config is what the API needs.
type Config struct {
	Store  store.Store
	Ring   *secrets.Ring
	Auth   *auth.Service
	Logger *slog.Logger
	// PublicURL is how users reach this server (for setup and invite
	// links), e.g. http://127.0.0.1:8080.
	PublicURL string
	// Version is the build's version string.
	Version string
	// Upstream calls providers for credential tests and live usage.
	Upstream *upstream.Client
	// Metrics, when set, serves /metrics.
	Metrics http.Handler
	// MetricsToken, when set, is the bearer token /metrics requires.
	MetricsToken string
	// MetricsOwnListener moves /metrics off this handler (it answers
	// 404) to MetricsHandler, which serve runs on a listener of its own.
	MetricsOwnListener bool
	// Registerer, when set, receives the API's request metrics (count and
	// latency by route pattern and status); serve exposes the same
	// registry as Metrics.
	Registerer prometheus.Registerer
	// UI, when set, serves the web UI's pages (/, /setup, /invite).
	UI http.Handler
	// UsageRetention is how long usage rows are kept (serve's
	// --usage-retention; 0 means the default, negative forever): a usage
	// query may not start before what is kept.
	UsageRetention time.Duration
	// Ready reports whether the database and key ring are ready.
	Ready func(r *http.Request) error
	// ProbesPerMinute is how many provider tests and usage requests an
	// org may make per minute, in a burst or spread out (default
	// DefaultProbesPerMinute); past it they answer 429. They are counted
	// in Redis when set, else in each process.
	ProbesPerMinute int
	// Redis, when set, holds the probe counters, shared by every replica.
	Redis *redis.Client
	// BodyTimeout bounds how long a request's body may take to arrive
	// (default DefaultBodyTimeout); past it the answer is 408.
	BodyTimeout time.Duration
}

// Server is the HTTP API.
type Server struct {
	cfg         Config
	store       store.Store
	ring        *secrets.Ring
	auth        *auth.Service
	log         *slog.Logger
	handler     http.Handler
	httpMetrics *httpMetrics
	// leakLimit rate-limits POST /api/v1/leaked-keys per client IP.
	leakLimit *bucketLimiter
	// probeLimit rate-limits the calls to providers an org's admins
	// trigger (providers/test, providers/{provider}/usage), per org.
	probeLimit *probeLimiter
}

// New returns the API's handler with every route and middleware in place.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, store: cfg.Store, ring: cfg.Ring, auth: cfg.Auth, log: cfg.Logger,
		leakLimit: newBucketLimiter(leakReportsPerMinute, time.Minute)}
	probes := cfg.ProbesPerMinute
	if probes <= 0 {
		probes = DefaultProbesPerMinute
	}
	s.probeLimit = newProbeLimiter(probes, cfg.Redis, cfg.Logger)
	if cfg.Registerer != nil {
		s.httpMetrics = newHTTPMetrics(cfg.Registerer)
	}
	mux := http.NewServeMux()
	s.routes(mux)
	// withObserve sits right above the mux and below every r.WithContext,
	// so it sees the route pattern the mux sets on the request.
	s.handler = s.withRequestInfo(s.withBodyDeadline(s.withObserve(s.withRecover(s.withoutRedirects(mux)))))
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

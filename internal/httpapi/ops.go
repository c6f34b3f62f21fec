package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(r); err != nil {
			s.log.WarnContext(r.Context(), "not ready", "err", err)
			return keybridge.Errorf(keybridge.EUnavailable, "not ready")
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Metrics == nil || s.cfg.MetricsOwnListener {
		return keybridge.Errorf(keybridge.ENotFound, "metrics are not served here")
	}
	return s.serveMetrics(w, r)
}

// serveMetrics answers /metrics, wherever it is served, behind the bearer
// token when one is configured. The token is compared through its
// SHA-256, in constant time, so neither its bytes nor its length show in
// the timing.
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.MetricsToken != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(s.cfg.MetricsToken))
		if !ok || subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			return keybridge.Errorf(keybridge.EUnauthenticated, "metrics need Authorization: Bearer <metrics token>")
		}
	}
	s.cfg.Metrics.ServeHTTP(w, r)
	return nil
}

// MetricsHandler serves GET /metrics alone, for a listener of its own
// (Config.MetricsOwnListener): every other path is a 404 in the error
// shape, and every answer has its X-Request-Id.
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.h(func(w http.ResponseWriter, r *http.Request) error {
		if s.cfg.Metrics == nil {
			return keybridge.Errorf(keybridge.ENotFound, "metrics are off")
		}
		return s.serveMetrics(w, r)
	}))
	mux.Handle("/", s.h(notFoundRoute))
	return s.withRequestInfo(s.withRecover(s.withoutRedirects(mux)))
}

func notFoundRoute(w http.ResponseWriter, r *http.Request) error {
	return keybridge.Errorf(keybridge.ENotFound, "no route for %s %s", r.Method, r.URL.Path)
}

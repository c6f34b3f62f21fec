package httpapi

import (
	"net/http"

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
	if s.cfg.Metrics == nil {
		return keybridge.Errorf(keybridge.ENotFound, "metrics are off")
	}
	s.cfg.Metrics.ServeHTTP(w, r)
	return nil
}

func notFoundRoute(w http.ResponseWriter, r *http.Request) error {
	return keybridge.Errorf(keybridge.ENotFound, "no route for %s %s", r.Method, r.URL.Path)
}

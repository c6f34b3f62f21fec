package httpapi

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// withObserve logs every request as one JSON line and counts it in the
// metrics. It records what identifies a request (id, method, route
// pattern, path, status, duration, size) and never a body, a query string
// or a header: those may hold keys, passwords or setup and invite tokens.
func (s *Server) withObserve(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		d := time.Since(start)
		status := sw.status
		if status == 0 {
			// The handler wrote nothing: net/http answers 200.
			status = http.StatusOK
		}
		// r.Pattern is set by the mux on this very request; it is empty
		// when no route matched, and "/" for the catch-all 404.
		route := r.Pattern
		if route == "" || route == "/" {
			route = "unmatched"
		}
		if s.httpMetrics != nil {
			s.httpMetrics.observe(route, status, d)
		}
		level := slog.LevelInfo
		if route == "GET /healthz" || route == "GET /readyz" || route == "GET /metrics" {
			// Probes and scrapes arrive every few seconds; at info they
			// would drown the requests that matter.
			level = slog.LevelDebug
		}
		info := keybridge.RequestInfoFromContext(r.Context())
		s.log.LogAttrs(r.Context(), level, "request",
			slog.String("request_id", info.RequestID),
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.String("path", r.URL.Path),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(d.Microseconds())/1000),
			slog.Int64("bytes", sw.bytes),
			slog.String("ip", info.IP),
		)
	})
}

// statusWriter remembers the status and size of a response. It passes
// Flush through, and Unwrap lets http.ResponseController reach the
// connection, so streaming answers stream as before.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Flush implements http.Flusher.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		f.Flush()
	}
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

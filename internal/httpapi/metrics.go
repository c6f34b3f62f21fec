package httpapi

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics are the API's request metrics. They are labelled by route
// pattern (never the raw path, whose IDs would make the label set grow
// without bound) and status.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybridge_http_requests_total",
			Help: "HTTP requests served, by route pattern and status.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keybridge_http_request_duration_seconds",
			Help: "Time to serve an HTTP request, by route pattern and status.",
			// From a cached key check (well under a millisecond) to a
			// password hash or a slow upstream.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "status"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *httpMetrics) observe(route string, status int, d time.Duration) {
	st := strconv.Itoa(status)
	m.requests.WithLabelValues(route, st).Inc()
	m.duration.WithLabelValues(route, st).Observe(d.Seconds())
}

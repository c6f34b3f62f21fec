package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// metricValues gathers reg as "name{label=value,...}" → value; a
// histogram shows as its _count.
func metricValues(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[name] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// Every metric of SPEC §7.8, with its labels, moving when it should: a
// refusal before the provider is known, a failover past a 500, a stream
// open and then ended, a key's own rate limit.
func TestMetricsMove(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{Registerer: reg}})
	up := newKeyedUpstream(t)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	k1, k2 := canary(t, "sk-"), canary(t, "sk-")
	e.addKey("oai", k1, 0)
	e.addKey("oai", k2, 1)
	up.on(k1, status(500))

	for _, name := range []string{
		"keybridge_gateway_failovers_total", "keybridge_gateway_cooldowns_total",
		"keybridge_gateway_active_streams", "keybridge_gateway_in_flight_requests",
		"keybridge_usage_queue_depth", "keybridge_usage_dropped_total",
		"keybridge_gateway_limit_refusals_total{limit=rpm}", "keybridge_gateway_limit_refusals_total{limit=tpm}",
		"keybridge_gateway_limit_refusals_total{limit=budget}",
		"keybridge_gateway_tokens_total{direction=input}", "keybridge_gateway_tokens_total{direction=output}",
		"keybridge_gateway_tokens_total{direction=cache_read}", "keybridge_gateway_tokens_total{direction=cache_write}",
	} {
		if _, ok := metricValues(t, reg)[name]; !ok {
			t.Errorf("%s is not registered before any request", name)
		}
	}

	lines := 0
	check := func(what string, want map[string]float64) {
		t.Helper()
		e.waitLog(lines)
		got := metricValues(t, reg)
		for name, w := range want {
			if got[name] != w {
				t.Errorf("after %s: %s = %v, want %v", what, name, got[name], w)
			}
		}
	}

	resp, _ := e.do(e.post("/gateway/oai/chat/completions", "", `{"model":"m"}`))
	lines++
	if resp.StatusCode != 401 {
		t.Fatalf("no key: %d", resp.StatusCode)
	}
	check("a 401", map[string]float64{
		`keybridge_gateway_requests_total{provider=unknown,status=4xx}`: 1,
		"keybridge_gateway_added_seconds_count":                         1,
		"keybridge_gateway_in_flight_requests":                          0,
	})

	resp, _ = e.do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"m"}`))
	lines++
	if resp.StatusCode != 200 {
		t.Fatalf("failover: %d", resp.StatusCode)
	}
	check("a failover past a 500", map[string]float64{
		`keybridge_gateway_requests_total{provider=openai,status=2xx}`:           1,
		`keybridge_gateway_upstream_responses_total{provider=openai,status=500}`: 1,
		`keybridge_gateway_upstream_responses_total{provider=openai,status=200}`: 1,
		"keybridge_gateway_failovers_total":                                      1,
		"keybridge_gateway_cooldowns_total":                                      0,
		"keybridge_gateway_active_streams":                                       0,
	})

	// A stream held open by the provider until the test lets it end.
	release := make(chan struct{})
	up.on(k2, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[]}\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	up.on(k1, status(429, "Retry-After", "30"))
	sresp, err := http.DefaultClient.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"m","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	first, err := bufio.NewReader(sresp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "data: ") {
		t.Fatalf("first line of the stream = %q, %v", first, err)
	}
	got := metricValues(t, reg)
	if got["keybridge_gateway_active_streams"] != 1 || got["keybridge_gateway_in_flight_requests"] != 1 {
		t.Errorf("while streaming: active_streams = %v, in_flight_requests = %v, want 1 and 1",
			got["keybridge_gateway_active_streams"], got["keybridge_gateway_in_flight_requests"])
	}
	close(release)
	io.Copy(io.Discard, sresp.Body)
	sresp.Body.Close()
	lines++
	check("a stream that ended", map[string]float64{
		"keybridge_gateway_active_streams":                                       0,
		"keybridge_gateway_in_flight_requests":                                   0,
		`keybridge_gateway_requests_total{provider=openai,status=2xx}`:           2,
		`keybridge_gateway_upstream_responses_total{provider=openai,status=429}`: 1,
		"keybridge_gateway_failovers_total":                                      2,
		"keybridge_gateway_cooldowns_total":                                      1,
	})

	_, key := limitKey(e, map[string]any{"rate_limit_rpm": 1})
	for range 2 {
		e.do(e.post("/gateway/oai/chat/completions", key, `{"model":"m"}`))
		lines++
	}
	check("a key's own 429", map[string]float64{
		"keybridge_gateway_limit_refusals_total{limit=rpm}":            1,
		`keybridge_gateway_requests_total{provider=openai,status=4xx}`: 1,
		"keybridge_gateway_added_seconds_count":                        5,
	})
}

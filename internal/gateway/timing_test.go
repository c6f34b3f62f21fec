package gateway_test

// Server-Timing and keybridge_gateway_added_seconds (SPEC §7.8): the
// provider's time is the provider's, also when an attempt fails. A
// timeout or a broken connection is time spent waiting on the provider,
// never time Keybridge added.

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// serverTiming reads the keybridge and upstream durations of a
// Server-Timing header.
func serverTiming(t *testing.T, h http.Header) (own, up time.Duration) {
	t.Helper()
	v := h.Get("Server-Timing")
	found := 0
	for part := range strings.SplitSeq(v, ",") {
		name, dur, ok := strings.Cut(strings.TrimSpace(part), ";dur=")
		ms, err := strconv.ParseFloat(dur, 64)
		if !ok || err != nil {
			t.Fatalf("Server-Timing = %q: cannot read %q", v, part)
		}
		d := time.Duration(ms * float64(time.Millisecond))
		switch name {
		case "keybridge":
			own, found = d, found+1
		case "upstream":
			up, found = d, found+1
		}
	}
	if found != 2 {
		t.Fatalf("Server-Timing = %q, want keybridge and upstream", v)
	}
	return own, up
}

// addedSum is the sum of keybridge_gateway_added_seconds in reg.
func addedSum(t *testing.T, reg *prometheus.Registry) (sum float64, count uint64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "keybridge_gateway_added_seconds" {
			h := f.GetMetric()[0].GetHistogram()
			return h.GetSampleSum(), h.GetSampleCount()
		}
	}
	t.Fatal("no keybridge_gateway_added_seconds")
	return 0, 0
}

// The bound on Keybridge's own share of these requests: far above what it
// spends, far below the provider's waits of the tests.
const ownBound = 100 * time.Millisecond

// A provider that sends no headers within the header timeout took that
// long: the 504 says so in upstream;dur, and the time is not counted as
// Keybridge's.
func TestHeaderTimeoutIsUpstreamTime(t *testing.T) {
	const timeout = 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	e := &faultEnv{env: newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{HeaderTimeout: timeout, Registerer: reg}}),
		up: newRawUpstream(t), client: &http.Client{Timeout: outerDeadline}}
	p := faultProviders[0]
	name, _ := e.provider(p, func(c *rawConn, _ *http.Request) bool { c.waitClosed(); return false })
	resp, body, err := e.call(context.Background(), p, name, false)
	if err != nil || resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("= %d %s (%v), want 504", resp.StatusCode, body, err)
	}
	checkUpstreamTime(t, e, reg, resp, timeout)
}

// checkUpstreamTime checks that the one request e served, answered resp,
// counted at least wait as the provider's time and under ownBound as its
// own, in Server-Timing and in keybridge_gateway_added_seconds.
func checkUpstreamTime(t *testing.T, e *faultEnv, reg *prometheus.Registry, resp *http.Response, wait time.Duration) {
	t.Helper()
	own, up := serverTiming(t, resp.Header)
	if up < wait || own > ownBound {
		t.Errorf("Server-Timing = %q: want upstream;dur at least %v, keybridge;dur under %v",
			resp.Header.Get("Server-Timing"), wait, ownBound)
	}
	e.waitLog(1)
	if sum, n := addedSum(t, reg); n != 1 || sum > ownBound.Seconds() {
		t.Errorf("keybridge_gateway_added_seconds: %d observations summing to %.3f s, want one under %v", n, sum, ownBound)
	}
}

// A connection that breaks before any answer is the provider's time too,
// summed with the next key's time to headers.
func TestFailedOverAttemptIsUpstreamTime(t *testing.T) {
	const wait = 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	e := &faultEnv{env: newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{Registerer: reg}}),
		up: newRawUpstream(t), client: &http.Client{Timeout: outerDeadline}}
	p := faultProviders[0]
	name, keys := e.provider(p, func(c *rawConn, _ *http.Request) bool {
		time.Sleep(wait)
		c.rst()
		return false
	}, nil)
	resp, body, err := e.call(context.Background(), p, name, false)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), keys[1]) {
		t.Fatalf("= %d %s (%v), want 200 from the second key", resp.StatusCode, body, err)
	}
	checkUpstreamTime(t, e, reg, resp, wait)
}

// A provider's own Server-Timing metrics (Google sends gfet4t7) pass to
// the client like its other headers (SPEC §7.2), after Keybridge's entry,
// over the gateway's HTTP/1.1 front and over h2c.
func TestProviderServerTimingPasses(t *testing.T) {
	e, up, k1, _, _ := twoKeys(t)
	up.on(k1, func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Server-Timing"] = []string{"gfet4t7; dur=812", "cfExtPri"}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{}`))
	})
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	for name, c := range map[string]*http.Client{
		"HTTP/1.1": {Transport: &http.Transport{}},
		"HTTP/2":   {Transport: &http.Transport{Protocols: &h2c}},
	} {
		resp, err := c.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"m"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := resp.Header.Values("Server-Timing")
		if len(got) != 3 || !strings.HasPrefix(got[0], "keybridge;dur=") || got[1] != "gfet4t7; dur=812" || got[2] != "cfExtPri" {
			t.Errorf("%s: Server-Timing = %q, want Keybridge's, then the provider's two", name, got)
		}
		serverTiming(t, resp.Header)
	}
}

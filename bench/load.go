package main

// The load run (-load DURATION): Keybridge's gateway under the benchmark's
// load for minutes, with its management API kept busy beside it, to show
// that nothing fails, memory stays flat and the tail stays where it is.
//
//	go run ./bench -load 3m -c 64
//
// c keep-alive workers call the gateway without pause (half JSON, half
// streams with the default -workloads), while one more goroutine loops
// over the management API: create a key, list keys, patch the key, query
// usage, revoke the key. Keybridge's VmRSS and CPU are sampled every
// -load-sample. The report lists errors (any is a failure: the exit status
// is 1), p50/p90/p99 per workload and per management call, and the RSS
// samples.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

var (
	loadFor    time.Duration
	loadSample time.Duration
)

func init() {
	flag.DurationVar(&loadFor, "load", 0, "instead of the comparison, run keybridge alone for this long at the largest -c, with the management API busy beside it (see bench/README.md)")
	flag.DurationVar(&loadSample, "load-sample", 10*time.Second, "with -load: how often keybridge's RSS and CPU are sampled")
}

// loadSampleRow is one sample of the Keybridge process.
type loadSampleRow struct {
	at       time.Duration
	rssKiB   int64
	cpu      time.Duration
	requests uint64 // gateway requests answered so far
}

// mgmtStats is what the management loop measured, per call.
type mgmtStats struct {
	mu      sync.Mutex
	n       map[string]uint64
	errs    map[string]uint64
	lat     map[string]*hist
	lastErr string
}

func (m *mgmtStats) record(call string, d time.Duration, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lat[call] == nil {
		m.lat[call] = &hist{}
	}
	m.n[call]++
	m.lat[call].record(d)
	if err != nil {
		m.errs[call]++
		m.lastErr = call + ": " + err.Error()
	}
}

func runLoad(ctx context.Context, cfg *config, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "keybridge-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	c := 0
	for _, n := range cfg.conc {
		c = max(c, n)
	}
	upstreamKey := "sk-bench-" + randHex(16)
	mock, err := startRole("mock", "-listen", cfg.mockListen, "-key", upstreamKey)
	if err != nil {
		return err
	}
	defer mock.stop()
	repo := cfg.repo
	if repo == "" {
		if repo, err = moduleRoot(); err != nil {
			return err
		}
	}
	logf("building and provisioning keybridge from %s", repo)
	kb, err := startKeybridge(ctx, repo, tmp, mock.addr, upstreamKey, kbOptions{logLevel: cfg.kbLogLevel, limits: cfg.kbLimits, redis: cfg.kbRedis})
	if err != nil {
		return err
	}
	defer kb.proc.stop()
	logf("keybridge on %s (pid %d); load for %s at c=%d", kb.proc.addr, kb.proc.pid, loadFor, c)
	t := &target{name: "keybridge", addr: kb.proc.addr, pid: kb.proc.pid, isKB: true}
	path := "/gateway/mock/chat/completions"
	auth := []string{"Authorization: Bearer " + kb.token}
	t.reqJSON = buildRequest(kb.proc.addr, path, auth, reqBody)
	t.reqSSE = buildRequest(kb.proc.addr, path, auth, sseBody)
	preflight(ctx, t)
	if t.skip != "" {
		return fmt.Errorf("keybridge: %s", t.skip)
	}
	var sseWorkers int
	switch {
	case len(cfg.workloads) == 2:
		sseWorkers = c / 2
	case cfg.workloads[0] == "sse":
		sseWorkers = c
	}
	rssStart := vmRSS(kb.proc.pid)
	cpuStart := cpuTime(kb.proc.pid)

	runCtx, stop := context.WithTimeout(ctx, loadFor)
	defer stop()
	start := time.Now()
	var answered atomic.Uint64
	per := make([]*stats, c)
	var wg sync.WaitGroup
	for i := range c {
		st := &stats{}
		per[i] = st
		sse := i < sseWorkers
		wg.Go(func() { loadWorker(runCtx, t, sse, st, &answered) })
	}
	mg := &mgmtStats{n: map[string]uint64{}, errs: map[string]uint64{}, lat: map[string]*hist{}}
	wg.Go(func() { mgmtLoop(runCtx, kb, mg) })

	var samples []loadSampleRow
	sample := func() {
		samples = append(samples, loadSampleRow{at: time.Since(start), rssKiB: vmRSS(kb.proc.pid), cpu: cpuTime(kb.proc.pid) - cpuStart, requests: answered.Load()})
	}
	sample()
	tick := time.NewTicker(loadSample)
	for done := false; !done; {
		select {
		case <-runCtx.Done():
			done = true
		case <-tick.C:
			sample()
			s := samples[len(samples)-1]
			logf("%s: %d requests, VmRSS %s, load %s", s.at.Round(time.Second), s.requests, kib(s.rssKiB), loadAvg())
		}
	}
	tick.Stop()
	wg.Wait()
	elapsed := time.Since(start)
	sample()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var js, ss stats
	for i, st := range per {
		if i < sseWorkers {
			ss.merge(st)
		} else {
			js.merge(st)
		}
	}
	select {
	case <-kb.proc.done:
		return fmt.Errorf("keybridge exited during the load run:\n%s", tailFile(kb.logPath, 2000))
	default:
	}
	errs := writeLoad(out, cfg, c, sseWorkers, elapsed, rssStart, &js, &ss, mg, samples)
	if errs > 0 {
		return fmt.Errorf("%d errors during the load run", errs)
	}
	return nil
}

// loadWorker calls the gateway on one keep-alive connection until ctx
// ends; a failed request counts as an error and the worker reconnects.
func loadWorker(ctx context.Context, t *target, sse bool, st *stats, answered *atomic.Uint64) {
	req := t.reqJSON
	wantBody, wantEvents := len(jsonAnswer), 0
	if sse {
		req, wantBody, wantEvents = t.reqSSE, 0, sseEvents
	}
	var cl *client
	defer func() {
		if cl != nil {
			cl.close()
		}
	}()
	var a answer
	for ctx.Err() == nil {
		if cl == nil {
			var err error
			if cl, err = dial(t.addr); err != nil {
				st.errs++
				st.lastErr = err
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		t0 := time.Now()
		err := cl.do(req, sse, nil, &a)
		d := time.Since(t0)
		if err == nil {
			err = check(&a, sse, wantBody, wantEvents)
		}
		if err != nil {
			if ctx.Err() != nil {
				return // the run ended while this request was in flight
			}
			st.errs++
			st.lastErr = err
			cl.close()
			cl = nil
			continue
		}
		st.n++
		answered.Add(1)
		st.lat.record(d)
		if sse {
			st.ttfb.record(a.firstByte.Sub(t0))
		}
		if a.closeConn {
			cl.close()
			cl = nil
		}
	}
}

// mgmtLoop keeps the management API busy until ctx ends: each round
// creates a platform key, lists the caller's keys, patches the new key,
// queries the org's usage by model, and revokes the key.
func mgmtLoop(ctx context.Context, kb *keybridgeRun, m *mgmtStats) {
	base := "http://" + kb.proc.addr + "/api/v1"
	hc := &http.Client{Timeout: 30 * time.Second}
	do := func(call, method, url string, body any, want int, into any) bool {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequestWithContext(ctx, method, url, rd)
		req.Header.Set("Authorization", "Bearer "+kb.token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				err = fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
			} else if into != nil {
				err = json.Unmarshal(b, into)
			}
		}
		if ctx.Err() != nil {
			return false // the run ended: not an error of Keybridge's
		}
		m.record(call, time.Since(t0), err)
		return err == nil
	}
	for i := 0; ctx.Err() == nil; i++ {
		var key struct {
			ID string `json:"id"`
		}
		if !do("create key", "POST", base+"/api-keys", map[string]any{"org": "bench", "name": fmt.Sprintf("load-%d", i),
			"permissions": []string{"gateway:invoke", "usage:read"}}, http.StatusCreated, &key) {
			continue
		}
		do("list keys", "GET", base+"/api-keys?limit=50", nil, http.StatusOK, nil)
		do("patch key", "PATCH", base+"/api-keys/"+key.ID, map[string]any{"name": fmt.Sprintf("load-%d-renamed", i), "description": "load run"}, http.StatusOK, nil)
		since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		do("usage query", "GET", base+"/orgs/bench/usage?group_by=model&since="+since, nil, http.StatusOK, nil)
		do("revoke key", "POST", base+"/api-keys/"+key.ID+"/revoke", nil, http.StatusOK, nil)
	}
}

// writeLoad prints the load run's report and returns its error count.
func writeLoad(w io.Writer, cfg *config, c, sseWorkers int, elapsed time.Duration, rssStart int64,
	js, ss *stats, mg *mgmtStats, samples []loadSampleRow) uint64 {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("# Keybridge load run")
	p("")
	p("%s at c=%d (%d JSON workers, %d stream workers), management API busy beside it; load average at the end %s; %d cores.",
		elapsed.Round(time.Second), c, c-sseWorkers, sseWorkers, loadAvg(), runtime.NumCPU())
	p("")
	p("| gateway | requests | per second | errors | p50 | p90 | p99 | first byte p50 | first byte p99 |")
	p("|---|---|---|---|---|---|---|---|---|")
	var errs uint64
	for _, row := range []struct {
		name string
		st   *stats
		sse  bool
	}{{"JSON", js, false}, {"streams (20 events)", ss, true}} {
		if row.st.n == 0 && row.st.errs == 0 {
			continue
		}
		errs += row.st.errs
		fb50, fb99 := "", ""
		if row.sse {
			fb50, fb99 = us(row.st.ttfb.quantile(0.5)), us(row.st.ttfb.quantile(0.99))
		}
		p("| %s | %d | %.0f | %d | %s | %s | %s | %s | %s |", row.name, row.st.n, float64(row.st.n)/elapsed.Seconds(), row.st.errs,
			us(row.st.lat.quantile(0.5)), us(row.st.lat.quantile(0.9)), us(row.st.lat.quantile(0.99)), fb50, fb99)
		if row.st.lastErr != nil {
			p("")
			p("last %s error: `%v`", row.name, row.st.lastErr)
			p("")
		}
	}
	p("")
	p("| management call | calls | errors | p50 | p99 |")
	p("|---|---|---|---|---|")
	calls := make([]string, 0, len(mg.n))
	for k := range mg.n {
		calls = append(calls, k)
	}
	sort.Strings(calls)
	for _, k := range calls {
		errs += mg.errs[k]
		p("| %s | %d | %d | %s | %s |", k, mg.n[k], mg.errs[k], us(mg.lat[k].quantile(0.5)), us(mg.lat[k].quantile(0.99)))
	}
	if mg.lastErr != "" {
		p("")
		p("last management error: `%s`", mg.lastErr)
	}
	p("")
	p("| time | VmRSS | CPU so far | gateway requests so far |")
	p("|---|---|---|---|")
	p("| before the load | %s | | |", kib(rssStart))
	var peak int64
	for i, s := range samples {
		if i > 0 { // the first sample is the start, before any load
			peak = max(peak, s.rssKiB)
		}
		p("| %s | %s | %s | %d |", s.at.Round(time.Second), kib(s.rssKiB), s.cpu.Round(time.Second), s.requests)
	}
	if len(samples) > 2 {
		first := samples[1] // after the first interval: warm
		last := samples[len(samples)-1]
		p("")
		p("VmRSS after the first %s: %s; at the end: %s (%+.1f%%); peak under load %s.", first.at.Round(time.Second), kib(first.rssKiB), kib(last.rssKiB),
			100*float64(last.rssKiB-first.rssKiB)/float64(first.rssKiB), kib(peak))
	}
	p("")
	p("Errors in total: %d.", errs)
	return errs
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

type cellKey struct {
	workload string
	c        int
	target   string
}

// cell is everything measured for one target at one (workload, c).
type cell struct {
	st       stats
	dur      time.Duration
	perRound []float64 // requests/s of each round
	cpuSelf  time.Duration
	cpuMock  time.Duration
	cpuProxy time.Duration
}

type results struct {
	cfg   *config
	env   *env
	cells map[cellKey]*cell
	hold  map[string]*holdResult
}

// measure runs the rounds: for each workload and concurrency, a warm-up of
// every target, then rounds in which every target runs once, the order
// rotating each round so no target always follows the same neighbour.
func measure(ctx context.Context, cfg *config, e *env, res *results) error {
	res.cells = map[cellKey]*cell{}
	var live []*target
	for _, t := range e.targets {
		if t.skip == "" {
			live = append(live, t)
		}
	}
	if len(live) == 0 {
		return fmt.Errorf("every target failed its first request")
	}
	slots := len(cfg.workloads) * len(cfg.conc) * len(live)
	total := time.Duration(slots) * (cfg.warmup + time.Duration(cfg.rounds)*cfg.duration)
	logf("measuring %d targets × %d workloads × %d concurrencies: %d rounds of %s each, about %s",
		len(live), len(cfg.workloads), len(cfg.conc), cfg.rounds, cfg.duration, total.Round(time.Second))
	self := os.Getpid()
	for _, w := range cfg.workloads {
		sse := w == "sse"
		for _, c := range cfg.conc {
			mk := func(t *target, d time.Duration) slot {
				return slot{t: t, sse: sse, c: c, d: d, wantBody: len(jsonAnswer), wantEvents: sseEvents}
			}
			for _, t := range live {
				if err := ctx.Err(); err != nil {
					return err
				}
				if cfg.warmup > 0 {
					runSlot(mk(t, cfg.warmup))
				}
			}
			for r := 0; r < cfg.rounds; r++ {
				for i := range live {
					if err := ctx.Err(); err != nil {
						return err
					}
					t := live[(i+r)%len(live)]
					k := cellKey{w, c, t.name}
					cl := res.cells[k]
					if cl == nil {
						cl = &cell{}
						res.cells[k] = cl
					}
					s0, m0, p0 := cpuTime(self), cpuTime(e.mock.pid), cpuTime(t.pid)
					st := runSlot(mk(t, cfg.duration))
					cl.cpuSelf += cpuTime(self) - s0
					cl.cpuMock += cpuTime(e.mock.pid) - m0
					if t.pid != e.mock.pid {
						cl.cpuProxy += cpuTime(t.pid) - p0
					}
					cl.st.merge(st)
					cl.dur += cfg.duration
					cl.perRound = append(cl.perRound, float64(st.n)/cfg.duration.Seconds())
					if st.errs > 0 {
						logf("%s %s c=%d round %d: %d errors, last: %v", t.name, w, c, r+1, st.errs, st.lastErr)
					}
				}
			}
			var line bytes.Buffer
			for _, t := range live {
				cl := res.cells[cellKey{w, c, t.name}]
				fmt.Fprintf(&line, "  %s %.0f/s p50 %s", t.name, float64(cl.st.n)/cl.dur.Seconds(), us(cl.st.lat.quantile(0.5)))
			}
			logf("%s c=%d:%s", w, c, line.String())
		}
	}
	return nil
}

// cpuTime is the user+system CPU time of process pid so far, from
// /proc/PID/stat (clock ticks of 10 ms: over a 20 s cell that is fine).
func cpuTime(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := bytes.Fields(b[i+1:])
	// After the command: state is field 3, utime 14 and stime 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(string(f[11]), 10, 64)
	st, _ := strconv.ParseInt(string(f[12]), 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// vmRSS is the resident set of process pid in KiB, from /proc/PID/status.
func vmRSS(pid int) int64 {
	return procStatus(pid, "VmRSS:")
}

func procStatus(pid int, field string) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte(field)); ok {
			f := bytes.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(string(f[0]), 10, 64)
				return n
			}
		}
	}
	return 0
}

// holdResult is a target's memory with many streams open.
type holdResult struct {
	before  int64 // KiB, after the load, with no stream open
	holding int64 // KiB, with every stream open
	mock    int64 // the mock's KiB meanwhile
	opened  int
	err     error
}

// holdPhase opens cfg.hold streams at once through each target (the mock
// keeps them open, one event a second), waits until each has its first
// event, and reads every process's VmRSS.
func holdPhase(ctx context.Context, cfg *config, e *env) map[string]*holdResult {
	out := map[string]*holdResult{}
	for _, t := range e.targets {
		if t.skip != "" || t.pid <= 0 || ctx.Err() != nil {
			continue
		}
		h := &holdResult{before: vmRSS(t.pid)}
		out[t.name] = h
		conns, err := openHolds(ctx, t, cfg.hold)
		h.opened = len(conns)
		h.err = err
		if err == nil {
			time.Sleep(time.Second) // let the servers settle on their new goroutines
			h.holding = vmRSS(t.pid)
			h.mock = vmRSS(e.mock.pid)
		}
		for _, c := range conns {
			c.Close()
		}
		logf("%s: %d streams open: VmRSS %d KiB (before %d KiB)%s", t.name, h.opened, h.holding, h.before, errSuffix(err))
		time.Sleep(2 * time.Second) // let the held streams end before the next target
	}
	return out
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return "; " + err.Error()
}

// openHolds opens n held streams through t, 64 dials at a time.
func openHolds(ctx context.Context, t *target, n int) ([]io.Closer, error) {
	var mu sync.Mutex
	var conns []io.Closer
	var firstErr error
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := openHold(t)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, c.conn)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return conns, fmt.Errorf("opened %d of %d streams: %w", len(conns), n, firstErr)
	}
	return conns, nil
}

// openHold sends a hold request and reads until the first event, then
// drains the connection in the background until it is closed.
func openHold(t *target) (*client, error) {
	cl, err := dial(t.addr)
	if err != nil {
		return nil, err
	}
	cl.conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := cl.conn.Write(t.reqHold); err != nil {
		cl.close()
		return nil, err
	}
	line, err := cl.br.ReadSlice('\n')
	if err == nil && !bytes.HasPrefix(line, []byte("HTTP/1.1 200")) {
		err = fmt.Errorf("status line %q", bytes.TrimSpace(line))
	}
	inBody := false
	for err == nil {
		if line, err = cl.br.ReadSlice('\n'); err != nil {
			break
		}
		if !inBody {
			inBody = len(line) <= 2
			continue
		}
		if len(line) == 1 { // "\n": the end of the first event
			break
		}
	}
	if err != nil {
		cl.close()
		return nil, err
	}
	cl.conn.SetDeadline(time.Time{})
	go io.Copy(io.Discard, cl.br)
	return cl, nil
}

package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

func us(d time.Duration) string {
	v := float64(d) / 1e3
	if v < 10 {
		return fmt.Sprintf("%.1f µs", v)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func signedUS(d time.Duration) string {
	v := float64(d) / 1e3
	return fmt.Sprintf("%+.0f µs", v)
}

func kib(n int64) string {
	if n <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/1024)
}

func perReq(d time.Duration, n uint64) string {
	if n == 0 || d == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(d)/1e3/float64(n))
}

func (c *cell) rate() float64 {
	if c == nil || c.dur == 0 {
		return 0
	}
	return float64(c.st.n) / c.dur.Seconds()
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// write prints the results as markdown.
func (r *results) write(w io.Writer) {
	cfg := r.cfg
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("## Gateway benchmark\n\n")
	p("%d CPUs, load average %s at the end; %d rounds × %s per target per (workload, c), targets alternating each round; "+
		"load generator, mock upstream and proxy share the machine, so read ratios, not capacities.\n\n",
		runtime.NumCPU(), loadAvg(), cfg.rounds, cfg.duration)
	for _, t := range r.env.targets {
		if t.skip != "" {
			p("- **%s not measured**: %s", t.name, t.skip)
			if rss := r.env.rssIdle[t.name]; rss > 0 {
				p("; its VmRSS idle after start: %s", kib(rss))
			}
			p("\n")
		}
	}
	for _, pr := range r.env.procs {
		if pr.log != nil && pr.log.suppressed() > 0 {
			p("- %s logged %d more lines than shown on stderr\n", pr.name, pr.log.suppressed())
		}
	}
	p("\n")
	names := []string{}
	for _, t := range r.env.targets {
		if t.skip == "" {
			names = append(names, t.name)
		}
	}
	for _, wl := range cfg.workloads {
		for _, c := range cfg.conc {
			direct := r.cells[cellKey{wl, c, "direct"}]
			if wl == "json" {
				p("### JSON, c=%d\n\n", c)
				p("| target | req/s | ÷ direct | rounds min–max | p50 | p90 | p99 | p50 added | CPU µs/req: proxy · mock · load gen | errors |\n")
				p("|---|---|---|---|---|---|---|---|---|---|\n")
			} else {
				p("### SSE, 20 events, c=%d\n\n", c)
				p("| target | streams/s | ÷ direct | first byte p50 | p99 | first byte added | event gap p50 | p99 | stream total p50 | p99 | CPU µs/stream: proxy · mock · load gen | errors |\n")
				p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
			}
			for _, name := range names {
				cl := r.cells[cellKey{wl, c, name}]
				if cl == nil {
					continue
				}
				ratio, added := "–", "–"
				if direct != nil && direct.rate() > 0 {
					ratio = fmt.Sprintf("%.2f", cl.rate()/direct.rate())
					if wl == "json" {
						added = signedUS(cl.st.lat.quantile(0.5) - direct.st.lat.quantile(0.5))
					} else {
						added = signedUS(cl.st.ttfb.quantile(0.5) - direct.st.ttfb.quantile(0.5))
					}
				}
				proxyCPU := "–"
				if name != "direct" {
					proxyCPU = perReq(cl.cpuProxy, cl.st.n)
				}
				cpu := proxyCPU + " · " + perReq(cl.cpuMock, cl.st.n) + " · " + perReq(cl.cpuSelf, cl.st.n)
				errs := fmt.Sprint(cl.st.errs)
				if cl.st.errs > 0 && cl.st.lastErr != nil {
					errs += fmt.Sprintf(" (%v)", cl.st.lastErr)
				}
				if wl == "json" {
					p("| %s | %.0f | %s | %.0f–%.0f | %s | %s | %s | %s | %s | %s |\n", name, cl.rate(), ratio,
						slices.Min(cl.perRound), slices.Max(cl.perRound),
						us(cl.st.lat.quantile(0.5)), us(cl.st.lat.quantile(0.9)), us(cl.st.lat.quantile(0.99)),
						added, cpu, errs)
				} else {
					p("| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, cl.rate(), ratio,
						us(cl.st.ttfb.quantile(0.5)), us(cl.st.ttfb.quantile(0.99)), added,
						us(cl.st.gap.quantile(0.5)), us(cl.st.gap.quantile(0.99)),
						us(cl.st.lat.quantile(0.5)), us(cl.st.lat.quantile(0.99)), cpu, errs)
				}
			}
			p("\n")
			for _, name := range names {
				cl := r.cells[cellKey{wl, c, name}]
				if cl == nil || !r.target(name).isKB {
					continue
				}
				if cl.st.stKB.n > 0 {
					p("%s Server-Timing: keybridge;dur p50 %s p99 %s, upstream;dur p50 %s p99 %s",
						name, us(cl.st.stKB.quantile(0.5)), us(cl.st.stKB.quantile(0.99)),
						us(cl.st.stUp.quantile(0.5)), us(cl.st.stUp.quantile(0.99)))
				}
				if cl.st.stMissed > 0 {
					p("; %d of %d answers had no Server-Timing (SPEC §7.8 wants it on every one)", cl.st.stMissed, cl.st.n)
				}
				p("\n\n")
			}
		}
	}
	r.summary(p, names)
}

func (r *results) target(name string) *target {
	for _, t := range r.env.targets {
		if t.name == name {
			return t
		}
	}
	return &target{}
}

// summary prints the table in PERF.md's shape, and where keybridge stands
// between the floor (relay) and the naive build (reverseproxy).
func (r *results) summary(p func(string, ...any), names []string) {
	cfg := r.cfg
	lowC, highC := cfg.conc[0], cfg.conc[len(cfg.conc)-1]
	for _, c := range cfg.conc {
		lowC = min(lowC, c)
		if c == 16 {
			highC = 16
		}
	}
	type row struct{ added, ratio, sAdded, sRatio float64 }
	rows := map[string]*row{}
	get := func(wl string, c int, name string) *cell { return r.cells[cellKey{wl, c, name}] }
	has := func(wl string) bool { return slices.Contains(cfg.workloads, wl) }
	p("### Summary\n\n")
	p("| target | c=%d p50 added over direct | c=%d throughput ÷ direct | stream first byte added, c=%d | c=%d streams/s ÷ direct | VmRSS idle | VmRSS, %d streams open |\n",
		lowC, highC, lowC, highC, cfg.hold)
	p("|---|---|---|---|---|---|---|\n")
	for _, name := range names {
		rw := &row{}
		rows[name] = rw
		cells := []string{"–", "–", "–", "–"}
		if has("json") {
			d, t := get("json", lowC, "direct"), get("json", lowC, name)
			if d != nil && t != nil {
				rw.added = float64(t.st.lat.quantile(0.5)-d.st.lat.quantile(0.5)) / 1e3
				cells[0] = fmt.Sprintf("%+.0f µs", rw.added)
			}
			d, t = get("json", highC, "direct"), get("json", highC, name)
			if d != nil && t != nil && d.rate() > 0 {
				rw.ratio = t.rate() / d.rate()
				cells[1] = fmt.Sprintf("%.2f", rw.ratio)
			}
		}
		if has("sse") {
			d, t := get("sse", lowC, "direct"), get("sse", lowC, name)
			if d != nil && t != nil {
				rw.sAdded = float64(t.st.ttfb.quantile(0.5)-d.st.ttfb.quantile(0.5)) / 1e3
				cells[2] = fmt.Sprintf("%+.0f µs", rw.sAdded)
			}
			d, t = get("sse", highC, "direct"), get("sse", highC, name)
			if d != nil && t != nil && d.rate() > 0 {
				rw.sRatio = t.rate() / d.rate()
				cells[3] = fmt.Sprintf("%.2f", rw.sRatio)
			}
		}
		holding := "–"
		if h := r.hold[name]; h != nil {
			if h.err != nil {
				holding = "failed: " + h.err.Error()
			} else {
				holding = kib(h.holding)
			}
		}
		label := name
		switch name {
		case "direct":
			label = "direct to the mock (VmRSS: the mock's)"
		case "relay":
			label = "bare TCP relay — the floor"
		case "passthrough":
			label = "synchronous HTTP/1.1 pass-through, framing only"
		case "reverseproxy":
			label = "`httputil.ReverseProxy`, default settings"
		case "keybridge":
			label = "**keybridge**"
		}
		p("| %s | %s | %s | %s | %s | %s | %s |\n", label, cells[0], cells[1], cells[2], cells[3], kib(r.env.rssIdle[name]), holding)
	}
	p("\n")
	if len(r.hold) > 0 {
		p("Memory: VmRSS after the load and with %d streams open (the mock holds each open, one event a second):\n\n", cfg.hold)
		for _, name := range names {
			if h := r.hold[name]; h != nil && h.err == nil && h.opened > 0 {
				p("- %s: %s → %s, %.1f KiB per open stream\n", name, kib(h.before), kib(h.holding), float64(h.holding-h.before)/float64(h.opened))
			}
		}
		p("\n")
	}
	kb, relay, rp := rows["keybridge"], rows["relay"], rows["reverseproxy"]
	if kb == nil {
		if r.target("keybridge").skip != "" {
			p("Keybridge: not measured (%s).\n", r.target("keybridge").skip)
		}
		return
	}
	if relay == nil || rp == nil {
		return
	}
	// 0% is the floor, 100% the naive build; below 0 beats the relay,
	// above 100 is worse than ReverseProxy.
	pos := func(kb, floor, naive float64) string {
		if naive == floor {
			return "?"
		}
		return fmt.Sprintf("%.0f%%", 100*(kb-floor)/(naive-floor))
	}
	if has("json") {
		p("Keybridge, JSON: %+.0f µs at c=%d (relay %+.0f, ReverseProxy %+.0f): %s of the way from the floor to the naive build; "+
			"throughput %.2f× direct at c=%d (relay %.2f, ReverseProxy %.2f): %s.\n",
			kb.added, lowC, relay.added, rp.added, pos(kb.added, relay.added, rp.added),
			kb.ratio, highC, relay.ratio, rp.ratio, pos(kb.ratio, relay.ratio, rp.ratio))
	}
	if has("sse") {
		p("Keybridge, streams: first byte %+.0f µs at c=%d (relay %+.0f, ReverseProxy %+.0f): %s; "+
			"streams/s %.2f× direct at c=%d (relay %.2f, ReverseProxy %.2f): %s.\n",
			kb.sAdded, lowC, relay.sAdded, rp.sAdded, pos(kb.sAdded, relay.sAdded, rp.sAdded),
			kb.sRatio, highC, relay.sRatio, rp.sRatio, pos(kb.sRatio, relay.sRatio, rp.sRatio))
	}
}

// Command bench measures the gateway against the floor and the naive build,
// on loopback, in one run: a mock upstream, a bare TCP relay in front of it,
// httputil.ReverseProxy in front of it, and "keybridge serve" in front of it,
// round by round so that drift on a shared machine hits all of them alike.
//
// Run it from the repository root with "go run ./bench"; see bench/README.md.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	targets    []string
	targetURL  string
	targetHdr  string
	targetPID  int
	workloads  []string
	conc       []int
	rounds     int
	duration   time.Duration
	warmup     time.Duration
	hold       int
	repo       string
	kbLogLevel string
	kbLimits   bool
	kbRedis    string
	mockListen string
	maxTime    time.Duration
	cpuprofile string
	upKey      string
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-role" {
		if err := runRole(os.Args[2], os.Args[3:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", os.Args[2]+":", err)
			os.Exit(1)
		}
		return
	}
	var cfg config
	var targets, workloads, conc string
	flag.StringVar(&targets, "targets", "direct,relay,reverseproxy,keybridge", "targets to measure, comma-separated: direct, relay, passthrough (not by default), reverseproxy, keybridge")
	flag.StringVar(&cfg.targetURL, "target-url", "", "also measure this already-running proxy, e.g. http://127.0.0.1:9000/gateway/mock/chat/completions (point it at the mock, see -mock-listen)")
	flag.StringVar(&cfg.targetHdr, "target-header", "", `a header sent to -target-url, e.g. "Authorization: Bearer kb_..."`)
	flag.IntVar(&cfg.targetPID, "target-pid", 0, "the process behind -target-url, for its CPU and RSS")
	flag.StringVar(&workloads, "workloads", "json,sse", "workloads: json (~400-byte answer), sse (stream of 20 events)")
	flag.StringVar(&conc, "c", "1,16,64", "concurrency levels (one keep-alive connection per worker)")
	flag.IntVar(&cfg.rounds, "rounds", 10, "measured rounds per (workload, c); each round runs every target once")
	flag.DurationVar(&cfg.duration, "duration", 2*time.Second, "how long each target runs in each round")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured run of each target before the rounds of each (workload, c)")
	flag.IntVar(&cfg.hold, "hold", 1000, "concurrent open streams for the memory phase (0: skip it)")
	flag.StringVar(&cfg.repo, "repo", "", "the Keybridge source tree to build (default: the module root above the working directory)")
	flag.StringVar(&cfg.kbLogLevel, "kb-log-level", "info", "keybridge serve --log-level (info is the product's default)")
	flag.BoolVar(&cfg.kbLimits, "kb-limits", false, "call keybridge with a key that has limits (RPM, TPM and a monthly budget, all too high to be reached), so every request is admitted and settled")
	flag.StringVar(&cfg.kbRedis, "kb-redis", "", "keybridge serve --redis-url: limit counters in Redis (e.g. redis://127.0.0.1:6379/0)")
	flag.StringVar(&cfg.mockListen, "mock-listen", "127.0.0.1:0", "the mock upstream's address; fix it to point a -target-url prototype at the mock")
	flag.DurationVar(&cfg.maxTime, "max-time", 40*time.Minute, "abort a run that takes longer than this")
	flag.StringVar(&cfg.upKey, "upstream-key", "", "the only key the mock upstream accepts (default: random; fix it for a -target-url prototype)")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write the load generator's own CPU profile here (to check it is not the bottleneck)")
	flag.Parse()
	cfg.targets = splitList(targets)
	cfg.workloads = splitList(workloads)
	for _, s := range splitList(conc) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 4096 {
			fatalf("-c: %q is not a concurrency between 1 and 4096", s)
		}
		cfg.conc = append(cfg.conc, n)
	}
	for _, w := range cfg.workloads {
		if w != "json" && w != "sse" {
			fatalf("-workloads: unknown workload %q", w)
		}
	}
	if cfg.rounds < 1 || cfg.duration <= 0 {
		fatalf("-rounds and -duration must be positive")
	}
	raiseFDLimit()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.maxTime)
	defer cancel()
	if cfg.cpuprofile != "" {
		f, err := os.Create(cfg.cpuprofile)
		if err != nil {
			fatalf("%v", err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	runFn := run
	if loadFor > 0 {
		runFn = runLoad // bench/load.go
	}
	if err := runFn(ctx, &cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// raiseFDLimit lifts the soft open-files limit to the hard one: the memory
// phase holds 1,000 streams, two sockets each in every process on the path.
// Child processes inherit the limit.
func raiseFDLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		logf("cannot raise the open-files limit: %v", err)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// env is everything the run started.
type env struct {
	mock    *proc
	procs   []*proc
	kb      *keybridgeRun
	targets []*target
	rssIdle map[string]int64 // VmRSS in KiB after start (keybridge: 2 s after, once settled)
}

func (e *env) close() {
	for _, p := range e.procs {
		p.stop()
	}
}

func run(ctx context.Context, cfg *config, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "keybridge-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	upstreamKey := cfg.upKey
	if upstreamKey == "" {
		upstreamKey = "sk-bench-" + randHex(16)
	}
	e := &env{rssIdle: map[string]int64{}}
	defer e.close()

	if e.mock, err = startRole("mock", "-listen", cfg.mockListen, "-key", upstreamKey); err != nil {
		return err
	}
	e.procs = append(e.procs, e.mock)
	logf("mock upstream on %s (pid %d)", e.mock.addr, e.mock.pid)
	authUp := "Authorization: Bearer " + upstreamKey
	add := func(name string, p *proc, path string, hdrs ...string) *target {
		t := &target{name: name, addr: p.addr, pid: p.pid}
		t.reqJSON = buildRequest(p.addr, path, hdrs, reqBody)
		t.reqSSE = buildRequest(p.addr, path, hdrs, sseBody)
		t.reqHold = buildRequest(p.addr, path, hdrs, holdBody)
		e.targets = append(e.targets, t)
		return t
	}
	for _, name := range cfg.targets {
		switch name {
		case "direct":
			add("direct", e.mock, "/v1/chat/completions", authUp)
		case "relay", "passthrough", "reverseproxy":
			p, err := startRole(name, "-upstream", e.mock.addr)
			if err != nil {
				return err
			}
			e.procs = append(e.procs, p)
			e.rssIdle[name] = vmRSS(p.pid)
			logf("%s on %s (pid %d)", name, p.addr, p.pid)
			add(name, p, "/v1/chat/completions", authUp)
		case "keybridge":
			repo := cfg.repo
			if repo == "" {
				if repo, err = moduleRoot(); err != nil {
					return err
				}
			}
			logf("building and provisioning keybridge from %s", repo)
			kb, err := startKeybridge(ctx, repo, tmp, e.mock.addr, upstreamKey, kbOptions{logLevel: cfg.kbLogLevel, limits: cfg.kbLimits, redis: cfg.kbRedis})
			if err != nil {
				return err
			}
			e.kb = kb
			e.procs = append(e.procs, kb.proc)
			// serve's start-up work (the dummy password hash's 64 MiB of
			// argon2 memory, made and handed back) may still be under
			// way just after provisioning: idle is what it settles to.
			time.Sleep(2 * time.Second)
			e.rssIdle[name] = vmRSS(kb.proc.pid)
			logf("keybridge on %s (pid %d; profile it with: perf record -g -p %d), provider \"mock\" provisioned", kb.proc.addr, kb.proc.pid, kb.proc.pid)
			t := add("keybridge", kb.proc, "/gateway/mock/chat/completions", "Authorization: Bearer "+kb.token)
			t.isKB = true
		default:
			return fmt.Errorf("-targets: unknown target %q", name)
		}
	}
	if e.mock != nil {
		e.rssIdle["direct"] = vmRSS(e.mock.pid)
	}
	if cfg.targetURL != "" {
		u, err := url.Parse(cfg.targetURL)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("-target-url must be an http:// URL")
		}
		var hdrs []string
		if cfg.targetHdr != "" {
			hdrs = append(hdrs, cfg.targetHdr)
		}
		p := &proc{addr: u.Host, pid: cfg.targetPID}
		t := add("url", p, u.RequestURI(), hdrs...)
		if cfg.targetPID > 0 {
			e.rssIdle["url"] = vmRSS(cfg.targetPID)
		}
		t.isKB = strings.Contains(u.Path, "/gateway/")
	}
	if len(e.targets) == 0 {
		return fmt.Errorf("no targets")
	}
	for _, t := range e.targets {
		preflight(ctx, t)
	}
	res := &results{cfg: cfg, env: e}
	if err := measure(ctx, cfg, e, res); err != nil {
		return err
	}
	if cfg.hold > 0 {
		res.hold = holdPhase(ctx, cfg, e)
	}
	res.write(out)
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// moduleRoot finds the directory of the go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory; give -repo")
		}
		dir = parent
	}
}

// preflight sends one request of each workload and checks the answer, so a
// target that answers wrongly (keybridge without its gateway: 404) is
// reported once and left out instead of producing figures for errors.
func preflight(ctx context.Context, t *target) {
	for _, w := range []struct {
		req []byte
		sse bool
	}{{t.reqJSON, false}, {t.reqSSE, true}} {
		cl, err := dial(t.addr)
		if err != nil {
			t.skip = fmt.Sprintf("cannot connect: %v", err)
			return
		}
		var a answer
		err = cl.do(w.req, w.sse, nil, &a)
		cl.close()
		if err == nil {
			err = check(&a, w.sse, len(jsonAnswer), sseEvents)
		}
		if err != nil {
			t.skip = fmt.Sprintf("%s request: %v%s", map[bool]string{false: "JSON", true: "SSE"}[w.sse], err, answerBody(ctx, t, w.req))
			logf("%s: left out: %s", t.name, t.skip)
			return
		}
		if t.isKB && a.stKB < 0 {
			logf("%s: the answer has no Server-Timing keybridge;dur (SPEC §7.8)", t.name)
		}
	}
}

// answerBody re-sends req with net/http to show what the target said.
func answerBody(ctx context.Context, t *target, raw []byte) string {
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(string(raw))))
	if err != nil {
		return ""
	}
	req.RequestURI = ""
	req.URL.Scheme, req.URL.Host = "http", t.addr
	req = req.WithContext(ctx)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	return fmt.Sprintf(" (POST %s answered %s: %q)", req.URL.Path, resp.Status, strings.TrimSpace(string(b)))
}

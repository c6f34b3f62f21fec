package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/gctune"
	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/retention"
	"github.com/keybridge/keybridge/internal/upstream"
	"github.com/keybridge/keybridge/internal/web"
)

// serveConfig is serve's own configuration, beside the storage flags.
type serveConfig struct {
	storage         storageConfig
	listen          string
	publicURL       string
	egressDeny      string
	usageRetention  time.Duration
	auditRetention  time.Duration
	shutdownTimeout time.Duration

	metricsListen string
	metricsToken  string
	// metricsTokenEnv is KEYBRIDGE_METRICS_TOKEN, used when the flag is
	// not given.
	metricsTokenEnv string

	apiBodyTimeout time.Duration
	maxConnsPerIP  int
	maxConns       int

	gatewayMaxBody       int64
	limitsWhenRedisDown  string
	gatewayHeaderTimeout time.Duration
	gatewayIdleTimeout   time.Duration
	dbOutageGrace        time.Duration
}

func (c *serveConfig) register(fs *flag.FlagSet, getenv func(string) string) error {
	c.storage.register(fs, getenv)
	fs.StringVar(&c.listen, "listen", envOr(getenv, "KEYBRIDGE_LISTEN", "127.0.0.1:8080"), "address to listen on, host:port (KEYBRIDGE_LISTEN)")
	fs.StringVar(&c.publicURL, "public-url", getenv("KEYBRIDGE_PUBLIC_URL"), "how users reach this server, for setup and invitation links; default http://<listen address> (KEYBRIDGE_PUBLIC_URL)")
	fs.StringVar(&c.metricsListen, "metrics-listen", getenv("KEYBRIDGE_METRICS_LISTEN"), "serve /metrics on this address, host:port, and not on --listen; default: on --listen (KEYBRIDGE_METRICS_LISTEN)")
	// The variable is not the flag's default: -h prints defaults.
	fs.StringVar(&c.metricsToken, "metrics-token", "", "bearer token /metrics requires; default: none (KEYBRIDGE_METRICS_TOKEN, which unlike the flag does not show in the process list)")
	c.metricsTokenEnv = getenv("KEYBRIDGE_METRICS_TOKEN")
	fs.StringVar(&c.egressDeny, "egress-deny", getenv("KEYBRIDGE_EGRESS_DENY"), "comma-separated CIDRs providers may not be reached at, besides link-local and metadata addresses (KEYBRIDGE_EGRESS_DENY)")
	var err error
	durations := []struct {
		p         *time.Duration
		name, env string
		def       time.Duration
		usage     string
	}{
		{&c.usageRetention, "usage-retention", "KEYBRIDGE_USAGE_RETENTION", 2160 * time.Hour, "how long gateway usage records are kept (KEYBRIDGE_USAGE_RETENTION)"},
		{&c.auditRetention, "audit-retention", "KEYBRIDGE_AUDIT_RETENTION", 0, "how long audit events are kept; 0 keeps them forever (KEYBRIDGE_AUDIT_RETENTION)"},
		{&c.shutdownTimeout, "shutdown-timeout", "KEYBRIDGE_SHUTDOWN_TIMEOUT", 30 * time.Second, "how long a shutdown waits for in-flight requests and streams (KEYBRIDGE_SHUTDOWN_TIMEOUT)"},
		{&c.apiBodyTimeout, "api-body-timeout", "KEYBRIDGE_API_BODY_TIMEOUT", httpapi.DefaultBodyTimeout, "how long the management API waits for a request body, from its headers; later is 408 (KEYBRIDGE_API_BODY_TIMEOUT)"},
		{&c.gatewayHeaderTimeout, "gateway-header-timeout", "KEYBRIDGE_GATEWAY_HEADER_TIMEOUT", gateway.DefaultHeaderTimeout, "how long the gateway waits for a provider's response headers (KEYBRIDGE_GATEWAY_HEADER_TIMEOUT)"},
		{&c.gatewayIdleTimeout, "gateway-idle-timeout", "KEYBRIDGE_GATEWAY_IDLE_TIMEOUT", gateway.DefaultIdleTimeout, "how long a streamed answer may stay silent before the gateway ends it (KEYBRIDGE_GATEWAY_IDLE_TIMEOUT)"},
		{&c.dbOutageGrace, "db-outage-grace", "KEYBRIDGE_DB_OUTAGE_GRACE", gateway.DefaultOutageGrace, "while the database cannot be reached, how long the keys and routes cached before keep serving the gateway; 0 refuses at once (KEYBRIDGE_DB_OUTAGE_GRACE)"},
	}
	for _, d := range durations {
		def := d.def
		if v := getenv(d.env); v != "" {
			if def, err = time.ParseDuration(v); err != nil {
				return fmt.Errorf("%w: %s: %v", errUsage, d.env, err)
			}
		}
		fs.DurationVar(d.p, d.name, def, d.usage)
	}
	ints := []struct {
		p         *int
		name, env string
		def       int
		usage     string
	}{
		{&c.maxConnsPerIP, "max-conns-per-ip", "KEYBRIDGE_MAX_CONNS_PER_IP", defaultMaxConnsPerIP, "most connections to the management API and web UI from one client address (an IPv6 /64); 0 for no cap (KEYBRIDGE_MAX_CONNS_PER_IP)"},
		{&c.maxConns, "max-conns", "KEYBRIDGE_MAX_CONNS", defaultMaxConns, "most connections to the management API and web UI in all; 0 for no cap (KEYBRIDGE_MAX_CONNS)"},
	}
	for _, n := range ints {
		def := n.def
		if v := getenv(n.env); v != "" {
			if def, err = strconv.Atoi(v); err != nil || def < 0 {
				return fmt.Errorf("%w: %s: want a number, 0 or more", errUsage, n.env)
			}
		}
		fs.IntVar(n.p, n.name, def, n.usage)
	}
	maxBody := int64(gateway.DefaultMaxBody)
	if v := getenv("KEYBRIDGE_GATEWAY_MAX_BODY"); v != "" {
		if maxBody, err = strconv.ParseInt(v, 10, 64); err != nil || maxBody <= 0 {
			return fmt.Errorf("%w: KEYBRIDGE_GATEWAY_MAX_BODY: want a positive number of bytes", errUsage)
		}
	}
	fs.StringVar(&c.limitsWhenRedisDown, "limits-when-redis-down", envOr(getenv, "KEYBRIDGE_LIMITS_WHEN_REDIS_DOWN", "local"),
		"with --redis-url, what the gateway does while Redis cannot be reached: local (count limits in this process) or refuse (answer 503) (KEYBRIDGE_LIMITS_WHEN_REDIS_DOWN)")
	fs.Int64Var(&c.gatewayMaxBody, "gateway-max-body", maxBody, "largest request body the gateway takes, in bytes; it is held for failover (KEYBRIDGE_GATEWAY_MAX_BODY)")
	return nil
}

// denyCIDRs parses --egress-deny.
func (c *serveConfig) denyCIDRs() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(c.egressDeny, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%w: --egress-deny: %q is not a CIDR such as 10.0.0.0/8", errUsage, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// check reports the first flag value serve cannot use, before anything
// is created on disk, and returns the Redis options --redis-url gives (nil
// without it).
func (c *serveConfig) check() (*redis.Options, error) {
	for _, a := range []struct{ flag, addr string }{{"--listen", c.listen}, {"--metrics-listen", c.metricsListen}} {
		if a.addr == "" && a.flag == "--metrics-listen" {
			continue
		}
		_, port, err := net.SplitHostPort(a.addr)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %q is not host:port, such as 127.0.0.1:8080", errUsage, a.flag, a.addr)
		}
	}
	if c.publicURL != "" {
		u, err := url.Parse(c.publicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: --public-url: %q is not an http:// or https:// URL", errUsage, c.publicURL)
		}
	}
	switch {
	case c.gatewayMaxBody <= 0:
		return nil, fmt.Errorf("%w: --gateway-max-body must be positive", errUsage)
	case c.maxConnsPerIP < 0 || c.maxConns < 0:
		return nil, fmt.Errorf("%w: --max-conns-per-ip and --max-conns must be 0 or more", errUsage)
	case c.apiBodyTimeout <= 0:
		return nil, fmt.Errorf("%w: --api-body-timeout must be positive", errUsage)
	case c.dbOutageGrace < 0:
		return nil, fmt.Errorf("%w: --db-outage-grace must not be negative", errUsage)
	case c.usageRetention < 0 || c.auditRetention < 0:
		return nil, fmt.Errorf("%w: --usage-retention and --audit-retention must not be negative (0 keeps forever)", errUsage)
	case c.shutdownTimeout < 0 || c.gatewayHeaderTimeout < 0 || c.gatewayIdleTimeout < 0:
		return nil, fmt.Errorf("%w: --shutdown-timeout, --gateway-header-timeout and --gateway-idle-timeout must not be negative", errUsage)
	case c.limitsWhenRedisDown != "local" && c.limitsWhenRedisDown != "refuse":
		return nil, fmt.Errorf("%w: --limits-when-redis-down must be local or refuse", errUsage)
	}
	if c.storage.RedisURL == "" {
		return nil, nil
	}
	opt, err := redisOptions(c.storage.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w: --redis-url: %v", errUsage, err)
	}
	return opt, nil
}

// parseFlags parses a subcommand's flags: -h prints them and succeeds, a
// mistake is a usage error, and stray arguments are refused.
func parseFlags(fs *flag.FlagSet, args []string) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return false, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return false, nil
}

// serve runs the API, the web UI and the background jobs until ctx ends,
// then drains in-flight requests and flushes what is batched.
func serve(ctx context.Context, env *Env) error {
	fs := flag.NewFlagSet("keybridge serve", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var cfg serveConfig
	if err := cfg.register(fs, env.Getenv); err != nil {
		return err
	}
	if help, err := parseFlags(fs, env.Args); help || err != nil {
		return err
	}
	if cfg.metricsToken == "" {
		cfg.metricsToken = cfg.metricsTokenEnv
	}
	// The collector runs less often while the live heap is small
	// (docs/configuration.md); GOGC, set, is the operator's own choice.
	if _, set := os.LookupEnv("GOGC"); !set {
		defer gctune.Start(gctune.Budget, gctune.MaxPercent)()
	}
	deny, err := cfg.denyCIDRs()
	if err != nil {
		return err
	}
	redisOpt, err := cfg.check()
	if err != nil {
		return err
	}
	logOut := newLogWriter(env.Stderr)
	defer logOut.Close()
	log, err := cfg.storage.logger(logOut)
	if err != nil {
		return err
	}
	if err := cfg.storage.checkMasterKey(); err != nil {
		return err
	}
	// Listening comes before the database: a port already taken stops
	// serve before it creates a data directory or a master key.
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	var mln net.Listener
	if cfg.metricsListen != "" {
		if mln, err = net.Listen("tcp", cfg.metricsListen); err != nil {
			return fmt.Errorf("listen for metrics: %w", err)
		}
		defer mln.Close()
	}

	st, err := cfg.storage.openStore(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	ring, err := cfg.storage.openRing(ctx, st, true, log, env.Stderr)
	if err != nil {
		return err
	}
	// Zero is the options' default; a negative grace is none.
	outageGrace := cmp.Or(cfg.dbOutageGrace, -1)
	authOpts := auth.Options{Logger: log, Ring: ring, OutageGrace: outageGrace}
	if redisOpt != nil {
		redis.SetLogger(redisLogger{log})
		authOpts.Redis = redis.NewClient(redisOpt)
		defer authOpts.Redis.Close()
	}
	authSvc := auth.New(st, authOpts)

	publicURL := strings.TrimRight(cfg.publicURL, "/")
	if publicURL == "" {
		publicURL = "http://" + displayAddr(ln.Addr())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	up := upstream.New(upstream.Options{DenyCIDRs: deny})
	gw, err := gateway.New(gateway.Options{
		Store: st, Ring: ring, Auth: authSvc, Logger: log, RequestLog: logOut, Registerer: reg,
		Guard: up.Guard(), Resolver: up.Resolver(),
		MaxBody: cfg.gatewayMaxBody, HeaderTimeout: cfg.gatewayHeaderTimeout, IdleTimeout: cfg.gatewayIdleTimeout,
		Redis: authOpts.Redis, LimitsWhenRedisDown: cfg.limitsWhenRedisDown,
		OutageGrace: outageGrace,
	})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	api := httpapi.New(httpapi.Config{
		Store: st, Ring: ring, Auth: authSvc, Logger: log,
		PublicURL: publicURL, Version: Version,
		Upstream:       up,
		UsageRetention: cfg.usageRetention,
		Registerer:     reg,
		Metrics:        promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		UI:             web.Handler(),
		BodyTimeout:    cfg.apiBodyTimeout,
		Redis:          authOpts.Redis,

		MetricsToken:       cfg.metricsToken,
		MetricsOwnListener: cfg.metricsListen != "",
		Ready: func(r *http.Request) error {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := st.Ping(ctx); err != nil {
				return fmt.Errorf("database: %w", err)
			}
			if ring.Primary() == 0 {
				return errors.New("key ring has no primary key")
			}
			return nil
		},
	})

	// Background work lives until the server has drained: auth's last
	// batch of last_used_at times is flushed after the last request.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	var bg sync.WaitGroup
	for name, run := range map[string]func(context.Context) error{
		"auth":     authSvc.Run,
		"gateway":  gw.Run,
		"key ring": ring.Run,
		"retention": func(ctx context.Context) error {
			return retention.Run(ctx, st, retention.Options{Usage: cfg.usageRetention, Audit: cfg.auditRetention, Logger: log})
		},
	} {
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := run(bgCtx); err != nil && bgCtx.Err() == nil {
				log.Error("background job stopped", "job", name, "err", err)
			}
		}()
	}

	token, err := httpapi.NewSetupToken(ctx, st)
	if err != nil {
		stopBackground()
		bg.Wait()
		return fmt.Errorf("prepare setup: %w", err)
	}
	if token != "" {
		// The one place the token appears: stdout, for whoever started
		// the server. Logs only say that setup is pending.
		fmt.Fprintf(env.Stdout, "Keybridge has no org yet. Open this link once to create it and its owner:\n\n    %s/setup?token=%s\n\n", publicURL, token)
		log.Info("setup pending: open the setup link printed on stdout")
	}

	// HTTP/1.1, and HTTP/2 without TLS (prior knowledge) for clients that
	// speak it; TLS, where wanted, ends in front of Keybridge.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           gw.Beside(api),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if mln != nil {
		msrv := &http.Server{Handler: api.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go msrv.Serve(mln)
		defer msrv.Close()
		log.Info("metrics listening", "addr", mln.Addr().String())
	}
	front := gw.Front(ln)
	served := make(chan error, 2)
	go func() { served <- front.Serve() }()
	go func() { served <- srv.Serve(newConnLimiter(front.Listener(), cfg.maxConnsPerIP, cfg.maxConns)) }()
	log.Info("listening", "addr", ln.Addr().String(), "public_url", publicURL, "version", Version)

	select {
	case err = <-served:
		// A listener failed on its own.
		front.Shutdown(context.Background())
		srv.Close()
	case <-ctx.Done():
		log.Info("shutting down: draining in-flight requests", "timeout", cfg.shutdownTimeout.String())
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		var wg sync.WaitGroup
		var ferr error
		wg.Go(func() { ferr = front.Shutdown(sctx) })
		err = srv.Shutdown(sctx)
		wg.Wait()
		cancel()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ferr, context.DeadlineExceeded) {
			log.Warn("shutdown timed out; closing the remaining connections")
			err = srv.Close()
		}
		for range 2 {
			// net/http's Serve answers ErrServerClosed once its Shutdown
			// has begun; the front, shutting down beside it, may close
			// the listener it hands connections through just before.
			if e := <-served; e != nil && !errors.Is(e, http.ErrServerClosed) && !errors.Is(e, net.ErrClosed) {
				err = errors.Join(err, e)
			}
		}
	}
	stopBackground()
	bg.Wait()
	if ferr := authSvc.Flush(context.WithoutCancel(ctx)); ferr != nil {
		log.Warn("flush last-used times", "err", ferr)
	}
	log.Info("stopped")
	return err
}

// displayAddr turns a listener's address into one a browser can open: a
// wildcard host (0.0.0.0, ::) becomes localhost.
func displayAddr(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	if ap.Addr().IsUnspecified() {
		return net.JoinHostPort("localhost", fmt.Sprint(ap.Port()))
	}
	return ap.String()
}

// Waits on Redis that --redis-url does not set itself (its dial_timeout,
// read_timeout, write_timeout and max_retries parameters win). Redis is
// on the gateway's request path for keys with limits, and go-redis's
// defaults (5 s to dial, tried 5 times; 5 s to read; 3 retries) made each
// such request wait 5 s or more on a Redis that took connections and did
// not answer. Our calls take well under a millisecond (a limit admission:
// 0.2 ms median, 0.5 ms p99, 11 ms at worst in 20000 against a local
// Redis on a loaded machine), so half a second is an outage, not a slow
// answer. No retries: a script call that timed out may have run, and run
// again it would count its request twice.
const (
	redisDialTimeout = 500 * time.Millisecond
	redisIOTimeout   = 500 * time.Millisecond
)

// redisOptions parses --redis-url, with Keybridge's waits where the URL
// sets none.
func redisOptions(raw string) (*redis.Options, error) {
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	if !q.Has("dial_timeout") {
		opt.DialTimeout = redisDialTimeout
	}
	opt.DialerRetries = 1 // a dial that failed is tried again by the next call
	if !q.Has("read_timeout") {
		opt.ReadTimeout = redisIOTimeout
	}
	if !q.Has("write_timeout") {
		opt.WriteTimeout = redisIOTimeout
	}
	if !q.Has("max_retries") {
		opt.MaxRetries = -1
	}
	return opt, nil
}

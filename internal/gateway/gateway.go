// Package gateway is Keybridge's hot path (SPEC §7): it takes a request
// for /gateway/{provider}/{path...} with a Keybridge key, finds the
// provider and its upstream keys in memory, forwards the request with the
// real credential, fails over between keys, and streams the answer back
// as it arrives.
//
// A request never touches the database while the caches are warm: the
// caller's key is verified by auth's cache, and routes (provider, opened
// settings, opened upstream keys) and personal credentials come from this
// package's cache, which the store's invalidations keep true on every
// replica.
package gateway

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/upstream"
)

// Options configures a Gateway. Zero fields take the defaults named.
type Options struct {
	Store store.Store
	Ring  *secrets.Ring
	Auth  *auth.Service
	// Guard checks every address the gateway dials (nil: the default
	// guard, refusing link-local and metadata addresses), through
	// Resolver (nil: the system's).
	Guard    *upstream.Guard
	Resolver *net.Resolver
	// TLSConfig is the base TLS configuration for https providers (nil:
	// the system's roots).
	TLSConfig *tls.Config
	// Logger receives the gateway's warnings and, when RequestLog is nil,
	// its one line per request at info (nil: discarded). Its level also
	// decides whether request lines are written (info) and carry the
	// request's headers, redacted (debug).
	Logger *slog.Logger
	// RequestLog, when set, receives the request lines instead, written
	// directly as JSON lines of slog's shape: the server's log output.
	RequestLog io.Writer
	// Registerer receives the gateway's metrics (nil: none).
	Registerer prometheus.Registerer

	// MaxBody caps a request body, which is held to be replayed on
	// failover (default 32 MiB); larger is 413.
	MaxBody int64
	// HeaderTimeout bounds the wait for a provider's response headers
	// (default 10 minutes: reasoning models think before their first
	// byte), and IdleTimeout the gap between two reads of a response body
	// (default 5 minutes).
	HeaderTimeout time.Duration
	IdleTimeout   time.Duration

	// Redis, when set, holds the keys' limit counters, so that every
	// replica enforces one limit; without it they are in this process.
	// LimitsWhenRedisDown says what happens when Redis cannot be
	// reached: "local" (the default) counts in this process meanwhile,
	// "refuse" answers 503.
	Redis               *redis.Client
	LimitsWhenRedisDown string
	// OutageGrace is how long, once the store's subscription stops
	// hearing changes, the routes and personal credentials cached before
	// keep serving requests that find the store unreachable (default
	// 1 min; negative: not at all), as auth.Options.OutageGrace does for
	// keys.
	OutageGrace time.Duration
	// UsageQueue bounds the usage rows waiting to be written (default
	// 10,000); past it rows are dropped and counted, never waited for.
	UsageQueue int
}

// Defaults of Options (SPEC §7.4).
const (
	DefaultMaxBody       = 32 << 20
	DefaultHeaderTimeout = 10 * time.Minute
	DefaultIdleTimeout   = 5 * time.Minute
	// DefaultOutageGrace is Keybridge's own choice (docs/scaling.md).
	DefaultOutageGrace = time.Minute
	connectTimeout     = 10 * time.Second
)

// Gateway serves /gateway/. It is safe for concurrent use.
type Gateway struct {
	opts   Options
	log    *slog.Logger
	routes *routes
	client *client
	cool   *cooldowns
	ids    idGen
	m      *metrics
	lim    limiter
	rec    *recorder
	peers  *cooldownPeers // nil without Redis

	bodies sync.Pool // *[]byte request body buffers
}

// New returns a Gateway. Call Run to turn on its caches and write its
// usage. It fails only for an unknown LimitsWhenRedisDown.
func New(opts Options) (*Gateway, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Guard == nil {
		opts.Guard = upstream.NewGuard(nil)
	}
	if opts.TLSConfig == nil {
		opts.TLSConfig = &tls.Config{}
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.OutageGrace == 0 {
		opts.OutageGrace = DefaultOutageGrace
	}
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = DefaultHeaderTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	g := &Gateway{
		opts:   opts,
		log:    opts.Logger,
		routes: newRoutes(opts.Store, opts.Ring, opts.OutageGrace),
		client: newClient(opts.Guard.Dialer(opts.Resolver).DialContext, opts.TLSConfig),
		cool:   newCooldowns(),
		m:      newMetrics(opts.Registerer),
	}
	g.ids.init()
	g.rec = newRecorder(opts.Store, opts.Logger, opts.UsageQueue)
	if opts.Redis != nil {
		rl, err := newRedisLimiter(opts.Redis, opts.LimitsWhenRedisDown, opts.Logger)
		if err != nil {
			return nil, err
		}
		g.lim = rl
		g.peers = newCooldownPeers(opts.Redis, g.ids.prefix[:], opts.Logger)
	} else {
		g.lim = newMemLimiter()
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(g.rec.collectors()...)
		opts.Registerer.MustRegister(g.lim.collectors()...)
	}
	return g, nil
}

// Run keeps the route cache true until ctx ends: it subscribes to the
// store's invalidations (the cache is on only while it hears them) and
// writes upstream keys' cooldowns for display. It returns early, with an
// error, if the subscription ends.
func (g *Gateway) Run(ctx context.Context) error {
	defer g.client.closeIdle()
	recDone := make(chan error, 1)
	go func() { recDone <- g.rec.run(ctx) }()
	defer func() {
		if err := <-recDone; err != nil {
			g.log.Warn("write the last usage rows", "err", err)
		}
	}()
	if rl, ok := g.lim.(*redisLimiter); ok {
		limDone := make(chan struct{})
		go func() { defer close(limDone); rl.run(ctx) }()
		defer func() { <-limDone }()
	}
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if g.peers != nil {
		peersDone := make(chan struct{})
		go func() { defer close(peersDone); g.peers.listen(subCtx, g.cool.apply) }()
		defer func() { cancel(); <-peersDone }()
	}
	subDone := make(chan error, 1)
	go func() { subDone <- g.opts.Store.Subscribe(subCtx, g.invalidate) }()
	defer g.routes.stop()
	for {
		select {
		case <-ctx.Done():
			<-subDone
			return nil
		case err := <-subDone:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("subscription ended")
			}
			return fmt.Errorf("subscribe to invalidations: %w", err)
		case ch := <-g.cool.changed:
			g.writeCooldowns(ctx, ch)
		}
	}
}

// invalidate applies one invalidation from the store. An admin's change of
// an upstream key (re-enabling it, say) also ends its rest, as a success
// would: the edit says to try it again. (Clearing its cooldown_until is
// queued, never written here: the store's notification must not wait on
// the store.)
func (g *Gateway) invalidate(inv store.Invalidation) {
	g.routes.invalidate(inv)
	if inv.Kind == store.InvalidateProviderKey {
		g.cool.succeed(inv.ID)
	}
}

// writeCooldowns writes ch and whatever else is waiting, in one call.
// With Redis, the changes also go to the other replicas (peers.go).
func (g *Gateway) writeCooldowns(ctx context.Context, ch cooldownChange) {
	changes := map[string]cooldownChange{ch.keyID: ch}
	for more := true; more; {
		select {
		case c := <-g.cool.changed:
			changes[c.keyID] = c
		default:
			more = false
		}
	}
	if g.peers != nil {
		g.peers.send(ctx, changes)
	}
	batch := make(map[string]time.Time, len(changes))
	for id, c := range changes {
		batch[id] = c.until
	}
	if err := g.opts.Store.SetProviderKeyCooldowns(ctx, batch); err != nil && ctx.Err() == nil {
		g.log.WarnContext(ctx, "write upstream key cooldowns", "err", err)
	}
}

// Beside returns the server's one handler: /gateway/ goes straight to
// the gateway, which has its own request id, log line and metrics and
// does not pay for the management API's middleware; everything else goes
// to api. No mux pattern decides this, because a mux would clean the path,
// and the gateway forwards path bytes as sent.
func (g *Gateway) Beside(api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/gateway/") {
			g.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

// ServeHTTP implements http.Handler for /gateway/{provider}/{path...}.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := exchange{g: g, w: w, r: r, start: time.Now(), id: g.ids.next()}
	// Registered first, so it runs last: after finish has counted and
	// logged the request, even when the panic came from there.
	defer g.recoverPanic(x.id)
	setHeader(w, "X-Keybridge-Request-Id", x.id)
	g.m.active.Inc()
	defer g.m.active.Dec()
	defer x.finish()
	if !x.parseTarget() {
		x.styled = true // no provider, as an unknown one, answers the §1 shape
		x.fail(newError(keybridge.ENotFound, "no provider in the path: use /gateway/{provider}/..."))
		return
	}
	x.serve()
}

// recoverPanic logs a panic in the gateway's handling of a request and
// aborts the answer, as a cut stream is aborted. The panic's value is not
// logged: it could hold anything, a credential included; its type and the
// stack say where it was. Re-panicking with http.ErrAbortHandler, which
// net/http and the front both take silently, keeps net/http (serving
// HTTP/2) from logging the value itself.
func (g *Gateway) recoverPanic(requestID string) {
	v := recover()
	if v == nil || v == http.ErrAbortHandler {
		if v != nil {
			panic(v)
		}
		return
	}
	g.logPanic(v, "request_id", requestID)
	panic(http.ErrAbortHandler)
}

// logPanic logs a recovered panic v by its type and the stack, never its
// value, with attrs.
func (g *Gateway) logPanic(v any, attrs ...any) {
	g.log.Error("gateway: panic serving a request",
		append(attrs, "panic_type", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))...)
}

// exchange is one request passing through the gateway.
type exchange struct {
	g     *Gateway
	w     http.ResponseWriter
	r     *http.Request
	start time.Time
	id    string

	// From the request line: the provider's name, the rest of the path
	// (raw bytes, from its leading slash), the query without key, and
	// key's value (Gemini's REST style of passing the caller's key).
	name, rest, query, queryKey string
	// path is rest as the gateway reads it to tell what the request
	// does (canonicalPath); rest is what is sent.
	path string

	// style is whose error shape the answer takes, once styled: the
	// provider's, or guessed from the request before it is known.
	style     style
	styled    bool
	principal *keybridge.Principal
	rt        *route
	body      *[]byte

	// What happened, for the log line and metrics.
	status      int
	upstreamKey string
	upstreamDur time.Duration
	headersAt   time.Time
	// readAt is when the answer was last read from its connection,
	// which goes back to the pool from then; zero: not yet known.
	readAt       time.Time
	failovers    int
	stream       bool
	errCode      string
	clientGone   bool
	respBytes    int64
	upstreamSeen int
	// aborted: the answer must end without its proper end (a cut
	// stream); hijacked: the connection left net/http (a WebSocket).
	aborted  bool
	hijacked bool
	// midEvent: the last bytes an SSE answer passed on ended inside an
	// event, so a cut must end that event before its error event.
	midEvent bool
	// hideUsage, when set, removes from the answer the usage-only chunk
	// that include_usage, added by the gateway, makes the provider send.
	hideUsage *usageChunkFilter
	// reqFields, once scanned, are the body's top-level fields.
	reqFields reqFields
	scanned   bool

	// Accounting: the key's standing at admission and the reservation to
	// settle; whether the answer's usage is read, and its scanner.
	limits       decision
	limited      bool
	ticket       ticket
	meter        bool
	scan         usageScanner
	credentialID string // the personal credential used, if one was
}

// parseTarget splits the request line's target, byte for byte as sent,
// into provider name, path and query.
func (x *exchange) parseTarget() bool {
	target := x.r.RequestURI
	if !strings.HasPrefix(target, "/gateway/") {
		// An absolute-form target (http://host/gateway/...) or none.
		target = x.r.URL.EscapedPath()
		if x.r.URL.RawQuery != "" {
			target += "?" + x.r.URL.RawQuery
		}
	}
	target = strings.TrimPrefix(target, "/gateway/")
	path, query, _ := strings.Cut(target, "?")
	name, _, _ := strings.Cut(path, "/")
	if name == "" {
		return false
	}
	x.name, x.rest = name, path[len(name):]
	x.path = canonicalPath(x.rest)
	x.query, x.queryKey = splitKeyParam(query)
	return true
}

// canonicalPath is a request path as the gateway reads it to tell what
// the request does (its model, whether it is metered, how its answer is
// read), which must be what the provider reads it as: percent-encoded
// unreserved characters (letters, digits and "-._~", which RFC 3986 makes
// equivalent to their encodings) decoded, and runs of slashes made one.
// Other escapes stay (the %2F of an ARN). The path is sent as it came.
func canonicalPath(p string) string {
	if strings.IndexByte(p, '%') < 0 && !strings.Contains(p, "//") {
		return p
	}
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		var d [1]byte
		if c == '%' && i+2 < len(p) {
			if _, err := hex.Decode(d[:], []byte(p[i+1:i+3])); err == nil && unreserved(d[0]) {
				c = d[0]
				i += 2
			}
		} else if c == '/' && len(b) > 0 && b[len(b)-1] == '/' {
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

// unreserved reports whether c is an RFC 3986 unreserved character.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// serve authenticates, routes and forwards.
func (x *exchange) serve() {
	g, r := x.g, x.r
	token, sigv4 := callerToken(r, x.queryKey)
	if sigv4 {
		// The signature covers the body: read it first.
		if !x.readBody() {
			return
		}
	}
	p, err := g.verify(r.Context(), r, token, sigv4, x.body)
	if err != nil {
		x.fail(verifyError(err))
		switch {
		case keybridge.ErrorCode(err) != keybridge.EInternal:
		case store.Unavailable(err):
			g.log.WarnContext(r.Context(), "gateway: verify caller: database unavailable", "request_id", x.id, "err", err)
		default:
			g.log.ErrorContext(r.Context(), "gateway: verify caller", "request_id", x.id, "err", err)
		}
		return
	}
	x.principal = p
	if refused := invokeRefusal(p); refused != nil {
		x.fail(refused)
		return
	}
	rt, err := g.routes.route(r.Context(), p.OrgID, x.name)
	if err != nil {
		if store.Unavailable(err) {
			g.log.WarnContext(r.Context(), "gateway: load route: database unavailable", "request_id", x.id, "err", err)
			x.fail(errDatabaseDown)
			return
		}
		g.log.ErrorContext(r.Context(), "gateway: load route", "request_id", x.id, "err", err)
		x.fail(newError(keybridge.EInternal, "internal error"))
		return
	}
	if rt == nil {
		x.styled = true // an unknown provider answers the §1 shape
		x.fail(providerNotFound(x.name))
		return
	}
	x.rt, x.style, x.styled = rt, rt.provider.Type, true
	if hasDotSegment(x.path) {
		// Sent byte for byte, "/v1/../../admin" would reach whatever a
		// provider that resolves dot segments serves outside the base
		// URL's path, with the provider's own credential.
		x.fail(newError(keybridge.EInvalid, "the request path holds a . or .. segment, which could leave the provider's base URL: send the path without it"))
		return
	}
	// Read before the refusals below, so that their usage rows name the
	// model and say whether a stream was asked for, as every other row.
	if x.body == nil && !x.readBody() {
		return
	}
	if refused := typeRefusal(p, rt); refused != nil {
		x.fail(refused)
		return
	}
	keys, gerr := x.candidates(r.Context(), p, rt)
	if gerr != nil {
		x.fail(gerr)
		return
	}
	if !x.allowModel() {
		return
	}
	if f := x.fields(); wantsUsageInjected(rt.provider.Type, x.path, f) && x.takesStreamOptions() {
		*x.body = append((*x.body)[:0], injectIncludeUsage(*x.body, f)...)
		x.hideUsage = &usageChunkFilter{}
	}
	if !x.admit() {
		return
	}
	x.meter = metered(rt.provider.Type, x.path)
	x.forward(keys)
}

// invokeRefusal is why p may not use the gateway, or nil.
func invokeRefusal(p *keybridge.Principal) *gwError {
	if !p.Permissions.Has(keybridge.PermGatewayInvoke) {
		return newError(keybridge.EForbidden, "this key lacks the gateway:invoke permission")
	}
	return nil
}

// providerNotFound is the answer for a provider name the caller's org
// has no enabled provider by.
func providerNotFound(name string) *gwError {
	return newError(keybridge.ENotFound, fmt.Sprintf("provider %q not found", name))
}

// typeRefusal is why p, an AI key of another type, may not reach rt's
// provider, or nil.
func typeRefusal(p *keybridge.Principal, rt *route) *gwError {
	if p.Type == keybridge.ActorAIKey && !p.AIType.Allows(rt.provider.Type) {
		return newError(keybridge.EForbidden, fmt.Sprintf("an AI key of type %s cannot reach %s providers", p.AIType, rt.provider.Type))
	}
	return nil
}

// fields reads the request body's top-level fields once, for the first
// part of the gateway that needs them.
func (x *exchange) fields() *reqFields {
	if !x.scanned {
		x.scanned = true
		if x.body != nil && isJSONBody(x.r) {
			x.reqFields = scanReqBody(*x.body)
		}
	}
	return &x.reqFields
}

// isJSONBody reports whether a request's body may be JSON: declared so,
// or not declared at all (clients forget).
func isJSONBody(r *http.Request) bool {
	ct := header(r.Header, "Content-Type")
	return ct == "" || hasMediaType(ct, "application/json") || jsonMedia(mediaType(ct))
}

// verify finds the caller: a platform key, an AI key secret, or an AWS AI
// key's SigV4 signature.
func (g *Gateway) verify(ctx context.Context, r *http.Request, token string, sigv4 bool, body *[]byte) (*keybridge.Principal, error) {
	switch {
	case sigv4:
		return g.verifySigV4(ctx, r, body)
	case strings.HasPrefix(token, "kb_"):
		return g.opts.Auth.VerifyAPIKey(ctx, token)
	case strings.HasPrefix(token, "kbs_"):
		return g.opts.Auth.VerifyAISecret(ctx, token)
	case token == "":
		return nil, errNoKey
	}
	return nil, errNotKeybridgeKey
}

// errDatabaseDown answers a request that needs the database while it
// cannot be reached and nothing cached can stand in (docs/scaling.md).
var errDatabaseDown = &gwError{status: http.StatusServiceUnavailable, code: keybridge.EUnavailable,
	msg: "Keybridge cannot reach its database; try again shortly", retryAfter: 1}

var (
	errNoKey = keybridge.Errorf(keybridge.EUnauthenticated,
		"missing credentials: send a Keybridge key (kb_...) or AI key secret (kbs_...) as Authorization: Bearer, x-api-key, api-key, x-goog-api-key or ?key=")
	errNotKeybridgeKey = keybridge.Errorf(keybridge.EUnauthenticated,
		"invalid Keybridge key: the gateway takes a Keybridge key (kb_...) or AI key secret (kbs_...), never a provider's own key")
)

// verifyError turns a verification failure into the gateway's answer:
// the refusal itself, or internal for a store that failed.
func verifyError(err error) *gwError {
	code := keybridge.ErrorCode(err)
	if code == keybridge.EInternal && store.Unavailable(err) {
		return errDatabaseDown
	}
	if code == keybridge.EInternal {
		return newError(keybridge.EInternal, "internal error")
	}
	return newError(code, keybridge.ErrorMessage(err))
}

// candidates are the upstream credentials to try for p on rt, in order,
// per the provider's key_source (SPEC §7.2).
func (x *exchange) candidates(ctx context.Context, p *keybridge.Principal, rt *route) ([]*upstreamKey, *gwError) {
	if rt.provider.Type == keybridge.ProviderBedrock {
		if rt.settings.AccessKey.IsZero() || rt.settings.AccessKeySecret.IsZero() {
			return nil, newError(keybridge.EUnavailable, fmt.Sprintf("provider %q has no AWS access key in its settings", rt.provider.Name))
		}
		return bedrockKeys, nil
	}
	personal := func() (*upstreamKey, *gwError) {
		if p.Type == keybridge.ActorAIKey || p.UserID == "" {
			return nil, nil
		}
		sec, err := x.g.routes.credential(ctx, p.UserID, rt.provider.ID)
		if err != nil {
			x.g.log.ErrorContext(ctx, "gateway: load personal credential", "request_id", x.id, "err", err)
			return nil, newError(keybridge.EInternal, "internal error")
		}
		return sec, nil
	}
	switch rt.provider.KeySource {
	case keybridge.KeySourceUser:
		if p.Type == keybridge.ActorAIKey {
			return nil, newError(keybridge.EForbidden, fmt.Sprintf("provider %q uses each user's personal key; an AI key acts for its project and has none", rt.provider.Name))
		}
		k, gerr := personal()
		if gerr != nil {
			return nil, gerr
		}
		if k == nil {
			return nil, newError(keybridge.EForbidden, fmt.Sprintf(
				"provider %q uses your personal key and you have none: add it with POST /api/v1/users/me/credentials {\"org\": ..., \"provider\": %q, \"api_key\": ...}",
				rt.provider.Name, rt.provider.Name))
		}
		return []*upstreamKey{k}, nil
	case keybridge.KeySourceUserOrOrg:
		k, gerr := personal()
		if gerr != nil {
			return nil, gerr
		}
		if k != nil {
			return []*upstreamKey{k}, nil
		}
	}
	if len(rt.keys) == 0 {
		return nil, newError(keybridge.EUnavailable, fmt.Sprintf("provider %q has no enabled upstream keys", rt.provider.Name))
	}
	return rt.keys, nil
}

// bedrockKeys stands for a Bedrock provider's one credential, its
// settings' access key.
var bedrockKeys = []*upstreamKey{{}}

// readBody reads the request body once into a bounded buffer, so that it
// can be replayed on failover (SPEC §7.4). It answers 413 itself.
func (x *exchange) readBody() bool {
	max := x.g.opts.MaxBody
	r := x.r
	tooLarge := func() bool {
		x.fail(newError(keybridge.ETooLarge, fmt.Sprintf("the request body is over the gateway's limit of %d bytes", max)))
		return false
	}
	if r.ContentLength > max {
		return tooLarge()
	}
	bp := x.g.getBody()
	b := (*bp)[:0]
	if r.ContentLength > 0 && int64(cap(b)) < r.ContentLength+1 {
		b = make([]byte, 0, r.ContentLength+1)
	}
	lr := io.LimitedReader{R: r.Body, N: max + 1}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow
		}
		n, err := lr.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			*bp = b
			x.g.putBody(bp)
			x.clientGone = r.Context().Err() != nil
			x.fail(newError(keybridge.EInvalid, "could not read the request body"))
			return false
		}
	}
	*bp = b
	if int64(len(b)) > max {
		x.g.putBody(bp)
		return tooLarge()
	}
	x.body = bp
	return true
}

func (g *Gateway) getBody() *[]byte {
	if bp, ok := g.bodies.Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, 0, 4096)
	return &b
}

// maxPooledBody keeps huge bodies out of the pool.
const maxPooledBody = 1 << 20

func (g *Gateway) putBody(bp *[]byte) {
	if cap(*bp) <= maxPooledBody {
		*bp = (*bp)[:0]
		g.bodies.Put(bp)
	}
}

// fail answers e unless the client is gone or the answer has begun.
func (x *exchange) fail(e *gwError) {
	x.status, x.errCode = e.status, e.code
	// A refused stream request is recorded as one: whether a request is
	// a stream is what it asked for.
	x.stream = x.stream || x.body != nil && x.streamingRequest()
	if x.clientGone || x.r.Context().Err() != nil {
		x.clientGone = true
		return
	}
	if !x.styled {
		x.style, x.styled = guessStyle(x.r, x.path, x.queryKey), true
	}
	x.headersAt = time.Now()
	x.setTiming()
	x.setLimitHeaders(x.w.Header())
	writeError(x.w, x.style, e)
}

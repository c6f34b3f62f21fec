package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// The gateway speaks HTTP/1.1 to providers over connections of its own
// rather than through http.Transport. A Transport hands every request to
// a connection's write loop and every response back from its read loop:
// two goroutine hand-offs per request, which on the measured machine cost
// more than all of the gateway's own work (PERF.md: +169 µs against +88 µs
// for a bare TCP relay). Here the request's own goroutine writes the
// request and reads the response on a pooled connection, so a proxied
// request costs the relay's wake-ups and little else. Parsing is the
// standard library's (http.ReadResponse); only the pooling is ours.

// conn is one upstream connection with its buffers.
type conn struct {
	nc net.Conn
	// br reads nc through head, which bounds a response head.
	head headLimit
	br   *bufio.Reader
	bw   *bufio.Writer
	key  poolKey
	// idleSince is when the connection went back to the pool.
	idleSince time.Time
	// stop or front undoes the request's watch for its client going
	// away (watchClient); both nil while the connection is idle.
	stop  func() bool
	front *frontCtx
	// readBy is nc's read deadline as last set by the request using the
	// connection (setReadBy); a poisoned deadline (watchClient) is not
	// recorded: a poisoned connection is never used again.
	readBy time.Time
}

// setReadBy sets nc's read deadline to t and records it.
func (cn *conn) setReadBy(t time.Time) {
	cn.readBy = t
	cn.nc.SetReadDeadline(t)
}

// poolKey says which connections can serve a request: same scheme and
// address. TLS connections are made for the host name of the address.
type poolKey struct {
	tls  bool
	addr string // host:port
	host string // host name, for TLS
}

// client pools upstream connections.
type client struct {
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	tlsConfig *tls.Config
	maxIdle   int
	idleTTL   time.Duration

	mu   sync.Mutex
	idle map[poolKey][]*conn
}

const (
	// defaultMaxIdle is how many idle connections are kept per upstream
	// address: enough for a few hundred concurrent callers to reuse theirs.
	defaultMaxIdle = 256
	// idleTTL is how long an idle connection is kept. Providers close
	// idle keep-alive connections after about a minute; reusing one they
	// are closing costs a retry, so ours go first.
	idleTTL = 50 * time.Second
	// bufSize is the size of each connection's read and write buffers.
	bufSize = 16 << 10
)

func newClient(dial func(ctx context.Context, network, addr string) (net.Conn, error), tlsConfig *tls.Config) *client {
	return &client{dial: dial, tlsConfig: tlsConfig, maxIdle: defaultMaxIdle, idleTTL: idleTTL, idle: map[poolKey][]*conn{}}
}

// get returns an idle connection for key, or dials a new one; now is
// the time, for the idle ones' age. reused tells which: a reused
// connection may have been closed by the provider meanwhile, and a
// request that fails on it before any answer, and at once (send,
// idleCloseWindow), is sent again once on a fresh one.
func (c *client) get(ctx context.Context, key poolKey, now time.Time) (cn *conn, reused bool, err error) {
	c.mu.Lock()
	for list := c.idle[key]; len(list) > 0; list = c.idle[key] {
		cn = list[len(list)-1]
		list[len(list)-1] = nil
		c.idle[key] = list[:len(list)-1]
		if now.Sub(cn.idleSince) < c.idleTTL {
			c.mu.Unlock()
			return cn, true, nil
		}
		cn.nc.Close()
	}
	c.mu.Unlock()
	cn, err = c.connect(ctx, key)
	if err != nil {
		return nil, false, &dialError{err}
	}
	return cn, false, nil
}

// dialError is a failure to connect (dial or TLS handshake): a
// connection error to fail over from, even when it is a timeout.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// connect dials key's address (through the egress guard) and, for TLS,
// completes the handshake offering only HTTP/1.1.
func (c *client) connect(ctx context.Context, key poolKey) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	nc, err := c.dial(dctx, "tcp", key.addr)
	if err != nil {
		return nil, err
	}
	if key.tls {
		cfg := c.tlsConfig.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = key.host
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	cn := &conn{nc: nc, head: headLimit{r: nc}, bw: bufio.NewWriterSize(nc, bufSize), key: key}
	cn.br = bufio.NewReaderSize(&cn.head, bufSize)
	return cn, nil
}

// maxResponseHead bounds what is read of a provider's response head
// (interim answers included), as net/http bounds a request's: a provider
// that sends headers without end, or bytes that never make a line, must
// not grow the gateway's memory until the header timeout.
const maxResponseHead = 1 << 20

var errHeadTooLarge = errors.New("the response head is over 1 MiB")

// headLimit is a connection's reader: while on, it reads at most n bytes
// more, then fails with errHeadTooLarge. It bounds the response heads
// read from providers and the request heads Front reads from clients.
type headLimit struct {
	r  io.Reader
	on bool
	n  int
	// ahead is a byte readAhead took, the next one Read returns.
	ahead    [1]byte
	hasAhead bool
}

func (h *headLimit) Read(p []byte) (int, error) {
	if h.on && h.n <= 0 {
		return 0, errHeadTooLarge
	}
	if h.hasAhead && len(p) > 0 {
		h.hasAhead = false
		p[0] = h.ahead[0]
		if h.on {
			h.n--
		}
		return 1, nil
	}
	if !h.on {
		return h.r.Read(p)
	}
	if len(p) > h.n {
		p = p[:h.n]
	}
	n, err := h.r.Read(p)
	h.n -= n
	return n, err
}

// readAhead waits for one byte more from the connection, past what the
// reader above has buffered, and keeps it for the next Read. A byte kept
// already (an earlier request's watch took it, and the buffer has served
// requests since without reading on) is the one the client sent next:
// it stays, and nothing more is read.
func (h *headLimit) readAhead() error {
	if h.hasAhead {
		return nil
	}
	n, err := h.r.Read(h.ahead[:])
	h.hasAhead = n == 1
	return err
}

// limit starts bounding the read of a head to n bytes more; unlimit ends
// it.
func (h *headLimit) limit(n int) { h.on, h.n = true, n }
func (h *headLimit) unlimit()    { h.on = false }

// over reports whether the bound is on and all read: a read that failed
// now wanted more of the head than the bound lets through.
func (h *headLimit) over() bool { return h.on && h.n <= 0 }

// put returns a connection whose last response was read to its end. It
// keeps its read deadline, minutes ahead or a second for a discarded
// answer: nothing reads an idle connection, and send sets the next
// request's before it reads. Its write deadline is only ever set to
// poison it, and a poisoned connection is closed, never put back. now
// is when the connection was last read, where its idle time starts.
func (c *client) put(cn *conn, now time.Time) {
	cn.idleSince = now
	c.mu.Lock()
	if list := c.idle[cn.key]; len(list) < c.maxIdle {
		c.idle[cn.key] = append(list, cn)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	cn.nc.Close()
}

// closeIdle closes every idle connection.
func (c *client) closeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, list := range c.idle {
		for _, cn := range list {
			cn.nc.Close()
		}
		delete(c.idle, k)
	}
}

// readResponse reads the response head for a request of method, skipping
// interim 1xx answers (but not 101, which ends HTTP on the connection).
func readResponse(br *bufio.Reader, method string) (*http.Response, error) {
	req := methodRequests[method]
	if req == nil {
		req = &http.Request{Method: method}
	}
	for {
		if resp := readPlainResponse(br, req); resp != nil {
			return resp, nil
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if resp.StatusCode < 100 {
			return nil, errors.New("invalid status code")
		}
	}
}

// methodRequests are the requests readResponse hands http.ReadResponse,
// which reads only their method (a HEAD answer has no body), so that the
// common methods need no allocation.
var methodRequests = func() map[string]*http.Request {
	m := map[string]*http.Request{}
	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"} {
		m[method] = &http.Request{Method: method}
	}
	return m
}()

package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Front is the server's one listener, split between the gateway's own
// HTTP/1.1 server and net/http.
//
// net/http's server costs, per request, a goroutine that watches the
// connection for the client going away and that the handler must wait for
// at the end, a cancelable context and more: on the measured machine more
// than the gateway's whole own work. Front reads the first request line of
// each connection: connections whose request is for /gateway/ are served
// here, on the connection's own goroutine, watching for the client going
// away only once a request has taken longer than watchDelay; every other
// connection (the management API, the web UI, HTTP/2 with prior
// knowledge) is handed to net/http through Listener, bytes read so far
// included. A gateway connection whose next request is not for the
// gateway is handed over at that point.
type Front struct {
	g  *Gateway
	ln net.Listener

	handoff chan net.Conn
	closed  chan struct{}
	once    sync.Once

	mu       sync.Mutex
	conns    map[*frontConn]struct{}
	shutting atomic.Bool
	wg       sync.WaitGroup
}

// Timeouts of Front's connections, as serve sets them for net/http.
const (
	frontHeaderTimeout = 10 * time.Second
	frontIdleTimeout   = 2 * time.Minute
	// watchDelay is how long a request runs before Front starts watching
	// its connection for the client going away. Quick requests never pay
	// for the watch; a client that leaves a slow one is noticed within
	// this delay.
	watchDelay = time.Millisecond
	// maxLeftover is how much of a request body the handler left unread
	// is drained to keep the connection; past it the connection closes.
	maxLeftover = 256 << 10
	// maxRequestHead bounds a gateway request's head (request line and
	// header lines, up to and including the blank line that ends them;
	// never the body) as net/http's server bounds the rest: its default
	// MaxHeaderBytes and the 4 KiB it allows over it for its read buffer.
	// net/http accepts every head up to 1 MiB, and some up to this; Front
	// accepts every head up to this, counted exactly. A longer one is
	// answered 431 and the connection closes.
	maxRequestHead = http.DefaultMaxHeaderBytes + 4096
	// rstAvoidanceDelay is how long a connection closing with a request
	// unread (a 431) waits after its answer and a FIN, as net/http's
	// does, for the client to read the answer before the close's RST,
	// which may make it drop the answer.
	rstAvoidanceDelay = 500 * time.Millisecond
)

// Front returns a Front over ln serving the gateway's connections. Serve
// starts it; Listener is where net/http takes the rest.
func (g *Gateway) Front(ln net.Listener) *Front {
	return &Front{g: g, ln: ln, handoff: make(chan net.Conn), closed: make(chan struct{}), conns: map[*frontConn]struct{}{}}
}

// Listener returns the listener of the connections that are not the
// gateway's, for http.Server.Serve.
func (f *Front) Listener() net.Listener { return frontListener{f} }

type frontListener struct{ f *Front }

func (l frontListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.f.handoff:
		return c, nil
	case <-l.f.closed:
		return nil, net.ErrClosed
	}
}

func (l frontListener) Close() error   { l.f.close(); return nil }
func (l frontListener) Addr() net.Addr { return l.f.ln.Addr() }

func (f *Front) close() {
	f.once.Do(func() {
		close(f.closed)
		f.ln.Close()
	})
}

// Serve accepts connections until the listener is closed.
func (f *Front) Serve() error {
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			select {
			case <-f.closed:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or the like: wait, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		fc := &frontConn{f: f, nc: c, head: headLimit{r: c}}
		fc.br = bufio.NewReaderSize(&fc.head, 4096)
		f.wg.Add(1)
		go fc.serve()
	}
}

// Shutdown stops accepting, ends idle gateway connections, and waits for
// those serving a request to finish it, until ctx ends; then it closes
// what remains.
func (f *Front) Shutdown(ctx context.Context) error {
	f.shutting.Store(true)
	f.close()
	f.mu.Lock()
	for c := range f.conns {
		if c.idle.Load() {
			c.nc.SetReadDeadline(aLongTimeAgo)
		}
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		f.mu.Lock()
		for c := range f.conns {
			c.nc.Close()
		}
		f.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// frontConn is one connection Front serves, on the goroutine Serve
// started for it.
type frontConn struct {
	f  *Front
	nc net.Conn
	// head is what br reads nc through: it bounds the read of each
	// request's head.
	head   headLimit
	br     *bufio.Reader
	bw     *bufio.Writer
	idle   atomic.Bool
	w      frontWriter
	watch  watch
	body   eofBody
	remote string
	// deadline is nc's read deadline as last set (zero: none), by the
	// goroutine serving the connection, or by its watch under watch.mu
	// while the request runs.
	// Pokes that end the connection (Shutdown's, a closing request's)
	// are not recorded.
	deadline time.Time
}

// deadlineSlack is how much later than asked Front's connections may
// time out waiting for a request: the deadline moves at most once per
// slack, not for every request (moving a runtime timer costs).
const deadlineSlack = time.Second

// readDeadline makes nc's read deadline between wait and wait plus
// deadlineSlack from now.
func (c *frontConn) readDeadline(wait time.Duration) {
	now := time.Now()
	if d := c.deadline.Sub(now); d >= wait && d <= wait+deadlineSlack {
		return
	}
	c.deadline = now.Add(wait + deadlineSlack)
	c.nc.SetReadDeadline(c.deadline)
}

// clearDeadline removes nc's read deadline.
func (c *frontConn) clearDeadline() {
	if !c.deadline.IsZero() {
		c.deadline = time.Time{}
		c.nc.SetReadDeadline(time.Time{})
	}
}

// gatewayPrefix is what a request line's target starts with for the gateway.
var gatewayPrefix = []byte(" /gateway/")

// isGatewayRequest peeks at the next request line (without consuming it)
// and reports whether it is for the gateway.
func (c *frontConn) isGatewayRequest() (bool, error) {
	for want := 1; ; want = c.br.Buffered() + 1 {
		if _, err := c.br.Peek(want); err != nil {
			return false, err
		}
		b, _ := c.br.Peek(c.br.Buffered())
		if sp := bytes.IndexByte(b, ' '); sp >= 0 && len(b) >= sp+len(gatewayPrefix) {
			return bytes.HasPrefix(b[sp:], gatewayPrefix), nil
		}
		if bytes.IndexByte(b, '\n') >= 0 || len(b) >= 1024 {
			return false, nil
		}
	}
}

// headBuffered reports whether the buffer holds a whole request head, so
// that reading it waits for nothing.
func (c *frontConn) headBuffered() bool {
	b, _ := c.br.Peek(c.br.Buffered())
	return bytes.Contains(b, []byte("\r\n\r\n"))
}

func (c *frontConn) serve() {
	f := c.f
	c.idle.Store(true)
	f.mu.Lock()
	f.conns[c] = struct{}{}
	f.mu.Unlock()
	if ra := c.nc.RemoteAddr(); ra != nil {
		c.remote = ra.String()
	}
	// A new connection gets the header timeout for its first request, as
	// net/http gives it: a client that connects and sends nothing holds
	// the connection no longer than one that sends headers slowly. Idle
	// time between requests is the idle timeout.
	c.run(frontHeaderTimeout)
}

// run serves the connection's requests, the next one waited for up to
// wait, until the connection ends.
func (c *frontConn) run(wait time.Duration) {
	f := c.f
	for {
		// Checked after the deadline is set too: Shutdown's poke of an
		// idle connection may have come just before it and been undone.
		if f.shutting.Load() {
			c.end(false)
			return
		}
		c.readDeadline(wait)
		wait = frontIdleTimeout
		if f.shutting.Load() {
			c.end(false)
			return
		}
		gw, err := c.isGatewayRequest()
		if err != nil {
			c.end(false)
			return
		}
		if !gw {
			// Not ours: net/http serves the connection from here on,
			// bytes already read included.
			c.clearDeadline()
			select {
			case f.handoff <- &peekedConn{Conn: c.nc, br: c.br, rest: &c.head}:
				c.end(true)
			case <-f.closed:
				c.end(false)
			}
			return
		}
		c.idle.Store(false)
		if c.serveOne() == connClose {
			c.end(false)
			return
		}
		c.idle.Store(true)
	}
}

// end forgets a connection and closes it, unless net/http has it.
func (c *frontConn) end(handed bool) {
	f := c.f
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	if !handed {
		c.nc.Close()
	}
	f.wg.Done()
}

// What serveOne leaves the connection to.
const (
	connKeep  = iota // the next request
	connClose        // closing
)

// serveOne reads and answers one gateway request; it says what becomes
// of the connection.
func (c *frontConn) serveOne() int {
	if !c.headBuffered() {
		c.deadline = time.Now().Add(frontHeaderTimeout)
		c.nc.SetReadDeadline(c.deadline)
	}
	// The head starts at what br holds already (the request line peeked
	// at, or what the last request's reads took of this one): what may
	// still come off the connection for it is the rest of the bound.
	c.head.limit(maxRequestHead - c.br.Buffered())
	req, err := readRequest(c.br)
	if err != nil {
		if c.head.over() {
			// As net/http answers it; the client may still be sending.
			io.WriteString(c.nc, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large")
			c.closeWriteAndWait()
		} else if !quietReadError(err) {
			io.WriteString(c.nc, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
		}
		return connClose
	}
	c.head.unlimit()
	// The deadline is for the request's head. Reading its body has none,
	// as before; when the body is all buffered already nothing waits on
	// the deadline until the next request, and it stays.
	if !(req.ContentLength == 0 || req.ContentLength > 0 && len(req.TransferEncoding) == 0 && int64(c.br.Buffered()) >= req.ContentLength) {
		c.clearDeadline()
	}
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(c.nc, 16<<10)
	}
	req.RemoteAddr = c.remote
	ctx := &frontCtx{}
	req = req.WithContext(ctx)
	if header(req.Header, "Expect") == "100-continue" && req.ContentLength != 0 {
		c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		c.bw.Flush()
	}

	w := &c.w
	watch := &c.watch
	watch.begin(c, ctx)
	w.reset(c, req, watch)
	if req.Body != http.NoBody {
		c.body = eofBody{ReadCloser: req.Body, w: watch}
		req.Body = &c.body
	} else {
		watch.arm()
	}
	aborted := c.handle(w, req)
	if w.hijacked {
		watch.stop()
		return connClose
	}
	keep := !aborted && w.finish() && !req.Close && !w.closeAfter && !c.f.shutting.Load()
	if keep && req.Body != http.NoBody && !c.body.done {
		// The handler reads the whole body; make sure, within reason.
		// (Read to its end, the body never made the watch read it.)
		if n, _ := io.CopyN(io.Discard, req.Body, maxLeftover+1); n > maxLeftover {
			keep = false
		}
	}
	ctx.cancel() // the request is over: whatever it started ends
	return watch.end(keep)
}

// quietReadError reports whether a request head that could not be read
// ends its connection without an answer, as net/http's server ends it:
// the client closed or broke the connection, or took longer than the
// header timeout to send the head. Anything else is a bad request.
func quietReadError(err error) bool {
	var oe *net.OpError
	return errors.Is(err, io.EOF) || isTimeout(err) || errors.As(err, &oe) && oe.Op == "read"
}

// closeWriteAndWait ends the connection's writing side after a last
// answer to a request left unread, and waits rstAvoidanceDelay (or until
// Front closes) before the connection closes: closed with bytes unread,
// it resets, and a client still sending may lose the answer to the reset.
func (c *frontConn) closeWriteAndWait() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	t := time.NewTimer(rstAvoidanceDelay)
	select {
	case <-t.C:
	case <-c.f.closed:
		t.Stop()
	}
}

// handle runs the gateway on one request and reports whether it aborted
// the answer (http.ErrAbortHandler), which ends the connection.
func (c *frontConn) handle(w *frontWriter, req *http.Request) (aborted bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				// ServeHTTP logs its own panics and aborts; this is
				// one outside it.
				c.f.g.logPanic(v)
			}
			aborted = true
		}
	}()
	c.f.g.ServeHTTP(w, req)
	return false
}

// eofBody arms the watch once its body has been read to the end: from
// then on the connection can be watched without taking the body's bytes.
type eofBody struct {
	io.ReadCloser
	w    *watch
	done bool
}

func (b *eofBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.w.arm()
	}
	return n, err
}

// watch notices a client going away while its request is served: once
// the request has taken watchDelay, a goroutine reads the idle connection
// (a Peek: what it reads stays buffered). The read returns when the
// client closes the connection (and the request's context is canceled)
// or sends its next request early.
//
// A request that ends while the read waits does not wake it (a deadline
// poke, a wake-up and a second read per request): the read goes on
// waiting, for the next request now, and the request's goroutine waits
// for what it returns, then serves on, its stack grown already. Only a
// closing connection or a hijack wakes the read.
//
// Each connection has one, reused for its requests.
type watch struct {
	c     *frontConn
	ctx   *frontCtx
	timer *time.Timer
	ended chan struct{} // a read that outlived its request returned

	mu    sync.Mutex
	state int   // watchIdle ... watchHijack
	err   error // what the read returned, once watchSaw
	// ahead: the read is past a next request the client sent already,
	// which must not wait for the one after it (run).
	ahead bool
}

const (
	watchIdle    = iota // not armed
	watchArmed          // the timer runs
	watchRunning        // the watch's goroutine reads
	watchSaw            // the read returned during the request: see err
	watchDone           // the request ended first
	watchHijack         // the request's handler takes the connection
)

// begin readies the watch for a request.
func (w *watch) begin(c *frontConn, ctx *frontCtx) {
	w.mu.Lock()
	w.c, w.ctx, w.err = c, ctx, nil
	w.state = watchIdle
	if w.timer == nil {
		w.ended = make(chan struct{}, 1)
		w.timer = time.AfterFunc(time.Hour, w.run)
		w.timer.Stop()
	}
	w.mu.Unlock()
}

// arm starts the delay; it runs once the request body is read.
func (w *watch) arm() {
	w.mu.Lock()
	if w.state == watchIdle {
		w.state = watchArmed
		w.timer.Reset(watchDelay)
	}
	w.mu.Unlock()
}

func (w *watch) run() {
	w.mu.Lock()
	if w.state != watchArmed {
		w.mu.Unlock()
		return // stopped before it ran
	}
	w.state = watchRunning
	c, ctx := w.c, w.ctx
	// A client that sent its next request already (pipelining) is
	// watched past it: the read takes the byte after what br holds.
	w.ahead = c.br.Buffered() > 0
	w.mu.Unlock()
	for {
		var err error
		if w.ahead {
			err = c.head.readAhead()
		} else {
			_, err = c.br.Peek(1)
		}
		w.mu.Lock()
		if w.state != watchRunning {
			// The request ended, or is hijacking the connection.
			w.mu.Unlock()
			w.ended <- struct{}{}
			return
		}
		if err != nil && isTimeout(err) {
			// The idle deadline of the wait before the request passed
			// during it (or a Shutdown poke came just before it began;
			// it ends at its end): read on.
			c.deadline = time.Time{}
			c.nc.SetReadDeadline(time.Time{})
			w.mu.Unlock()
			continue
		}
		w.state, w.err = watchSaw, err
		w.mu.Unlock()
		if err != nil {
			ctx.cancel() // the client closed or broke the connection
		}
		return
	}
}

// end meets the watch at the end of a request whose answer is complete;
// keep says whether the connection may carry another.
func (w *watch) end(keep bool) int {
	c := w.c
	w.mu.Lock()
	switch w.state {
	case watchArmed:
		// Should the timer's run have started, it finds the state moved
		// on and returns.
		w.timer.Stop()
	case watchRunning:
		w.state = watchDone
		if keep && w.ahead {
			// The next request is here: the read is woken, not waited
			// for, and the deadline set anew for the next request.
			c.nc.SetReadDeadline(aLongTimeAgo)
			c.deadline = aLongTimeAgo
		} else if keep {
			// The read waits for the next request.
			c.readDeadline(frontIdleTimeout)
			c.idle.Store(true)
			if c.f.shutting.Load() {
				// Shutdown's poke may have come before the deadline
				// undid it.
				c.nc.SetReadDeadline(aLongTimeAgo)
			}
		} else {
			c.nc.SetReadDeadline(aLongTimeAgo)
		}
		w.mu.Unlock()
		<-w.ended
		w.mu.Lock()
		w.state = watchIdle
		w.mu.Unlock()
		if !keep {
			return connClose
		}
		// What the read returned is buffered, or its error (the
		// deadline, the client's close) comes again to the next.
		return connKeep
	case watchSaw:
		if w.err != nil {
			w.mu.Unlock()
			return connClose // the client is gone
		}
	}
	w.state = watchIdle
	w.mu.Unlock()
	if !keep {
		return connClose
	}
	return connKeep
}

// stop takes the connection back from the watch, for a hijack, waiting
// for a read that started.
func (w *watch) stop() {
	w.mu.Lock()
	switch w.state {
	case watchArmed:
		w.timer.Stop()
	case watchRunning:
		w.state = watchHijack
		w.mu.Unlock()
		w.c.nc.SetReadDeadline(aLongTimeAgo)
		<-w.ended
		w.c.deadline = aLongTimeAgo // for Hijack to clear
		w.mu.Lock()
	}
	w.state = watchHijack
	w.mu.Unlock()
}

// frontCtx is the context of a request Front serves, canceled when the
// client goes away and when the request ends. It costs less than
// context.WithCancel and context.AfterFunc: its Done channel is made only
// when asked for, and the upstream connection of the request registers
// with it without a closure or a map (watchUpstream).
type frontCtx struct {
	mu       sync.Mutex
	canceled atomic.Bool
	done     chan struct{}
	up       *conn
	afters   []*ctxAfter
}

type ctxAfter struct{ f func() }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *frontCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *frontCtx) Value(any) any               { return nil }

func (c *frontCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.canceled.Load() {
			c.done = closedChan
		} else {
			c.done = make(chan struct{})
		}
	}
	return c.done
}

func (c *frontCtx) Err() error {
	if c.canceled.Load() {
		return context.Canceled
	}
	return nil
}

// AfterFunc is context.AfterFunc's, which uses it (and so does a
// context derived from this one) rather than a goroutine waiting on Done.
func (c *frontCtx) AfterFunc(f func()) (stop func() bool) {
	a := &ctxAfter{f: f}
	c.mu.Lock()
	if c.canceled.Load() {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.afters = append(c.afters, a)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, b := range c.afters {
			if b == a {
				c.afters = append(c.afters[:i], c.afters[i+1:]...)
				return true
			}
		}
		return false
	}
}

func (c *frontCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.canceled.Load() {
		return
	}
	c.canceled.Store(true)
	if c.done != nil {
		close(c.done)
	}
	if c.up != nil {
		c.up.nc.SetDeadline(aLongTimeAgo)
	}
	for _, a := range c.afters {
		go a.f()
	}
	c.afters = nil
}

// watchUpstream has cancel poison cn's deadline, which wakes whatever
// waits on the provider; unwatchUpstream undoes it, and reports false if
// the poison came (or the request was over before it was asked).
func (c *frontCtx) watchUpstream(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.canceled.Load() {
		cn.nc.SetDeadline(aLongTimeAgo)
	}
	c.up = cn
}

func (c *frontCtx) unwatchUpstream(cn *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.up == cn {
		c.up = nil
	}
	return !c.canceled.Load()
}

// peekedConn is a connection handed to net/http with the bytes Front
// already buffered: those in br, then a byte the watch may have read
// ahead of them (rest, br's own reader, returns it first).
type peekedConn struct {
	net.Conn
	br   *bufio.Reader
	rest io.Reader
}

// CloseWrite shuts the writing side of the connection (for a TCP
// connection), so that whoever holds it can close it gracefully.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("gateway: the connection cannot close its writing side alone")
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.rest.Read(p)
}

// frontWriter is the http.ResponseWriter of Front's requests: status line
// and headers written straight into the connection's buffer, bodies with
// their Content-Length or chunked, Flush, and Hijack for WebSockets.
type frontWriter struct {
	c           *frontConn
	req         *http.Request
	watch       *watch
	header      http.Header
	wroteHeader bool
	chunked     bool
	bodyless    bool
	length      int64 // declared Content-Length, or -1
	written     int64
	hijacked    bool
	closeAfter  bool
	failed      bool
	// declared is the Content-Length setLength gave (-1: none; the
	// header's, if any, counts then).
	declared int64
	// vals back the one-value headers setHeader sets.
	vals  [3]string
	nvals int
}

// setHeader sets a header of w's answer to one value; on Front's writer
// without allocating its []string.
func setHeader(w http.ResponseWriter, name, value string) {
	if fw, ok := w.(*frontWriter); ok && fw.nvals < len(fw.vals) {
		i := fw.nvals
		fw.nvals++
		fw.vals[i] = value
		fw.header[name] = fw.vals[i : i+1 : i+1]
		return
	}
	w.Header()[name] = []string{value}
}

// setLength declares the length of w's answer (Content-Length); on
// Front's writer without formatting a string for the header map.
func setLength(w http.ResponseWriter, n int64) {
	if fw, ok := w.(*frontWriter); ok {
		delete(fw.header, "Content-Length")
		fw.declared = n
		return
	}
	w.Header()["Content-Length"] = []string{strconv.FormatInt(n, 10)}
}

func (w *frontWriter) reset(c *frontConn, req *http.Request, wt *watch) {
	h := w.header
	if h == nil {
		h = make(http.Header, 16)
	} else {
		clear(h)
	}
	*w = frontWriter{c: c, req: req, watch: wt, header: h, length: -1, declared: -1}
}

// Header implements http.ResponseWriter.
func (w *frontWriter) Header() http.Header { return w.header }

// WriteHeader implements http.ResponseWriter.
func (w *frontWriter) WriteHeader(code int) {
	if w.wroteHeader || w.hijacked {
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		return // interim answers are not passed on
	}
	w.wroteHeader = true
	bw := w.c.bw
	bw.WriteString("HTTP/1.1 ")
	writeInt(bw, int64(code), 10)
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
	w.bodyless = code == http.StatusNoContent || code == http.StatusNotModified || w.req.Method == http.MethodHead
	if w.declared >= 0 {
		w.length = w.declared
		if _, ok := w.header["Content-Length"]; !ok {
			bw.WriteString("Content-Length: ")
			writeInt(bw, w.declared, 10)
			bw.WriteString("\r\n")
		}
	} else if cl := w.header["Content-Length"]; len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.length = n
		}
	}
	if w.length < 0 && !w.bodyless {
		if w.req.ProtoAtLeast(1, 1) {
			w.chunked = true
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		} else {
			w.closeAfter = true
		}
	}
	if _, ok := w.header["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.WriteString(httpDate())
		bw.WriteString("\r\n")
	}
	for name, vv := range w.header {
		if name == "Transfer-Encoding" || name == "Connection" {
			continue
		}
		for _, v := range vv {
			writeHeader(bw, name, v)
		}
	}
	if w.req.Close || w.closeAfter {
		w.closeAfter = true
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// Write implements http.ResponseWriter.
func (w *frontWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		return 0, errClientGone
	}
	if w.bodyless || len(p) == 0 {
		return len(p), nil
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		return 0, http.ErrContentLength
	}
	bw := w.c.bw
	if w.chunked {
		writeInt(bw, int64(len(p)), 16)
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.failed = true
		return n, errClientGone
	}
	return n, nil
}

var errClientGone = errors.New("client connection is gone")

// Flush implements http.Flusher.
func (w *frontWriter) Flush() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if err := w.c.bw.Flush(); err != nil {
		w.failed = true
	}
}

// Hijack implements http.Hijacker.
func (w *frontWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wroteHeader {
		return nil, nil, errors.New("gateway: hijack after the headers were written")
	}
	w.watch.stop() // the tunnel reads the connection from now on
	w.c.clearDeadline()
	w.hijacked = true
	return w.c.nc, bufio.NewReadWriter(w.c.br, w.c.bw), nil
}

// finish ends the answer: the final chunk, or a check that the declared
// length was written. It reports whether the connection is still sound.
func (w *frontWriter) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.chunked {
		w.c.bw.WriteString("0\r\n\r\n")
	}
	if err := w.c.bw.Flush(); err != nil || w.failed {
		return false
	}
	return w.length < 0 || w.written == w.length || w.bodyless
}

// httpDate is the Date header's value, formatted once a second.
func httpDate() string {
	now := time.Now()
	sec := now.Unix()
	if d := cachedDate.Load(); d != nil && d.sec == sec {
		return d.s
	}
	d := &dateValue{sec: sec, s: now.UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.s
}

type dateValue struct {
	sec int64
	s   string
}

var cachedDate atomic.Pointer[dateValue]

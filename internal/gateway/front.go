package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
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
		fc := &frontConn{f: f, nc: c, br: bufio.NewReaderSize(c, 4096)}
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

// frontConn is one connection Front serves.
type frontConn struct {
	f     *Front
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	idle  atomic.Bool
	w     frontWriter
	watch watch
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

func (c *frontConn) serve() {
	f := c.f
	defer f.wg.Done()
	c.idle.Store(true)
	f.mu.Lock()
	f.conns[c] = struct{}{}
	f.mu.Unlock()
	handed := false
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		if !handed {
			c.nc.Close()
		}
	}()
	// A new connection gets the header timeout for its first request, as
	// net/http gives it: a client that connects and sends nothing holds
	// the connection no longer than one that sends headers slowly. Idle
	// time between requests is the idle timeout.
	wait := frontHeaderTimeout
	for {
		// Checked after the deadline is set too: Shutdown's poke of an
		// idle connection may have come just before it and been undone.
		if f.shutting.Load() {
			return
		}
		c.nc.SetReadDeadline(time.Now().Add(wait))
		wait = frontIdleTimeout
		if f.shutting.Load() {
			return
		}
		gw, err := c.isGatewayRequest()
		if err != nil {
			return
		}
		if !gw {
			// Not ours: net/http serves the connection from here on,
			// bytes already read included.
			c.nc.SetReadDeadline(time.Time{})
			select {
			case f.handoff <- &peekedConn{Conn: c.nc, br: c.br}:
				handed = true
			case <-f.closed:
			}
			return
		}
		c.idle.Store(false)
		if !c.serveOne() {
			return
		}
		c.idle.Store(true)
	}
}

// serveOne reads and answers one gateway request; it reports whether the
// connection may carry another.
func (c *frontConn) serveOne() (keep bool) {
	c.nc.SetReadDeadline(time.Now().Add(frontHeaderTimeout))
	req, err := http.ReadRequest(c.br)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			io.WriteString(c.nc, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
		}
		return false
	}
	c.nc.SetReadDeadline(time.Time{})
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(c.nc, 16<<10)
	}
	req.RemoteAddr = c.nc.RemoteAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req = req.WithContext(ctx)
	if header(req.Header, "Expect") == "100-continue" && req.ContentLength != 0 {
		c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		c.bw.Flush()
	}

	w := &c.w
	watch := &c.watch
	watch.begin(c, cancel)
	w.reset(c, req, watch)
	if req.Body != http.NoBody {
		req.Body = &eofBody{ReadCloser: req.Body, onEOF: watch.arm}
	} else {
		watch.arm()
	}
	aborted := c.handle(w, req)
	watch.stop()
	if w.hijacked {
		return false
	}
	if aborted || !w.finish() {
		return false
	}
	if req.Close || w.closeAfter || c.f.shutting.Load() || watch.sawEOF {
		return false
	}
	// The handler reads the whole body; make sure, within reason.
	if n, _ := io.CopyN(io.Discard, req.Body, maxLeftover+1); n > maxLeftover {
		return false
	}
	return true
}

// handle runs the gateway on one request and reports whether it aborted
// the answer (http.ErrAbortHandler), which ends the connection.
func (c *frontConn) handle(w *frontWriter, req *http.Request) (aborted bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				// ServeHTTP logs its own panics and aborts; this is
				// one outside it. Not its value: it could hold a secret.
				c.f.g.log.Error("gateway: panic serving a request", "panic_type", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))
			}
			aborted = true
		}
	}()
	c.f.g.ServeHTTP(w, req)
	return false
}

// eofBody calls onEOF once its body has been read to the end: from then
// on the connection can be watched without taking the body's bytes.
type eofBody struct {
	io.ReadCloser
	onEOF func()
	done  bool
}

func (b *eofBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.onEOF()
	}
	return n, err
}

// watch notices a client going away while its request is served: once
// the request has taken watchDelay, a read on the idle connection returns
// when the client closes it (and the request's context is canceled) or
// sends its next request early (which stays buffered for later). Each
// connection has one, reused for its requests.
type watch struct {
	c      *frontConn
	cancel context.CancelFunc
	state  atomic.Int32 // watchIdle, watchArmed, watchRunning, watchDone
	timer  *time.Timer
	ended  chan struct{} // a run that started has finished
	sawEOF bool
}

const (
	watchIdle int32 = iota
	watchArmed
	watchRunning
	watchDone
)

// begin readies the watch for a request.
func (w *watch) begin(c *frontConn, cancel context.CancelFunc) {
	w.c, w.cancel, w.sawEOF = c, cancel, false
	w.state.Store(watchIdle)
	if w.timer == nil {
		w.ended = make(chan struct{}, 1)
		w.timer = time.AfterFunc(time.Hour, w.run)
		w.timer.Stop()
	}
}

// arm starts the delay; it runs once the request body is read.
func (w *watch) arm() {
	if w.c.br.Buffered() > 0 {
		return // the client already sent more: it is there
	}
	if w.state.CompareAndSwap(watchIdle, watchArmed) {
		w.timer.Reset(watchDelay)
	}
}

func (w *watch) run() {
	defer func() { w.ended <- struct{}{} }()
	if !w.state.CompareAndSwap(watchArmed, watchRunning) {
		return
	}
	c := w.c
	c.nc.SetReadDeadline(time.Time{})
	if w.state.Load() != watchRunning {
		return // stopped meanwhile: its poke may have come before ours
	}
	_, err := c.br.Peek(1)
	if err != nil && w.state.Load() == watchRunning {
		// The client closed or broke the connection.
		w.sawEOF = true
		w.cancel()
	}
}

// stop ends the watch at the end of a request, waiting for a run that
// started.
func (w *watch) stop() {
	switch w.state.Swap(watchDone) {
	case watchIdle, watchDone:
		return
	case watchArmed:
		if w.timer.Stop() {
			return // it never ran
		}
	}
	w.c.nc.SetReadDeadline(aLongTimeAgo)
	<-w.ended
	if !w.sawEOF {
		// The poked Peek returned its timeout error; bufio keeps none.
		w.c.nc.SetReadDeadline(time.Time{})
	}
}

// peekedConn is a connection handed to net/http with the bytes Front
// already buffered.
type peekedConn struct {
	net.Conn
	br *bufio.Reader
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
	return c.Conn.Read(p)
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
}

func (w *frontWriter) reset(c *frontConn, req *http.Request, wt *watch) {
	h := w.header
	if h == nil {
		h = make(http.Header, 16)
	} else {
		clear(h)
	}
	*w = frontWriter{c: c, req: req, watch: wt, header: h, length: -1}
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
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
	w.bodyless = code == http.StatusNoContent || code == http.StatusNotModified || w.req.Method == http.MethodHead
	if cl := w.header["Content-Length"]; len(cl) == 1 {
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
		var hex [16]byte
		bw.Write(strconv.AppendInt(hex[:0], int64(len(p)), 16))
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

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load generator speaks HTTP/1.1 over raw TCP keep-alive connections,
// one per worker, with the request bytes built once: a net/http client
// would cost as much per request as the proxies it measures (its
// Transport hands every request between goroutines), and at c=16 it
// would become the bottleneck on two cores.

// target is one thing to measure: an address that speaks HTTP/1.1 and the
// request bytes for each workload.
type target struct {
	name    string
	addr    string // host:port
	reqJSON []byte
	reqSSE  []byte
	reqHold []byte
	pid     int  // the serving process, for CPU and RSS; 0 when unknown
	isKB    bool // read Server-Timing from its answers
	skip    string
}

// buildRequest prebuilds one request's bytes.
func buildRequest(host, path string, headers []string, body string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: */*\r\n", path, host)
	for _, h := range headers {
		fmt.Fprintf(&b, "%s\r\n", h)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.Bytes()
}

// stats is what one worker, or a merge of workers, measured.
type stats struct {
	n, errs  uint64
	lat      hist // request written → last byte of the answer
	ttfb     hist // streams: request written → first byte of the body
	gap      hist // streams: between one event's end and the next's
	stKB     hist // Server-Timing keybridge;dur
	stUp     hist // Server-Timing upstream;dur
	stMissed uint64
	lastErr  error
}

func (s *stats) merge(o *stats) {
	s.n += o.n
	s.errs += o.errs
	s.lat.merge(&o.lat)
	s.ttfb.merge(&o.ttfb)
	s.gap.merge(&o.gap)
	s.stKB.merge(&o.stKB)
	s.stUp.merge(&o.stUp)
	s.stMissed += o.stMissed
	if o.lastErr != nil {
		s.lastErr = o.lastErr
	}
}

// answer is what the client read of one response.
type answer struct {
	status    int
	bodyLen   int
	events    int
	done      bool // the body ended with "data: [DONE]\n\n"
	firstByte time.Time
	closeConn bool
	stKB      float64 // ms; -1 when absent
	stUp      float64
}

// client is one keep-alive connection.
type client struct {
	conn net.Conn
	br   *bufio.Reader
	tail []byte
}

func dial(addr string) (*client, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &client{conn: c, br: bufio.NewReaderSize(c, 32<<10), tail: make([]byte, 0, 64)}, nil
}

func (c *client) close() { c.conn.Close() }

var errProto = errors.New("malformed response")

// do sends req and reads the whole answer. With gaps non-nil it times the
// gaps between SSE events into it.
func (c *client) do(req []byte, sse bool, gaps *hist, a *answer) error {
	*a = answer{stKB: -1, stUp: -1}
	if _, err := c.conn.Write(req); err != nil {
		return err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return fmt.Errorf("%w: status line %q", errProto, line)
	}
	a.status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if line[7] == '0' {
		a.closeConn = true
	}
	contentLength, chunked := -1, false
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			return fmt.Errorf("%w: header %q", errProto, line)
		}
		name, value := line[:i], bytes.TrimSpace(line[i+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			if contentLength, err = strconv.Atoi(string(value)); err != nil {
				return fmt.Errorf("%w: content-length %q", errProto, value)
			}
		case asciiEqualFold(name, "transfer-encoding"):
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case asciiEqualFold(name, "connection"):
			if bytes.EqualFold(value, []byte("close")) {
				a.closeConn = true
			}
		case asciiEqualFold(name, "server-timing"):
			a.stKB, a.stUp = parseServerTiming(value)
		}
	}
	var ev eventScanner
	ev.on = sse
	ev.gaps = gaps
	c.tail = c.tail[:0]
	switch {
	case chunked:
		for {
			line, err = c.br.ReadSlice('\n')
			if err != nil {
				return err
			}
			size, err := parseChunkSize(line)
			if err != nil {
				return err
			}
			if size == 0 {
				for { // trailers
					line, err = c.br.ReadSlice('\n')
					if err != nil {
						return err
					}
					if len(line) <= 2 {
						break
					}
				}
				break
			}
			if err := c.body(size, &ev, a); err != nil {
				return err
			}
			if _, err := c.br.Discard(2); err != nil {
				return err
			}
		}
	case contentLength >= 0:
		if err := c.body(contentLength, &ev, a); err != nil {
			return err
		}
	default: // until EOF
		a.closeConn = true
		if err := c.body(1<<40, &ev, a); err != nil && err != io.EOF {
			return err
		}
	}
	a.events = ev.events
	a.done = bytes.HasSuffix(c.tail, []byte("data: [DONE]\n\n"))
	return nil
}

// body reads n bytes of body as they arrive, so each event is timed when
// its bytes come in, not when the whole chunk has.
func (c *client) body(n int, ev *eventScanner, a *answer) error {
	for n > 0 {
		if c.br.Buffered() == 0 {
			if _, err := c.br.Peek(1); err != nil {
				return err
			}
		}
		k := min(n, c.br.Buffered())
		b, _ := c.br.Peek(k)
		if a.bodyLen == 0 {
			a.firstByte = time.Now()
		}
		a.bodyLen += k
		if ev.on {
			ev.scan(b)
			c.keepTail(b)
		}
		c.br.Discard(k)
		n -= k
	}
	return nil
}

func (c *client) keepTail(b []byte) {
	const keep = 32
	if len(b) >= keep {
		c.tail = append(c.tail[:0], b[len(b)-keep:]...)
		return
	}
	c.tail = append(c.tail, b...)
	if len(c.tail) > keep {
		c.tail = append(c.tail[:0], c.tail[len(c.tail)-keep:]...)
	}
}

// eventScanner counts SSE events ("\n\n"-terminated) across reads and
// times the gaps between them.
type eventScanner struct {
	on     bool
	nl     bool // the previous byte was '\n'
	events int
	last   time.Time
	gaps   *hist
}

func (e *eventScanner) scan(b []byte) {
	var now time.Time
	for len(b) > 0 {
		if e.nl {
			e.nl = false
			if b[0] == '\n' {
				e.event(&now)
				b = b[1:]
				continue
			}
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return
		}
		b = b[i+1:]
		e.nl = true
	}
}

func (e *eventScanner) event(now *time.Time) {
	if now.IsZero() {
		*now = time.Now()
	}
	if e.events > 0 && e.gaps != nil {
		e.gaps.record(now.Sub(e.last))
	}
	e.last = *now
	e.events++
}

func parseChunkSize(line []byte) (int, error) {
	n := 0
	for i, ch := range line {
		var d byte
		switch {
		case ch >= '0' && ch <= '9':
			d = ch - '0'
		case ch >= 'a' && ch <= 'f':
			d = ch - 'a' + 10
		case ch >= 'A' && ch <= 'F':
			d = ch - 'A' + 10
		default:
			if i == 0 {
				return 0, fmt.Errorf("%w: chunk size %q", errProto, line)
			}
			return n, nil
		}
		n = n<<4 | int(d)
		if n > 1<<30 {
			return 0, fmt.Errorf("%w: chunk size %q", errProto, line)
		}
	}
	return 0, fmt.Errorf("%w: chunk size %q", errProto, line)
}

// parseServerTiming reads "keybridge;dur=X, upstream;dur=Y" (SPEC §7.8),
// in milliseconds; a missing metric is -1.
func parseServerTiming(v []byte) (kb, up float64) {
	kb, up = -1, -1
	for _, part := range bytes.Split(v, []byte(",")) {
		part = bytes.TrimSpace(part)
		name, params, _ := bytes.Cut(part, []byte(";"))
		var dur float64 = -1
		for _, p := range bytes.Split(params, []byte(";")) {
			k, val, ok := bytes.Cut(bytes.TrimSpace(p), []byte("="))
			if ok && bytes.Equal(k, []byte("dur")) {
				if f, err := strconv.ParseFloat(string(val), 64); err == nil {
					dur = f
				}
			}
		}
		switch string(name) {
		case "keybridge":
			kb = dur
		case "upstream":
			up = dur
		}
	}
	return kb, up
}

func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range b {
		ch := b[i]
		if ch >= 'A' && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != lower[i] {
			return false
		}
	}
	return true
}

// check says what is wrong with an answer, or nil.
func check(a *answer, sse bool, wantBody, wantEvents int) error {
	if a.status != 200 {
		return fmt.Errorf("status %d", a.status)
	}
	if sse {
		if a.events != wantEvents || !a.done {
			return fmt.Errorf("stream of %d events (want %d ending in [DONE]; got done=%v)", a.events, wantEvents, a.done)
		}
		return nil
	}
	if wantBody > 0 && a.bodyLen != wantBody {
		return fmt.Errorf("body of %d bytes, want %d", a.bodyLen, wantBody)
	}
	return nil
}

// run is one timed slot: c workers on t for d.
type slot struct {
	t          *target
	sse        bool
	c          int
	d          time.Duration
	wantBody   int
	wantEvents int
}

// runSlot dials c connections, sends one unmeasured request on each, then
// measures for s.d and returns what the workers recorded.
func runSlot(s slot) *stats {
	req := s.t.reqJSON
	if s.sse {
		req = s.t.reqSSE
	}
	clients := make([]*client, s.c)
	total := &stats{}
	for i := range clients {
		var cl *client
		var err error
		// A few tries: httputil.ReverseProxy drops a few percent of
		// streams (see README), and one lost warm-up must not lose a round.
		for try := 0; try < 3; try++ {
			if cl, err = dial(s.t.addr); err != nil {
				continue
			}
			var a answer
			if err = cl.do(req, s.sse, nil, &a); err == nil {
				err = check(&a, s.sse, s.wantBody, s.wantEvents)
			}
			if err == nil {
				break
			}
			cl.close()
		}
		if err != nil {
			for _, c := range clients[:i] {
				c.close()
			}
			total.errs++
			total.lastErr = fmt.Errorf("warm-up request: %w", err)
			return total
		}
		clients[i] = cl
	}
	per := workerStats(s.c)
	var wg sync.WaitGroup
	var start sync.WaitGroup
	start.Add(1)
	var deadline atomic.Int64
	for i := range clients {
		wg.Add(1)
		go func(cl *client, st *stats) {
			defer wg.Done()
			defer func() {
				if cl != nil {
					cl.close()
				}
			}()
			var gaps *hist
			if s.sse {
				gaps = &st.gap
			}
			var a answer
			start.Wait()
			end := time.Unix(0, deadline.Load())
			for {
				t0 := time.Now()
				err := cl.do(req, s.sse, gaps, &a)
				t1 := time.Now()
				if t1.After(end) {
					return
				}
				if err == nil {
					err = check(&a, s.sse, s.wantBody, s.wantEvents)
				}
				if err != nil {
					st.errs++
					st.lastErr = err
					cl.close()
					if cl, err = dial(s.t.addr); err != nil {
						cl = nil
						return
					}
					continue
				}
				st.n++
				st.lat.record(t1.Sub(t0))
				if s.sse {
					st.ttfb.record(a.firstByte.Sub(t0))
				}
				if s.t.isKB {
					if a.stKB >= 0 {
						st.stKB.record(time.Duration(a.stKB * 1e6))
						st.stUp.record(time.Duration(a.stUp * 1e6))
					} else {
						st.stMissed++
					}
				}
				if a.closeConn {
					cl.close()
					if cl, err = dial(s.t.addr); err != nil {
						cl = nil
						st.errs++
						st.lastErr = err
						return
					}
				}
			}
		}(clients[i], per[i])
	}
	deadline.Store(time.Now().Add(s.d).UnixNano())
	start.Done()
	wg.Wait()
	for _, p := range per {
		total.merge(p)
	}
	return total
}

// spareStats keeps the workers' stats between slots: each is 600 KB of
// histograms, and allocating them anew for every slot would hand the load
// generator's GC work that lands in the next measurement.
var spareStats []*stats

func workerStats(n int) []*stats {
	for len(spareStats) < n {
		spareStats = append(spareStats, &stats{})
	}
	for _, st := range spareStats[:n] {
		*st = stats{}
	}
	return spareStats[:n]
}

// Package providertest holds loopback servers that answer like the AI
// providers Keybridge forwards to (OpenAI and Azure OpenAI, Anthropic, Google
// Gemini, AWS Bedrock runtime), record what they received and fail on
// command. It is imported only by tests, like net/http/httptest: the
// gateway's tests point the official SDKs at Keybridge, which forwards to
// these servers, and this package's own tests point the same SDKs straight
// at them to prove every answer is one the SDK parses.
package providertest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Server is one mock provider on 127.0.0.1, closed by t.Cleanup. Set its
// exported fields before sending requests.
type Server struct {
	// URL is scheme://host:port, with no trailing slash and no path.
	URL string
	// Events is how many content events a streamed answer has (default 5),
	// and EventGap the pause between a stream's events (default 0).
	Events   int
	EventGap time.Duration
	// Usage is what answers report, in each provider's own fields.
	Usage Usage

	hs *httptest.Server
	p  provider
	// ctx ends when the test ends, so that stalls and open WebSockets do not
	// hold up the server's Close.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	keys   map[string]bool
	faults map[string]*faultState
	reqs   []*Request
	// changed is closed and replaced whenever a request is marked canceled.
	changed chan struct{}
}

// Usage is the token usage a mock reports; each mock spells it the
// provider's way. Input excludes cached tokens: CacheRead and CacheWrite are
// separate, and Reasoning is part of Output.
type Usage struct{ Input, Output, CacheRead, CacheWrite, Reasoning int64 }

// Fault is a way a provider fails. Events, as CutAfter and StallAfter count
// them, are every event a streamed answer sends, its opening ones included
// (Anthropic's message_start, OpenAI Responses' response.created).
type Fault struct {
	// Status answers with this status and the provider's own error body for
	// it (429, 401, 403, 500, 503, 529 ...), with RetryAfter and
	// RetryAfterMS as Retry-After and retry-after-ms headers.
	Status       int
	RetryAfter   string
	RetryAfterMS string
	// Reset closes the connection before any response byte, with a TCP
	// reset.
	Reset bool
	// StallBefore waits this long before the response headers, returning
	// early if the client goes away.
	StallBefore time.Duration
	// CutAfter aborts a streamed answer after this many events: the
	// connection is closed without the final chunk or terminating event.
	// 0: not cut.
	CutAfter int
	// StallAfter pauses a streamed answer for StallFor after this many
	// events.
	StallAfter int
	StallFor   time.Duration
	// Times limits the fault to the next Times requests carrying the key
	// (0: until cleared).
	Times int
}

type faultState struct {
	f    Fault
	left int // requests it still applies to when f.Times > 0
}

// Request is one request the server received.
type Request struct {
	Method string
	// URI is r.RequestURI exactly as received: raw path bytes and query.
	URI    string
	Header http.Header
	Body   []byte
	// Key is the credential found the provider's way ("" when none); for
	// Bedrock the access key id.
	Key string
	// Canceled is set once the client went away before the answer was
	// complete.
	Canceled bool
}

// provider is what makes a Server one provider rather than another.
type provider struct {
	// key finds the credential in r the provider's way, "" when none.
	key func(r *http.Request) string
	// fail answers with the provider's own error for status. Headers a
	// fault asks for (Retry-After) are already set.
	fail func(c *call, status int)
	// serve answers a request that no fault stopped.
	serve func(c *call)
}

// newServer starts a mock that answers as p does.
func newServer(t testing.TB, p provider) *Server {
	t.Helper()
	s := &Server{
		Events:  5,
		p:       p,
		keys:    map[string]bool{},
		faults:  map[string]*faultState{},
		changed: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.hs = httptest.NewServer(http.HandlerFunc(s.handle))
	s.URL = s.hs.URL
	t.Cleanup(func() {
		s.cancel()
		s.hs.CloseClientConnections()
		s.hs.Close()
	})
	return s
}

// AddKey makes key one the server accepts, presented the provider's way
// (Authorization: Bearer for OpenAI, x-api-key for Anthropic, api-key for
// Azure paths, x-goog-api-key or ?key= for Gemini). A request with no
// accepted key gets the provider's own 401 body, which, like the real
// providers', echoes a fragment of the key presented. Bedrock authenticates
// with SigV4 and the constructor's pair instead.
func (s *Server) AddKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[key] = true
}

// Fault makes requests that carry key (the raw upstream key; for Bedrock its
// access key id; "" means every request) fail as f says. A later call
// replaces an earlier one for the same key; a fault for the key itself wins
// over the one for "".
func (s *Server) Fault(key string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[key] = &faultState{f: f, left: f.Times}
}

// ClearFaults drops every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.faults)
}

// Requests returns copies of the recorded requests in arrival order. A
// request's Canceled may be set after the call: read again to see it.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.reqs))
	for i, r := range s.reqs {
		out[i] = r.clone()
	}
	return out
}

// Last returns a copy of the newest recorded request, or the zero Request
// when there is none.
func (s *Server) Last() Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		return Request{}
	}
	return s.reqs[len(s.reqs)-1].clone()
}

// Forget drops the recorded requests.
func (s *Server) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = nil
}

// WaitCanceled waits, at most 5 seconds and else fails t, until n of the
// recorded requests were canceled by their client.
func (s *Server) WaitCanceled(t testing.TB, n int) {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		got := 0
		for _, r := range s.reqs {
			if r.Canceled {
				got++
			}
		}
		changed := s.changed
		s.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("canceled requests: got %d, want %d", got, n)
		}
	}
}

func (r *Request) clone() Request {
	c := *r
	c.Header = r.Header.Clone()
	c.Body = bytes.Clone(r.Body)
	return c
}

// keyOK reports whether key is one AddKey accepted.
func (s *Server) keyOK(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return key != "" && s.keys[key]
}

// record adds a request to the record and returns it, for later marking.
func (s *Server) record(r Request) *Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := &r
	s.reqs = append(s.reqs, rec)
	return rec
}

// markCanceled sets rec.Canceled, unless the answer to it had already been
// completed.
func (s *Server) markCanceled(rec *Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec.Canceled {
		return
	}
	rec.Canceled = true
	close(s.changed)
	s.changed = make(chan struct{})
}

// takeFault returns the fault for key (or for every key) and uses up one of
// its Times.
func (s *Server) takeFault(key string) Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.faults[key]
	if !ok || key == "" {
		st, ok = s.faults[""]
	}
	if !ok {
		return Fault{}
	}
	f := st.f
	if f.Times > 0 {
		st.left--
		if st.left <= 0 {
			for k, v := range s.faults {
				if v == st {
					delete(s.faults, k)
				}
			}
		}
	}
	return f
}

// call is one request being answered: its record and the fault that
// applies to it.
type call struct {
	s     *Server
	w     http.ResponseWriter
	r     *http.Request
	body  []byte
	key   string
	fault Fault
	rec   *Request

	// aborted asks for the connection to be closed without the end of the
	// answer once the handler returns (a cut stream).
	aborted bool

	mu   sync.Mutex
	done bool // the answer is complete, or ended by the server on purpose
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := s.p.key(r)
	c := &call{s: s, w: w, r: r, body: body, key: key}
	c.rec = s.record(Request{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone(), Body: body, Key: key})
	c.fault = s.takeFault(key)

	// The request context ends when the client closes its connection while
	// the handler runs, and again once it returns: only the first counts.
	stop := context.AfterFunc(r.Context(), func() {
		if !c.finished() {
			s.markCanceled(c.rec)
		}
	})
	defer stop()
	// AfterFunc runs its function on a goroutine of its own, which may come
	// after the handler has already seen the client leave and returned:
	// check once more before the answer counts as complete.
	defer func() {
		if r.Context().Err() != nil && !c.finished() {
			s.markCanceled(c.rec)
		}
		c.finish()
	}()

	if !c.begin() {
		return
	}
	s.p.serve(c)
	if c.aborted {
		c.finish()
		panic(http.ErrAbortHandler)
	}
}

// begin applies the fault's Reset, StallBefore and Status, and reports
// whether the request is still to be answered.
func (c *call) begin() bool {
	f := c.fault
	if f.Reset {
		c.reset()
		return false
	}
	if f.StallBefore > 0 && !c.sleep(f.StallBefore) {
		return false
	}
	if f.Status != 0 {
		if f.RetryAfter != "" {
			c.w.Header().Set("Retry-After", f.RetryAfter)
		}
		if f.RetryAfterMS != "" {
			c.w.Header().Set("retry-after-ms", f.RetryAfterMS)
		}
		c.s.p.fail(c, f.Status)
		return false
	}
	return true
}

// finish marks the answer complete, so that the client's leaving after it
// does not count as a cancellation.
func (c *call) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
}

func (c *call) finished() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// keyOK reports whether the request's credential is one the server accepts.
func (c *call) keyOK() bool { return c.s.keyOK(c.key) }

// sleep waits d and reports false if the client or the test went away first.
func (c *call) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.r.Context().Done():
		return false
	case <-c.s.ctx.Done():
		return false
	}
}

// reset closes the connection with a TCP reset, without a response byte.
func (c *call) reset() {
	c.finish()
	conn, _, err := http.NewResponseController(c.w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// writeJSON answers with status and v as JSON.
func (c *call) writeJSON(status int, v any) {
	writeJSON(c.w, status, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// stream writes a streamed answer event by event, applying the call's
// EventGap, CutAfter and StallAfter, and flushing each event.
type stream struct {
	c *call
	// write sends and flushes one event; cut aborts the transport.
	write func(b []byte) error
	cut   func()
	n     int // events sent
}

// stream starts a streamed HTTP answer: the caller has set Content-Type and
// any other header; stream sends the 200 status line.
func (c *call) stream() *stream {
	c.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(c.w)
	_ = rc.Flush()
	return &stream{
		c: c,
		write: func(b []byte) error {
			if _, err := c.w.Write(b); err != nil {
				return err
			}
			return rc.Flush()
		},
		cut: func() { c.aborted = true },
	}
}

// event sends one already-encoded event (an SSE event with its blank line,
// an event-stream message, a JSON array element). It reports false when the
// stream must end without another byte: the client went away, or the fault
// cut the stream. After a cut of an HTTP answer the connection is closed
// without the chunked body's end once the handler returns, so the caller
// just returns.
func (st *stream) event(b []byte) bool {
	f := st.c.fault
	if f.CutAfter > 0 && st.n >= f.CutAfter {
		st.c.finish()
		st.cut()
		return false
	}
	if f.StallAfter > 0 && st.n == f.StallAfter && f.StallFor > 0 {
		if !st.c.sleep(f.StallFor) {
			return false
		}
	}
	if st.n > 0 && !st.c.sleep(st.c.s.EventGap) {
		return false
	}
	if err := st.write(b); err != nil {
		return false
	}
	st.n++
	return true
}

// sse sends one server-sent event: an "event:" line when name is not
// empty, then data as JSON (or as is, when it is a string or []byte).
func (st *stream) sse(name string, data any) bool {
	return st.event(sseBytes(name, data))
}

func sseBytes(name string, data any) []byte {
	var b bytes.Buffer
	if name != "" {
		b.WriteString("event: " + name + "\n")
	}
	b.WriteString("data: ")
	switch d := data.(type) {
	case string:
		b.WriteString(d)
	case []byte:
		b.Write(d)
	default:
		j, err := json.Marshal(d)
		if err != nil {
			panic(err)
		}
		b.Write(j)
	}
	b.WriteString("\n\n")
	return b.Bytes()
}

// fragment is how providers echo a rejected key in their 401 bodies: its
// first and last characters around asterisks, never the whole key.
func fragment(key string) string {
	if len(key) <= 8 {
		return "***"
	}
	return key[:5] + "***" + key[len(key)-4:]
}

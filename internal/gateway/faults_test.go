package gateway_test

// Upstream faults: a provider that refuses connections, resets them
// before or after its headers, is slow to answer, rate limits every key,
// fails, sends bytes that are not HTTP, breaks its chunked encoding, cuts
// a body short of its Content-Length, never ends its stream or stalls in
// the middle of it. Each ends in failover or a clean error in the
// provider's shape within the configured timeouts, never a hang (every
// call has a generous outer deadline), never a silent cut (a cut stream
// ends with the stream's error event, then an abort), and the gateway
// holds no more goroutines after the run than before it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// Timeouts the fault run configures: short, so that slow headers and
// stalls end quickly. outerDeadline is the client's own bound on every
// call: a gateway that hangs fails there, long after the timeouts.
const (
	faultHeaderTimeout = 400 * time.Millisecond
	faultIdleTimeout   = 400 * time.Millisecond
	outerDeadline      = 30 * time.Second
)

// rawUpstream is a provider on loopback that speaks HTTP/1.1 by hand, so
// that it can break it: each request is answered by the fault set for
// its upstream key, or by a plain 200 naming the key.
type rawUpstream struct {
	ln  net.Listener
	URL string

	mu     sync.Mutex
	faults map[string]rawFault
	hits   map[string]int
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	// closed is closed when the test ends: faults that wait forever
	// wait for it too.
	closed chan struct{}
}

// rawFault answers one request on c (its body already read); it reports
// whether the connection may carry another request.
type rawFault func(c *rawConn, req *http.Request) (keep bool)

type rawConn struct {
	net.Conn
	u *rawUpstream
}

func newRawUpstream(t *testing.T) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, URL: "http://" + ln.Addr().String(), faults: map[string]rawFault{},
		hits: map[string]int{}, conns: map[net.Conn]struct{}{}, closed: make(chan struct{})}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns[c] = struct{}{}
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				u.serve(c)
			}()
		}
	}()
	t.Cleanup(u.close)
	return u
}

func (u *rawUpstream) close() {
	select {
	case <-u.closed:
		return
	default:
	}
	close(u.closed)
	u.ln.Close()
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

func (u *rawUpstream) serve(c net.Conn) {
	defer func() {
		c.Close()
		u.mu.Lock()
		delete(u.conns, c)
		u.mu.Unlock()
	}()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		// The body is read whole first; the fault may read it again.
		b, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(b))
		key := upstreamKeyOf(req)
		u.mu.Lock()
		u.hits[key]++
		f := u.faults[key]
		u.mu.Unlock()
		if f == nil {
			f = rawJSON(200, fmt.Sprintf(`{"served_by":%q}`, key))
		}
		if !f(&rawConn{Conn: c, u: u}, req) {
			return
		}
	}
}

// upstreamKeyOf is the upstream credential a request carries, in
// whichever header its provider type puts it.
func upstreamKeyOf(r *http.Request) string {
	if k := r.Header.Get("X-Api-Key"); k != "" {
		return k
	}
	if k := r.Header.Get("X-Goog-Api-Key"); k != "" {
		return k
	}
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

func (u *rawUpstream) on(key string, f rawFault) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.faults[key] = f
}

func (u *rawUpstream) hitsOf(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[key]
}

// waitClosed blocks until the gateway closes c (or the test ends): it is
// how a fault holds a connection open and learns that the gateway let
// go of it.
func (c *rawConn) waitClosed() {
	select {
	case <-c.gone():
	case <-c.u.closed:
	}
}

// gone is closed when the gateway closes c.
func (c *rawConn) gone() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [512]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
		}
	}()
	return done
}

// rst closes c with a TCP reset.
func (c *rawConn) rst() {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func rawJSON(code int, body string) rawFault {
	return func(c *rawConn, _ *http.Request) bool {
		_, err := fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			code, http.StatusText(code), len(body), body)
		return err == nil
	}
}

// rawStream starts a chunked answer of content type ct and writes each of
// parts as one chunk, then hands over to end, which breaks it.
func rawStream(ct string, parts []string, end func(c *rawConn)) rawFault {
	return func(c *rawConn, _ *http.Request) bool {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n", ct)
		cw := httputil.NewChunkedWriter(c)
		for _, p := range parts {
			if _, err := io.WriteString(cw, p); err != nil {
				return false
			}
		}
		end(c)
		return false
	}
}

// faultProvider is one provider type's request and stream shapes.
type faultProvider struct {
	typ, base, path string
	// events is a stream's complete events; partial the start of one
	// whose end never comes.
	events  []string
	partial string
	// errorEvent checks the stream's error event (its event name and
	// decoded data) for an error of code and status.
	errorEvent func(name string, data map[string]any, code string, status int) bool
	// errorBody checks a gateway error answer in the provider's shape.
	errorBody func(body []byte, code string) bool
}

var faultProviders = []faultProvider{
	{
		typ: "openai", base: "/v1", path: "/chat/completions",
		events:  []string{"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"}}]}\n\n", "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n"},
		partial: "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"del",
		errorEvent: func(name string, d map[string]any, code string, _ int) bool {
			e, _ := d["error"].(map[string]any)
			return name == "" && e["code"] == code && e["type"] == "server_error" && strings.HasPrefix(fmt.Sprint(e["message"]), "Keybridge: ")
		},
		errorBody: func(b []byte, code string) bool {
			var v errorShape
			return json.Unmarshal(b, &v) == nil && v.Error.Code == code && v.Error.Type != "" && v.Error.Message != ""
		},
	},
	{
		typ: "anthropic", base: "", path: "/v1/messages",
		events:  []string{"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n", "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n"},
		partial: "event: content_block_delta\ndata: {\"type\":\"content_bl",
		errorEvent: func(name string, d map[string]any, _ string, _ int) bool {
			e, _ := d["error"].(map[string]any)
			return name == "error" && d["type"] == "error" && e["type"] == "api_error" && strings.HasPrefix(fmt.Sprint(e["message"]), "Keybridge: ")
		},
		errorBody: func(b []byte, _ string) bool {
			var v struct {
				Type  string
				Error struct{ Type, Message string }
			}
			return json.Unmarshal(b, &v) == nil && v.Type == "error" && v.Error.Type != "" && v.Error.Message != ""
		},
	},
	{
		typ: "google", base: "", path: "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
		events:  []string{"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hel\"}]}}]}\r\n\r\n", "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}]}}]}\r\n\r\n"},
		partial: "data: {\"candidates\":[{\"cont",
		errorEvent: func(name string, d map[string]any, _ string, status int) bool {
			e, _ := d["error"].(map[string]any)
			want := map[int]string{502: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}[status]
			return name == "" && e["code"] == float64(status) && e["status"] == want && strings.HasPrefix(fmt.Sprint(e["message"]), "Keybridge: ")
		},
		errorBody: func(b []byte, _ string) bool {
			var v struct {
				Error struct {
					Code    int
					Message string
					Status  string
				}
			}
			return json.Unmarshal(b, &v) == nil && v.Error.Code >= 400 && v.Error.Status != "" && v.Error.Message != ""
		},
	},
}

// sseEvents splits an SSE body into events as a client reads them: each
// its event name and its data lines joined.
func sseEvents(body string) (names, datas []string) {
	body = strings.ReplaceAll(body, "\r\n", "\n")
	for _, ev := range strings.Split(body, "\n\n") {
		if strings.TrimSpace(ev) == "" {
			continue
		}
		var name string
		var data []string
		for _, line := range strings.Split(ev, "\n") {
			if v, ok := strings.CutPrefix(line, "event:"); ok {
				name = strings.TrimSpace(v)
			} else if v, ok := strings.CutPrefix(line, "data:"); ok {
				data = append(data, strings.TrimPrefix(v, " "))
			}
		}
		names, datas = append(names, name), append(datas, strings.Join(data, "\n"))
	}
	return names, datas
}

// faultEnv is the gateway the fault run uses, with a client of its own
// whose idle connections can be closed.
type faultEnv struct {
	*env
	up     *rawUpstream
	client *http.Client
	n      int
}

func newFaultEnv(t *testing.T, opts gateway.Options) *faultEnv {
	e := &faultEnv{env: newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: opts}), up: newRawUpstream(t),
		client: &http.Client{Transport: &http.Transport{}, Timeout: outerDeadline}}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// provider makes a provider of p's type on the fault upstream with one
// upstream key per fault given (in priority order), and returns its name
// and the keys.
func (e *faultEnv) provider(p faultProvider, faults ...rawFault) (string, []string) {
	e.t.Helper()
	e.n++
	name := fmt.Sprintf("f%d-%s", e.n, p.typ)
	e.env.provider(map[string]any{"name": name, "type": p.typ, "base_url": e.up.URL + p.base})
	var keys []string
	for i, f := range faults {
		k := fmt.Sprintf("sk-fault-%d-%d-%s", e.n, i, canary(e.t, ""))
		e.addKey(name, k, i)
		if f != nil {
			e.up.on(k, f)
		}
		keys = append(keys, k)
	}
	return name, keys
}

// call sends one request through the gateway to provider name and reads
// the whole answer; err is the error sending it or reading its body.
func (e *faultEnv) call(ctx context.Context, p faultProvider, name string, stream bool) (resp *http.Response, body []byte, err error) {
	e.t.Helper()
	b := `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	if stream {
		b = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	}
	req := e.post("/gateway/"+name+p.path, e.OwnerKey, b).WithContext(ctx)
	resp, err = e.client.Do(req)
	if err != nil {
		// No answer at all: the status is 0.
		return &http.Response{Header: http.Header{}, Body: http.NoBody}, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp, body, err
}

// idle closes every idle connection, on both sides of the gateway.
func (e *faultEnv) idle() {
	e.client.CloseIdleConnections()
	e.Gateway.CloseIdleUpstreams()
}

// settledGoroutines returns the goroutine count once it is at most want
// (or, with want < 0, once it has held still for 200 ms), or after 10 s.
func settledGoroutines(want int) int {
	deadline := time.Now().Add(10 * time.Second)
	last, still := -1, 0
	for {
		n := runtime.NumGoroutine()
		if n == last {
			still++
		} else {
			last, still = n, 0
		}
		if want >= 0 && n <= want || want < 0 && still >= 10 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestUpstreamFaults(t *testing.T) {
	e := newFaultEnv(t, gateway.Options{HeaderTimeout: faultHeaderTimeout, IdleTimeout: faultIdleTimeout})
	ctx := context.Background()

	// The baseline: one request of each provider type served, then every
	// idle connection closed.
	for _, p := range faultProviders {
		name, keys := e.provider(p, nil)
		if resp, body, err := e.call(ctx, p, name, false); err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), keys[0]) {
			t.Fatalf("%s baseline = %d %s %v", p.typ, resp.StatusCode, body, err)
		}
	}
	e.idle()
	before := settledGoroutines(-1)

	start := time.Now()
	for _, p := range faultProviders {
		t.Run(p.typ, func(t *testing.T) { runFaults(t, e, p) })
	}
	t.Run("429 storm", func(t *testing.T) { rateLimitStorm(t, e) })
	elapsed := time.Since(start)

	e.idle()
	after := settledGoroutines(before)
	t.Logf("goroutines: %d before the fault run, %d after it (%v of faults)", before, after, elapsed.Round(time.Millisecond))
	if after > before {
		var stacks bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		t.Errorf("goroutines: %d after the fault run, %d before it:\n%s", after, before, stacks.String())
	}
	noCanary(t, "CANARY", e.logs())
}

// runFaults runs every fault against providers of p's type.
func runFaults(t *testing.T, e *faultEnv, p faultProvider) {
	ctx := context.Background()
	servedBy := func(t *testing.T, name string, want string, stream bool) {
		t.Helper()
		resp, body, err := e.call(ctx, p, name, stream)
		if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("= %d %s (%v), want 200 from the next key", resp.StatusCode, body, err)
		}
	}
	cleanError := func(t *testing.T, name string, status int, code string) {
		t.Helper()
		resp, body, err := e.call(ctx, p, name, false)
		if err != nil || resp.StatusCode != status || resp.Header.Get("X-Keybridge-Error") != code || !p.errorBody(body, code) {
			t.Errorf("= %d %s %s (%v), want %d %s in %s's shape", resp.StatusCode, resp.Header.Get("X-Keybridge-Error"), body, err, status, code, p.typ)
		}
	}
	// cutStream wants the stream's complete events, then (cut inside an
	// event) what came of the broken one, ended, then its error event as
	// the last event (504's for a stall, 502's otherwise), then an abort.
	cutStream := func(t *testing.T, name string, events int, midEvent, stalled bool) {
		t.Helper()
		resp, body, err := e.call(ctx, p, name, true)
		if resp.StatusCode != 200 {
			t.Fatalf("= %d %s, want the stream's 200", resp.StatusCode, body)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("reading the cut stream: %v, want an unexpected EOF (no final chunk)", err)
		}
		names, datas := sseEvents(string(body))
		last := len(names) - 1
		// A gateway that holds back incomplete events (OpenAI's, where
		// it hides the usage chunk it asked for) passes no broken one.
		if last != events && !(midEvent && last == events+1) {
			t.Fatalf("stream = %q: %d events, want %d then the error event", body, len(names), events)
		}
		code, status := "bad_gateway", http.StatusBadGateway
		if stalled {
			code, status = "gateway_timeout", http.StatusGatewayTimeout
		}
		var d map[string]any
		if err := json.Unmarshal([]byte(datas[last]), &d); err != nil || !p.errorEvent(names[last], d, code, status) {
			t.Errorf("last event = %q %q (%v), want %s's error event of %s", names[last], datas[last], err, p.typ, code)
		}
		for i := range events {
			if err := json.Unmarshal([]byte(datas[i]), &d); err != nil {
				t.Errorf("event %d = %q: %v", i, datas[i], err)
			}
		}
	}
	// aborted wants a non-streamed answer that ends without its end: the
	// body short of its length or its final chunk, or, when what arrived
	// was still in the gateway's buffer, the connection closed before the
	// status (either way the client sees an error, never an answer).
	aborted := func(t *testing.T, name string) {
		t.Helper()
		resp, body, err := e.call(ctx, p, name, false)
		if !errors.Is(err, io.ErrUnexpectedEOF) && !(resp.StatusCode == 0 && errors.Is(err, io.EOF)) {
			t.Errorf("= %d %q, %v; want the body aborted (unexpected EOF) or no answer", resp.StatusCode, body, err)
		}
		if resp.StatusCode == 0 {
			t.Logf("%s: aborted before the status went out", name)
		}
	}
	sse := "text/event-stream"
	all := strings.Join(p.events, "")

	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		e.n++
		name := fmt.Sprintf("f%d-refused", e.n)
		e.env.provider(map[string]any{"name": name, "type": p.typ, "base_url": "http://" + addr + p.base})
		e.addKey(name, canary(t, "sk-"), 0)
		e.addKey(name, canary(t, "sk-"), 1)
		cleanError(t, name, 502, "bad_gateway")
	})
	t.Run("reset before headers", func(t *testing.T) {
		name, keys := e.provider(p, func(c *rawConn, _ *http.Request) bool { c.rst(); return false }, nil)
		servedBy(t, name, keys[1], false)
	})
	t.Run("closed before headers", func(t *testing.T) {
		name, keys := e.provider(p, func(c *rawConn, _ *http.Request) bool { return false }, nil)
		servedBy(t, name, keys[1], false)
	})
	t.Run("5xx", func(t *testing.T) {
		name, keys := e.provider(p, rawJSON(500, `{"error":"boom"}`), rawJSON(503, `{"error":"busy"}`), nil)
		servedBy(t, name, keys[2], false)
	})
	t.Run("5xx from every key", func(t *testing.T) {
		name, _ := e.provider(p, rawJSON(500, `{"error":"boom"}`), rawJSON(502, `{"error":"boom"}`))
		cleanError(t, name, 502, "bad_gateway")
	})
	t.Run("non-HTTP bytes", func(t *testing.T) {
		name, keys := e.provider(p,
			func(c *rawConn, _ *http.Request) bool {
				io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
				c.waitClosed()
				return false
			},
			func(c *rawConn, _ *http.Request) bool {
				c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0, 0, '\n'})
				return false
			},
			nil)
		servedBy(t, name, keys[2], false)
	})
	t.Run("slow headers", func(t *testing.T) {
		// Past the header timeout: 504 at once, no second key (docs/gateway.md).
		name, keys := e.provider(p, func(c *rawConn, _ *http.Request) bool { c.waitClosed(); return false }, nil)
		cleanError(t, name, 504, "gateway_timeout")
		if n := e.up.hitsOf(keys[1]); n != 0 {
			t.Errorf("the second key was tried %d times after a header timeout", n)
		}
	})
	t.Run("headers trickled past the timeout", func(t *testing.T) {
		name, _ := e.provider(p, func(c *rawConn, _ *http.Request) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			for {
				select {
				case <-c.u.closed:
					return false
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := io.WriteString(c, "X-Slow: 1\r\n"); err != nil {
					return false
				}
			}
		})
		cleanError(t, name, 504, "gateway_timeout")
	})
	t.Run("reset mid-stream", func(t *testing.T) {
		name, _ := e.provider(p, rawStream(sse, p.events, (*rawConn).rst))
		cutStream(t, name, len(p.events), false, false)
	})
	t.Run("reset mid-event", func(t *testing.T) {
		name, _ := e.provider(p, rawStream(sse, []string{all + p.partial}, (*rawConn).rst))
		cutStream(t, name, len(p.events), true, false)
	})
	t.Run("bad chunked encoding", func(t *testing.T) {
		name, _ := e.provider(p, rawStream(sse, p.events, func(c *rawConn) { io.WriteString(c, "zz\r\nnot a chunk\r\n"); c.waitClosed() }))
		cutStream(t, name, len(p.events), false, false)
	})
	t.Run("stalled stream", func(t *testing.T) {
		name, _ := e.provider(p, rawStream(sse, p.events, (*rawConn).waitClosed))
		cutStream(t, name, len(p.events), false, true)
	})
	t.Run("stalled mid-event", func(t *testing.T) {
		name, _ := e.provider(p, rawStream(sse, []string{all + p.partial}, (*rawConn).waitClosed))
		cutStream(t, name, len(p.events), true, true)
	})
	t.Run("truncated Content-Length", func(t *testing.T) {
		name, _ := e.provider(p, func(c *rawConn, _ *http.Request) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":\"cut")
			return false
		})
		aborted(t, name)
	})
	t.Run("stalled Content-Length body", func(t *testing.T) {
		name, _ := e.provider(p, func(c *rawConn, _ *http.Request) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":\"cut")
			c.waitClosed()
			return false
		})
		aborted(t, name)
	})
	t.Run("bad chunked JSON", func(t *testing.T) {
		name, _ := e.provider(p, rawStream("application/json", []string{`{"id":`}, func(c *rawConn) { io.WriteString(c, "-1\r\n") }))
		aborted(t, name)
	})
	t.Run("never-ending stream", func(t *testing.T) { neverEnding(t, e, p) })
}

// neverEnding: a stream that never ends passes each event as it comes
// (the upstream sends the next only when the client has the last), for
// longer than the idle timeout, until the client leaves; then the
// upstream's connection is closed.
func neverEnding(t *testing.T, e *faultEnv, p faultProvider) {
	next := make(chan struct{})
	released := make(chan struct{})
	var sent atomic.Int64
	name, _ := e.provider(p, func(c *rawConn, _ *http.Request) bool {
		defer close(released)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(c)
		gone := c.gone()
		for i := 0; ; i++ {
			select {
			case <-next:
			case <-gone:
				return false // the gateway let go
			case <-c.u.closed:
				return false
			case <-time.After(outerDeadline):
				return false
			}
			if _, err := io.WriteString(cw, p.events[i%len(p.events)]); err != nil {
				<-gone
				return false
			}
			sent.Add(1)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := e.post("/gateway/"+name+p.path, e.OwnerKey, `{"model":"m","stream":true}`).WithContext(ctx)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	const events = 40
	start := time.Now()
	for i := range events {
		next <- struct{}{}
		want := strings.ReplaceAll(p.events[i%len(p.events)], "\r\n", "\n")
		var got strings.Builder
		for got.Len() < len(want) || !strings.HasSuffix(got.String(), "\n\n") {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("event %d: %v after %q", i, err, got.String())
			}
			got.WriteString(strings.ReplaceAll(line, "\r\n", "\n"))
		}
		if got.String() != want {
			t.Fatalf("event %d = %q, want %q", i, got.String(), want)
		}
		if i%10 == 9 {
			time.Sleep(faultIdleTimeout / 2) // gaps under the idle timeout, adding up to more
		}
	}
	if d := time.Since(start); d < faultIdleTimeout {
		t.Errorf("the stream ran %v, want longer than the idle timeout", d)
	}
	cancel()
	select {
	case <-released:
	case <-time.After(outerDeadline):
		t.Fatal("the upstream's connection was still open after the client left")
	}
	if n := sent.Load(); n != events {
		t.Errorf("the upstream sent %d events, want %d: one per event the client read", n, events)
	}
}

// rateLimitStorm: every key of a provider answers 429 to a burst of
// concurrent callers. Each caller gets a clean 429 with Retry-After, and
// once the keys rest the provider sees nothing more.
func rateLimitStorm(t *testing.T, e *faultEnv) {
	p := faultProviders[0]
	f := func(c *rawConn, _ *http.Request) bool {
		body := `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`
		_, err := fmt.Fprintf(c, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 20\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return err == nil
	}
	name, keys := e.provider(p, f, f, f)
	const callers, rounds = 16, 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[string]int{}
	for range callers {
		wg.Go(func() {
			for range rounds {
				req := e.post("/gateway/"+name+p.path, e.OwnerKey, `{"model":"m"}`)
				resp, err := e.client.Do(req)
				if err != nil {
					mu.Lock()
					statuses["error: "+err.Error()]++
					mu.Unlock()
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				k := fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("X-Keybridge-Error"))
				if resp.StatusCode == 429 && (resp.Header.Get("Retry-After") == "" || !p.errorBody(body, "rate_limited")) {
					k += " without Retry-After or OpenAI's shape"
				}
				mu.Lock()
				statuses[k]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(statuses) != 1 || statuses["429 rate_limited"] != callers*rounds {
		t.Errorf("answers = %v, want %d of 429 rate_limited", statuses, callers*rounds)
	}
	hits := 0
	for _, k := range keys {
		hits += e.up.hitsOf(k)
	}
	// Callers that came at once may each try a key before it rests; none
	// after.
	if hits > callers*len(keys) {
		t.Errorf("the provider saw %d requests from %d callers, want at most %d", hits, callers*rounds, callers*len(keys))
	}
	resp, _, _ := e.call(context.Background(), p, name, false)
	later := 0
	for _, k := range keys {
		later += e.up.hitsOf(k)
	}
	if resp.StatusCode != 429 || later != hits {
		t.Errorf("after the storm = %d with %d more upstream requests, want 429 with none", resp.StatusCode, later-hits)
	}
	t.Logf("429 storm: %d callers × %d requests, %d reached the provider", callers, rounds, hits)
}

// A provider that sends response headers without end (or bytes that are
// never a line) is cut off once they pass a bound, and the next key is
// tried, however long the header timeout: the gateway's memory must not
// follow what a provider sends.
func TestEndlessResponseHeaders(t *testing.T) {
	e := newFaultEnv(t, gateway.Options{}) // the default header timeout: 10 minutes
	p := faultProviders[0]
	const maxSent = 64 << 20 // what the upstream sends at most
	var written [2]atomic.Int64
	endless := func(i int, head string, filler byte) rawFault {
		return func(c *rawConn, _ *http.Request) bool {
			io.WriteString(c, head)
			chunk := bytes.Repeat([]byte{filler}, 32<<10)
			for written[i].Load() < maxSent {
				n, err := c.Write(chunk)
				written[i].Add(int64(n))
				if err != nil {
					return false
				}
			}
			c.waitClosed()
			return false
		}
	}
	name, keys := e.provider(p, endless(0, "HTTP/1.1 200 OK\r\nX-Endless: ", 'a'), endless(1, "", 'z'), nil)
	resp, body, err := e.call(context.Background(), p, name, false)
	if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), keys[2]) {
		t.Errorf("= %d %s (%v), want 200 from the third key", resp.StatusCode, body, err)
	}
	for i := range written {
		if n := written[i].Load(); n >= maxSent {
			t.Errorf("upstream %d sent %d MiB of headers before the gateway let go", i, n>>20)
		}
	}
	t.Logf("bytes sent before the gateway let go: %d and %d", written[0].Load(), written[1].Load())
}

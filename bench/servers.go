package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The mock upstream, the TCP relay and the ReverseProxy each run as a child
// process of the harness (the same binary, re-executed with -role), never
// inside the load generator: sharing one Go runtime would let the load
// generator's goroutines, timers and GC share a scheduler with the server
// under test, and the proxies would not be separate processes the way
// Keybridge is. Separate processes make every target pay the same costs,
// and give each its own CPU and RSS figures from /proc.

const (
	reqBody  = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}`
	sseBody  = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"stream":true}`
	holdBody = `{"model":"bench-hold","messages":[{"role":"user","content":"Hold this stream open."}],"stream":true}`
)

// sseEvents is the number of events in a stream, the last being [DONE].
const sseEvents = 20

var (
	jsonAnswer = []byte(`{"id":"chatcmpl-bench00000000000000000000000000","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is the mock upstream with a short reply."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":17,"total_tokens":31},"system_fingerprint":"fp_bench01"}`)
	sseAnswer  = buildSSE()
)

func buildSSE() [][]byte {
	const head = `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":`
	out := make([][]byte, 0, sseEvents)
	out = append(out, []byte(head+`{"role":"assistant","content":""},"finish_reason":null}]}`+"\n\n"))
	for i := 1; i < sseEvents-2; i++ {
		out = append(out, fmt.Appendf(nil, head+`{"content":"word%02d "},"finish_reason":null}]}`+"\n\n", i))
	}
	out = append(out, []byte(head+`{},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":17,"total_tokens":31}}`+"\n\n"))
	out = append(out, []byte("data: [DONE]\n\n"))
	return out
}

// runRole runs a child role and does not return unless it fails.
func runRole(role string, args []string) error {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := fs.String("upstream", "", "host:port to forward to (relay, reverseproxy)")
	key := fs.String("key", "", "mock: the upstream key it accepts")
	holdMax := fs.Duration("hold-max", 2*time.Minute, "mock: how long a held stream stays open at most")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	switch role {
	case "mock":
		return http.Serve(ln, mockHandler(*key, *holdMax))
	case "relay":
		return relay(ln, *upstream)
	case "passthrough":
		return passthrough(ln, *upstream)
	case "reverseproxy":
		u := &url.URL{Scheme: "http", Host: *upstream}
		return http.Serve(ln, httputil.NewSingleHostReverseProxy(u))
	}
	return fmt.Errorf("unknown role %q", role)
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// mockHandler answers any path like an OpenAI chat completion: JSON, or an
// SSE stream when the body asks for one, flushing every event. A request
// for the model "bench-hold" gets a stream that sends one event a second
// until the client leaves, for the memory phase.
func mockHandler(key string, holdMax time.Duration) http.Handler {
	want := "Bearer " + key
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bp := bodyPool.Get().(*[]byte)
		defer bodyPool.Put(bp)
		n, err := io.ReadFull(r.Body, *bp)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		body := (*bp)[:n]
		// A proxy must replace the client's credential with the upstream
		// key: anything else reaching the provider is a bug worth seeing.
		if auth := r.Header.Get("Authorization"); auth != "" && auth != want {
			http.Error(w, `{"error":{"message":"mock upstream: wrong credential","type":"invalid_request_error"}}`, http.StatusUnauthorized)
			return
		}
		h := w.Header()
		if !bytes.Contains(body, []byte(`"stream":true`)) {
			h["Content-Type"] = []string{"application/json"}
			h["Content-Length"] = []string{fmt.Sprint(len(jsonAnswer))}
			w.Write(jsonAnswer)
			return
		}
		h["Content-Type"] = []string{"text/event-stream"}
		h["Cache-Control"] = []string{"no-cache"}
		f := w.(http.Flusher)
		if bytes.Contains(body, []byte(`"bench-hold"`)) {
			w.Write(sseAnswer[0])
			f.Flush()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			end := time.After(holdMax)
			for {
				select {
				case <-r.Context().Done():
					return
				case <-end:
					w.Write(sseAnswer[len(sseAnswer)-1])
					return
				case <-t.C:
					w.Write(sseAnswer[1])
					f.Flush()
				}
			}
		}
		for _, ev := range sseAnswer {
			w.Write(ev)
			f.Flush()
		}
	})
}

// relay copies bytes both ways between each accepted connection and a new
// one to upstream, with no HTTP parsing: the cost of one more loopback hop
// and nothing else.
func relay(ln net.Listener, upstream string) error {
	return eachPair(ln, upstream, func(c, u net.Conn) {
		done := make(chan struct{})
		go func() {
			io.Copy(u, c)
			u.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, u)
		c.(*net.TCPConn).CloseWrite()
		<-done
	})
}

// eachPair serves every connection ln accepts, on a goroutine of its own,
// with serve given it and a new connection to upstream; both are closed
// when serve returns.
func eachPair(ln net.Listener, upstream string, serve func(c, u net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			serve(c, u)
		}()
	}
}

// passthrough is the least an HTTP/1.1-aware proxy does: one goroutine
// per client connection with a connection of its own to the upstream,
// each request's head and Content-Length body read and written on, and
// the answer passed back as it comes, a chunked one chunk by chunk (each
// written as it arrives, so streams flow). No header is parsed beyond the
// framing and nothing allocates per request: what separates Keybridge
// from this row is Keybridge's own work, not its structure.
func passthrough(ln net.Listener, upstream string) error {
	return eachPair(ln, upstream, func(c, u net.Conn) {
		cbr, ubr := bufio.NewReaderSize(c, 16<<10), bufio.NewReaderSize(u, 16<<10)
		buf := make([]byte, 0, 16<<10)
		for {
			var n int64
			var err error
			if buf, n, _, err = readHead(cbr, buf[:0]); err != nil {
				return
			}
			if buf, err = appendN(cbr, buf, n); err != nil {
				return
			}
			if _, err = u.Write(buf); err != nil {
				return
			}
			if err = passAnswer(c, ubr, buf[:0]); err != nil {
				return
			}
		}
	})
}

// readHead appends a message head from br to buf and returns it with the
// head's Content-Length (0 if none) and whether it is chunked.
func readHead(br *bufio.Reader, buf []byte) ([]byte, int64, bool, error) {
	var n int64
	chunked := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return buf, 0, false, err
		}
		buf = append(buf, line...)
		if len(line) <= 2 {
			return buf, n, chunked, nil
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		name, value := line[:i], bytes.TrimSpace(line[i+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			if n = parseLength(value); n < 0 {
				return buf, 0, false, errProto
			}
		case asciiEqualFold(name, "transfer-encoding"):
			chunked = true
		}
	}
}

// parseLength reads a Content-Length value, -1 if it is not one.
func parseLength(v []byte) int64 {
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' || n > 1<<40 {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	if len(v) == 0 {
		return -1
	}
	return n
}

// appendN appends n bytes from br to buf.
func appendN(br *bufio.Reader, buf []byte, n int64) ([]byte, error) {
	at := len(buf)
	buf = slices.Grow(buf, int(n))[:at+int(n)]
	_, err := io.ReadFull(br, buf[at:])
	return buf, err
}

// passAnswer reads one answer from ubr and writes it to c as it comes.
func passAnswer(c net.Conn, ubr *bufio.Reader, buf []byte) error {
	buf, n, chunked, err := readHead(ubr, buf)
	if err != nil {
		return err
	}
	if !chunked {
		if buf, err = appendN(ubr, buf, n); err != nil {
			return err
		}
		_, err = c.Write(buf)
		return err
	}
	for {
		line, err := ubr.ReadSlice('\n')
		if err != nil {
			return err
		}
		buf = append(buf, line...)
		size, err := parseChunkSize(line)
		if err != nil {
			return err
		}
		if buf, err = appendN(ubr, buf, int64(size)+2); err != nil { // the data and its CRLF
			return err
		}
		if _, err = c.Write(buf); err != nil {
			return err
		}
		buf = buf[:0]
		if size == 0 {
			return nil // no trailers: the mock sends none
		}
	}
}

// proc is a child process the harness started.
type proc struct {
	name string
	cmd  *exec.Cmd
	addr string
	pid  int
	done chan struct{}
	log  *lineLimiter // nil for keybridge, which logs to a file
}

// startRole starts this binary again in a role and waits for its address.
func startRole(role string, args ...string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"-role", role}, args...)...)
	log := &lineLimiter{name: role, w: os.Stderr, keep: 3}
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	p := &proc{name: role, cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), log: log}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				addr <- a
			}
		}
	}()
	go func() { cmd.Wait(); close(p.done) }()
	select {
	case p.addr = <-addr:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before listening", role)
	case <-time.After(10 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%s did not listen within 10s", role)
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitHTTP polls url until it answers, for up to d.
func waitHTTP(ctx context.Context, url string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not answering: %w", url, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lineLimiter passes on a child's first few log lines and counts the rest:
// ReverseProxy logs every stream it drops, thousands in a run.
type lineLimiter struct {
	mu      sync.Mutex
	name    string
	w       io.Writer
	keep    int
	lines   int
	partial bool
}

func (l *lineLimiter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for rest := b; len(rest) > 0; {
		line, tail, found := bytes.Cut(rest, []byte("\n"))
		if !l.partial {
			l.lines++
		}
		if l.lines <= l.keep {
			if !l.partial {
				fmt.Fprintf(l.w, "[%s] ", l.name)
			}
			l.w.Write(line)
			if found {
				fmt.Fprintln(l.w)
			}
		} else if l.lines == l.keep+1 && !l.partial {
			fmt.Fprintf(l.w, "[%s] (further log lines counted, not shown)\n", l.name)
		}
		l.partial = !found
		rest = tail
	}
	return len(b), nil
}

// suppressed is how many lines were not shown.
func (l *lineLimiter) suppressed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(0, l.lines-l.keep)
}

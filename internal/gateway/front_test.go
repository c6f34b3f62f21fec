package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// slowEnv is a running Keybridge whose provider answers after delay,
// and the raw request for it.
func slowEnv(t *testing.T, delay time.Duration) (*env, string) {
	t.Helper()
	e := newEnv(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		time.Sleep(delay)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	body := `{"model":"gpt"}`
	req := fmt.Sprintf("POST /gateway/oai/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		e.OwnerKey, len(body), body)
	return e, req
}

// dialRaw opens a TCP connection to addr for raw HTTP/1.1, closed when
// t ends.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A keep-alive connection carries on across requests slow enough to be
// watched for the client going away, each answered whole, and none taken
// for a client that left: the watch's read, still waiting when its request
// ends, waits for the next request.
func TestKeepAliveAcrossWatchedRequests(t *testing.T) {
	e, req := slowEnv(t, 5*time.Millisecond)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	br := bufio.NewReader(c)
	const n = 20
	for i := range n {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		if err := readAnswer(br); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if i%2 == 1 {
			time.Sleep(3 * time.Millisecond) // an idle gap, too
		}
	}
	if l := e.waitLog(n); strings.Contains(l, "client_gone") {
		t.Errorf("a request was taken for a client that left:\n%s", l)
	}
}

// A client that sends its next request before the slow answer to the
// first gets both answers, in order.
func TestPipelinedRequestDuringWatchedRequest(t *testing.T) {
	e, req := slowEnv(t, 20*time.Millisecond)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // the first is being watched
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := readAnswer(br); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
	if l := e.waitLog(2); strings.Contains(l, "client_gone") {
		t.Errorf("a request was taken for a client that left:\n%s", l)
	}
}

// Shutdown ends at once a connection idle after a watched request, whose
// watch's read waits for the next request.
func TestShutdownEndsConnectionIdleAfterWatchedRequest(t *testing.T) {
	e, req := slowEnv(t, 5*time.Millisecond)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := e.Gateway.Front(ln)
	go front.Serve()
	c := dialRaw(t, ln.Addr().String())
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	if err := readAnswer(br); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := front.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v after %s", err, time.Since(start))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Shutdown took %s", d)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("read after Shutdown: %v, want EOF", err)
	}
}

// A client that leaves during a watched request is noticed: its request
// is logged as 499 and the connection ends. So is one that sent its next
// request along with the slow one (pipelining): it is watched too.
func TestClientLeavingWatchedRequest(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d requests sent", n), func(t *testing.T) {
			e, req := slowEnv(t, 200*time.Millisecond)
			c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
			if _, err := io.WriteString(c, strings.Repeat(req, n)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			start := time.Now()
			c.Close()
			l := e.waitLog(1)
			if !strings.Contains(l, `"status":499`) || !strings.Contains(l, "client_gone") {
				t.Errorf("log line does not record the client leaving:\n%s", l)
			}
			if d := time.Since(start); d > 150*time.Millisecond {
				t.Errorf("noticed after %s, not before the answer", d)
			}
		})
	}
}

// Pipelined requests behind watched ones are each answered, in order,
// with none taken for a client that left; the connection then carries
// on as usual.
func TestPipelinedRequestsBehindWatchedOnes(t *testing.T) {
	e, req := slowEnv(t, 5*time.Millisecond)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	br := bufio.NewReader(c)
	const n = 6
	if _, err := io.WriteString(c, strings.Repeat(req, n)); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := readAnswer(br); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
	// A pipelined pair sent in two writes, the second while the first
	// is watched.
	for range 3 {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := readAnswer(br); err != nil {
				t.Fatalf("answer %d of a pair: %v", i, err)
			}
		}
	}
	if l := e.waitLog(n + 6); strings.Contains(l, "client_gone") {
		t.Errorf("a request was taken for a client that left:\n%s", l)
	}
}

// Pipelined requests past what the connection's buffer holds, each one
// watched: the byte a watch reads past the buffer is kept until it is
// read, however many requests the buffer serves before that, and no
// later watch reads over it.
func TestPipelinedPastTheBufferBehindWatchedOnes(t *testing.T) {
	e, req := slowEnv(t, 3*time.Millisecond)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	n := 3*4096/len(req) + 1 // the buffer holds about a third of them
	if _, err := io.WriteString(c, strings.Repeat(req, n)); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := readAnswer(br); err != nil {
			t.Fatalf("answer %d of %d: %v", i, n, err)
		}
	}
}

// A request for the management API pipelined behind a watched gateway
// request goes to net/http whole: the byte the watch read past the
// buffer reaches it as well.
func TestPipelinedAPIRequestBehindWatchedOne(t *testing.T) {
	e, req := slowEnv(t, 30*time.Millisecond)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	br := bufio.NewReader(c)
	// Enough of the second request line to say it is not the
	// gateway's, and no more until the watch reads past it.
	if _, err := io.WriteString(c, req+"GET /healthz "); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if _, err := io.WriteString(c, "HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := readAnswer(br); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
}

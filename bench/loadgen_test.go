package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveOnce answers one request on a pipe with the given pieces, written
// one by one, so the client sees a chunk split across reads.
func serveOnce(t *testing.T, pieces ...string) *client {
	t.Helper()
	cli, srv := net.Pipe()
	t.Cleanup(func() { cli.Close(); srv.Close() })
	go func() {
		br := bufio.NewReader(srv)
		for { // the request head, then its body
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
		}
		br.Discard(len(reqBody))
		for _, p := range pieces {
			if _, err := srv.Write([]byte(p)); err != nil {
				return
			}
		}
	}()
	return &client{conn: cli, br: bufio.NewReaderSize(cli, 32<<10)}
}

func TestClientReadsChunkedStream(t *testing.T) {
	var stream strings.Builder
	for _, ev := range sseAnswer {
		fmt.Fprintf(&stream, "%x\r\n%s\r\n", len(ev), ev)
	}
	body := stream.String()
	mid := len(body) / 2
	c := serveOnce(t,
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"+
			"Server-Timing: keybridge;dur=0.042, upstream;dur=1.5\r\n\r\n",
		body[:mid], body[mid:], "0\r\n\r\n")
	var gaps hist
	var a answer
	if err := c.do(buildRequest("x", "/", nil, reqBody), true, &gaps, &a); err != nil {
		t.Fatal(err)
	}
	if err := check(&a, true, 0, sseEvents); err != nil {
		t.Errorf("check: %v", err)
	}
	if got, want := gaps.n, uint64(sseEvents-1); got != want {
		t.Errorf("gaps recorded: got %d, want %d", got, want)
	}
	if a.stKB != 0.042 || a.stUp != 1.5 {
		t.Errorf("Server-Timing: got keybridge %v upstream %v, want 0.042 and 1.5", a.stKB, a.stUp)
	}
}

func TestClientReadsContentLength(t *testing.T) {
	c := serveOnce(t, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(jsonAnswer)), string(jsonAnswer))
	var a answer
	if err := c.do(buildRequest("x", "/", nil, reqBody), false, nil, &a); err != nil {
		t.Fatal(err)
	}
	if err := check(&a, false, len(jsonAnswer), 0); err != nil {
		t.Errorf("check: %v", err)
	}
}

func TestClientSeesCutStream(t *testing.T) {
	c := serveOnce(t, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(sseAnswer[0]), sseAnswer[0]))
	var a answer
	if err := c.do(buildRequest("x", "/", nil, reqBody), true, nil, &a); err != nil {
		t.Fatal(err)
	}
	if err := check(&a, true, 0, sseEvents); err == nil {
		t.Errorf("check passed a stream of %d event without [DONE]", a.events)
	}
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.9, 900 * time.Microsecond}, {0.99, 990 * time.Microsecond}} {
		got := h.quantile(tc.q)
		if diff := got - tc.want; diff < -tc.want/200 || diff > tc.want/200 {
			t.Errorf("quantile(%v): got %v, want %v ±0.5%%", tc.q, got, tc.want)
		}
	}
}

// The pass-through row passes the mock's answers whole: JSON, and a
// stream whose events arrive one by one, on one keep-alive connection.
func TestPassthroughPassesAnswers(t *testing.T) {
	mockLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mock := &http.Server{Handler: mockHandler("sk-bench-test", time.Second)}
	go mock.Serve(mockLn)
	t.Cleanup(func() { mock.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go passthrough(ln, mockLn.Addr().String())
	t.Cleanup(func() { ln.Close() })

	c, err := dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	c.conn.SetDeadline(time.Now().Add(10 * time.Second)) // an answer cut short fails, not hangs
	auth := []string{"Authorization: Bearer sk-bench-test"}
	for range 2 {
		var a answer
		if err := c.do(buildRequest(ln.Addr().String(), "/v1/chat/completions", auth, reqBody), false, nil, &a); err != nil {
			t.Fatal(err)
		}
		if err := check(&a, false, len(jsonAnswer), 0); err != nil {
			t.Errorf("JSON: %v", err)
		}
		var gaps hist
		if err := c.do(buildRequest(ln.Addr().String(), "/v1/chat/completions", auth, sseBody), true, &gaps, &a); err != nil {
			t.Fatal(err)
		}
		if err := check(&a, true, 0, sseEvents); err != nil {
			t.Errorf("SSE: %v", err)
		}
	}
}

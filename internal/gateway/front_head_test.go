package gateway_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// headBound is the bound on a gateway request's head that docs/gateway.md
// gives (net/http's default MaxHeaderBytes and its 4 KiB over it).
const headBound = 1<<20 + 4096

// headEcho is what headEnv's provider answers: what it got of the
// request.
type headEcho struct {
	Pad     int    `json:"pad"`      // bytes of X-Pad values
	BodyLen int    `json:"body_len"` // bytes of body
	BodySHA string `json:"body_sha"`
}

// headEnv is a running Keybridge whose provider echoes what it got of
// each request (it takes heads of any size up to 8 MiB).
func headEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		pad := 0
		for _, v := range r.Header.Values("X-Pad") {
			pad += len(v)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(headEcho{Pad: pad, BodyLen: int(n), BodySHA: hex.EncodeToString(h.Sum(nil))})
	}))
	up.Config.MaxHeaderBytes = 8 << 20
	up.Start()
	t.Cleanup(up.Close)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	return e
}

// rawRequest is a gateway request whose head (request line to the blank
// line that ends the headers) is exactly headLen bytes, padded with X-Pad
// headers, and the number of bytes of X-Pad values in it.
func rawRequest(t *testing.T, e *env, headLen int, body string) (string, int) {
	t.Helper()
	base := fmt.Sprintf("POST /gateway/oai/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n",
		e.OwnerKey, len(body))
	const line, overhead = 8 << 10, len("X-Pad: \r\n")
	need := headLen - len(base) - len("\r\n")
	if need < 0 || need > 0 && need < overhead+1 {
		t.Fatalf("no head of %d bytes", headLen)
	}
	var b strings.Builder
	b.WriteString(base)
	pad := 0
	for need > 0 {
		n := min(need, line)
		if rest := need - n; rest > 0 && rest < overhead+1 {
			n -= overhead + 1 // leave the last line room for a value
		}
		b.WriteString("X-Pad: ")
		b.WriteString(strings.Repeat("a", n-overhead))
		b.WriteString("\r\n")
		pad += n - overhead
		need -= n
	}
	b.WriteString("\r\n")
	if b.Len() != headLen {
		t.Fatalf("head of %d bytes, want %d", b.Len(), headLen)
	}
	b.WriteString(body)
	return b.String(), pad
}

// send writes s to c in the background; a write the server cuts short
// (it stopped reading) is no failure.
func send(c net.Conn, s string) {
	go io.WriteString(c, s)
}

// readEcho reads one answer and what the provider echoed in it.
func readEcho(t *testing.T, br *bufio.Reader) headEcho {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", resp.StatusCode, raw)
	}
	var echo headEcho
	if err := json.Unmarshal(raw, &echo); err != nil {
		t.Fatalf("answer %s: %v", raw, err)
	}
	return echo
}

// read431 reads an answer that must be the 431 of a head over the bound,
// and the end of the connection after it.
func read431(t *testing.T, br *bufio.Reader) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	raw, err := io.ReadAll(resp.Body) // no length: to the connection's end
	if err != nil {
		t.Fatalf("reading the answer's body to the connection's end: %v", err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !resp.Close ||
		string(raw) != "431 Request Header Fields Too Large" {
		t.Fatalf("answer %d (Connection: %q) %q, want 431 with Connection: close",
			resp.StatusCode, resp.Header.Get("Connection"), raw)
	}
}

// A head of exactly the bound is served whole, on a connection's first
// request; one byte more is answered 431 and the connection closes.
func TestRequestHeadBound(t *testing.T) {
	e := headEnv(t)
	addr := strings.TrimPrefix(e.URL, "http://")
	body := `{"model":"gpt"}`

	req, pad := rawRequest(t, e, headBound, body)
	c := dialRaw(t, addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	send(c, req)
	if echo := readEcho(t, bufio.NewReader(c)); echo.Pad != pad || echo.BodyLen != len(body) {
		t.Errorf("provider got %d bytes of X-Pad and %d of body, want %d and %d", echo.Pad, echo.BodyLen, pad, len(body))
	}

	req, _ = rawRequest(t, e, headBound+1, body)
	c = dialRaw(t, addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	send(c, req)
	read431(t, bufio.NewReader(c))
}

// A client that sends header lines without end gets its 431 once about
// the bound has been read, well before the header timeout (10 s), and the
// connection closes.
func TestEndlessRequestHead(t *testing.T) {
	e := headEnv(t)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	var sent atomic.Int64
	go func() {
		if _, err := fmt.Fprintf(c, "POST /gateway/oai/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n", e.OwnerKey); err != nil {
			return
		}
		line := []byte("X-Pad: " + strings.Repeat("a", 1000) + "\r\n")
		for {
			n, err := c.Write(line)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	start := time.Now()
	c.SetReadDeadline(start.Add(5 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.Peek(1); err != nil {
		t.Fatalf("no answer after %s (%d bytes sent): %v", time.Since(start), sent.Load(), err)
	}
	// What the client got out when the answer came: the bound, and what
	// the two sockets' buffers hold (tens of KiB with the client's send
	// buffer this small).
	if n := sent.Load(); n > headBound+4<<20 {
		t.Errorf("answered after %d bytes of head, bound %d", n, headBound)
	}
	read431(t, br)
}

// A body larger than the head's bound, behind a small head, passes to
// the provider whole.
func TestLargeBodyPassesHeadBound(t *testing.T) {
	e := headEnv(t)
	body := `{"model":"gpt","pad":"` + strings.Repeat("b", 3*headBound) + `"}`
	sum := sha256.Sum256([]byte(body))
	req, _ := rawRequest(t, e, 300, body)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 { // and again on the kept-alive connection
		send(c, req)
		if echo := readEcho(t, br); echo.BodyLen != len(body) || echo.BodySHA != hex.EncodeToString(sum[:]) {
			t.Fatalf("request %d: provider got %d bytes of body (sha256 %s), want %d", i, echo.BodyLen, echo.BodySHA, len(body))
		}
	}
}

// Requests pipelined behind a normal one are each served, one with a
// head of the whole bound among them: the part of its head read with the
// request before it counts, once.
func TestPipelinedRequestsHeadBound(t *testing.T) {
	e := headEnv(t)
	body := `{"model":"gpt"}`
	small, smallPad := rawRequest(t, e, 400, body)
	big, pad := rawRequest(t, e, headBound, body)
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	send(c, small+small+big+small)
	br := bufio.NewReader(c)
	for i, want := range []int{smallPad, smallPad, pad, smallPad} {
		if echo := readEcho(t, br); echo.Pad != want {
			t.Fatalf("request %d: provider got %d bytes of X-Pad, want %d", i, echo.Pad, want)
		}
	}
}

// Each request on a kept-alive connection has the whole bound, afresh:
// two heads of three quarters of it are served one after the other, and a
// third over it is answered 431.
func TestKeepAliveRequestHeadBoundAfresh(t *testing.T) {
	e := headEnv(t)
	body := `{"model":"gpt"}`
	c := dialRaw(t, strings.TrimPrefix(e.URL, "http://"))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	req, pad := rawRequest(t, e, headBound*3/4, body)
	for i := range 2 {
		send(c, req)
		if echo := readEcho(t, br); echo.Pad != pad {
			t.Fatalf("request %d: provider got %d bytes of X-Pad, want %d", i, echo.Pad, pad)
		}
	}
	req, _ = rawRequest(t, e, headBound+1, body)
	send(c, req)
	read431(t, br)
}

// Requests that are not the gateway's keep net/http's own bound (1 MiB
// and its 4 KiB over it), on a connection's first request as on one
// handed over after a gateway request.
func TestNonGatewayRequestHeadBound(t *testing.T) {
	e := headEnv(t)
	addr := strings.TrimPrefix(e.URL, "http://")
	huge := "GET /api/v1/users/me HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", headBound+4096) + "\r\n\r\n"
	gw, _ := rawRequest(t, e, 400, `{"model":"gpt"}`)
	for name, first := range map[string]string{"first request": "", "after a gateway request": gw} {
		c := dialRaw(t, addr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		send(c, first+huge)
		br := bufio.NewReader(c)
		if first != "" {
			readEcho(t, br)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: reading the answer: %v", name, err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s: status %d, want 431", name, resp.StatusCode)
		}
	}
}

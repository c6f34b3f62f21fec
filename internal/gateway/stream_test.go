package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// sseUpstream streams events one at a time: each waits for next to
// receive, so a gateway that held events back would never finish.
func sseUpstream(t *testing.T, next chan struct{}, events int, cut bool) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for i := range events {
			select {
			case <-next:
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Second):
				return
			}
			fmt.Fprintf(w, "data: {\"n\":%d}\n\n", i)
			w.(http.Flusher).Flush()
		}
		if cut {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(s.Close)
	return s
}

func TestStreamPassesEachEventAtOnce(t *testing.T) {
	e := newEnv(t)
	next := make(chan struct{})
	up := sseUpstream(t, next, 5, false)
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)

	resp, err := http.DefaultClient.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("X-Accel-Buffering") != "no" || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("headers = %v", resp.Header)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 5 {
		next <- struct{}{} // the upstream sends event i only now
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprintf("data: {\"n\":%d}\n", i); line != want {
			t.Fatalf("event %d = %q, want %q", i, line, want)
		}
		br.ReadString('\n')
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "data: [DONE]\n\n" {
		t.Errorf("end = %q, %v", rest, err)
	}
}

func TestCutStreamEndsWithErrorEventAndAbort(t *testing.T) {
	for _, tc := range []struct{ typ, base, path, want string }{
		{"openai", "/v1", "/chat/completions", `data: {"error":{"code":"bad_gateway"`},
		{"anthropic", "", "/v1/messages", "event: error\ndata: {\"error\":{\"message\":"},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			e := newEnv(t)
			next := make(chan struct{}, 2)
			next <- struct{}{}
			next <- struct{}{}
			up := sseUpstream(t, next, 2, true)
			e.provider(map[string]any{"name": "p", "type": tc.typ, "base_url": up.URL + tc.base})
			e.addKey("p", canary(t, "sk-"), 0)
			resp, err := http.DefaultClient.Do(e.post("/gateway/p"+tc.path, e.OwnerKey, `{"stream":true}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("reading the cut stream: err = %v, want unexpected EOF (no final chunk)", err)
			}
			s := string(b)
			if !strings.HasPrefix(s, "data: {\"n\":0}\n\ndata: {\"n\":1}\n\n") || !strings.Contains(s, tc.want) {
				t.Errorf("stream = %q, want both events then %q", s, tc.want)
			}
			if strings.Contains(s, "[DONE]") {
				t.Error("a cut stream ended with [DONE]")
			}
		})
	}
}

func TestIdleStreamTimesOut(t *testing.T) {
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{IdleTimeout: 200 * time.Millisecond}})
	next := make(chan struct{}, 1)
	next <- struct{}{}
	up := sseUpstream(t, next, 2, false) // the second event never comes
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	resp, err := http.DefaultClient.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(string(b), "sent nothing for 200ms") {
		t.Errorf("= %q, %v; want the first event, an error event, then an abort", b, err)
	}
}

func TestClientCancelReachesUpstream(t *testing.T) {
	e := newEnv(t)
	canceled := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(10 * time.Second):
		}
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	ctx, cancel := context.WithCancel(context.Background())
	req := e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"stream":true}`).WithContext(ctx)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	bufio.NewReader(resp.Body).ReadString('\n')
	cancel()
	resp.Body.Close()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request was not canceled")
	}
	if l := e.waitLog(1); !strings.Contains(l, `"status":499`) {
		t.Errorf("log line does not record 499:\n%s", l)
	}
}

func TestClientCancelWhileWaitingForHeaders(t *testing.T) {
	e := newEnv(t)
	canceled := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // net/http watches the connection once the body is read
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(10 * time.Second):
		}
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := http.DefaultClient.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{}`).WithContext(ctx))
	if err == nil {
		t.Fatal("the request succeeded")
	}
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request was not canceled")
	}
}

func TestHeaderTimeoutIs504(t *testing.T) {
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{HeaderTimeout: 150 * time.Millisecond}})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "g", "type": "google", "base_url": up.URL})
	e.addKey("g", canary(t, "AIza"), 0)
	req := e.post("/gateway/g/v1beta/models/gemini:generateContent", "", `{}`)
	req.Header.Set("x-goog-api-key", e.OwnerKey)
	resp, body := e.do(req)
	if resp.StatusCode != 504 || !strings.Contains(string(body), `"DEADLINE_EXCEEDED"`) {
		t.Errorf("= %d %s, want 504 in Google's shape", resp.StatusCode, body)
	}
}

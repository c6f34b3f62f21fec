package gateway_test

// What a streamed answer is recorded as (SPEC §7.7, §7.8): its usage
// row's status and stream flag, the request metric and the log line.

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// rowStore is a real store that keeps a copy of every usage row written
// to it, for the fields the usage API does not aggregate.
type rowStore struct {
	store.Store
	mu   sync.Mutex
	rows []keybridge.Usage
}

func (s *rowStore) InsertUsage(ctx context.Context, batch []keybridge.Usage) error {
	err := s.Store.InsertUsage(ctx, batch)
	if err == nil {
		s.mu.Lock()
		s.rows = append(s.rows, batch...)
		s.mu.Unlock()
	}
	return err
}

// wait returns the rows once there are n, at most 5 seconds.
func (s *rowStore) wait(t *testing.T, n int) []keybridge.Usage {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		rows := append([]keybridge.Usage(nil), s.rows...)
		s.mu.Unlock()
		if len(rows) >= n {
			return rows
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d usage rows after 5 s, want %d", len(rows), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newRowEnv is a fault env over a rowStore, with a metrics registry.
func newRowEnv(t *testing.T, opts gateway.Options) (*faultEnv, *rowStore, *prometheus.Registry) {
	rs := &rowStore{Store: storetest.SQLite(t)}
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	e := &faultEnv{env: newEnvWith(t, rs, envOptions{Gateway: opts}), up: newRawUpstream(t),
		client: &http.Client{Transport: &http.Transport{}, Timeout: outerDeadline}}
	t.Cleanup(e.client.CloseIdleConnections)
	return e, rs, reg
}

// requestsOfClass reads keybridge_gateway_requests_total{status=class}.
func requestsOfClass(t *testing.T, reg *prometheus.Registry, class string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if f.GetName() != "keybridge_gateway_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "status" && l.GetValue() == class {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// A stream the provider breaks off after its first event began as a 200,
// but the client got an error event and an aborted answer: the row, the
// request metric and the log line record the status of that error, 502
// for a cut and 504 for the idle timeout, and the usage API counts it as
// an error.
func TestCutStreamIsRecordedAsItsError(t *testing.T) {
	p := faultProviders[0]
	sse := "text/event-stream"
	for _, tc := range []struct {
		name   string
		end    func(c *rawConn)
		status int
		code   string
	}{
		{"hung up", (*rawConn).rst, http.StatusBadGateway, "bad_gateway"},
		{"silent past the idle timeout", (*rawConn).waitClosed, http.StatusGatewayTimeout, "gateway_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, rows, reg := newRowEnv(t, gateway.Options{IdleTimeout: faultIdleTimeout})
			name, _ := e.provider(p, rawStream(sse, p.events[:1], tc.end))
			resp, body, err := e.call(context.Background(), p, name, true)
			if resp.StatusCode != http.StatusOK || err == nil {
				t.Fatalf("= %d %q (%v), want the stream's 200, then an abort", resp.StatusCode, body, err)
			}
			if _, datas := sseEvents(string(body)); len(datas) != 2 || !strings.Contains(datas[1], `"code":"`+tc.code+`"`) {
				t.Errorf("stream = %q, want the first event, then an error event of %s", body, tc.code)
			}
			got := rows.wait(t, 1)
			if len(got) != 1 || got[0].Status != tc.status || !got[0].Stream {
				t.Errorf("usage rows = %+v, want one streamed row of status %d", got, tc.status)
			}
			u := newUsageReader(e.env)
			for _, g := range u.wait("provider", 1) {
				if g.Errors != 1 {
					t.Errorf("usage API: %d errors, want 1", g.Errors)
				}
			}
			logs := e.waitLog(1)
			if want := fmt.Sprintf(`"status":%d`, tc.status); !strings.Contains(logs, want) || !strings.Contains(logs, `"upstream_status":200`) {
				t.Errorf("log line does not say %s with the provider's 200:\n%s", want, logs)
			}
			if n := requestsOfClass(t, reg, "5xx"); n != 1 {
				t.Errorf("keybridge_gateway_requests_total{status=\"5xx\"} = %v, want 1", n)
			}
		})
	}
}

// rawChunked answers 200 with a body of content type ct sent chunked, in
// the parts given, properly ended.
func rawChunked(ct string, parts ...string) rawFault {
	return func(c *rawConn, _ *http.Request) bool {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n", ct)
		cw := httputil.NewChunkedWriter(c)
		for _, p := range parts {
			if _, err := cw.Write([]byte(p)); err != nil {
				return false
			}
		}
		if cw.Close() != nil {
			return false
		}
		_, err := c.Write([]byte("\r\n"))
		return err == nil
	}
}

// A row's stream says whether the request was a streaming one, not how
// the provider framed its answer: a chat completion that did not ask to
// stream is no stream though its answer came chunked, and Gemini's
// :streamGenerateContent is one without alt=sse (a JSON array), chunked
// or not. Whatever comes chunked still passes as it arrives, unbuffered.
func TestStreamIsWhatTheRequestAskedFor(t *testing.T) {
	e, rows, _ := newRowEnv(t, gateway.Options{})
	oai := faultProviders[0]
	gem := faultProviders[2]
	chat := `{"id":"c1","object":"chat.completion","choices":[]}`
	array := []string{`[{"candidates":[{"content":{"parts":[{"text":"hel"}]}}]}`, `,` + "\r\n" + `{"candidates":[{"content":{"parts":[{"text":"lo"}]}}]}]`}
	oaiName, _ := e.provider(oai, rawChunked("application/json", chat[:10], chat[10:]))
	gemChunked, _ := e.provider(gem, rawChunked("application/json", array...))
	gemWhole, _ := e.provider(gem, rawJSON(200, strings.Join(array, "")))
	for _, tc := range []struct {
		name, path, model, body string
		stream, flows           bool
	}{
		{"chunked JSON chat", "/gateway/" + oaiName + "/chat/completions", "gpt-chunked", chat, false, true},
		{"chunked Gemini stream", "/gateway/" + gemChunked + "/v1beta/models/gemini-chunked:streamGenerateContent", "gemini-chunked", strings.Join(array, ""), true, true},
		{"Gemini stream with a length", "/gateway/" + gemWhole + "/v1beta/models/gemini-whole:streamGenerateContent", "gemini-whole", strings.Join(array, ""), true, false},
	} {
		resp, body := e.do(e.post(tc.path, e.OwnerKey, `{"model":"`+tc.model+`","messages":[]}`))
		if resp.StatusCode != http.StatusOK || string(body) != tc.body {
			t.Errorf("%s: = %d %q, want 200 %q", tc.name, resp.StatusCode, body, tc.body)
		}
		if got := resp.Header.Get("X-Accel-Buffering") == "no"; got != tc.flows {
			t.Errorf("%s: X-Accel-Buffering = %q, want \"no\" only on an answer that passes as it arrives", tc.name, resp.Header.Get("X-Accel-Buffering"))
		}
	}
	byModel := map[string]keybridge.Usage{}
	for _, r := range rows.wait(t, 3) {
		byModel[r.Model] = r
	}
	for model, want := range map[string]bool{"gpt-chunked": false, "gemini-chunked": true, "gemini-whole": true} {
		if r, ok := byModel[model]; !ok || r.Stream != want {
			t.Errorf("row of %s: %+v, want stream=%v", model, r, want)
		}
	}
}

// A stream request the gateway refuses itself is recorded as a stream
// too: whether a request is one is what it asked for.
func TestRefusedStreamIsAStream(t *testing.T) {
	e, rows, _ := newRowEnv(t, gateway.Options{})
	name, _ := e.provider(faultProviders[0], rawJSON(200, `{}`))
	key := restrictedKey(e.env, "gpt-allowed")
	for _, body := range []string{`{"model":"gpt-refused","stream":true,"messages":[]}`, `{"model":"gpt-refused-too","messages":[]}`} {
		if resp, b := e.do(e.post("/gateway/"+name+"/chat/completions", key, body)); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: = %d %s, want 403", body, resp.StatusCode, b)
		}
	}
	byModel := map[string]keybridge.Usage{}
	for _, r := range rows.wait(t, 2) {
		byModel[r.Model] = r
	}
	for model, want := range map[string]bool{"gpt-refused": true, "gpt-refused-too": false} {
		if r, ok := byModel[model]; !ok || r.Stream != want || r.Status != http.StatusForbidden {
			t.Errorf("row of %s: %+v, want status 403 and stream=%v", model, r, want)
		}
	}
}

// A stream the provider fails in band (an error event after its 200) is
// recorded with the status the provider gives that error, not the 200 it
// began with, and charged what it read: the row, the request metric and
// the log line say so, the usage API counts it as an error, and the
// client gets the stream exactly as the provider sent it. The Anthropic
// SDK reading it through the gateway proves the error event is one it
// reads as the stream's failure.
func TestStreamFailedInBandIsRecordedAsItsError(t *testing.T) {
	e, rows, reg := newRowEnv(t, gateway.Options{})
	sse := "text/event-stream"
	oai, ant, gem := faultProviders[0], faultProviders[1], faultProviders[2]
	antEvents := []string{ant.events[0], ant.events[1],
		"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"}
	oaiEvents := []string{oai.events[0],
		"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"}
	gemEvents := []string{gem.events[0],
		"data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n"}
	antName, _ := e.provider(ant, rawChunked(sse, antEvents...))
	oaiName, _ := e.provider(oai, rawChunked(sse, oaiEvents...))
	gemName, _ := e.provider(gem, rawChunked(sse, gemEvents...))

	st := antClient(e.env, antName, e.OwnerKey, false).Messages.NewStreaming(context.Background(), antMessage())
	n := 0
	for st.Next() {
		n++
	}
	if err := st.Err(); n != 2 || err == nil || !strings.Contains(err.Error(), "overloaded_error") {
		t.Errorf("Anthropic SDK: %d events, then %v; want 2, then the overloaded_error", n, err)
	}
	st.Close()
	for _, tc := range []struct{ path, model, want string }{
		{"/gateway/" + oaiName + "/chat/completions", "gpt-failed", strings.Join(oaiEvents, "")},
		{"/gateway/" + gemName + "/v1beta/models/gemini-failed:streamGenerateContent?alt=sse", "gemini-failed", strings.Join(gemEvents, "")},
	} {
		resp, body := e.do(e.post(tc.path, e.OwnerKey, `{"model":"`+tc.model+`","stream":true,"messages":[]}`))
		if resp.StatusCode != http.StatusOK || string(body) != tc.want {
			t.Errorf("%s: = %d %q, want the provider's 200 %q", tc.model, resp.StatusCode, body, tc.want)
		}
	}

	byModel := map[string]keybridge.Usage{}
	for _, r := range rows.wait(t, 3) {
		byModel[r.Model] = r
	}
	for model, want := range map[string]keybridge.Usage{
		"claude-sonnet-4-5": {Status: 529, InputTokens: 3, OutputTokens: 1},
		"gpt-failed":        {Status: http.StatusInternalServerError},
		"gemini-failed":     {Status: http.StatusServiceUnavailable},
	} {
		r := byModel[model]
		if r.Status != want.Status || !r.Stream || r.InputTokens != want.InputTokens || r.OutputTokens != want.OutputTokens {
			t.Errorf("row of %s: %+v, want a stream of status %d with %d input and %d output tokens", model, r, want.Status, want.InputTokens, want.OutputTokens)
		}
	}
	u := newUsageReader(e.env)
	for _, g := range u.wait("provider", 3) {
		if g.Errors != 1 {
			t.Errorf("usage API, provider %s: %d errors, want 1", g.Key, g.Errors)
		}
	}
	logs := e.waitLog(3)
	for _, status := range []string{`"status":529`, `"status":500`, `"status":503`} {
		if !strings.Contains(logs, status) {
			t.Errorf("log lines do not say %s:\n%s", status, logs)
		}
	}
	if strings.Count(logs, `"upstream_status":200`) != 3 {
		t.Errorf("log lines do not all keep the provider's 200:\n%s", logs)
	}
	if n := requestsOfClass(t, reg, "5xx"); n != 3 {
		t.Errorf("keybridge_gateway_requests_total{status=\"5xx\"} = %v, want 3", n)
	}
}

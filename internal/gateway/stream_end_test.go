package gateway_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A client that hangs up as soon as it has a chunked stream's last event,
// before the provider's end of the body arrives, took the whole answer:
// it is recorded with its status, not as gone (499).
func TestClientLeavingAtTheLastEventIsNotGone(t *testing.T) {
	e := newEnv(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"w%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
		w.(http.Flusher).Flush()
		// The end of the chunked body comes a moment after the last
		// event, as a busy provider's can.
		time.Sleep(20 * time.Millisecond)
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", canary(t, "sk-"), 0)

	resp, err := http.DefaultClient.Do(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"m","stream":true,"stream_options":{"include_usage":false}}`))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("the stream ended before [DONE]: %v", err)
		}
		if strings.HasPrefix(line, "data: [DONE]") {
			break
		}
	}
	resp.Body.Close() // before the body's end: the connection closes
	logs := e.waitLog(1)
	if !strings.Contains(logs, `"status":200`) || strings.Contains(logs, `"client_gone":true`) {
		t.Errorf("a stream read to its last event was logged as abandoned:\n%s", logs)
	}
}

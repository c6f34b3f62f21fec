package gateway_test

import (
	"bytes"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/testsupport"
)

// panicLog is a request log that panics with a value holding a secret, as
// a bug anywhere on a request's path might.
type panicLog struct{ secret string }

func (p panicLog) Write([]byte) (int, error) {
	panic(fmt.Errorf("request log refused the line of upstream key %s", p.secret))
}

// TestRecoveredPanicLogsNoValue provokes a panic while the gateway serves
// a request, over HTTP/1.1 (the gateway's own front) and HTTP/2 (net/http):
// the panic is recovered and logged with where it happened, but never with
// its value, which could hold anything, secrets included.
func TestRecoveredPanicLogsNoValue(t *testing.T) {
	secret := canary(t, "sk-panic-")
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{RequestLog: panicLog{secret}}})
	// net/http logs what it recovers itself through the standard logger.
	var std testsupport.SyncBuffer
	log.SetOutput(&std)
	defer log.SetOutput(os.Stderr)

	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{
		"HTTP/1.1": {Transport: &http.Transport{}},
		"HTTP/2":   {Transport: &http.Transport{Protocols: &h2c}},
	}
	for name, c := range clients {
		resp, err := c.Do(e.post("/gateway/nope/chat/completions", e.OwnerKey, `{"model":"m"}`))
		if err == nil {
			resp.Body.Close()
			if resp.ProtoMajor != map[string]int{"HTTP/1.1": 1, "HTTP/2": 2}[name] {
				t.Errorf("%s client spoke %s", name, resp.Proto)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(e.logs(), "gateway: panic serving a request") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("logged %d recovered panics, want 2:\n%s\n%s", strings.Count(e.logs(), "gateway: panic serving a request"), e.logs(), std.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for where, text := range map[string]string{"the gateway's log": e.logs(), "net/http's log": std.String()} {
		if strings.Contains(text, secret) {
			t.Errorf("%s holds the panic's secret:\n%s", where, text)
		}
	}
	if !strings.Contains(e.logs(), `"panic_type":"*fmt.wrapError"`) && !strings.Contains(e.logs(), `"panic_type":"*errors.errorString"`) {
		t.Errorf("the log does not name the panic's type:\n%s", e.logs())
	}
	if !bytes.Contains([]byte(e.logs()), []byte("panic_test.go")) {
		t.Errorf("the log holds no stack naming where the panic happened:\n%s", e.logs())
	}
}

package httpapi_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"github.com/keybridge/keybridge/internal/httpapi"
)

// An error that says the database cannot be reached answers 503
// unavailable, retryable, without its text; any other unknown error stays a
// 500 without detail.
func TestWriteErrorDatabaseUnavailable(t *testing.T) {
	for _, c := range []struct {
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{fmt.Errorf("create API key: begin: %w", &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5432}, Err: syscall.ECONNREFUSED}),
			http.StatusServiceUnavailable, "unavailable", "1"},
		{errors.New("create API key: column secret_10.1.2.3 does not exist"), http.StatusInternalServerError, "internal", ""},
	} {
		var logs bytes.Buffer
		rec := httptest.NewRecorder()
		httpapi.WriteError(rec, httptest.NewRequest("POST", "/api/v1/api-keys", nil), slog.New(slog.NewJSONHandler(&logs, nil)), c.err)
		var body struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("WriteError(%v) body %s: %v", c.err, rec.Body, err)
		}
		if rec.Code != c.status || body.Error.Code != c.code {
			t.Errorf("WriteError(%v) = %d %s, want %d %s", c.err, rec.Code, body.Error.Code, c.status, c.code)
		}
		if got := rec.Header().Get("Retry-After"); got != c.retryAfter {
			t.Errorf("WriteError(%v): Retry-After %q, want %q", c.err, got, c.retryAfter)
		}
		if strings.Contains(rec.Body.String(), "10.1.2.3") {
			t.Errorf("WriteError(%v) told the client the internal error: %s", c.err, rec.Body)
		}
		if !strings.Contains(logs.String(), "10.1.2.3") {
			t.Errorf("WriteError(%v) did not log the error: %s", c.err, logs.String())
		}
	}
}

package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkProxyJSON is one whole proxied request over loopback: a raw
// keep-alive HTTP/1.1 client, the gateway, and a net/http upstream, all in
// this process. It is for profiles (-cpuprofile); bench/ measures the
// real binary against a relay and ReverseProxy.
func BenchmarkProxyJSON(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchProxyJSON(b, false) })
	b.Run("limits", func(b *testing.B) { benchProxyJSON(b, true) })
}

func benchProxyJSON(b *testing.B, limits bool) {
	e := newEnv(b)
	answer := strings.Repeat("x", 400)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	}))
	defer up.Close()
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", "sk-bench-0123456789abcdef", 0)
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}`
	key := e.OwnerKey
	if limits {
		key = e.api("POST", "/api/v1/api-keys", e.OwnerKey, map[string]any{"name": "limited", "permissions": []string{"gateway:invoke"},
			"rate_limit_rpm": 1_000_000_000, "rate_limit_tpm": 1_000_000_000_000, "token_budget": 1_000_000_000_000_000, "budget_period": "month"}, 201)["key"].(string)
	}
	req := fmt.Sprintf("POST /gateway/oai/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		strings.TrimPrefix(e.URL, "http://"), key, len(body), body)

	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for pb.Next() {
			if _, err := io.WriteString(c, req); err != nil {
				b.Error(err)
				return
			}
			if err := readAnswer(br); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	// CPU time, not wall time, is what the shared machine leaves
	// comparable: the client and the upstream are in it too.
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	user := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano())
	sys := time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(user.Microseconds())/float64(b.N), "user-µs/op")
	b.ReportMetric(float64((user+sys).Microseconds())/float64(b.N), "cpu-µs/op")
}

// readAnswer reads one Content-Length answer.
func readAnswer(br *bufio.Reader) error {
	n := -1
	status := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if status == "" {
			status = line
			continue
		}
		if line == "\r\n" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Content-Length") {
			n, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if !strings.Contains(status, " 200 ") {
		return fmt.Errorf("status %q", status)
	}
	_, err := br.Discard(n)
	return err
}

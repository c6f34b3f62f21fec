package cli

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/testsupport"
)

// go-redis's own messages reach serve's log as JSON warnings: a client
// dialing a Redis that is not there says so in the log, not on stderr.
func TestRedisLoggerWritesTheLog(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	var buf testsupport.SyncBuffer
	redis.SetLogger(redisLogger{slog.New(slog.NewJSONHandler(&buf, nil))})
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(buf.String(), `"redis client"`); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line from the redis client after 10 s; log:\n%s", buf.String())
		}
		c.Ping(context.Background())
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct{ Level, Msg, Detail string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if rec.Level != "WARN" || rec.Msg != "redis client" || rec.Detail == "" || strings.HasPrefix(rec.Detail, "redis: ") {
			t.Errorf("log line %q, want a WARN \"redis client\" with the message as detail", line)
		}
	}
}

package gateway

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Two replicas' cooldowns through one Redis: a rest one of them decides
// reaches the other's memory, and so does its end; a replica ignores its
// own messages.
func TestCooldownsSharedThroughRedis(t *testing.T) {
	url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("KEYBRIDGE_TEST_REDIS_URL is not set")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	discard := slog.New(slog.DiscardHandler)
	a, b := newCooldownPeers(rdb, []byte("replica-a"), discard), newCooldownPeers(rdb, []byte("replica-b"), discard)
	coolA, coolB := newCooldowns(), newCooldowns()
	go a.listen(ctx, coolA.apply)
	go b.listen(ctx, coolB.apply)
	key := "key-" + time.Now().Format("150405.000000000")
	until := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	// The subscriptions take a moment: publish until B has heard.
	wait := func(what string, ok func() bool, send func()) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not reach the other replica", what)
			}
			send()
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("a rest", func() bool {
		cd, resting := coolB.check(key, time.Now())
		return resting && cd.limited && cd.until.Equal(until)
	}, func() {
		a.send(ctx, map[string]cooldownChange{key: {keyID: key, until: until, limited: true}})
	})
	if _, resting := coolA.check(key, time.Now()); resting {
		t.Error("a replica applied its own message")
	}
	wait("the end of a rest", func() bool {
		_, resting := coolB.check(key, time.Now())
		return !resting
	}, func() {
		a.send(ctx, map[string]cooldownChange{key: {keyID: key}})
	})
}

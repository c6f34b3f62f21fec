package httpapi

import (
	"context"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/auth"
)

// probeLimiter counts the provider probes an org's admins trigger
// (providers/test and providers/{provider}/usage): in Redis when it is
// configured, so the limit is one for every replica, else, and while Redis
// cannot be reached, in this process. It works like the failed-login
// counters of internal/auth: a window starts with its first count.
type probeLimiter struct {
	n     int
	local *bucketLimiter
	rdb   *redis.Client
	log   *slog.Logger
}

func newProbeLimiter(n int, rdb *redis.Client, log *slog.Logger) *probeLimiter {
	return &probeLimiter{n: n, local: newBucketLimiter(n, time.Minute), rdb: rdb, log: log}
}

const probeRedisPrefix = "keybridge:provider_probes:"

// allow counts a probe of org, or says how long until one may go.
func (l *probeLimiter) allow(ctx context.Context, orgID string) (time.Duration, bool) {
	if l.rdb != nil {
		// A refused probe is not counted.
		wait, err := auth.AcquireInRedis(ctx, l.rdb, []string{probeRedisPrefix + orgID}, []int{l.n}, time.Minute)
		if err == nil {
			return wait, wait == 0
		}
		l.log.WarnContext(ctx, "count provider probe in redis; counting in this process", "err", err)
	}
	return l.local.allow(orgID, time.Now())
}

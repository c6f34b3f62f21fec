package httpapi

import (
	"context"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
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

// probeScript counts one probe in the window of KEYS[1] (ARGV[1] ms, at
// most ARGV[2] probes): it returns 0 when the probe may go, else the
// milliseconds until the window ends. A refused probe is not counted.
var probeScript = redis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[2]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    ttl = tonumber(ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return ttl
end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0`)

// allow counts a probe of org, or says how long until one may go.
func (l *probeLimiter) allow(ctx context.Context, orgID string) (time.Duration, bool) {
	if l.rdb != nil {
		ms, err := probeScript.Run(ctx, l.rdb, []string{probeRedisPrefix + orgID}, time.Minute.Milliseconds(), l.n).Int64()
		if err == nil {
			return time.Duration(ms) * time.Millisecond, ms == 0
		}
		l.log.WarnContext(ctx, "count provider probe in redis; counting in this process", "err", err)
	}
	return l.local.allow(orgID, time.Now())
}

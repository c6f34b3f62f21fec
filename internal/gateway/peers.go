package gateway

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// cooldownPeers shares upstream keys' cooldowns among replicas through
// Redis (SPEC §7.4): a replica that puts a key to rest, or ends its rest,
// publishes it; every replica applies what it hears to its own in-memory
// cooldowns. (A replica that starts later learns of rests from its own
// failures and its peers' next changes; a rest is minutes at most.) Nothing
// of this is on a request's path: requests read memory, and the changes
// leave from the gateway's background loop.
type cooldownPeers struct {
	rdb    *redis.Client
	origin string
	log    *slog.Logger
}

// cooldownChannel is the Redis channel cooldown changes travel on.
const cooldownChannel = "keybridge:cooldowns"

// peerMsg is one change on the channel.
type peerMsg struct {
	Origin  string `json:"o"`
	Key     string `json:"k"`
	UntilMS int64  `json:"u"` // 0: the rest ended
	Limited bool   `json:"l,omitempty"`
}

func newCooldownPeers(rdb *redis.Client, origin []byte, log *slog.Logger) *cooldownPeers {
	return &cooldownPeers{rdb: rdb, origin: string(origin), log: log}
}

// send publishes changes, in one pipelined round trip, from the
// gateway's background loop.
func (p *cooldownPeers) send(ctx context.Context, changes map[string]cooldownChange) {
	pipe := p.rdb.Pipeline()
	for _, c := range changes {
		m := peerMsg{Origin: p.origin, Key: c.keyID, Limited: c.limited}
		if !c.until.IsZero() {
			m.UntilMS = c.until.UnixMilli()
		}
		b, _ := json.Marshal(m)
		pipe.Publish(ctx, cooldownChannel, b)
	}
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil {
		p.log.WarnContext(ctx, "share upstream key cooldowns through Redis", "err", err)
	}
}

// listen applies the other replicas' changes until ctx ends. go-redis
// subscribes again by itself after a lost connection.
func (p *cooldownPeers) listen(ctx context.Context, apply func(cooldownChange)) {
	sub := p.rdb.Subscribe(ctx, cooldownChannel)
	defer sub.Close()
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-ch:
			if !ok {
				return
			}
			var m peerMsg
			if json.Unmarshal([]byte(msg.Payload), &m) != nil || m.Origin == p.origin || m.Key == "" {
				continue
			}
			c := cooldownChange{keyID: m.Key, limited: m.Limited}
			if m.UntilMS > 0 {
				c.until = time.UnixMilli(m.UntilMS)
			}
			apply(c)
		}
	}
}

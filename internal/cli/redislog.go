package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// redisLogger sends go-redis's own messages (dials that failed, a
// connection it could not close) to serve's log as structured warnings,
// instead of unstructured lines on stderr beside the JSON log. go-redis
// keeps one logger per process, as serve runs one.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", "detail", strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

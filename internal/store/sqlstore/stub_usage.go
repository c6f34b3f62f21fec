package sqlstore

import (
	"context"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TODO(usage): stub, replaced by the real implementation.

func (s *Store) InsertUsage(ctx context.Context, batch []keybridge.Usage) error { return errStub }
func (s *Store) QueryUsage(ctx context.Context, q keybridge.UsageQuery) ([]keybridge.UsageGroup, error) {
	return nil, errStub
}
func (s *Store) DeleteUsageBefore(ctx context.Context, t time.Time) (int64, error) { return 0, errStub }

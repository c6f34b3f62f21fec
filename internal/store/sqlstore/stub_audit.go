package sqlstore

import (
	"context"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// TODO(audit): stub, replaced by the real implementation.

func (s *Store) AppendAuditEvent(ctx context.Context, e *keybridge.AuditEvent) error { return errStub }
func (s *Store) ListAuditEvents(ctx context.Context, f store.AuditFilter, page store.Page) ([]keybridge.AuditEvent, string, error) {
	return nil, "", errStub
}
func (s *Store) AuditChain(ctx context.Context, orgID string, fn func(e *keybridge.AuditEvent) error) error {
	return errStub
}
func (s *Store) DeleteAuditEventsBefore(ctx context.Context, orgID string, t time.Time) (int, error) {
	return 0, errStub
}

package sqlstore

import (
	"context"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// TODO(apikeys): stub, replaced by the real implementation.

func (s *Store) CreateAPIKey(ctx context.Context, k *keybridge.APIKey) error { return errStub }
func (s *Store) APIKey(ctx context.Context, id string) (*keybridge.APIKey, error) {
	return nil, errStub
}
func (s *Store) APIKeyByHash(ctx context.Context, hash []byte) (*keybridge.APIKey, error) {
	return nil, errStub
}
func (s *Store) ListAPIKeys(ctx context.Context, f store.APIKeyFilter, page store.Page) ([]keybridge.APIKey, string, error) {
	return nil, "", errStub
}
func (s *Store) UpdateAPIKey(ctx context.Context, k *keybridge.APIKey) error { return errStub }
func (s *Store) TouchAPIKeys(ctx context.Context, lastUsed map[string]time.Time) error {
	return errStub
}

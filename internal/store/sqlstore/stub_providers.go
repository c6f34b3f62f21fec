package sqlstore

import (
	"context"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// TODO(providers): stub, replaced by the real implementation.

func (s *Store) CreateProvider(ctx context.Context, p *keybridge.Provider) error { return errStub }
func (s *Store) Provider(ctx context.Context, orgID, idOrName string) (*keybridge.Provider, error) {
	return nil, errStub
}
func (s *Store) ListProviders(ctx context.Context, orgID string, page store.Page) ([]keybridge.Provider, string, error) {
	return nil, "", errStub
}
func (s *Store) UpdateProvider(ctx context.Context, p *keybridge.Provider) error { return errStub }
func (s *Store) DeleteProvider(ctx context.Context, orgID, id string) error      { return errStub }
func (s *Store) CreateProviderKey(ctx context.Context, k *keybridge.ProviderKey) error {
	return errStub
}
func (s *Store) ProviderKey(ctx context.Context, providerID, id string) (*keybridge.ProviderKey, error) {
	return nil, errStub
}
func (s *Store) ProviderKeys(ctx context.Context, providerID string) ([]keybridge.ProviderKey, error) {
	return nil, errStub
}
func (s *Store) UpdateProviderKey(ctx context.Context, k *keybridge.ProviderKey) error {
	return errStub
}
func (s *Store) DeleteProviderKey(ctx context.Context, providerID, id string) error { return errStub }
func (s *Store) TouchProviderKeys(ctx context.Context, lastUsed map[string]time.Time) error {
	return errStub
}

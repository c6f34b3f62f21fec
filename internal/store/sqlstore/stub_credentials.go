package sqlstore

import (
	"context"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TODO(credentials): stub, replaced by the real implementation.

func (s *Store) CreateCredential(ctx context.Context, c *keybridge.Credential) error { return errStub }
func (s *Store) Credential(ctx context.Context, userID, id string) (*keybridge.Credential, error) {
	return nil, errStub
}
func (s *Store) CredentialFor(ctx context.Context, userID, providerID string) (*keybridge.Credential, error) {
	return nil, errStub
}
func (s *Store) ListCredentials(ctx context.Context, userID string) ([]keybridge.Credential, error) {
	return nil, errStub
}
func (s *Store) CredentialProviders(ctx context.Context, orgID string) (map[string][]string, error) {
	return nil, errStub
}
func (s *Store) UpdateCredential(ctx context.Context, c *keybridge.Credential) error { return errStub }
func (s *Store) DeleteCredential(ctx context.Context, userID, id string) error       { return errStub }

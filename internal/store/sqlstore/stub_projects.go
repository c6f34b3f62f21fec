package sqlstore

import (
	"context"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// TODO(projects): stub, replaced by the real implementation.

func (s *Store) CreateProject(ctx context.Context, p *keybridge.Project) error { return errStub }
func (s *Store) Project(ctx context.Context, orgID, id string) (*keybridge.Project, error) {
	return nil, errStub
}
func (s *Store) ListProjects(ctx context.Context, orgID string, page store.Page) ([]keybridge.Project, string, error) {
	return nil, "", errStub
}
func (s *Store) UpdateProject(ctx context.Context, p *keybridge.Project) error { return errStub }
func (s *Store) DeleteProject(ctx context.Context, orgID, id string) error     { return errStub }
func (s *Store) CreateAIKey(ctx context.Context, k *keybridge.AIKey) error     { return errStub }
func (s *Store) AIKey(ctx context.Context, projectID, id string) (*keybridge.AIKey, error) {
	return nil, errStub
}
func (s *Store) AIKeyBySecretHash(ctx context.Context, hash []byte) (*keybridge.AIKey, error) {
	return nil, errStub
}
func (s *Store) ListAIKeys(ctx context.Context, projectID string, includeDeleted bool, page store.Page) ([]keybridge.AIKey, string, error) {
	return nil, "", errStub
}
func (s *Store) UpdateAIKey(ctx context.Context, k *keybridge.AIKey) error            { return errStub }
func (s *Store) DeleteAIKey(ctx context.Context, projectID, id string) error          { return errStub }
func (s *Store) TouchAIKeys(ctx context.Context, lastUsed map[string]time.Time) error { return errStub }

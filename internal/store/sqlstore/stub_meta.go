package sqlstore

import (
	"context"
)

// TODO(meta): stub, replaced by the real implementation.

func (s *Store) GetMeta(ctx context.Context, key string) (string, error) { return "", errStub }
func (s *Store) SetMeta(ctx context.Context, key, value string) error    { return errStub }
func (s *Store) DeleteMeta(ctx context.Context, key string) error        { return errStub }

package sqlstore

import (
	"context"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TODO(keyring): stub, replaced by the real implementation.

func (s *Store) DataKeys(ctx context.Context) ([]keybridge.DataKey, error)     { return nil, errStub }
func (s *Store) CreateDataKey(ctx context.Context, k *keybridge.DataKey) error { return errStub }
func (s *Store) UpdateDataKeyWrap(ctx context.Context, version int, wrapped []byte) error {
	return errStub
}
func (s *Store) SealedCounts(ctx context.Context) (map[int]int, error) { return nil, errStub }
func (s *Store) SealedNotVersion(ctx context.Context, version, limit int) ([]keybridge.SealedRef, error) {
	return nil, errStub
}
func (s *Store) ReplaceSealed(ctx context.Context, ref keybridge.SealedRef, version int, ciphertext []byte) (bool, error) {
	return false, errStub
}

// Package secrets is the only door between plaintext and ciphertext: the
// versioned data key ring (AES-256-GCM), the master key that wraps it, and
// rewrap.
package secrets

import (
	"context"
	"errors"
	"log/slog"

	"github.com/keybridge/keybridge/internal/store"
)

var errStub = errors.New("not implemented")

// Ring is the loaded key ring.
type Ring struct {
	st store.Store
}

// Options configures OpenRing.
type Options struct {
	Logger *slog.Logger
}

// OpenRing loads the ring from st, unwrapping its data keys with master (32
// bytes). On an empty database it creates data key version 1. A master key
// that does not unwrap the ring is ErrWrongMasterKey, and nothing is written.
func OpenRing(ctx context.Context, st store.Store, master []byte, opts Options) (*Ring, error) {
	return nil, errStub
}

// ErrWrongMasterKey means the master key does not open this database's ring.
var ErrWrongMasterKey = errors.New("the master key does not open this database's key ring: check KEYBRIDGE_MASTER_KEY or --master-key-file")

// Seal encrypts plaintext under the primary data key, bound to ad (see
// keybridge.AssociatedData). The result records the key version.
func (r *Ring) Seal(plaintext, ad []byte) ([]byte, error) { return nil, errStub }

// Open decrypts a sealed value bound to ad.
func (r *Ring) Open(ciphertext, ad []byte) ([]byte, error) { return nil, errStub }

// Fingerprint returns an HMAC-SHA256 of data under a key derived from the
// ring for purpose, so equal secrets can be found without storing them.
func (r *Ring) Fingerprint(purpose string, data []byte) []byte { return nil }

// NewMasterKey returns 32 random bytes for a new master key.
func NewMasterKey() ([]byte, error) { return nil, errStub }

package secrets

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// snapshot is one immutable state of the unwrapped ring. Changes build a
// new snapshot and swap the pointer, so readers never lock.
type snapshot struct {
	master  cipher.AEAD
	keys    map[int]cipher.AEAD
	primary int
	// fingerprintPRK is the HKDF pseudorandom key extracted from data key
	// version 1; each purpose expands its own key from it.
	fingerprintPRK []byte
}

// newGCM returns AES-256-GCM with random nonces under key.
func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(b)
}

// masterAEAD checks the master key's length and returns its AEAD.
func masterAEAD(master []byte) (cipher.AEAD, error) {
	if len(master) != MasterKeySize {
		return nil, fmt.Errorf("master key must be %d bytes, got %d", MasterKeySize, len(master))
	}
	return newGCM(master)
}

// Wrapped data key layout: a format byte, then GCM's nonce, ciphertext and
// tag. The associated data is the format byte and the version.
const wrapFormatV1 = 1

func wrapAD(version int) []byte {
	return []byte("keybridge:data_key:" + strconv.Itoa(version))
}

// wrap seals a data key's bytes under the master key for version.
func wrap(master cipher.AEAD, version int, dk []byte) []byte {
	out := []byte{wrapFormatV1}
	return master.Seal(out, nil, dk, append([]byte{wrapFormatV1}, wrapAD(version)...))
}

// unwrap opens a wrapped data key. Any failure is ErrWrongMasterKey: GCM
// cannot tell a wrong key from an altered row, and either way this master
// key does not open the ring.
func unwrap(master cipher.AEAD, k keybridge.DataKey) ([]byte, error) {
	if len(k.Wrapped) == 0 || k.Wrapped[0] != wrapFormatV1 {
		return nil, fmt.Errorf("data key version %d: unknown wrap format: %w", k.Version, ErrWrongMasterKey)
	}
	dk, err := master.Open(nil, nil, k.Wrapped[1:], append([]byte{wrapFormatV1}, wrapAD(k.Version)...))
	if err != nil || len(dk) != dataKeySize {
		return nil, fmt.Errorf("data key version %d: %w", k.Version, ErrWrongMasterKey)
	}
	return dk, nil
}

// newDataKey returns a fresh data key for version, and its wrapped form.
func newDataKey(master cipher.AEAD, version int) keybridge.DataKey {
	dk := make([]byte, dataKeySize)
	rand.Read(dk) // crypto/rand.Read never fails; it crashes the program instead
	defer clear(dk)
	return keybridge.DataKey{Version: version, Wrapped: wrap(master, version, dk)}
}

// createFirst creates data key version 1 as primary on an empty ring. It
// checks again inside its transaction: on SQLite the write lock makes a
// second process wait and see the first one's key; on PostgreSQL two
// starting replicas may both insert, and the second's conflict means the
// ring now exists, which is all it wanted.
func createFirst(ctx context.Context, st store.Store, master cipher.AEAD) error {
	err := st.InTx(ctx, func(tx store.Store) error {
		keys, err := tx.DataKeys(ctx)
		if err != nil || len(keys) > 0 {
			return err
		}
		k := newDataKey(master, 1)
		k.Primary = true
		return tx.CreateDataKey(ctx, &k)
	})
	if err != nil && !keybridge.IsCode(err, keybridge.EConflict) {
		return fmt.Errorf("create key ring: %w", err)
	}
	return nil
}

// newSnapshot unwraps every data key with master. It fails with
// ErrWrongMasterKey if any does not unwrap, and when the ring lacks version
// 1 or a primary.
func newSnapshot(master cipher.AEAD, keys []keybridge.DataKey) (*snapshot, error) {
	s := &snapshot{master: master, keys: make(map[int]cipher.AEAD, len(keys))}
	for _, k := range keys {
		dk, err := unwrap(master, k)
		if err != nil {
			return nil, err
		}
		aead, err := newGCM(dk)
		if err == nil && k.Version == 1 {
			s.fingerprintPRK, err = hkdf.Extract(sha256.New, dk, []byte("keybridge fingerprint"))
		}
		clear(dk)
		if err != nil {
			return nil, fmt.Errorf("data key version %d: %w", k.Version, err)
		}
		s.keys[k.Version] = aead
		if k.Primary {
			s.primary = k.Version
		}
	}
	switch {
	case s.keys[1] == nil:
		return nil, errors.New("key ring has no data key version 1, which fingerprints depend on")
	case s.primary == 0:
		return nil, errors.New("key ring has no primary data key")
	}
	return s, nil
}

// gcmAD is what GCM authenticates: the sealed value's header, then the
// caller's associated data.
func gcmAD(header, ad []byte) []byte {
	return append(header[:headerSize:headerSize], ad...)
}

// seal seals plaintext under version, which the snapshot holds.
func (s *snapshot) seal(version int, plaintext, ad []byte) []byte {
	aead := s.keys[version]
	out := make([]byte, headerSize, headerSize+aead.Overhead()+len(plaintext))
	out[0] = formatV1
	binary.BigEndian.PutUint32(out[1:headerSize], uint32(version))
	return aead.Seal(out, nil, plaintext, gcmAD(out, ad))
}

// open opens ciphertext, whose header says version.
func (s *snapshot) open(version int, ciphertext, ad []byte) ([]byte, error) {
	aead := s.keys[version]
	if aead == nil {
		return nil, fmt.Errorf("data key version %d: %w", version, ErrUnknownVersion)
	}
	pt, err := aead.Open(nil, nil, ciphertext[headerSize:], gcmAD(ciphertext, ad))
	if err != nil {
		return nil, ErrInvalidCiphertext
	}
	return pt, nil
}

// fingerprintKey derives the HMAC key of one purpose.
func (s *snapshot) fingerprintKey(purpose string) []byte {
	k, err := hkdf.Expand(sha256.New, s.fingerprintPRK, "keybridge fingerprint:"+purpose, sha256.Size)
	if err != nil {
		// Expand fails only for lengths over 255 hash sizes.
		panic("secrets: derive fingerprint key: " + err.Error())
	}
	return k
}

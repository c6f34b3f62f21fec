// Package secrets is the only door between plaintext and ciphertext: the
// versioned data key ring (AES-256-GCM), the master key that wraps it, and
// rewrap.
//
// # Design
//
// The ring is AES-256-GCM from the standard library's crypto/cipher with a
// small versioned ring of our own. tink-go was weighed and left out: it
// would bring protobuf and a keyset format of its own for no gain here. We
// need one AEAD, a version number in front of each ciphertext and a wrap of
// a few data keys; over crypto/cipher that is a page of code a reviewer can
// read in full.
//
// Data keys are 32 random bytes, numbered from 1. One is primary and seals
// new values; every one still opens the values it sealed. Each is stored
// (store.KeyRing) wrapped by the master key: AES-256-GCM with associated data
// naming its version, so a wrapped key moved to another version's row does
// not open. A master key change re-wraps only these rows; a rotation adds a
// row; rewrap moves sealed values to the primary at its own pace.
//
// A sealed value is
//
//	byte  0      format, 1
//	bytes 1..4   data key version, big endian
//	bytes 5..16  random nonce
//	bytes 17..   GCM ciphertext and 16-byte tag
//
// GCM authenticates the 5-byte header followed by the caller's associated
// data, the row identity (keybridge.AssociatedData(table, column, rowID)),
// so a changed byte anywhere, or a value copied to another row, does not
// open. Random 96-bit nonces limit a data key to 2^32 seals; secrets are
// written when people save them, many orders of magnitude fewer.
//
// Fingerprints (HMAC-SHA256) use a key derived with HKDF from data key
// version 1, which is never removed: they stay the same across rotations
// and master key changes, so duplicates are found without storing
// plaintext.
//
// Each process holds an immutable snapshot of the unwrapped ring behind an
// atomic pointer, so Seal and Open take no lock. Run reloads it when another
// process publishes store.InvalidateKeyRing, and every minute as a safety
// net; Open of a value sealed under a version it does not know yet reloads
// once (rate-limited) before failing.
package secrets

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybridge/keybridge/internal/store"
)

// Sealed value layout (see the package doc).
const (
	formatV1   = 1
	headerSize = 1 + 4
	nonceSize  = 12
	tagSize    = 16
	// MasterKeySize is the length of a master key in bytes.
	MasterKeySize = 32
	dataKeySize   = 32
)

// ErrWrongMasterKey means the master key does not open this database's ring.
var ErrWrongMasterKey = errors.New("the master key does not open this database's key ring: check KEYBRIDGE_MASTER_KEY or --master-key-file")

// ErrInvalidCiphertext means a sealed value does not open: it is truncated,
// altered, or bound to another row.
var ErrInvalidCiphertext = errors.New("sealed value does not open: altered, truncated or bound to another row")

// ErrUnknownVersion means a sealed value names a data key version the ring
// does not hold, even after reloading it.
var ErrUnknownVersion = errors.New("sealed value names a data key version the key ring does not hold")

// Options configures OpenRing.
type Options struct {
	// Logger receives reload failures; nil discards them.
	Logger *slog.Logger
	// ReloadInterval is how often Run reloads the ring even without a
	// notification; zero means a minute.
	ReloadInterval time.Duration
}

// Ring is the loaded key ring. It is safe for concurrent use.
type Ring struct {
	st       store.Store
	log      *slog.Logger
	interval time.Duration

	snap atomic.Pointer[snapshot]
	// loadMu serializes reads of the ring from the store with the swap of
	// the snapshot, so a slow reload never replaces a newer snapshot.
	loadMu sync.Mutex

	// missMu and lastMiss rate-limit the reloads Open makes for versions
	// it does not know.
	missMu   sync.Mutex
	lastMiss time.Time
}

// missInterval is the least time between two reloads caused by unknown
// versions, so a stray value cannot make every Open read the database.
const missInterval = time.Second

// OpenRing loads the ring from st, unwrapping its data keys with master (32
// bytes). On an empty database it creates data key version 1 as primary. A
// master key that does not unwrap the ring is ErrWrongMasterKey, and nothing
// is written.
func OpenRing(ctx context.Context, st store.Store, master []byte, opts Options) (*Ring, error) {
	mk, err := masterAEAD(master)
	if err != nil {
		return nil, err
	}
	r := &Ring{st: st, log: opts.Logger, interval: opts.ReloadInterval}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.interval <= 0 {
		r.interval = time.Minute
	}
	keys, err := st.DataKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("read key ring: %w", err)
	}
	if len(keys) == 0 {
		if err := createFirst(ctx, st, mk); err != nil {
			return nil, err
		}
		if keys, err = st.DataKeys(ctx); err != nil {
			return nil, fmt.Errorf("read key ring: %w", err)
		}
	}
	s, err := newSnapshot(mk, keys)
	if err != nil {
		return nil, err
	}
	r.snap.Store(s)
	return r, nil
}

// Seal encrypts plaintext under the primary data key, bound to ad (see
// keybridge.AssociatedData). The result records the key version; Version
// reads it back for the row's version column.
func (r *Ring) Seal(plaintext, ad []byte) ([]byte, error) {
	s := r.snap.Load()
	return s.seal(s.primary, plaintext, ad), nil
}

// Open decrypts a sealed value bound to ad. A value of a version this
// process does not know yet (another replica rotated) makes it reload the
// ring once before answering ErrUnknownVersion. Altered values, and values
// bound to other associated data, are ErrInvalidCiphertext.
func (r *Ring) Open(ciphertext, ad []byte) ([]byte, error) {
	v, err := Version(ciphertext)
	if err != nil {
		return nil, err
	}
	s := r.snap.Load()
	if _, ok := s.keys[v]; !ok {
		s = r.reloadFor(v)
	}
	return s.open(v, ciphertext, ad)
}

// Version returns the data key version that sealed ciphertext, for the
// companion version column each sealed column has. It needs no key.
func (r *Ring) Version(ciphertext []byte) (int, error) { return Version(ciphertext) }

// Version returns the data key version recorded in a sealed value, without
// opening it. It fails with ErrInvalidCiphertext on a value too short or of
// an unknown format.
func Version(ciphertext []byte) (int, error) {
	if len(ciphertext) < headerSize+nonceSize+tagSize || ciphertext[0] != formatV1 {
		return 0, ErrInvalidCiphertext
	}
	v := binary.BigEndian.Uint32(ciphertext[1:headerSize])
	if v == 0 || v > maxVersion {
		return 0, ErrInvalidCiphertext
	}
	return int(v), nil
}

// maxVersion keeps versions inside an int on every platform and inside the
// databases' integer columns.
const maxVersion = 1<<31 - 1

// Primary returns the version of the data key that seals new values.
func (r *Ring) Primary() int { return r.snap.Load().primary }

// Fingerprint returns an HMAC-SHA256 of data under a key derived from the
// ring for purpose, so equal secrets can be found without storing them.
// Fingerprints of one purpose stay equal across rotations and master key
// changes; those of different purposes are unrelated.
func (r *Ring) Fingerprint(purpose string, data []byte) []byte {
	key := r.snap.Load().fingerprintKey(purpose)
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// NewMasterKey returns 32 random bytes for a new master key.
func NewMasterKey() ([]byte, error) {
	k := make([]byte, MasterKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generate master key: %w", err)
	}
	return k, nil
}

// Reload reads the ring from the store again and swaps it in. On error the
// loaded ring stays in use; ErrWrongMasterKey then means the master key was
// changed by another process and this one must restart with the new one.
func (r *Ring) Reload(ctx context.Context) error {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	keys, err := r.st.DataKeys(ctx)
	if err != nil {
		return fmt.Errorf("read key ring: %w", err)
	}
	s, err := newSnapshot(r.snap.Load().master, keys)
	if err != nil {
		return err
	}
	r.snap.Store(s)
	return nil
}

// reloadFor reloads the ring because a value names version v, which the
// current snapshot lacks, at most once per missInterval. It returns the
// snapshot to use, reloaded or not.
func (r *Ring) reloadFor(v int) *snapshot {
	r.missMu.Lock()
	defer r.missMu.Unlock()
	if s := r.snap.Load(); s.keys[v] != nil {
		return s // another caller's reload brought it
	}
	if time.Since(r.lastMiss) < missInterval {
		return r.snap.Load()
	}
	r.lastMiss = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Reload(ctx); err != nil {
		r.log.Error("reload key ring for an unknown data key version", "version", v, "err", err)
	}
	return r.snap.Load()
}

// Run keeps the ring current until ctx ends: it reloads when any process
// publishes store.InvalidateKeyRing (or after a gap in notifications), and
// every ReloadInterval in case a notification was missed. It returns nil
// when ctx ends.
func (r *Ring) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go func() {
		for ctx.Err() == nil {
			err := r.st.Subscribe(ctx, func(inv store.Invalidation) {
				if inv.Kind != store.InvalidateKeyRing && inv.Kind != store.InvalidateAll {
					return
				}
				// Never block the notifier: one pending wake-up is enough,
				// since the reload reads the whole ring.
				select {
				case wake <- struct{}{}:
				default:
				}
			})
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("key ring notifications interrupted; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-tick.C:
		}
		if err := r.Reload(ctx); err != nil && ctx.Err() == nil {
			msg := "reload key ring"
			if errors.Is(err, ErrWrongMasterKey) {
				msg = "the master key no longer opens the key ring (was it changed?); this process keeps its loaded keys until restarted with the new master key"
			}
			r.log.Error(msg, "err", err)
		}
	}
}

package secrets

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// The ring's audit events go to the system chain (org ""): the ring is the
// installation's, not an org's.
const (
	auditOrg          = ""
	auditResourceType = "keyring"
)

// RewrapBatch is how many sealed values Rewrap reads at a time.
const RewrapBatch = 100

// Rotate adds a new data key and makes it primary: from then on Seal uses
// it, in this process at once and in others when they hear of it (Run).
// Values sealed earlier still open; Rewrap moves them to the new key. The
// audit event "keyring.rotate" is written in the same transaction. It
// returns the new primary version.
func (r *Ring) Rotate(ctx context.Context) (int, error) {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	master := r.snap.Load().master
	var next *snapshot
	err := r.st.InTx(ctx, func(tx store.Store) error {
		keys, err := tx.DataKeys(ctx)
		if err != nil {
			return fmt.Errorf("read key ring: %w", err)
		}
		// Unwrapping what is stored, not trusting the loaded snapshot,
		// refuses a rotation wrapped by a master key another process has
		// replaced.
		cur, err := newSnapshot(master, keys)
		if err != nil {
			return err
		}
		version := 0
		for _, k := range keys {
			version = max(version, k.Version)
		}
		version++
		k := newDataKey(master, version)
		k.Primary = true
		if err := tx.CreateDataKey(ctx, &k); err != nil {
			return fmt.Errorf("create data key: %w", err)
		}
		k.CreatedAt = tx.Now()
		if next, err = newSnapshot(master, append(clearPrimary(keys), k)); err != nil {
			return err
		}
		err = audit.Record(ctx, tx, auditOrg, "keyring.rotate",
			keybridge.Resource{Type: auditResourceType, ID: strconv.Itoa(version)},
			map[string]keybridge.Change{"primary_version": {Old: cur.primary, New: version}})
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("rotate key ring: %w", err)
	}
	r.snap.Store(next)
	return next.primary, nil
}

// clearPrimary returns a copy of keys with no primary.
func clearPrimary(keys []keybridge.DataKey) []keybridge.DataKey {
	out := slices.Clone(keys)
	for i := range out {
		out[i].Primary = false
	}
	return out
}

// Rewrap re-encrypts every sealed value not under the primary data key
// under it, RewrapBatch values at a time, calling progress (when not nil)
// with the running count after each batch. It runs online: each value is
// replaced only if nobody changed it meanwhile (a concurrent write wins and
// is already under a current key). It is resumable by construction: it
// always asks the store for what is left, so running it again after an
// interruption continues where it stopped. When everything is done it
// writes the audit event "keyring.rewrap". It returns how many values it
// re-encrypted.
func (r *Ring) Rewrap(ctx context.Context, progress func(done int)) (int, error) {
	if err := r.Reload(ctx); err != nil {
		return 0, err
	}
	done, idle := 0, 0
	for {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		s := r.snap.Load()
		refs, err := r.st.SealedNotVersion(ctx, s.primary, RewrapBatch)
		if err != nil {
			return done, fmt.Errorf("find sealed values: %w", err)
		}
		if len(refs) == 0 {
			break
		}
		n, newer, err := r.rewrapBatch(ctx, s, refs)
		done += n
		if err != nil {
			return done, err
		}
		if progress != nil {
			progress(done)
		}
		if newer != nil {
			// Another process rotated since this rewrap began: follow it
			// to the newest primary instead of moving values backwards.
			if err := r.Reload(ctx); err != nil {
				return done, err
			}
			if r.Primary() == s.primary {
				return done, fmt.Errorf("%s.%s of row %s names data key version %d: %w", newer.Table, newer.Column, newer.RowID, newer.Version, ErrUnknownVersion)
			}
			idle = 0
			continue
		}
		// Values that changed under us come back in the next batch with
		// their new ciphertext; a batch that moves nothing, again and
		// again, is a store that does not honour the swap.
		if n == 0 {
			if idle++; idle == 3 {
				return done, errors.New("rewrap makes no progress: sealed values keep changing or cannot be replaced")
			}
		} else {
			idle = 0
		}
	}
	err := r.st.InTx(ctx, func(tx store.Store) error {
		return audit.Record(ctx, tx, auditOrg, "keyring.rewrap",
			keybridge.Resource{Type: auditResourceType, ID: strconv.Itoa(r.Primary())},
			map[string]keybridge.Change{"rewrapped": {Old: nil, New: done}})
	})
	if err != nil {
		return done, fmt.Errorf("audit rewrap: %w", err)
	}
	return done, nil
}

// rewrapBatch moves refs under s's primary. It stops at a value sealed
// under a version above the primary, which it returns as newer: the ring
// was rotated elsewhere.
func (r *Ring) rewrapBatch(ctx context.Context, s *snapshot, refs []keybridge.SealedRef) (done int, newer *keybridge.SealedRef, err error) {
	for _, ref := range refs {
		if ref.Version > s.primary {
			return done, &ref, nil
		}
		pt, err := r.Open(ref.Ciphertext, ref.AssociatedData())
		if err != nil {
			// Row identities are not secret; the value is not shown.
			return done, nil, fmt.Errorf("open %s.%s of row %s (version %d): %w", ref.Table, ref.Column, ref.RowID, ref.Version, err)
		}
		ct := s.seal(s.primary, pt, ref.AssociatedData())
		clear(pt)
		ok, err := r.st.ReplaceSealed(ctx, ref, s.primary, ct)
		if err != nil {
			return done, nil, fmt.Errorf("replace %s.%s of row %s: %w", ref.Table, ref.Column, ref.RowID, err)
		}
		if ok {
			done++
		}
	}
	return done, nil, nil
}

// KeyStatus describes one data key version for Status.
type KeyStatus struct {
	Version   int
	Primary   bool
	CreatedAt time.Time
	// Sealed is how many stored values this version still protects.
	Sealed int
	// Missing is set for a version that sealed values name but the ring
	// does not hold: those values cannot be opened.
	Missing bool
}

// Status lists the ring's versions, oldest first, with how many sealed
// values each still protects, read fresh from the store.
func (r *Ring) Status(ctx context.Context) ([]KeyStatus, error) {
	keys, err := r.st.DataKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("read key ring: %w", err)
	}
	counts, err := r.st.SealedCounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("count sealed values: %w", err)
	}
	out := make([]KeyStatus, 0, len(keys))
	for _, k := range keys {
		out = append(out, KeyStatus{Version: k.Version, Primary: k.Primary, CreatedAt: k.CreatedAt, Sealed: counts[k.Version]})
		delete(counts, k.Version)
	}
	for v, n := range counts {
		if n > 0 {
			out = append(out, KeyStatus{Version: v, Sealed: n, Missing: true})
		}
	}
	slices.SortFunc(out, func(a, b KeyStatus) int { return a.Version - b.Version })
	return out, nil
}

// ChangeMaster re-wraps every data key under newMaster (32 bytes) in one
// transaction, with the audit event "keyring.change_master"; sealed values
// are untouched. From then on only newMaster opens the ring: this process
// switches at once, other running processes keep their loaded keys but
// cannot reload or rotate until restarted with the new master key.
func (r *Ring) ChangeMaster(ctx context.Context, newMaster []byte) error {
	nm, err := masterAEAD(newMaster)
	if err != nil {
		return err
	}
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	old := r.snap.Load().master
	var next *snapshot
	err = r.st.InTx(ctx, func(tx store.Store) error {
		keys, err := tx.DataKeys(ctx)
		if err != nil {
			return fmt.Errorf("read key ring: %w", err)
		}
		for i, k := range keys {
			dk, err := unwrap(old, k)
			if err != nil {
				return err
			}
			keys[i].Wrapped = wrap(nm, k.Version, dk)
			clear(dk)
			if err := tx.UpdateDataKeyWrap(ctx, k.Version, keys[i].Wrapped); err != nil {
				return fmt.Errorf("update data key %d: %w", k.Version, err)
			}
		}
		if next, err = newSnapshot(nm, keys); err != nil {
			return err
		}
		err = audit.Record(ctx, tx, auditOrg, "keyring.change_master",
			keybridge.Resource{Type: auditResourceType, ID: "master"},
			map[string]keybridge.Change{"master_key": {Old: keybridge.Redacted, New: keybridge.Redacted}})
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("change master key: %w", err)
	}
	r.snap.Store(next)
	return nil
}

package storetest

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

func testKeyRing(t *testing.T, newStore Factory) {
	ctx := context.Background()
	st := newStore(t)
	ch := baseSubscribe(t, st, st)

	if keys, err := st.DataKeys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("DataKeys(empty) = %v, %v; want none", keys, err)
	}
	// Whatever sealed columns the areas register, a fresh store holds no
	// sealed value.
	if counts, err := st.SealedCounts(ctx); err != nil || len(counts) != 0 {
		t.Errorf("SealedCounts(empty) = %v, %v; want none", counts, err)
	}
	if refs, err := st.SealedNotVersion(ctx, 1, 10); err != nil || len(refs) != 0 {
		t.Errorf("SealedNotVersion(empty) = %v, %v; want none", refs, err)
	}

	type key struct {
		version int
		wrapped string
		primary bool
	}
	for _, step := range []struct {
		create key
		want   []key
	}{
		{key{1, "w1", true}, []key{{1, "w1", true}}},
		{key{2, "w2", true}, []key{{1, "w1", false}, {2, "w2", true}}},
		// A key added as not primary leaves the primary alone.
		{key{3, "w3", false}, []key{{1, "w1", false}, {2, "w2", true}, {3, "w3", false}}},
		{key{4, "w4", true}, []key{{1, "w1", false}, {2, "w2", false}, {3, "w3", false}, {4, "w4", true}}},
	} {
		k := &keybridge.DataKey{Version: step.create.version, Wrapped: []byte(step.create.wrapped), Primary: step.create.primary}
		if err := st.CreateDataKey(ctx, k); err != nil {
			t.Fatalf("CreateDataKey(%d) = %v", k.Version, err)
		}
		if k.CreatedAt.IsZero() {
			t.Errorf("CreateDataKey(%d) left CreatedAt zero", k.Version)
		}
		baseExpect(t, "CreateDataKey", ch, store.Invalidation{Kind: store.InvalidateKeyRing})
		keys, err := st.DataKeys(ctx)
		if err != nil {
			t.Fatalf("DataKeys = %v", err)
		}
		var got []key
		for _, k := range keys {
			got = append(got, key{k.Version, string(k.Wrapped), k.Primary})
		}
		if !equalKeys(got, step.want) {
			t.Errorf("DataKeys after CreateDataKey(%+v) = %+v, want %+v", step.create, got, step.want)
		}
	}
	err := st.CreateDataKey(ctx, &keybridge.DataKey{Version: 2, Wrapped: []byte("again"), Primary: true})
	baseCode(t, "CreateDataKey(used version)", err, keybridge.EConflict)
	// The failed create changed nothing: version 4 is still the primary.
	if keys, err := st.DataKeys(ctx); err != nil || len(keys) != 4 || !keys[3].Primary || keys[1].Primary {
		t.Errorf("DataKeys after a failed CreateDataKey = %+v, %v; want version 4 the only primary", keys, err)
	}

	if err := st.UpdateDataKeyWrap(ctx, 2, []byte("rewrapped")); err != nil {
		t.Fatalf("UpdateDataKeyWrap = %v", err)
	}
	baseExpect(t, "UpdateDataKeyWrap", ch, store.Invalidation{Kind: store.InvalidateKeyRing})
	if keys, err := st.DataKeys(ctx); err != nil || !bytes.Equal(keys[1].Wrapped, []byte("rewrapped")) {
		t.Errorf("DataKeys after UpdateDataKeyWrap = %+v, %v; want version 2 rewrapped", keys, err)
	}
	baseCode(t, "UpdateDataKeyWrap(missing)", st.UpdateDataKeyWrap(ctx, 9, []byte("x")), keybridge.ENotFound)
	baseMarker(t, "failed key ring writes", st, ch)

	testKeyRingSerialized(t, newStore)
}

// testKeyRingSerialized checks that changes of the ring, which read it
// with DataKeys inside a transaction and then write, run one after the
// other: a rotation racing a master key change must not leave a data key
// wrapped under the old master beside keys wrapped under the new one.
func testKeyRingSerialized(t *testing.T, newStore Factory) {
	ctx := context.Background()
	st := newStore(t)
	if err := st.CreateDataKey(ctx, &keybridge.DataKey{Version: 1, Wrapped: []byte("w1"), Primary: true}); err != nil {
		t.Fatalf("CreateDataKey(1) = %v", err)
	}
	read := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- st.InTx(ctx, func(tx store.Store) error {
			if _, err := tx.DataKeys(ctx); err != nil {
				return err
			}
			close(read)
			time.Sleep(300 * time.Millisecond)
			return tx.CreateDataKey(ctx, &keybridge.DataKey{Version: 2, Wrapped: []byte("w2"), Primary: true})
		})
	}()
	select {
	case <-read:
	case err := <-done:
		t.Fatalf("first ring change = %v", err)
	}
	var got []keybridge.DataKey
	err := st.InTx(ctx, func(tx store.Store) error {
		var err error
		got, err = tx.DataKeys(ctx)
		return err
	})
	if err := <-done; err != nil {
		t.Fatalf("first ring change = %v", err)
	}
	if err != nil {
		t.Fatalf("DataKeys in a second transaction = %v", err)
	}
	if len(got) != 2 {
		t.Errorf("DataKeys in a transaction beside one changing the ring = %d keys, want 2: it did not wait for the change", len(got))
	}
}

func equalKeys[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

package storetest

import (
	"bytes"
	"context"
	"testing"

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

package storetest

import (
	"context"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func testMeta(t *testing.T, newStore Factory) {
	ctx := context.Background()
	st := newStore(t)

	_, err := st.GetMeta(ctx, "setup_token")
	baseCode(t, "GetMeta(missing)", err, keybridge.ENotFound)

	for _, v := range []string{"first", "second"} {
		if err := st.SetMeta(ctx, "setup_token", v); err != nil {
			t.Fatalf("SetMeta(%q) = %v", v, err)
		}
		if got, err := st.GetMeta(ctx, "setup_token"); err != nil || got != v {
			t.Errorf("GetMeta after SetMeta(%q) = %q, %v; want %q", v, got, err, v)
		}
	}
	if err := st.DeleteMeta(ctx, "setup_token"); err != nil {
		t.Fatalf("DeleteMeta = %v", err)
	}
	_, err = st.GetMeta(ctx, "setup_token")
	baseCode(t, "GetMeta(deleted)", err, keybridge.ENotFound)
	baseCode(t, "DeleteMeta(missing)", st.DeleteMeta(ctx, "setup_token"), "")
}

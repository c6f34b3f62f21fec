package storetest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
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

// testTakeMeta: of many concurrent takers of one key exactly one gets it,
// and a take rolled back with its transaction leaves the key in place.
func testTakeMeta(t *testing.T, newStore Factory) {
	ctx := context.Background()
	st := newStore(t)
	_, err := st.TakeMeta(ctx, "token")
	baseCode(t, "TakeMeta(missing)", err, keybridge.ENotFound)

	if err := st.SetMeta(ctx, "token", "v1"); err != nil {
		t.Fatal(err)
	}
	rollback := errors.New("rollback")
	err = st.InTx(ctx, func(tx store.Store) error {
		if v, err := tx.TakeMeta(ctx, "token"); err != nil || v != "v1" {
			t.Errorf("TakeMeta in tx = %q, %v; want v1", v, err)
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatalf("InTx = %v, want the rollback error", err)
	}
	if v, err := st.GetMeta(ctx, "token"); err != nil || v != "v1" {
		t.Fatalf("GetMeta after a rolled-back take = %q, %v; want v1", v, err)
	}

	const takers = 8
	var wg sync.WaitGroup
	var won atomic.Int32
	start := make(chan struct{})
	for range takers {
		wg.Go(func() {
			<-start
			err := st.InTx(ctx, func(tx store.Store) error {
				if _, err := tx.TakeMeta(ctx, "token"); err != nil {
					return err
				}
				time.Sleep(30 * time.Millisecond) // hold the take while the others try
				return nil
			})
			switch {
			case err == nil:
				won.Add(1)
			case !keybridge.IsCode(err, keybridge.ENotFound):
				t.Errorf("TakeMeta = %v, want nil or not_found", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if got := won.Load(); got != 1 {
		t.Errorf("%d of %d concurrent takers got the key, want exactly 1", got, takers)
	}
}

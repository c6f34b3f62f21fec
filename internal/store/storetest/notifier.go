package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// testNotifier covers transactions and the notifications that ride on
// them: what a transaction writes and publishes happens at commit, or not
// at all.
func testNotifier(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("PublishOutsideTx", func(t *testing.T) {
		st := newStore(t)
		ch := baseSubscribe(t, st, st)
		inv := store.Invalidation{Kind: store.InvalidateAIKey, ID: "ai-1"}
		if err := st.Publish(ctx, inv); err != nil {
			t.Fatalf("Publish = %v", err)
		}
		baseExpect(t, "Publish", ch, inv)
	})

	t.Run("DeliveredAfterCommit", func(t *testing.T) {
		st := newStore(t)
		ch := baseSubscribe(t, st, st)
		inv := store.Invalidation{Kind: store.InvalidateAPIKey, ID: "k-1"}
		err := st.InTx(ctx, func(tx store.Store) error {
			if err := tx.Publish(ctx, inv); err != nil {
				return err
			}
			// Give a delivery that does not wait for the commit the time to
			// arrive.
			if got, ok := baseNext(ch, 100*time.Millisecond); ok {
				return fmt.Errorf("heard %+v before commit", got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("InTx = %v", err)
		}
		baseExpect(t, "after commit", ch, inv)
		baseMarker(t, "after commit, once", st, ch)
	})

	t.Run("OncePerTx", func(t *testing.T) {
		st := newStore(t)
		ch := baseSubscribe(t, st, st)
		a := store.Invalidation{Kind: store.InvalidateKeyRing}
		b := store.Invalidation{Kind: store.InvalidateUser, ID: "u-1"}
		err := st.InTx(ctx, func(tx store.Store) error {
			for _, inv := range []store.Invalidation{a, b, a, b, a} {
				if err := tx.Publish(ctx, inv); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("InTx = %v", err)
		}
		baseExpect(t, "first of the transaction", ch, a)
		baseExpect(t, "second of the transaction", ch, b)
		baseMarker(t, "each once", st, ch)
	})

	t.Run("RollbackWritesAndTellsNothing", func(t *testing.T) {
		st := newStore(t)
		ch := baseSubscribe(t, st, st)
		fail := errors.New("change failed")
		err := st.InTx(ctx, func(tx store.Store) error {
			if err := tx.SetMeta(ctx, "k", "v"); err != nil {
				return err
			}
			baseOrg(t, tx, "acme")
			if err := tx.Publish(ctx, store.Invalidation{Kind: store.InvalidateAll}); err != nil {
				return err
			}
			return fail
		})
		if !errors.Is(err, fail) {
			t.Fatalf("InTx = %v, want %v", err, fail)
		}
		_, err = st.GetMeta(ctx, "k")
		baseCode(t, "GetMeta after rollback", err, keybridge.ENotFound)
		if n, err := st.CountOrgs(ctx); err != nil || n != 0 {
			t.Errorf("CountOrgs after rollback = %d, %v; want 0", n, err)
		}
		baseMarker(t, "rollback", st, ch)
	})

	t.Run("NestedTxJoins", func(t *testing.T) {
		st := newStore(t)
		fail := errors.New("outer failed")
		err := st.InTx(ctx, func(outer store.Store) error {
			if err := outer.InTx(ctx, func(inner store.Store) error {
				if !inner.Now().Equal(outer.Now()) {
					t.Errorf("nested Now() = %v, outer %v; want one time per transaction", inner.Now(), outer.Now())
				}
				return inner.SetMeta(ctx, "inner", "v")
			}); err != nil {
				return err
			}
			// The outer transaction sees the inner write: it is the same one.
			if v, err := outer.GetMeta(ctx, "inner"); err != nil || v != "v" {
				t.Errorf("GetMeta in outer tx = %q, %v; want the inner write", v, err)
			}
			return fail
		})
		if !errors.Is(err, fail) {
			t.Fatalf("InTx = %v, want %v", err, fail)
		}
		_, err = st.GetMeta(ctx, "inner")
		baseCode(t, "GetMeta(inner write) after the outer rolled back", err, keybridge.ENotFound)
	})

	t.Run("OneTimePerTx", func(t *testing.T) {
		st := newStore(t)
		var a, b *keybridge.Org
		err := st.InTx(ctx, func(tx store.Store) error {
			first := tx.Now()
			a = baseOrg(t, tx, "a")
			time.Sleep(2 * time.Millisecond)
			b = baseOrg(t, tx, "b")
			if !tx.Now().Equal(first) {
				t.Errorf("Now() moved inside a transaction: %v, then %v", first, tx.Now())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			t.Errorf("rows of one transaction carry %v and %v, want one time", a.CreatedAt, b.CreatedAt)
		}
		if got, err := st.Org(ctx, "a"); err != nil || !got.CreatedAt.Equal(a.CreatedAt) || got.CreatedAt.Nanosecond()%1000 != 0 {
			t.Errorf("stored created_at = %v, %v; want %v, whole microseconds", got.CreatedAt, err, a.CreatedAt)
		}
	})

	t.Run("AcrossReplicas", func(t *testing.T) {
		if !baseIsPostgres(newStore(t)) {
			t.Skip("SQLite serves one process; notifications stay in it")
		}
		a, open := SharedPostgres(t)
		b := open()
		fromB := baseSubscribe(t, a, b)
		fromA := baseSubscribe(t, b, a)

		for i, dir := range []struct {
			name string
			pub  store.Store
			ch   <-chan store.Invalidation
			inTx bool
		}{
			{name: "b to a", pub: b, ch: fromB},
			{name: "a to b", pub: a, ch: fromA},
			{name: "a to b in a transaction", pub: a, ch: fromA, inTx: true},
		} {
			inv := store.Invalidation{Kind: store.InvalidateAPIKey, ID: fmt.Sprint("cross-", i)}
			start := time.Now()
			var err error
			if dir.inTx {
				err = dir.pub.InTx(ctx, func(tx store.Store) error { return tx.Publish(ctx, inv) })
			} else {
				err = dir.pub.Publish(ctx, inv)
			}
			if err != nil {
				t.Fatalf("%s: Publish = %v", dir.name, err)
			}
			// Each replica also hears its own invalidations; skip to inv.
			deadline := start.Add(time.Second)
			for {
				got, ok := baseNext(dir.ch, time.Until(deadline))
				if !ok {
					t.Errorf("%s: %+v not heard within 1s", dir.name, inv)
					break
				}
				if got == inv {
					t.Logf("%s: heard in %v", dir.name, time.Since(start))
					break
				}
			}
		}

		// A replica's own subscribers hear its invalidations once: at commit,
		// not a second time when the database echoes them back.
		own := baseSubscribe(t, a, a)
		inv := store.Invalidation{Kind: store.InvalidateUser, ID: "once"}
		if err := a.Publish(ctx, inv); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "own invalidation", own, inv)
		if got, ok := baseNext(own, 300*time.Millisecond); ok {
			t.Errorf("own invalidation heard again as %+v", got)
		}
	})
}

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
	// A replica holds one LISTEN connection, however many subscribe: the
	// caches of a process share it, and all hear every other replica.
	t.Run("OneListenPerReplica", func(t *testing.T) {
		if !baseIsPostgres(newStore(t)) {
			t.Skip("SQLite serves one process; it listens to nobody")
		}
		a, open := SharedPostgres(t)
		b := open()
		raw := RawOf(t, a)
		var schema string
		if err := raw.DB.QueryRow(`SELECT current_schema()`).Scan(&schema); err != nil {
			t.Fatal(err)
		}
		// The backends whose last statement was the LISTEN on this schema's
		// channel: the replicas' listening connections.
		const listeners = `FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND position($1 in query) > 0`
		channel := "keybridge_" + schema
		countListeners := func() int {
			t.Helper()
			var n int
			if err := raw.DB.QueryRow(`SELECT COUNT(*) `+listeners, channel).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		waitListeners := func(what string, want int) {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				n := countListeners()
				if n == want {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d LISTEN connections, want %d", what, n, want)
				}
			}
		}

		var onA, onB []<-chan store.Invalidation
		for range 3 {
			onA = append(onA, baseSubscribe(t, a, b))
		}
		for range 2 {
			onB = append(onB, baseSubscribe(t, b, a))
		}
		if n := countListeners(); n != 2 {
			t.Errorf("two replicas with 3 and 2 subscribers hold %d LISTEN connections, want 2", n)
		}
		hearAll := func(what string, pub store.Store, subs []<-chan store.Invalidation, inv store.Invalidation) {
			t.Helper()
			if pub != nil {
				if err := pub.Publish(ctx, inv); err != nil {
					t.Fatalf("%s: Publish = %v", what, err)
				}
			}
			for i, ch := range subs {
				baseSkipTo(t, fmt.Sprintf("%s, subscriber %d", what, i), ch, inv)
			}
		}
		hearAll("b to a", b, onA, store.Invalidation{Kind: store.InvalidateAIKey, ID: "b-to-a"})
		hearAll("a to b", a, onB, store.Invalidation{Kind: store.InvalidateAIKey, ID: "a-to-b"})

		// After the connections drop, every subscriber hears at once that
		// it is deaf (a reconnect may take long: nothing cached may be
		// trusted meanwhile), and then, once back, that it hears
		// everything again.
		if _, err := raw.DB.Exec(`SELECT pg_terminate_backend(pid) `+listeners, channel); err != nil {
			t.Fatal(err)
		}
		deaf := store.Invalidation{Kind: store.InvalidateDeaf}
		hearAll("a's connection dropped", nil, onA, deaf)
		hearAll("b's connection dropped", nil, onB, deaf)
		all := store.Invalidation{Kind: store.InvalidateAll}
		hearAll("a reconnected", nil, onA, all)
		hearAll("b reconnected", nil, onB, all)
		hearAll("b to a after reconnecting", b, onA, store.Invalidation{Kind: store.InvalidateAIKey, ID: "b-to-a-again"})
		hearAll("a to b after reconnecting", a, onB, store.Invalidation{Kind: store.InvalidateAIKey, ID: "a-to-b-again"})
		waitListeners("after reconnecting", 2)

		// A subscriber joining a replica that listens already hears at
		// once that it hears everything, and needs no connection of its own.
		onA = append(onA, baseSubscribe(t, a, b))
		if n := countListeners(); n != 2 {
			t.Errorf("after a third replica's subscriber joined, %d LISTEN connections, want 2", n)
		}
		hearAll("b to a's late subscriber", b, onA, store.Invalidation{Kind: store.InvalidateAIKey, ID: "late"})

		// Closing a replica ends its subscriptions and lets go of its LISTEN.
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		waitListeners("after b closed", 1)
		if err := b.Subscribe(ctx, func(store.Invalidation) {}); err == nil {
			t.Error("Subscribe on a closed store = nil, want an error")
		}
	})
}

// baseSkipTo reads ch until it hears want, failing t when it does not
// within 10s.
func baseSkipTo(t testing.TB, what string, ch <-chan store.Invalidation, want store.Invalidation) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, ok := baseNext(ch, time.Until(deadline))
		if !ok {
			t.Errorf("%s: %+v not heard within 10s", what, want)
			return
		}
		if got == want {
			return
		}
	}
}

package sqlstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// listener is a dialect Listen the test drives: it says when the LISTEN is
// in place or lost, and what other replicas publish.
type listener struct {
	calls     int // read only after the store is closed, or while one runs
	started   chan struct{}
	deliver   func(string)
	listening func(bool)
	ended     chan struct{}
}

func (l *listener) listen(ctx context.Context, deliver func(string), listening func(bool)) error {
	l.calls++
	l.deliver, l.listening = deliver, listening
	close(l.started)
	<-ctx.Done()
	close(l.ended)
	return nil
}

// subscribe subscribes to st until t ends and returns what it hears.
func subscribe(t *testing.T, st *sqlstore.Store) <-chan store.Invalidation {
	t.Helper()
	want := sqlstore.Subscribers(st) + 1
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan store.Invalidation, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Subscribe(ctx, func(inv store.Invalidation) { ch <- inv })
	}()
	t.Cleanup(func() { cancel(); <-done })
	for sqlstore.Subscribers(st) < want {
		time.Sleep(time.Millisecond)
	}
	return ch
}

func expect(t *testing.T, what string, ch <-chan store.Invalidation, want store.Invalidation) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Errorf("%s: heard %+v, want %+v", what, got, want)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s: heard nothing, want %+v", what, want)
	}
}

// The subscribers of a store share one Listen, started by the first; each
// hears InvalidateAll first, when the Listen is in place, whenever it joined.
func TestSubscribersShareOneListen(t *testing.T) {
	ctx := context.Background()
	base := storetest.SQLite(t).(*sqlstore.Store).DB()
	l := &listener{started: make(chan struct{}), ended: make(chan struct{})}
	d := base.Dialect
	d.Listen = l.listen
	st := sqlstore.New(&sqlstore.DB{Write: base.Write, Read: base.Read, Dialect: d})
	all := store.Invalidation{Kind: store.InvalidateAll}
	local := func(id string) store.Invalidation {
		inv := store.Invalidation{Kind: store.InvalidateAPIKey, ID: id}
		if err := st.Publish(ctx, inv); err != nil {
			t.Fatal(err)
		}
		return inv
	}

	first := subscribe(t, st)
	<-l.started
	// Not listening yet: what is published now is not passed on, since
	// the InvalidateAll to come covers it.
	local("before")
	l.listening(true)
	expect(t, "first subscriber, once listening", first, all)

	second := subscribe(t, st)
	expect(t, "second subscriber, joining a store that listens", second, all)
	l.deliver(`{"k":"ai_key","id":"remote","o":"another replica"}`)
	remote := store.Invalidation{Kind: store.InvalidateAIKey, ID: "remote"}
	expect(t, "first subscriber", first, remote)
	expect(t, "second subscriber", second, remote)
	inv := local("after")
	expect(t, "first subscriber", first, inv)
	expect(t, "second subscriber", second, inv)

	// The connection drops: every subscriber hears at once that it is
	// deaf, a subscriber joining now waits for the reconnect, and then
	// everyone starts over.
	l.listening(false)
	deaf := store.Invalidation{Kind: store.InvalidateDeaf}
	expect(t, "first subscriber, connection lost", first, deaf)
	expect(t, "second subscriber, connection lost", second, deaf)
	third := subscribe(t, st)
	during := local("during")
	expect(t, "first subscriber, while reconnecting", first, during)
	l.listening(true)
	expect(t, "first subscriber, reconnected", first, all)
	expect(t, "second subscriber, reconnected", second, during)
	expect(t, "second subscriber, reconnected", second, all)
	expect(t, "third subscriber, joined while reconnecting", third, all)

	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("Close left the Listen running")
	}
	if l.calls != 1 {
		t.Errorf("three subscribers started %d Listens, want 1", l.calls)
	}
	if err := st.Subscribe(ctx, func(store.Invalidation) {}); err == nil {
		t.Error("Subscribe on a closed store = nil, want an error")
	}
}

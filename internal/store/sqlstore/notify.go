package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"

	"github.com/keybridge/keybridge/internal/store"
)

// envelope is an invalidation on the wire, tagged with the process that
// sent it.
type envelope struct {
	store.Invalidation
	Origin string `json:"o"`
}

// errClosed ends subscriptions of a closed store.
var errClosed = errors.New("store closed")

// Publish implements store.Notifier. Subscribers in this process hear of
// inv once the transaction commits (at once outside one); other processes
// hear through the dialect's Notify, which PostgreSQL also delivers at commit.
// An invalidation the transaction already published is not sent again:
// a change of many rows (a master key re-wrapping every data key) tells
// each cache once.
func (s *Store) Publish(ctx context.Context, inv store.Invalidation) error {
	if s.tx == nil {
		return s.write(ctx, func(tx *Store) error { return tx.Publish(ctx, inv) })
	}
	if slices.Contains(*s.published, inv) {
		return nil
	}
	if n := s.db.Dialect.Notify; n != nil {
		payload, err := json.Marshal(envelope{Invalidation: inv, Origin: s.db.origin})
		if err != nil {
			return err
		}
		if err := n(ctx, s.tx, string(payload)); err != nil {
			return err
		}
	}
	*s.published = append(*s.published, inv)
	return nil
}

// Subscribe implements store.Notifier. fn hears InvalidateAll whenever it
// starts hearing everything: at once when invalidations stay in this
// process or the replica's LISTEN is already in place, else once it is,
// and again after every reconnect.
//
// All subscribers of a replica share one dialect Listen (one PostgreSQL
// connection), started by the first and kept until Close: the replica's
// subscribers are its long-lived caches, so a last one leaving is rare
// and a resubscription should not wait for a new LISTEN. They also share
// its goroutine, so fn must not block, nor publish (it would wait for
// itself); it is never called concurrently with itself. Subscribe returns nil when ctx ends, and an error when the
// store is closed first.
func (s *Store) Subscribe(ctx context.Context, fn func(store.Invalidation)) error {
	h := &s.db.hub
	sub := &subscriber{fn: fn}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return errClosed
	}
	h.subs = append(slices.Clone(h.subs), sub)
	listen := s.db.Dialect.Listen
	hearsAll := listen == nil || h.listening
	if listen != nil && h.done == nil {
		ctx, stop := context.WithCancel(context.Background())
		h.stop, h.done = stop, make(chan struct{})
		go s.db.listen(ctx, listen)
	}
	h.mu.Unlock()
	defer h.leave(sub)
	if hearsAll {
		sub.announce()
	}
	select {
	case <-ctx.Done():
		return nil
	case <-h.closing:
		return errClosed
	}
}

// hub is a replica's subscribers and the one Listen they share.
type hub struct {
	mu sync.Mutex
	// subs is replaced, never changed, so a delivery reads it under mu
	// and walks it without.
	subs []*subscriber
	// listening says the shared Listen is in place: a subscriber joining
	// now hears everything from the start.
	listening bool
	// stop ends the shared Listen and done closes once it has; both are
	// nil until the first subscriber starts it.
	stop context.CancelFunc
	done chan struct{}
	// closed is set and closing closed by Close.
	closed  bool
	closing chan struct{}
}

// subscriber is one Subscribe call.
type subscriber struct {
	fn func(store.Invalidation)
	// mu serializes calls of fn, so that none comes before the
	// InvalidateAll that says the subscriber hears everything.
	mu sync.Mutex
	// ready is set by that first InvalidateAll. What would reach fn
	// before is dropped: the InvalidateAll, coming later, covers it.
	ready bool
}

// announce tells the subscriber it hears everything from now on.
func (sub *subscriber) announce() {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.ready = true
	sub.fn(store.Invalidation{Kind: store.InvalidateAll})
}

// tell hands inv to the subscriber once it is ready.
func (sub *subscriber) tell(inv store.Invalidation) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.ready {
		sub.fn(inv)
	}
}

// leave removes sub.
func (h *hub) leave(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs = slices.DeleteFunc(slices.Clone(h.subs), func(s *subscriber) bool { return s == sub })
}

// subscribers returns the current subscribers, not to be changed.
func (h *hub) subscribers() []*subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subs
}

// close ends every subscription and the shared Listen, waiting for it to
// let go of its connection.
func (h *hub) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	close(h.closing)
	stop, done := h.stop, h.done
	h.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// listen runs the replica's one Listen until Close, fanning what it hears
// out to every subscriber.
func (db *DB) listen(ctx context.Context, listen func(context.Context, func(string), func(bool)) error) {
	h := &db.hub
	defer close(h.done)
	listen(ctx, func(payload string) {
		var env envelope
		if json.Unmarshal([]byte(payload), &env) != nil {
			return
		}
		// This process's own invalidations reached its subscribers at
		// commit, through deliver; the echo would tell them twice.
		if env.Origin == db.origin {
			return
		}
		for _, sub := range h.subscribers() {
			sub.tell(env.Invalidation)
		}
	}, func(up bool) {
		h.mu.Lock()
		h.listening = up
		subs := h.subs
		h.mu.Unlock()
		if !up {
			// From now until the Listen is back, changes go unheard:
			// every subscriber stops trusting what it holds.
			for _, sub := range subs {
				sub.tell(store.Invalidation{Kind: store.InvalidateDeaf})
			}
			return
		}
		// Whatever was published while the Listen was not in place went
		// unheard: every subscriber starts over.
		for _, sub := range subs {
			sub.announce()
		}
	})
}

// deliver hands inv to this process's subscribers.
func (db *DB) deliver(inv store.Invalidation) {
	for _, sub := range db.hub.subscribers() {
		sub.tell(inv)
	}
}

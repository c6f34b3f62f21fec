package sqlstore

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/keybridge/keybridge/internal/store"
)

// envelope is an invalidation on the wire, tagged with the process that
// sent it.
type envelope struct {
	store.Invalidation
	Origin string `json:"o"`
}

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
// process, else each time the dialect's Listen is in place.
func (s *Store) Subscribe(ctx context.Context, fn func(store.Invalidation)) error {
	s.db.subsMu.Lock()
	id := s.db.nextSub
	s.db.nextSub++
	s.db.subs[id] = fn
	s.db.subsMu.Unlock()
	defer func() {
		s.db.subsMu.Lock()
		delete(s.db.subs, id)
		s.db.subsMu.Unlock()
	}()
	all := store.Invalidation{Kind: store.InvalidateAll}
	if s.db.Dialect.Listen == nil {
		fn(all)
		<-ctx.Done()
		return nil
	}
	return s.db.Dialect.Listen(ctx, func(payload string) {
		var env envelope
		if json.Unmarshal([]byte(payload), &env) != nil {
			return
		}
		// This process's own invalidations reached fn at commit, through
		// deliver; the echo from the database would tell it twice.
		if env.Origin == s.db.origin {
			return
		}
		fn(env.Invalidation)
	}, func() { fn(all) })
}

// deliver hands inv to this process's subscribers.
func (db *DB) deliver(inv store.Invalidation) {
	db.subsMu.Lock()
	fns := make([]func(store.Invalidation), 0, len(db.subs))
	for _, fn := range db.subs {
		fns = append(fns, fn)
	}
	db.subsMu.Unlock()
	for _, fn := range fns {
		fn(inv)
	}
}

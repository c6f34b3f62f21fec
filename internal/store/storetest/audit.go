package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// baseVerify checks orgID's chain the way a verifier does (see
// store.AuditBounds) and returns its seq numbers.
func baseVerify(t testing.TB, st store.Store, orgID string) []int64 {
	t.Helper()
	ctx := context.Background()
	b, err := st.AuditBounds(ctx, orgID)
	if err != nil {
		t.Fatalf("AuditBounds(%q) = %v", orgID, err)
	}
	seq, prev := b.AnchorSeq, b.AnchorHash
	var seqs []int64
	errEnd := errors.New("past the head")
	err = st.AuditChain(ctx, orgID, func(e *keybridge.AuditEvent) error {
		switch {
		case e.Seq > b.HeadSeq:
			return errEnd
		case e.Seq != seq+1:
			return fmt.Errorf("event %s has seq %d after %d", e.ID, e.Seq, seq)
		case !bytes.Equal(e.PrevHash, prev):
			return fmt.Errorf("event %d does not link to the one before", e.Seq)
		case !bytes.Equal(e.Hash, e.ComputeHash(e.PrevHash)):
			return fmt.Errorf("event %d does not match its hash", e.Seq)
		}
		seq, prev = e.Seq, e.Hash
		seqs = append(seqs, e.Seq)
		return nil
	})
	if err != nil && err != errEnd {
		t.Fatalf("chain of %q: %v", orgID, err)
	}
	if seq != b.HeadSeq || !bytes.Equal(prev, b.HeadHash) {
		t.Fatalf("chain of %q ends at seq %d, head is %d", orgID, seq, b.HeadSeq)
	}
	return seqs
}

func baseEvent(orgID, action string, at time.Time) *keybridge.AuditEvent {
	return &keybridge.AuditEvent{Time: at, OrgID: orgID, Action: action,
		Actor:    keybridge.Actor{Type: keybridge.ActorUser, ID: "user-1", Email: "alice@example.com"},
		Resource: keybridge.Resource{Type: "provider", ID: "prov-1", Name: "openai"}}
}

func baseAppend(t testing.TB, st store.Store, e *keybridge.AuditEvent) *keybridge.AuditEvent {
	t.Helper()
	if err := st.AppendAuditEvent(context.Background(), e); err != nil {
		t.Fatalf("AppendAuditEvent(%s) = %v", e.Action, err)
	}
	return e
}

func testAudit(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("Chain", func(t *testing.T) {
		st := newStore(t)
		e := baseEvent("org-a", "provider.update", baseTime)
		e.IP, e.UserAgent, e.RequestID = "192.0.2.7", "curl/8", "req-1"
		e.Changes = map[string]keybridge.Change{
			"name":    {Old: "old", New: "new"},
			"api_key": {Old: keybridge.Redacted, New: keybridge.Redacted},
			"budget":  {Old: int64(1) << 60, New: 0.25},
			"tags":    {Old: []string{"a"}, New: map[string]any{"z": 1, "a": nil}},
			"enabled": {Old: nil, New: true},
		}
		baseAppend(t, st, e)
		if e.ID == "" || e.Seq != 1 || len(e.PrevHash) != 0 || !bytes.Equal(e.Hash, e.ComputeHash(nil)) {
			t.Fatalf("first event: ID %q, seq %d, prev %x, hash %x; want an ID, seq 1, no prev, its hash", e.ID, e.Seq, e.PrevHash, e.Hash)
		}
		if !e.Time.Equal(baseTime.Truncate(time.Microsecond)) {
			t.Errorf("event time = %v, want %v cut to the microsecond", e.Time, baseTime)
		}
		second := baseAppend(t, st, baseEvent("org-a", "provider.delete", time.Time{}))
		if second.Seq != 2 || !bytes.Equal(second.PrevHash, e.Hash) || second.Time.IsZero() {
			t.Errorf("second event: seq %d, prev %x, time %v; want seq 2 linked to %x with a time", second.Seq, second.PrevHash, second.Time, e.Hash)
		}
		// Other chains count on their own; events of no org form the chain "".
		own := baseEvent("org-b", "org.create", baseTime)
		own.ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
		if baseAppend(t, st, own).Seq != 1 || own.ID != "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" {
			t.Errorf("first event of org-b: seq %d, ID %q; want 1 and the ID given", own.Seq, own.ID)
		}
		if e := baseAppend(t, st, baseEvent("", "auth.login_failed", baseTime)); e.Seq != 1 {
			t.Errorf("first event of no org: seq %d, want 1", e.Seq)
		}
		baseAppend(t, st, baseEvent("org-a", "provider.create", baseTime))

		var got []*keybridge.AuditEvent
		if err := st.AuditChain(ctx, "org-a", func(e *keybridge.AuditEvent) error { got = append(got, e); return nil }); err != nil {
			t.Fatalf("AuditChain = %v", err)
		}
		if len(got) != 3 || got[0].ID != e.ID {
			t.Fatalf("AuditChain(org-a) = %d events, want 3 starting with %s", len(got), e.ID)
		}
		// The event reads back as appended: every hashed field survives.
		if gj, wj := eventJSON(t, got[0]), eventJSON(t, e); gj != wj {
			t.Errorf("stored event =\n%s\nwant\n%s", gj, wj)
		}
		if !bytes.Equal(got[0].ComputeHash(nil), e.Hash) {
			t.Errorf("stored event hashes to %x, appended as %x", got[0].ComputeHash(nil), e.Hash)
		}
		for _, org := range []string{"org-a", "org-b", "", "org-none"} {
			baseVerify(t, st, org)
		}
		if b, err := st.AuditBounds(ctx, "org-none"); err != nil || b.HeadSeq != 0 || b.AnchorSeq != 0 {
			t.Errorf("AuditBounds(no events) = %+v, %v; want zero", b, err)
		}

		stop := errors.New("stop")
		n := 0
		err := st.AuditChain(ctx, "org-a", func(*keybridge.AuditEvent) error { n++; return stop })
		if !errors.Is(err, stop) || n != 1 {
			t.Errorf("AuditChain with fn failing = %v after %d calls; want fn's error after 1", err, n)
		}
	})

	t.Run("ChainOutlivesRollback", func(t *testing.T) {
		st := newStore(t)
		baseAppend(t, st, baseEvent("org-a", "one", baseTime))
		fail := errors.New("change failed")
		err := st.InTx(ctx, func(tx store.Store) error {
			if err := tx.AppendAuditEvent(ctx, baseEvent("org-a", "two", baseTime)); err != nil {
				return err
			}
			return fail
		})
		if !errors.Is(err, fail) {
			t.Fatalf("InTx = %v, want %v", err, fail)
		}
		if e := baseAppend(t, st, baseEvent("org-a", "three", baseTime)); e.Seq != 2 {
			t.Errorf("event after a rolled-back one has seq %d, want 2", e.Seq)
		}
		if seqs := baseVerify(t, st, "org-a"); !slices.Equal(seqs, []int64{1, 2}) {
			t.Errorf("chain = %v, want [1 2]", seqs)
		}
	})

	t.Run("List", func(t *testing.T) {
		st := newStore(t)
		t0 := baseTime
		var ids []string // org-a's events, oldest first
		for i, ev := range []struct {
			action, actorID, email, resType, resID string
		}{
			{"provider.create", "u1", "alice@example.com", "provider", "p1"},
			{"provider.update", "u2", "bob@example.com", "provider", "p1"},
			{"api_key.revoke", "k1", "", "api_key", "k9"},
			{"provider.update", "u1", "alice@example.com", "provider", "p2"},
			{"member.update", "u2", "bob@example.com", "member", "u1"},
		} {
			e := baseEvent("org-a", ev.action, t0.Add(time.Duration(i)*time.Minute))
			e.Actor = keybridge.Actor{Type: keybridge.ActorUser, ID: ev.actorID, Email: ev.email}
			e.Resource = keybridge.Resource{Type: ev.resType, ID: ev.resID}
			ids = append(ids, baseAppend(t, st, e).ID)
		}
		// Two events in one transaction share a time; the later one lists first.
		if err := st.InTx(ctx, func(tx store.Store) error {
			for _, action := range []string{"same.first", "same.second"} {
				e := baseEvent("org-a", action, t0.Add(10*time.Minute))
				e.Actor = keybridge.Actor{Type: keybridge.ActorSystem, ID: "system"}
				e.Resource = keybridge.Resource{Type: "org", ID: "org-a"}
				if err := tx.AppendAuditEvent(ctx, e); err != nil {
					return err
				}
				ids = append(ids, e.ID)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		baseAppend(t, st, baseEvent("org-b", "provider.create", t0))
		// Newest first: reverse of appending.
		byIndex := func(is ...int) []string {
			var out []string
			for _, i := range is {
				out = append(out, ids[i])
			}
			return out
		}
		for _, tc := range []struct {
			name   string
			filter store.AuditFilter
			want   []string
		}{
			{"org", store.AuditFilter{OrgID: "org-a"}, byIndex(6, 5, 4, 3, 2, 1, 0)},
			{"action", store.AuditFilter{OrgID: "org-a", Action: "provider.update"}, byIndex(3, 1)},
			{"actor id", store.AuditFilter{OrgID: "org-a", Actor: "u2"}, byIndex(4, 1)},
			{"actor email", store.AuditFilter{OrgID: "org-a", Actor: "Alice@Example.com"}, byIndex(3, 0)},
			{"resource type", store.AuditFilter{OrgID: "org-a", ResourceType: "provider"}, byIndex(3, 1, 0)},
			{"resource id", store.AuditFilter{OrgID: "org-a", ResourceID: "p1"}, byIndex(1, 0)},
			{"resource", store.AuditFilter{OrgID: "org-a", ResourceType: "member", ResourceID: "u1"}, byIndex(4)},
			{"since", store.AuditFilter{OrgID: "org-a", Since: t0.Add(3 * time.Minute)}, byIndex(6, 5, 4, 3)},
			{"until", store.AuditFilter{OrgID: "org-a", Until: t0.Add(2 * time.Minute)}, byIndex(1, 0)},
			{"since and until", store.AuditFilter{OrgID: "org-a", Since: t0.Add(time.Minute), Until: t0.Add(4 * time.Minute)}, byIndex(3, 2, 1)},
			{"other org", store.AuditFilter{OrgID: "org-b", Action: "provider.update"}, nil},
			{"nothing", store.AuditFilter{OrgID: "org-c"}, nil},
		} {
			for _, limit := range []int{0, 1, 2, 3} {
				var got []string
				page := store.Page{Limit: limit}
				for pages := 0; ; pages++ {
					if pages > 10 {
						t.Fatalf("%s: paging does not end", tc.name)
					}
					events, next, err := st.ListAuditEvents(ctx, tc.filter, page)
					if err != nil {
						t.Fatalf("ListAuditEvents(%s) = %v", tc.name, err)
					}
					for _, e := range events {
						if e.OrgID != tc.filter.OrgID {
							t.Errorf("ListAuditEvents(%s) returned an event of org %q", tc.name, e.OrgID)
						}
						got = append(got, e.ID)
					}
					if next == "" {
						break
					}
					page.Cursor = next
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("ListAuditEvents(%s, limit %d) = %v, want %v", tc.name, limit, got, tc.want)
				}
			}
		}
		_, _, err := st.ListAuditEvents(ctx, store.AuditFilter{OrgID: "org-a"}, store.Page{Cursor: encodeTestCursor("x")})
		baseCode(t, "ListAuditEvents(bad cursor)", err, keybridge.EInvalid)
	})

	t.Run("Retention", func(t *testing.T) {
		st := newStore(t)
		t0 := baseTime
		for i := range 5 {
			baseAppend(t, st, baseEvent("org-a", fmt.Sprint("e", i), t0.Add(time.Duration(i)*time.Hour)))
		}
		baseAppend(t, st, baseEvent("org-b", "b", t0))
		for _, step := range []struct {
			before      time.Time
			wantRemoved int
			wantSeqs    []int64
		}{
			{t0, 0, []int64{1, 2, 3, 4, 5}},
			{t0.Add(2 * time.Hour), 2, []int64{3, 4, 5}},
			{t0.Add(90 * time.Minute), 0, []int64{3, 4, 5}},
			{t0.Add(4 * time.Hour), 2, []int64{5}},
		} {
			n, err := st.DeleteAuditEventsBefore(ctx, "org-a", step.before)
			if err != nil || n != step.wantRemoved {
				t.Errorf("DeleteAuditEventsBefore(%v) = %d, %v; want %d", step.before.Sub(t0), n, err, step.wantRemoved)
			}
			if seqs := baseVerify(t, st, "org-a"); !slices.Equal(seqs, step.wantSeqs) {
				t.Errorf("chain after DeleteAuditEventsBefore(%v) = %v, want %v", step.before.Sub(t0), seqs, step.wantSeqs)
			}
		}
		// Removing every event leaves an empty chain that still verifies,
		// and the next event continues it.
		if n, err := st.DeleteAuditEventsBefore(ctx, "org-a", t0.Add(24*time.Hour)); err != nil || n != 1 {
			t.Errorf("DeleteAuditEventsBefore(all) = %d, %v; want 1", n, err)
		}
		if seqs := baseVerify(t, st, "org-a"); len(seqs) != 0 {
			t.Errorf("chain after removing all = %v, want empty", seqs)
		}
		if e := baseAppend(t, st, baseEvent("org-a", "later", t0.Add(48*time.Hour))); e.Seq != 6 {
			t.Errorf("event after retention has seq %d, want 6", e.Seq)
		}
		if seqs := baseVerify(t, st, "org-a"); !slices.Equal(seqs, []int64{6}) {
			t.Errorf("chain after retention and a new event = %v, want [6]", seqs)
		}
		if seqs := baseVerify(t, st, "org-b"); !slices.Equal(seqs, []int64{1}) {
			t.Errorf("org-b chain = %v, want [1]: retention of org-a must not touch it", seqs)
		}
		if n, err := st.DeleteAuditEventsBefore(ctx, "org-none", t0.Add(24*time.Hour)); err != nil || n != 0 {
			t.Errorf("DeleteAuditEventsBefore(org without events) = %d, %v; want 0", n, err)
		}
	})

	t.Run("ConcurrentAppends", func(t *testing.T) {
		st := newStore(t)
		if !baseIsPostgres(st) {
			t.Skip("SQLite has one writer; concurrency is PostgreSQL's question")
		}
		// The chain is fresh, so the goroutines also race to create its head.
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				errs <- st.InTx(ctx, func(tx store.Store) error {
					return tx.AppendAuditEvent(ctx, baseEvent("org-a", fmt.Sprint("concurrent-", i), time.Time{}))
				})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("concurrent AppendAuditEvent = %v", err)
			}
		}
		seqs := baseVerify(t, st, "org-a")
		if len(seqs) != n || seqs[n-1] != n {
			t.Errorf("chain after %d concurrent appends = %v, want 1..%d", n, seqs, n)
		}
	})
}

func eventJSON(t testing.TB, e *keybridge.AuditEvent) string {
	b, err := json.Marshal(struct {
		*keybridge.AuditEvent
		Seq      int64
		PrevHash []byte
		Hash     []byte
	}{e, e.Seq, e.PrevHash, e.Hash})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// encodeTestCursor makes a well-formed cursor with the wrong contents.
func encodeTestCursor(parts ...string) string {
	b, _ := json.Marshal(parts)
	return base64URL(b)
}

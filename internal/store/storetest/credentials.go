package storetest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

func provCredential(t *testing.T, st store.Store, u *keybridge.User, p *keybridge.Provider, body string) *keybridge.Credential {
	t.Helper()
	c := &keybridge.Credential{UserID: u.ID, OrgID: p.OrgID, ProviderID: p.ID, Hint: "..." + body, Sealed: provSealed(1, body), Fingerprint: []byte(body)}
	if err := st.CreateCredential(context.Background(), c); err != nil {
		t.Fatalf("CreateCredential(%s) = %v", body, err)
	}
	return c
}

func testCredentials(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("OwnerOnly", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		ada := provUser(t, st, "ada@acme.test")
		bob := provUser(t, st, "bob@acme.test")
		openai := provProvider(t, st, org.ID, "openai")
		anthropic := provProvider(t, st, org.ID, "anthropic")

		c := provCredential(t, st, ada, openai, "one")
		if c.ID == "" || c.CreatedAt.IsZero() || !c.UpdatedAt.Equal(c.CreatedAt) || c.LastUsedAt != nil {
			t.Errorf("CreateCredential = %+v; want an ID and equal times", c)
		}
		got, err := st.Credential(ctx, ada.ID, c.ID)
		if err != nil || got.ProviderID != openai.ID || got.OrgID != org.ID || got.Hint != "...one" ||
			string(got.Sealed) != string(c.Sealed) || string(got.Fingerprint) != "one" || !got.CreatedAt.Equal(c.CreatedAt) {
			t.Errorf("Credential = %+v, %v; want %+v", got, err, c)
		}
		_, err = st.Credential(ctx, bob.ID, c.ID)
		provCode(t, "Credential(another user's)", err, keybridge.ENotFound)
		got, err = st.CredentialFor(ctx, ada.ID, openai.ID)
		if err != nil || got.ID != c.ID {
			t.Errorf("CredentialFor = %v, %v; want %s", got, err, c.ID)
		}
		_, err = st.CredentialFor(ctx, bob.ID, openai.ID)
		provCode(t, "CredentialFor(bob)", err, keybridge.ENotFound)

		dup := &keybridge.Credential{UserID: ada.ID, OrgID: org.ID, ProviderID: openai.ID, Hint: "...", Sealed: provSealed(1, "two"), Fingerprint: []byte("two")}
		provCode(t, "CreateCredential(second for the provider)", st.CreateCredential(ctx, dup), keybridge.EConflict)
		provCredential(t, st, bob, openai, "bobs")

		given := &keybridge.Credential{ID: "0190f0f0-0000-7000-8000-0000000000aa", UserID: ada.ID, OrgID: org.ID, ProviderID: anthropic.ID,
			Hint: "...", Sealed: provSealed(1, "three"), Fingerprint: []byte("three")}
		if err := st.CreateCredential(ctx, given); err != nil || given.ID != "0190f0f0-0000-7000-8000-0000000000aa" {
			t.Errorf("CreateCredential with ID = %v, ID %q; want the caller's ID kept", err, given.ID)
		}

		list, err := st.ListCredentials(ctx, ada.ID)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, c := range list {
			ids = append(ids, c.ID)
			if c.UserID != ada.ID {
				t.Errorf("ListCredentials(ada) holds %s of user %s", c.ID, c.UserID)
			}
		}
		if len(ids) != 2 || !slices.IsSortedFunc(ids, func(a, b string) int { return strings.Compare(b, a) }) {
			t.Errorf("ListCredentials(ada) = %v, want 2 newest first", ids)
		}

		time.Sleep(2 * time.Millisecond)
		c.Sealed, c.Fingerprint, c.Hint = provSealed(2, "rotated"), []byte("rotated"), "...ated"
		if err := st.UpdateCredential(ctx, c); err != nil {
			t.Fatalf("UpdateCredential = %v", err)
		}
		got, _ = st.Credential(ctx, ada.ID, c.ID)
		if string(got.Sealed) != string(c.Sealed) || string(got.Fingerprint) != "rotated" || got.Hint != "...ated" || !got.UpdatedAt.After(got.CreatedAt) {
			t.Errorf("after UpdateCredential, Credential = %+v", got)
		}
		stolen := *c
		stolen.UserID = bob.ID
		provCode(t, "UpdateCredential(as another user)", st.UpdateCredential(ctx, &stolen), keybridge.ENotFound)

		provCode(t, "DeleteCredential(as another user)", st.DeleteCredential(ctx, bob.ID, c.ID), keybridge.ENotFound)
		if err := st.DeleteCredential(ctx, ada.ID, c.ID); err != nil {
			t.Fatalf("DeleteCredential = %v", err)
		}
		provCode(t, "DeleteCredential(again)", st.DeleteCredential(ctx, ada.ID, c.ID), keybridge.ENotFound)
		// One per provider: after deleting, a new one may be added.
		provCredential(t, st, ada, openai, "again")
	})

	t.Run("Invalidations", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		ada := provUser(t, st, "ada@acme.test")
		bob := provUser(t, st, "bob@acme.test")
		openai := provProvider(t, st, org.ID, "openai")
		ch := baseSubscribe(t, st, st)
		want := store.Invalidation{Kind: store.InvalidateCredential, ID: ada.ID, Org: org.ID}

		c := provCredential(t, st, ada, openai, "one")
		baseExpect(t, "CreateCredential", ch, want)
		c.Sealed, c.Fingerprint, c.Hint = provSealed(1, "two"), []byte("two"), "...two"
		// The org published is the stored one, not what the caller says.
		c.OrgID = ""
		if err := st.UpdateCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "UpdateCredential", ch, want)

		dup := &keybridge.Credential{UserID: ada.ID, OrgID: org.ID, ProviderID: openai.ID, Hint: "...", Sealed: provSealed(1, "x"), Fingerprint: []byte("x")}
		provCode(t, "CreateCredential(second for the provider)", st.CreateCredential(ctx, dup), keybridge.EConflict)
		stolen := *c
		stolen.UserID = bob.ID
		provCode(t, "UpdateCredential(as another user)", st.UpdateCredential(ctx, &stolen), keybridge.ENotFound)
		provCode(t, "DeleteCredential(as another user)", st.DeleteCredential(ctx, bob.ID, c.ID), keybridge.ENotFound)
		baseMarker(t, "failed credential changes", st, ch)

		if err := st.DeleteCredential(ctx, ada.ID, c.ID); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "DeleteCredential", ch, want)
	})

	t.Run("TouchNeverGoesBack", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		ada := provUser(t, st, "ada@acme.test")
		p := provProvider(t, st, org.ID, "openai")
		q := provProvider(t, st, org.ID, "anthropic")
		c := provCredential(t, st, ada, p, "one")
		d := provCredential(t, st, ada, q, "two")
		ch := baseSubscribe(t, st, st)
		later := baseTime.Truncate(time.Microsecond)
		earlier := later.Add(-time.Hour)
		if err := st.TouchCredentials(ctx, map[string]time.Time{c.ID: later, d.ID: earlier}); err != nil {
			t.Fatalf("TouchCredentials = %v", err)
		}
		if err := st.TouchCredentials(ctx, map[string]time.Time{c.ID: earlier, d.ID: later, "0190f0f0-0000-7000-8000-0000000000ff": later}); err != nil {
			t.Fatalf("TouchCredentials = %v", err)
		}
		for _, cr := range []*keybridge.Credential{c, d} {
			got, err := st.Credential(ctx, ada.ID, cr.ID)
			if err != nil || got.LastUsedAt == nil || !got.LastUsedAt.Equal(later) || !got.UpdatedAt.Equal(cr.UpdatedAt) {
				t.Errorf("Credential(%s) after touches = %+v, %v; want last used %v, updated_at unchanged", cr.Hint, got, err, later)
			}
		}
		if err := st.TouchCredentials(ctx, nil); err != nil {
			t.Errorf("TouchCredentials(nil) = %v", err)
		}
		baseMarker(t, "touches publish nothing", st, ch)
	})

	t.Run("ConcurrentTouches", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		var ids []string
		for i := range 16 {
			u := provUser(t, st, fmt.Sprintf("u%02d@acme.test", i))
			ids = append(ids, provCredential(t, st, u, provProvider(t, st, org.ID, fmt.Sprintf("p%02d", i)), fmt.Sprint("c", i)).ID)
		}
		const flushers, rounds = 4, 15
		var wg sync.WaitGroup
		errs := make(chan error, flushers*rounds)
		for f := range flushers {
			wg.Go(func() {
				for r := range rounds {
					batch := map[string]time.Time{}
					for _, id := range ids {
						batch[id] = baseTime.Add(time.Duration(r*flushers+f) * time.Millisecond)
					}
					if err := st.TouchCredentials(ctx, batch); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent TouchCredentials = %v", err)
		}
	})

	t.Run("CredentialProviders", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		other := provOrg(t, st, "other")
		ada := provUser(t, st, "ada@acme.test")
		bob := provUser(t, st, "bob@acme.test")
		gone := provUser(t, st, "gone@acme.test")
		for _, m := range []keybridge.Membership{
			{OrgID: org.ID, UserID: ada.ID, Role: keybridge.RoleOwner},
			{OrgID: org.ID, UserID: bob.ID, Role: keybridge.RoleMember},
			{OrgID: other.ID, UserID: ada.ID, Role: keybridge.RoleMember},
		} {
			if err := st.CreateMembership(ctx, &m); err != nil {
				t.Fatal(err)
			}
		}
		openai := provProvider(t, st, org.ID, "openai")
		anthropic := provProvider(t, st, org.ID, "anthropic")
		elsewhere := provProvider(t, st, other.ID, "openai")
		provCredential(t, st, ada, openai, "a1")
		provCredential(t, st, ada, anthropic, "a2")
		provCredential(t, st, ada, elsewhere, "a3")
		provCredential(t, st, bob, anthropic, "b1")
		// Not a member (any more): not listed.
		provCredential(t, st, gone, openai, "g1")

		got, err := st.CredentialProviders(ctx, org.ID)
		if err != nil {
			t.Fatal(err)
		}
		wantAda := []string{openai.ID, anthropic.ID}
		slices.Sort(wantAda)
		gotAda := slices.Clone(got[ada.ID])
		slices.Sort(gotAda)
		if len(got) != 2 || !slices.Equal(gotAda, wantAda) || !slices.Equal(got[bob.ID], []string{anthropic.ID}) {
			t.Errorf("CredentialProviders(acme) = %v, want ada: %v, bob: [%s]", got, wantAda, anthropic.ID)
		}
		got, _ = st.CredentialProviders(ctx, other.ID)
		if len(got) != 1 || !slices.Equal(got[ada.ID], []string{elsewhere.ID}) {
			t.Errorf("CredentialProviders(other) = %v, want ada: [%s]", got, elsewhere.ID)
		}
	})
}

package storetest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// provSealed returns bytes shaped like a key ring value sealed under
// version (format byte 1, big-endian version, then a body), so the store's
// version bookkeeping can be checked without a ring.
func provSealed(version int, body string) []byte {
	b := make([]byte, 5, 5+len(body))
	b[0] = 1
	binary.BigEndian.PutUint32(b[1:5], uint32(version))
	return append(b, body...)
}

func provOrg(t *testing.T, st store.Store, slug string) *keybridge.Org {
	t.Helper()
	o := &keybridge.Org{Slug: slug, Name: slug}
	if err := st.CreateOrg(context.Background(), o); err != nil {
		t.Fatalf("CreateOrg(%q) = %v", slug, err)
	}
	return o
}

func provUser(t *testing.T, st store.Store, email string) *keybridge.User {
	t.Helper()
	u := &keybridge.User{Email: email, Name: email}
	if err := st.CreateUser(context.Background(), u); err != nil {
		t.Fatalf("CreateUser(%q) = %v", email, err)
	}
	return u
}

func provProvider(t *testing.T, st store.Store, orgID, name string) *keybridge.Provider {
	t.Helper()
	p := &keybridge.Provider{OrgID: orgID, Name: name, DisplayName: name, Type: keybridge.ProviderOpenAI,
		BaseURL: "https://api.openai.com/v1", Enabled: true, KeySource: keybridge.KeySourceOrg, SettingsSealed: provSealed(1, "settings-"+name)}
	if err := st.CreateProvider(context.Background(), p); err != nil {
		t.Fatalf("CreateProvider(%q) = %v", name, err)
	}
	return p
}

func provKey(t *testing.T, st store.Store, providerID, name string, priority int) *keybridge.ProviderKey {
	t.Helper()
	k := &keybridge.ProviderKey{ProviderID: providerID, Name: name, Hint: "...abcd", Priority: priority, Enabled: true,
		Sealed: provSealed(1, "key-"+name), Fingerprint: []byte("fp-" + name)}
	if err := st.CreateProviderKey(context.Background(), k); err != nil {
		t.Fatalf("CreateProviderKey(%q) = %v", name, err)
	}
	return k
}

func provCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if got := keybridge.ErrorCode(err); got != code {
		t.Errorf("%s: error %v (code %q), want code %q", what, err, got, code)
	}
}

func testProviders(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("CreateAndGet", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		other := provOrg(t, st, "other")
		p := provProvider(t, st, org.ID, "openai")
		if p.ID == "" || p.CreatedAt.IsZero() || !p.UpdatedAt.Equal(p.CreatedAt) {
			t.Fatalf("CreateProvider set ID %q, times %v/%v; want an ID and equal times", p.ID, p.CreatedAt, p.UpdatedAt)
		}
		given := &keybridge.Provider{ID: "0190f0f0-0000-7000-8000-000000000001", OrgID: org.ID, Name: "anthropic", DisplayName: "Claude",
			Type: keybridge.ProviderAnthropic, BaseURL: "https://api.anthropic.com", KeySource: keybridge.KeySourceUserOrOrg, SettingsSealed: provSealed(1, "x")}
		if err := st.CreateProvider(ctx, given); err != nil {
			t.Fatalf("CreateProvider with ID = %v", err)
		}
		if given.ID != "0190f0f0-0000-7000-8000-000000000001" {
			t.Errorf("CreateProvider replaced the caller's ID with %q", given.ID)
		}
		for _, ref := range []string{p.ID, "openai"} {
			got, err := st.Provider(ctx, org.ID, ref)
			if err != nil {
				t.Fatalf("Provider(%q) = %v", ref, err)
			}
			if got.ID != p.ID || got.Name != "openai" || got.Type != keybridge.ProviderOpenAI || !got.Enabled ||
				got.KeySource != keybridge.KeySourceOrg || string(got.SettingsSealed) != string(p.SettingsSealed) ||
				!got.CreatedAt.Equal(p.CreatedAt) || got.BaseURL != p.BaseURL || got.KeyCount != 0 {
				t.Errorf("Provider(%q) = %+v, want %+v", ref, got, p)
			}
		}
		got, err := st.Provider(ctx, org.ID, "anthropic")
		if err != nil || got.Enabled || got.DisplayName != "Claude" || got.KeySource != keybridge.KeySourceUserOrOrg {
			t.Errorf("Provider(anthropic) = %+v, %v; want disabled, Claude, user_or_org", got, err)
		}
		for _, c := range []struct{ org, ref string }{{other.ID, p.ID}, {other.ID, "openai"}, {org.ID, "missing"}, {org.ID, "0190f0f0-0000-7000-8000-0000000000ff"}} {
			_, err := st.Provider(ctx, c.org, c.ref)
			provCode(t, fmt.Sprintf("Provider(%s, %q)", c.org, c.ref), err, keybridge.ENotFound)
		}
		dup := &keybridge.Provider{OrgID: org.ID, Name: "openai", DisplayName: "x", Type: keybridge.ProviderOpenAI, KeySource: keybridge.KeySourceOrg, SettingsSealed: provSealed(1, "y")}
		provCode(t, "CreateProvider(duplicate name)", st.CreateProvider(ctx, dup), keybridge.EConflict)
		elsewhere := &keybridge.Provider{OrgID: other.ID, Name: "openai", DisplayName: "x", Type: keybridge.ProviderOpenAI, KeySource: keybridge.KeySourceOrg, SettingsSealed: provSealed(1, "y")}
		if err := st.CreateProvider(ctx, elsewhere); err != nil {
			t.Errorf("CreateProvider(same name, other org) = %v, want nil", err)
		}
	})

	t.Run("IDBeatsName", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		a := provProvider(t, st, org.ID, "a")
		// A provider whose name is another's ID: the ID wins.
		provProvider(t, st, org.ID, a.ID)
		got, err := st.Provider(ctx, org.ID, a.ID)
		if err != nil || got.ID != a.ID {
			t.Errorf("Provider(%q) = %v, %v; want provider %s", a.ID, got, err, a.ID)
		}
	})

	t.Run("ListPages", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		other := provOrg(t, st, "other")
		names := []string{"zeta", "alpha", "a-b", "ab", "m9", "m10", "beta"}
		for _, n := range names {
			provProvider(t, st, org.ID, n)
		}
		provProvider(t, st, other.ID, "hidden")
		want := slices.Clone(names)
		slices.Sort(want)
		var got []string
		cursor := ""
		for range 10 {
			items, next, err := st.ListProviders(ctx, org.ID, store.Page{Limit: 3, Cursor: cursor})
			if err != nil {
				t.Fatalf("ListProviders = %v", err)
			}
			if len(items) > 3 {
				t.Fatalf("ListProviders(limit 3) returned %d items", len(items))
			}
			for _, p := range items {
				got = append(got, p.Name)
			}
			if next == "" {
				break
			}
			cursor = next
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListProviders pages = %v, want %v", got, want)
		}
		_, _, err := st.ListProviders(ctx, org.ID, store.Page{Cursor: "not a cursor!"})
		provCode(t, "ListProviders(bad cursor)", err, keybridge.EInvalid)
		items, next, err := st.ListProviders(ctx, provOrg(t, st, "empty").ID, store.Page{})
		if err != nil || len(items) != 0 || next != "" {
			t.Errorf("ListProviders(empty org) = %v, %q, %v; want nothing", items, next, err)
		}
	})

	t.Run("Update", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		other := provOrg(t, st, "other")
		p := provProvider(t, st, org.ID, "openai")
		provProvider(t, st, org.ID, "taken")
		time.Sleep(2 * time.Millisecond)
		p.Name, p.DisplayName, p.BaseURL, p.Enabled, p.KeySource = "renamed", "Renamed", "https://proxy.example/v1", false, keybridge.KeySourceUser
		p.SettingsSealed = provSealed(2, "new")
		if err := st.UpdateProvider(ctx, p); err != nil {
			t.Fatalf("UpdateProvider = %v", err)
		}
		got, err := st.Provider(ctx, org.ID, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "renamed" || got.DisplayName != "Renamed" || got.BaseURL != "https://proxy.example/v1" || got.Enabled ||
			got.KeySource != keybridge.KeySourceUser || string(got.SettingsSealed) != string(p.SettingsSealed) ||
			!got.UpdatedAt.After(got.CreatedAt) || got.Type != keybridge.ProviderOpenAI {
			t.Errorf("after UpdateProvider, Provider = %+v", got)
		}
		p.Name = "taken"
		provCode(t, "UpdateProvider(taken name)", st.UpdateProvider(ctx, p), keybridge.EConflict)
		p.Name = "renamed"
		moved := *p
		moved.OrgID = other.ID
		provCode(t, "UpdateProvider(other org)", st.UpdateProvider(ctx, &moved), keybridge.ENotFound)
		missing := *p
		missing.ID = "0190f0f0-0000-7000-8000-0000000000ff"
		provCode(t, "UpdateProvider(missing)", st.UpdateProvider(ctx, &missing), keybridge.ENotFound)
	})

	t.Run("Keys", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		q := provProvider(t, st, org.ID, "other")
		k2 := provKey(t, st, p.ID, "second", 5)
		k1 := provKey(t, st, p.ID, "first", 1)
		k3 := provKey(t, st, p.ID, "third", 5)
		if k1.ID == "" || k1.CreatedAt.IsZero() || k1.LastUsedAt != nil || k1.CooldownUntil != nil {
			t.Errorf("CreateProviderKey = %+v; want an ID, times and no last use or cooldown", k1)
		}
		keys, err := st.ProviderKeys(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, k := range keys {
			order = append(order, k.Name)
		}
		if want := []string{"first", "second", "third"}; !slices.Equal(order, want) {
			t.Errorf("ProviderKeys order = %v, want %v (priority, then creation)", order, want)
		}
		got, err := st.ProviderKey(ctx, p.ID, k2.ID)
		if err != nil || got.Name != "second" || got.Priority != 5 || !got.Enabled || got.Hint != "...abcd" ||
			string(got.Sealed) != string(k2.Sealed) || string(got.Fingerprint) != "fp-second" {
			t.Errorf("ProviderKey = %+v, %v", got, err)
		}
		_, err = st.ProviderKey(ctx, q.ID, k2.ID)
		provCode(t, "ProviderKey(other provider)", err, keybridge.ENotFound)

		dup := &keybridge.ProviderKey{ProviderID: p.ID, Hint: "...", Sealed: provSealed(1, "z"), Fingerprint: []byte("fp-first")}
		provCode(t, "CreateProviderKey(same fingerprint)", st.CreateProviderKey(ctx, dup), keybridge.EConflict)
		same := &keybridge.ProviderKey{ProviderID: q.ID, Hint: "...", Sealed: provSealed(1, "z"), Fingerprint: []byte("fp-first")}
		if err := st.CreateProviderKey(ctx, same); err != nil {
			t.Errorf("CreateProviderKey(same fingerprint, other provider) = %v, want nil", err)
		}
		orphan := &keybridge.ProviderKey{ProviderID: "0190f0f0-0000-7000-8000-0000000000ff", Hint: "...", Sealed: provSealed(1, "z"), Fingerprint: []byte("x")}
		provCode(t, "CreateProviderKey(missing provider)", st.CreateProviderKey(ctx, orphan), keybridge.ENotFound)

		if prov, err := st.Provider(ctx, org.ID, p.ID); err != nil || prov.KeyCount != 3 {
			t.Errorf("Provider = %+v, %v; want KeyCount 3", prov, err)
		}

		// Cooldowns are the gateway's: an edit does not write one.
		cool := time.Now().Add(time.Minute).UTC().Truncate(time.Microsecond)
		k3.Name, k3.Priority, k3.Enabled, k3.CooldownUntil = "renamed", 0, false, &cool
		if err := st.UpdateProviderKey(ctx, k3); err != nil {
			t.Fatalf("UpdateProviderKey = %v", err)
		}
		got, _ = st.ProviderKey(ctx, p.ID, k3.ID)
		if got.Name != "renamed" || got.Priority != 0 || got.Enabled || got.CooldownUntil != nil || !got.UpdatedAt.Equal(k3.UpdatedAt) {
			t.Errorf("after UpdateProviderKey, ProviderKey = %+v; want renamed, priority 0, disabled, no cooldown", got)
		}
		if k3.CooldownUntil != nil {
			t.Errorf("UpdateProviderKey left k.CooldownUntil = %v, want the stored none", k3.CooldownUntil)
		}
		wrong := *k3
		wrong.ProviderID = q.ID
		provCode(t, "UpdateProviderKey(other provider)", st.UpdateProviderKey(ctx, &wrong), keybridge.ENotFound)

		provCode(t, "DeleteProviderKey(other provider)", st.DeleteProviderKey(ctx, q.ID, k3.ID), keybridge.ENotFound)
		if err := st.DeleteProviderKey(ctx, p.ID, k3.ID); err != nil {
			t.Fatalf("DeleteProviderKey = %v", err)
		}
		provCode(t, "DeleteProviderKey(again)", st.DeleteProviderKey(ctx, p.ID, k3.ID), keybridge.ENotFound)
		_, err = st.ProviderKey(ctx, p.ID, k3.ID)
		provCode(t, "ProviderKey(deleted)", err, keybridge.ENotFound)
	})

	t.Run("AtMostSixteenKeys", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		for i := range keybridge.MaxProviderKeys {
			provKey(t, st, p.ID, fmt.Sprint("k", i), i)
		}
		extra := &keybridge.ProviderKey{ProviderID: p.ID, Hint: "...", Sealed: provSealed(1, "z"), Fingerprint: []byte("extra")}
		provCode(t, "CreateProviderKey(17th)", st.CreateProviderKey(ctx, extra), keybridge.EConflict)
	})

	t.Run("SixteenUnderConcurrency", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		const tries = 24
		errs := make(chan error, tries)
		var wg sync.WaitGroup
		for i := range tries {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- st.CreateProviderKey(ctx, &keybridge.ProviderKey{ProviderID: p.ID, Hint: "...",
					Sealed: provSealed(1, "k"), Fingerprint: []byte(fmt.Sprint("concurrent-", i))})
			}()
		}
		wg.Wait()
		close(errs)
		created := 0
		for err := range errs {
			switch {
			case err == nil:
				created++
			case !keybridge.IsCode(err, keybridge.EConflict):
				t.Errorf("concurrent CreateProviderKey = %v, want nil or conflict", err)
			}
		}
		keys, err := st.ProviderKeys(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if created != keybridge.MaxProviderKeys || len(keys) != keybridge.MaxProviderKeys {
			t.Errorf("%d concurrent creates: %d succeeded, %d stored; want %d", tries, created, len(keys), keybridge.MaxProviderKeys)
		}
	})

	t.Run("TouchNeverGoesBack", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		k := provKey(t, st, p.ID, "k", 0)
		later := time.Now().UTC().Truncate(time.Microsecond)
		earlier := later.Add(-time.Hour)
		if err := st.TouchProviderKeys(ctx, map[string]time.Time{k.ID: later}); err != nil {
			t.Fatal(err)
		}
		if err := st.TouchProviderKeys(ctx, map[string]time.Time{k.ID: earlier, "0190f0f0-0000-7000-8000-0000000000ff": later}); err != nil {
			t.Fatal(err)
		}
		got, _ := st.ProviderKey(ctx, p.ID, k.ID)
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(later) {
			t.Errorf("LastUsedAt = %v, want %v", got.LastUsedAt, later)
		}
	})

	// Replicas flush "last used" for the same keys at once; each batch must
	// take the rows' locks in one order, or two batches deadlock and one
	// fails.
	t.Run("ConcurrentTouches", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		var ids []string
		for i := range keybridge.MaxProviderKeys {
			ids = append(ids, provKey(t, st, p.ID, fmt.Sprintf("k%02d", i), i).ID)
		}
		base := time.Now().UTC().Truncate(time.Microsecond)
		const flushers, rounds = 4, 15
		var wg sync.WaitGroup
		errs := make(chan error, flushers*rounds)
		for f := range flushers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					batch := map[string]time.Time{}
					for _, id := range ids {
						batch[id] = base.Add(time.Duration(r*flushers+f) * time.Millisecond)
					}
					if err := st.TouchProviderKeys(ctx, batch); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent TouchProviderKeys = %v", err)
		}
	})

	t.Run("Cooldowns", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		a := provKey(t, st, p.ID, "a", 0)
		b := provKey(t, st, p.ID, "b", 1)
		ch := baseSubscribe(t, st, st)
		until := baseTime.Add(time.Hour)
		if err := st.SetProviderKeyCooldowns(ctx, map[string]time.Time{a.ID: until, b.ID: until.Add(time.Minute),
			"0190f0f0-0000-7000-8000-0000000000ff": until}); err != nil {
			t.Fatalf("SetProviderKeyCooldowns = %v", err)
		}
		// Runtime state: no cache is told, and the key's edit time stays.
		baseMarker(t, "SetProviderKeyCooldowns", st, ch)
		want := until.Truncate(time.Microsecond)
		got, err := st.ProviderKey(ctx, p.ID, a.ID)
		if err != nil || got.CooldownUntil == nil || !got.CooldownUntil.Equal(want) || !got.UpdatedAt.Equal(a.UpdatedAt) || got.Name != "a" {
			t.Fatalf("after SetProviderKeyCooldowns, ProviderKey = %+v, %v; want cooldown %v, updated_at %v", got, err, want, a.UpdatedAt)
		}

		// An admin's edit, read before the cooldown was set, keeps it.
		stale := *b
		stale.Name, stale.Priority = "renamed", 7
		if err := st.UpdateProviderKey(ctx, &stale); err != nil {
			t.Fatal(err)
		}
		if stale.CooldownUntil == nil || !stale.CooldownUntil.Equal(want.Add(time.Minute)) {
			t.Errorf("UpdateProviderKey set k.CooldownUntil = %v, want the stored %v", stale.CooldownUntil, want.Add(time.Minute))
		}
		got, _ = st.ProviderKey(ctx, p.ID, b.ID)
		if got.CooldownUntil == nil || !got.CooldownUntil.Equal(want.Add(time.Minute)) || got.Name != "renamed" || got.Priority != 7 {
			t.Errorf("after an edit of a cooling key, ProviderKey = %+v; want the edit and the cooldown", got)
		}
		// And a cooldown written after the edit keeps the edit.
		if err := st.SetProviderKeyCooldowns(ctx, map[string]time.Time{b.ID: until.Add(2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		got, _ = st.ProviderKey(ctx, p.ID, b.ID)
		if got.Name != "renamed" || got.Priority != 7 || got.CooldownUntil == nil || !got.CooldownUntil.Equal(want.Add(2*time.Minute)) {
			t.Errorf("after a cooldown of an edited key, ProviderKey = %+v; want the edit and the new cooldown", got)
		}
		baseExpect(t, "the edit", ch, store.Invalidation{Kind: store.InvalidateProviderKey, ID: b.ID, Org: org.ID})

		// A zero time ends a cooldown; a cooldown may also get shorter.
		if err := st.SetProviderKeyCooldowns(ctx, map[string]time.Time{a.ID: {}, b.ID: until}); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.ProviderKey(ctx, p.ID, a.ID); got.CooldownUntil != nil {
			t.Errorf("after a zero cooldown, CooldownUntil = %v, want none", got.CooldownUntil)
		}
		if got, _ := st.ProviderKey(ctx, p.ID, b.ID); got.CooldownUntil == nil || !got.CooldownUntil.Equal(want) {
			t.Errorf("after a shorter cooldown, CooldownUntil = %v, want %v", got.CooldownUntil, want)
		}
		if err := st.SetProviderKeyCooldowns(ctx, nil); err != nil {
			t.Errorf("SetProviderKeyCooldowns(nil) = %v", err)
		}
		baseMarker(t, "cooldowns cleared", st, ch)
	})

	// Replicas write cooldowns of the same keys at once: like touches,
	// batches take row locks in one order.
	t.Run("ConcurrentCooldowns", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		p := provProvider(t, st, org.ID, "openai")
		var ids []string
		for i := range keybridge.MaxProviderKeys {
			ids = append(ids, provKey(t, st, p.ID, fmt.Sprintf("k%02d", i), i).ID)
		}
		const writers, rounds = 4, 15
		var wg sync.WaitGroup
		errs := make(chan error, writers*rounds)
		for w := range writers {
			wg.Go(func() {
				for r := range rounds {
					batch := map[string]time.Time{}
					for i, id := range ids {
						if (i+r+w)%3 != 0 {
							batch[id] = baseTime.Add(time.Duration(r*writers+w) * time.Second)
						} else {
							batch[id] = time.Time{}
						}
					}
					if err := st.SetProviderKeyCooldowns(ctx, batch); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent SetProviderKeyCooldowns = %v", err)
		}
	})

	t.Run("DeleteCascades", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		other := provOrg(t, st, "other")
		u := provUser(t, st, "ada@acme.test")
		p := provProvider(t, st, org.ID, "openai")
		k := provKey(t, st, p.ID, "k", 0)
		c := &keybridge.Credential{UserID: u.ID, OrgID: org.ID, ProviderID: p.ID, Hint: "...", Sealed: provSealed(1, "c"), Fingerprint: []byte("c")}
		if err := st.CreateCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
		provCode(t, "DeleteProvider(other org)", st.DeleteProvider(ctx, other.ID, p.ID), keybridge.ENotFound)
		if err := st.DeleteProvider(ctx, org.ID, p.ID); err != nil {
			t.Fatalf("DeleteProvider = %v", err)
		}
		_, err := st.Provider(ctx, org.ID, p.ID)
		provCode(t, "Provider(deleted)", err, keybridge.ENotFound)
		_, err = st.ProviderKey(ctx, p.ID, k.ID)
		provCode(t, "ProviderKey(of deleted provider)", err, keybridge.ENotFound)
		_, err = st.Credential(ctx, u.ID, c.ID)
		provCode(t, "Credential(for deleted provider)", err, keybridge.ENotFound)
		provCode(t, "DeleteProvider(again)", st.DeleteProvider(ctx, org.ID, p.ID), keybridge.ENotFound)
		// The name is free again.
		provProvider(t, st, org.ID, "openai")
	})

	// The gateway's routing cache hears of every change the store makes,
	// from the store itself, in the transaction of the change: a handler
	// cannot forget to tell it, and a change rolled back tells nothing.
	t.Run("Invalidations", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		other := provOrg(t, st, "other")
		ch := baseSubscribe(t, st, st)
		provInv := func(p *keybridge.Provider) store.Invalidation {
			return store.Invalidation{Kind: store.InvalidateProvider, ID: p.ID, Org: p.OrgID}
		}
		keyInv := func(k *keybridge.ProviderKey) store.Invalidation {
			return store.Invalidation{Kind: store.InvalidateProviderKey, ID: k.ID, Org: org.ID}
		}

		p := provProvider(t, st, org.ID, "openai")
		baseExpect(t, "CreateProvider", ch, provInv(p))
		p.DisplayName = "OpenAI"
		if err := st.UpdateProvider(ctx, p); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "UpdateProvider", ch, provInv(p))
		k := provKey(t, st, p.ID, "k", 0)
		baseExpect(t, "CreateProviderKey", ch, keyInv(k))
		k.Enabled = false
		if err := st.UpdateProviderKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "UpdateProviderKey", ch, keyInv(k))
		if err := st.DeleteProviderKey(ctx, p.ID, k.ID); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "DeleteProviderKey", ch, keyInv(k))
		if err := st.DeleteProvider(ctx, org.ID, p.ID); err != nil {
			t.Fatal(err)
		}
		baseExpect(t, "DeleteProvider", ch, provInv(p))

		// Failed changes publish nothing.
		q := provProvider(t, st, org.ID, "q")
		baseExpect(t, "CreateProvider(q)", ch, provInv(q))
		dup := &keybridge.Provider{OrgID: org.ID, Name: "q", DisplayName: "q", Type: keybridge.ProviderOpenAI, KeySource: keybridge.KeySourceOrg, SettingsSealed: provSealed(1, "y")}
		provCode(t, "CreateProvider(duplicate)", st.CreateProvider(ctx, dup), keybridge.EConflict)
		moved := *q
		moved.OrgID = other.ID
		provCode(t, "UpdateProvider(other org)", st.UpdateProvider(ctx, &moved), keybridge.ENotFound)
		provCode(t, "DeleteProvider(other org)", st.DeleteProvider(ctx, other.ID, q.ID), keybridge.ENotFound)
		qk := provKey(t, st, q.ID, "qk", 0)
		baseExpect(t, "CreateProviderKey(qk)", ch, keyInv(qk))
		again := &keybridge.ProviderKey{ProviderID: q.ID, Hint: "...", Sealed: provSealed(1, "z"), Fingerprint: qk.Fingerprint}
		provCode(t, "CreateProviderKey(same fingerprint)", st.CreateProviderKey(ctx, again), keybridge.EConflict)
		wrong := *qk
		wrong.ProviderID = p.ID
		provCode(t, "UpdateProviderKey(other provider)", st.UpdateProviderKey(ctx, &wrong), keybridge.ENotFound)
		provCode(t, "DeleteProviderKey(other provider)", st.DeleteProviderKey(ctx, p.ID, qk.ID), keybridge.ENotFound)
		baseMarker(t, "failed changes", st, ch)

		// In a transaction that rolls back, neither the change nor its
		// invalidation happens.
		fail := errors.New("rolled back")
		err := st.InTx(ctx, func(tx store.Store) error {
			provProvider(t, tx, org.ID, "gone")
			return fail
		})
		if !errors.Is(err, fail) {
			t.Fatalf("InTx = %v, want %v", err, fail)
		}
		baseMarker(t, "rolled back", st, ch)
	})

	t.Run("SealedColumns", func(t *testing.T) {
		st := newStore(t)
		org := provOrg(t, st, "acme")
		u := provUser(t, st, "ada@acme.test")
		p := provProvider(t, st, org.ID, "openai") // settings under version 1
		k := &keybridge.ProviderKey{ProviderID: p.ID, Hint: "...", Sealed: provSealed(7, "k"), Fingerprint: []byte("k")}
		if err := st.CreateProviderKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		c := &keybridge.Credential{UserID: u.ID, OrgID: org.ID, ProviderID: p.ID, Hint: "...", Sealed: provSealed(7, "c"), Fingerprint: []byte("c")}
		if err := st.CreateCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
		counts, err := st.SealedCounts(ctx)
		if err != nil {
			t.Fatalf("SealedCounts = %v", err)
		}
		if counts[1] != 1 || counts[7] != 2 {
			t.Errorf("SealedCounts = %v, want version 1: 1 (settings), version 7: 2 (key, credential)", counts)
		}
		// An update of the settings records the new version.
		p.SettingsSealed = provSealed(7, "s2")
		if err := st.UpdateProvider(ctx, p); err != nil {
			t.Fatal(err)
		}
		refs, err := st.SealedNotVersion(ctx, 7, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(refs) != 0 {
			t.Errorf("SealedNotVersion(7) = %v, want none after every value moved to 7", refs)
		}
		refs, err = st.SealedNotVersion(ctx, 8, 10)
		if err != nil {
			t.Fatal(err)
		}
		var tables []string
		for _, r := range refs {
			tables = append(tables, r.Table+"."+r.Column)
		}
		slices.Sort(tables)
		if want := []string{"provider_keys.api_key", "providers.settings", "user_credentials.api_key"}; !slices.Equal(tables, want) {
			t.Errorf("SealedNotVersion(8) found %v, want %v", tables, want)
		}
		for _, r := range refs {
			if r.Table != "provider_keys" {
				continue
			}
			ok, err := st.ReplaceSealed(ctx, r, 8, provSealed(8, "rewrapped"))
			if err != nil || !ok {
				t.Fatalf("ReplaceSealed(provider key) = %v, %v", ok, err)
			}
		}
		got, _ := st.ProviderKey(ctx, p.ID, k.ID)
		if string(got.Sealed) != string(provSealed(8, "rewrapped")) {
			t.Errorf("after ReplaceSealed, key holds %q", got.Sealed)
		}
		counts, _ = st.SealedCounts(ctx)
		if counts[8] != 1 || counts[7] != 2 {
			t.Errorf("SealedCounts after rewrap = %v, want 7: 2, 8: 1", counts)
		}
	})
}

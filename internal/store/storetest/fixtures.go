package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Fixtures and helpers of the foundation's suites (meta, identity, API
// keys, key ring, audit, notifier), prefixed so other areas' files can keep
// their own.

func baseOrg(t testing.TB, st store.Store, slug string) *keybridge.Org {
	t.Helper()
	o := &keybridge.Org{Slug: slug, Name: "Org " + slug}
	if err := st.CreateOrg(context.Background(), o); err != nil {
		t.Fatalf("CreateOrg(%q) = %v", slug, err)
	}
	return o
}

func baseUser(t testing.TB, st store.Store, email string) *keybridge.User {
	t.Helper()
	u := &keybridge.User{Email: email, Name: "User " + email}
	if err := st.CreateUser(context.Background(), u); err != nil {
		t.Fatalf("CreateUser(%q) = %v", email, err)
	}
	return u
}

func baseMember(t testing.TB, st store.Store, orgID, userID string, role keybridge.Role) {
	t.Helper()
	if err := st.CreateMembership(context.Background(), &keybridge.Membership{OrgID: orgID, UserID: userID, Role: role}); err != nil {
		t.Fatalf("CreateMembership(%s, %s) = %v", orgID, userID, err)
	}
}

func baseHash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func baseAPIKey(t testing.TB, st store.Store, orgID, userID, name string) *keybridge.APIKey {
	t.Helper()
	k := &keybridge.APIKey{OrgID: orgID, UserID: userID, Name: name, Prefix: "kb_" + name,
		Hash: baseHash("key " + orgID + userID + name), Permissions: keybridge.AllPermissions, Status: keybridge.KeyActive}
	if err := st.CreateAPIKey(context.Background(), k); err != nil {
		t.Fatalf("CreateAPIKey(%q) = %v", name, err)
	}
	return k
}

// baseCode checks that err carries code ("" for no error).
func baseCode(t testing.TB, what string, err error, code string) {
	t.Helper()
	if got := keybridge.ErrorCode(err); got != code {
		t.Errorf("%s = %v (code %q), want code %q", what, err, got, code)
	}
}

func baseIsPostgres(st store.Store) bool {
	d, ok := st.(interface{ DialectName() string })
	return ok && d.DialectName() == "postgres"
}

// baseTime is a time with nanoseconds, which every store keeps only to the
// microsecond.
var baseTime = time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)

// baseSubscribe subscribes to sub until t ends, and returns once the
// subscription announces (with InvalidateAll, as Subscribe promises) that
// it hears every change from then on. It then checks the promise: a marker
// pub publishes (pub may be sub, or another replica) is the next thing heard.
func baseSubscribe(t testing.TB, sub, pub store.Store) <-chan store.Invalidation {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan store.Invalidation, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sub.Subscribe(ctx, func(inv store.Invalidation) { ch <- inv })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case inv := <-ch:
		if inv.Kind != store.InvalidateAll {
			t.Fatalf("Subscribe first heard %+v, want the InvalidateAll that says it listens", inv)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not announce within 10s that it listens")
	}
	baseMarker(t, "subscription announced", pub, ch)
	return ch
}

// baseNext returns the next invalidation on ch, or false when none comes
// within wait.
func baseNext(ch <-chan store.Invalidation, wait time.Duration) (store.Invalidation, bool) {
	select {
	case inv := <-ch:
		return inv, true
	case <-time.After(wait):
		return store.Invalidation{}, false
	}
}

// baseExpect checks that the next invalidation on ch is want.
func baseExpect(t testing.TB, what string, ch <-chan store.Invalidation, want store.Invalidation) {
	t.Helper()
	got, ok := baseNext(ch, 5*time.Second)
	if !ok {
		t.Errorf("%s: no invalidation, want %+v", what, want)
		return
	}
	if got != want {
		t.Errorf("%s: invalidation %+v, want %+v", what, got, want)
	}
}

// baseMarker publishes a marker and checks that it is the next thing ch
// hears: whatever should not have been delivered before it was not.
func baseMarker(t testing.TB, what string, st store.Store, ch <-chan store.Invalidation) {
	t.Helper()
	marker := store.Invalidation{Kind: store.InvalidateAPIKey, ID: "marker-" + what}
	if err := st.Publish(context.Background(), marker); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	baseExpect(t, what, ch, marker)
}

func base64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

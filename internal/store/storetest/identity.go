package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
)

func testIdentity(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("Orgs", func(t *testing.T) {
		st := newStore(t)
		if n, err := st.CountOrgs(ctx); err != nil || n != 0 {
			t.Fatalf("CountOrgs(empty) = %d, %v; want 0", n, err)
		}
		acme := baseOrg(t, st, "acme")
		if acme.ID == "" || acme.CreatedAt.IsZero() || !acme.UpdatedAt.Equal(acme.CreatedAt) {
			t.Fatalf("CreateOrg set ID %q, times %v, %v; want an ID and equal times", acme.ID, acme.CreatedAt, acme.UpdatedAt)
		}
		for _, key := range []string{acme.ID, "acme"} {
			got, err := st.Org(ctx, key)
			if err != nil {
				t.Fatalf("Org(%q) = %v", key, err)
			}
			if *got != *acme {
				t.Errorf("Org(%q) = %+v, want %+v", key, *got, *acme)
			}
		}
		err := st.CreateOrg(ctx, &keybridge.Org{Slug: "acme", Name: "again"})
		baseCode(t, "CreateOrg(used slug)", err, keybridge.EConflict)
		_, err = st.Org(ctx, "nope")
		baseCode(t, "Org(missing)", err, keybridge.ENotFound)

		// A slug may have the shape of an ID; the ID still finds its own org.
		lookalike := baseOrg(t, st, acme.ID)
		if got, err := st.Org(ctx, acme.ID); err != nil || got.ID != acme.ID {
			t.Errorf("Org(%q) with a look-alike slug = %+v, %v; want org %s", acme.ID, got, err, acme.ID)
		}
		if n, err := st.CountOrgs(ctx); err != nil || n != 2 {
			t.Errorf("CountOrgs = %d, %v; want 2", n, err)
		}

		acme.Slug, acme.Name = "acme-corp", "Acme Corp"
		if err := st.UpdateOrg(ctx, acme); err != nil {
			t.Fatalf("UpdateOrg = %v", err)
		}
		if got, err := st.Org(ctx, "acme-corp"); err != nil || got.Name != "Acme Corp" || !got.UpdatedAt.Equal(acme.UpdatedAt) {
			t.Errorf("Org after UpdateOrg = %+v, %v; want name Acme Corp, updated_at %v", got, err, acme.UpdatedAt)
		}
		_, err = st.Org(ctx, "acme")
		baseCode(t, "Org(old slug)", err, keybridge.ENotFound)
		lookalike.Slug = "acme-corp"
		baseCode(t, "UpdateOrg(used slug)", st.UpdateOrg(ctx, lookalike), keybridge.EConflict)
		baseCode(t, "UpdateOrg(missing)", st.UpdateOrg(ctx, &keybridge.Org{ID: "nope", Slug: "x", Name: "x"}), keybridge.ENotFound)
	})

	t.Run("DeleteOrg", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "doomed")
		keep := baseOrg(t, st, "kept")
		u := baseUser(t, st, "a@example.com")
		baseMember(t, st, org.ID, u.ID, keybridge.RoleOwner)
		baseMember(t, st, keep.ID, u.ID, keybridge.RoleMember)
		k := baseAPIKey(t, st, org.ID, u.ID, "k")
		kept := baseAPIKey(t, st, keep.ID, u.ID, "kept")
		ch := baseSubscribe(t, st, st)

		if err := st.DeleteOrg(ctx, org.ID); err != nil {
			t.Fatalf("DeleteOrg = %v", err)
		}
		baseExpect(t, "DeleteOrg", ch, store.Invalidation{Kind: store.InvalidateAll})
		_, err := st.Org(ctx, org.ID)
		baseCode(t, "Org(deleted)", err, keybridge.ENotFound)
		_, err = st.Membership(ctx, org.ID, u.ID)
		baseCode(t, "Membership(deleted org)", err, keybridge.ENotFound)
		_, err = st.APIKey(ctx, k.ID)
		baseCode(t, "APIKey(deleted org)", err, keybridge.ENotFound)
		if _, err := st.APIKey(ctx, kept.ID); err != nil {
			t.Errorf("APIKey(other org's key) = %v, want it kept", err)
		}
		if _, err := st.User(ctx, u.ID); err != nil {
			t.Errorf("User after DeleteOrg = %v, want the user kept", err)
		}
		baseCode(t, "DeleteOrg(again)", st.DeleteOrg(ctx, org.ID), keybridge.ENotFound)
	})

	t.Run("Users", func(t *testing.T) {
		st := newStore(t)
		u := baseUser(t, st, "  Alice@Example.COM ")
		if u.Email != "alice@example.com" || u.ID == "" {
			t.Fatalf("CreateUser stored email %q, ID %q; want alice@example.com and an ID", u.Email, u.ID)
		}
		for _, email := range []string{"alice@example.com", "ALICE@example.com"} {
			got, err := st.UserByEmail(ctx, email)
			if err != nil || *got != *u {
				t.Errorf("UserByEmail(%q) = %+v, %v; want %+v", email, got, err, *u)
			}
		}
		err := st.CreateUser(ctx, &keybridge.User{Email: "ALICE@example.com", Name: "again"})
		baseCode(t, "CreateUser(used email)", err, keybridge.EConflict)
		_, err = st.User(ctx, "nope")
		baseCode(t, "User(missing)", err, keybridge.ENotFound)
		_, err = st.UserByEmail(ctx, "bob@example.com")
		baseCode(t, "UserByEmail(missing)", err, keybridge.ENotFound)

		u.Name, u.PasswordHash = "Alice", "$argon2id$v=19$m=65536,t=1,p=4$c2FsdA$aGFzaA"
		if err := st.UpdateUser(ctx, u); err != nil {
			t.Fatalf("UpdateUser = %v", err)
		}
		if got, err := st.User(ctx, u.ID); err != nil || *got != *u {
			t.Errorf("User after UpdateUser = %+v, %v; want %+v", got, err, *u)
		}
		baseCode(t, "UpdateUser(missing)", st.UpdateUser(ctx, &keybridge.User{ID: "nope"}), keybridge.ENotFound)
	})

	t.Run("Memberships", func(t *testing.T) {
		st := newStore(t)
		ch := baseSubscribe(t, st, st)
		org := baseOrg(t, st, "acme")
		other := baseOrg(t, st, "other")
		owner := baseUser(t, st, "owner@example.com")
		owner.PasswordHash = "set"
		if err := st.UpdateUser(ctx, owner); err != nil {
			t.Fatal(err)
		}
		invited := baseUser(t, st, "invited@example.com")
		baseMember(t, st, org.ID, owner.ID, keybridge.RoleOwner)
		baseMember(t, st, org.ID, invited.ID, keybridge.RoleMember)
		baseMember(t, st, other.ID, owner.ID, keybridge.RoleAdmin)
		// Joining publishes too: a member added back must not stay refused
		// by a cache that remembers them as gone.
		for _, id := range []string{owner.ID, invited.ID, owner.ID} {
			baseExpect(t, "CreateMembership", ch, store.Invalidation{Kind: store.InvalidateUser, ID: id})
		}

		err := st.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: owner.ID, Role: keybridge.RoleAdmin})
		baseCode(t, "CreateMembership(twice)", err, keybridge.EConflict)

		m, err := st.Membership(ctx, org.ID, owner.ID)
		if err != nil || m.Role != keybridge.RoleOwner || m.CreatedAt.IsZero() {
			t.Errorf("Membership = %+v, %v; want role owner", m, err)
		}
		_, err = st.Membership(ctx, other.ID, invited.ID)
		baseCode(t, "Membership(of another org)", err, keybridge.ENotFound)

		got, err := st.Member(ctx, org.ID, invited.ID)
		// A member without a password is a member all the same: only a
		// pending invitation is "invited".
		if err != nil || got.Email != "invited@example.com" || got.Invited || got.Role != keybridge.RoleMember {
			t.Errorf("Member(passwordless) = %+v, %v; want a member invited@example.com, not invited", got, err)
		}
		got, err = st.Member(ctx, org.ID, owner.ID)
		if err != nil || got.Invited || got.Name != owner.Name {
			t.Errorf("Member(owner) = %+v, %v; want not invited, name %q", got, err, owner.Name)
		}
		_, err = st.Member(ctx, other.ID, invited.ID)
		baseCode(t, "Member(of another org)", err, keybridge.ENotFound)

		orgs, err := st.OrgsForUser(ctx, owner.ID)
		if err != nil {
			t.Fatalf("OrgsForUser = %v", err)
		}
		var gotOrgs []string
		for _, om := range orgs {
			gotOrgs = append(gotOrgs, om.Org.Slug+":"+string(om.Role))
		}
		if want := []string{"acme:owner", "other:admin"}; !slices.Equal(gotOrgs, want) {
			t.Errorf("OrgsForUser = %v, want %v", gotOrgs, want)
		}

		if n, err := st.CountOwners(ctx, org.ID); err != nil || n != 1 {
			t.Errorf("CountOwners = %d, %v; want 1", n, err)
		}
		if err := st.UpdateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: invited.ID, Role: keybridge.RoleOwner}); err != nil {
			t.Fatalf("UpdateMembership = %v", err)
		}
		baseExpect(t, "UpdateMembership", ch, store.Invalidation{Kind: store.InvalidateUser, ID: invited.ID})
		if n, err := st.CountOwners(ctx, org.ID); err != nil || n != 2 {
			t.Errorf("CountOwners after promotion = %d, %v; want 2", n, err)
		}
		if m, err := st.Membership(ctx, org.ID, invited.ID); err != nil || m.Role != keybridge.RoleOwner {
			t.Errorf("Membership after UpdateMembership = %+v, %v; want owner", m, err)
		}
		err = st.UpdateMembership(ctx, &keybridge.Membership{OrgID: other.ID, UserID: invited.ID, Role: keybridge.RoleOwner})
		baseCode(t, "UpdateMembership(not a member)", err, keybridge.ENotFound)

		if err := st.DeleteMembership(ctx, org.ID, invited.ID); err != nil {
			t.Fatalf("DeleteMembership = %v", err)
		}
		baseExpect(t, "DeleteMembership", ch, store.Invalidation{Kind: store.InvalidateUser, ID: invited.ID})
		baseCode(t, "DeleteMembership(again)", st.DeleteMembership(ctx, org.ID, invited.ID), keybridge.ENotFound)
		// The failed calls published nothing.
		baseMarker(t, "failed membership changes", st, ch)
	})

	// Two owners demote each other at once: one must be refused, on
	// PostgreSQL by CountOwners' row locks, on SQLite by its one writer.
	t.Run("LastOwnerRace", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		a, b := baseUser(t, st, "a@example.com"), baseUser(t, st, "b@example.com")
		baseMember(t, st, org.ID, a.ID, keybridge.RoleOwner)
		baseMember(t, st, org.ID, b.ID, keybridge.RoleOwner)
		errLast := errors.New("last owner")
		// demote runs the API's last-owner check: count the owners, then
		// demote when another owner remains.
		demote := func(userID string, counted chan<- struct{}, hold time.Duration) error {
			return st.InTx(ctx, func(tx store.Store) error {
				n, err := tx.CountOwners(ctx, org.ID)
				if err != nil {
					return err
				}
				if counted != nil {
					close(counted)
				}
				time.Sleep(hold)
				if n < 2 {
					return errLast
				}
				return tx.UpdateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: userID, Role: keybridge.RoleAdmin})
			})
		}
		// The first demotion counts, then holds its transaction open while
		// the second one counts.
		counted := make(chan struct{})
		first := make(chan error, 1)
		go func() { first <- demote(a.ID, counted, 200*time.Millisecond) }()
		<-counted
		second := demote(b.ID, nil, 0)
		if err := <-first; err != nil {
			t.Fatalf("first demotion = %v", err)
		}
		if !errors.Is(second, errLast) {
			t.Errorf("second demotion = %v, want it to see the last owner", second)
		}
		if n, err := st.CountOwners(ctx, org.ID); err != nil || n != 1 {
			t.Errorf("owners after two concurrent demotions = %d, %v; want 1", n, err)
		}
	})

	t.Run("MembersPaging", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		other := baseOrg(t, st, "other")
		var want []string
		for _, name := range []string{"erin", "alice", "dave", "carol", "bob"} {
			u := baseUser(t, st, name+"@example.com")
			baseMember(t, st, org.ID, u.ID, keybridge.RoleMember)
			want = append(want, u.Email)
		}
		baseMember(t, st, other.ID, baseUser(t, st, "zed@example.com").ID, keybridge.RoleMember)
		slices.Sort(want)

		for _, limit := range []int{0, 1, 2, 5, 6} {
			var got []string
			page := store.Page{Limit: limit}
			for pages := 0; ; pages++ {
				if pages > 10 {
					t.Fatalf("limit %d: paging does not end", limit)
				}
				ms, next, err := st.Members(ctx, org.ID, page)
				if err != nil {
					t.Fatalf("Members(limit %d) = %v", limit, err)
				}
				if limit > 0 && len(ms) > limit {
					t.Errorf("Members(limit %d) returned %d", limit, len(ms))
				}
				for _, m := range ms {
					got = append(got, m.Email)
				}
				if next == "" {
					break
				}
				page.Cursor = next
			}
			if !slices.Equal(got, want) {
				t.Errorf("Members pages with limit %d = %v, want %v", limit, got, want)
			}
		}
		ms, next, err := st.Members(ctx, org.ID, store.Page{Limit: 5})
		if err != nil || len(ms) != 5 || next != "" {
			t.Errorf("Members(limit = count) = %d members, next %q, %v; want 5 and no next page", len(ms), next, err)
		}
		_, _, err = st.Members(ctx, org.ID, store.Page{Cursor: "not a cursor"})
		baseCode(t, "Members(bad cursor)", err, keybridge.EInvalid)
	})

	t.Run("Invitations", func(t *testing.T) {
		st := newStore(t)
		org := baseOrg(t, st, "acme")
		other := baseOrg(t, st, "other")
		owner := baseUser(t, st, "owner@example.com")
		baseMember(t, st, org.ID, owner.ID, keybridge.RoleOwner)
		// An invitation of an address that has an account references no
		// user and makes no membership.
		existing := baseUser(t, st, "zed@example.com")
		inv := &keybridge.Invitation{OrgID: org.ID, Email: "zed@example.com", Name: "Given Name", Role: keybridge.RoleAdmin,
			TokenHash: baseHash("invite"), InvitedBy: owner.ID, ExpiresAt: baseTime}
		if err := st.CreateInvitation(ctx, inv); err != nil {
			t.Fatalf("CreateInvitation = %v", err)
		}
		if inv.ID == "" || inv.ID == existing.ID || inv.CreatedAt.IsZero() {
			t.Errorf("CreateInvitation set ID %q, created %v; want a new ID, not the user's, and a time", inv.ID, inv.CreatedAt)
		}
		got, err := st.InvitationByHash(ctx, baseHash("invite"))
		if err != nil {
			t.Fatalf("InvitationByHash = %v", err)
		}
		// Times come back to the microsecond, in UTC.
		if want := baseTime.Truncate(time.Microsecond); !got.ExpiresAt.Equal(want) || got.ExpiresAt.Location() != time.UTC ||
			got.ID != inv.ID || got.Email != inv.Email || got.Name != inv.Name || got.Role != keybridge.RoleAdmin ||
			got.InvitedBy != owner.ID || !got.CreatedAt.Equal(inv.CreatedAt) {
			t.Errorf("InvitationByHash = %+v, want %+v with expiry %v", got, inv, want)
		}
		_, err = st.InvitationByHash(ctx, baseHash("other"))
		baseCode(t, "InvitationByHash(unknown)", err, keybridge.ENotFound)
		if got, err := st.InvitationByEmail(ctx, org.ID, "ZED@example.com"); err != nil || got.ID != inv.ID {
			t.Errorf("InvitationByEmail = %+v, %v; want %s", got, err, inv.ID)
		}
		_, err = st.InvitationByEmail(ctx, other.ID, "zed@example.com")
		baseCode(t, "InvitationByEmail(other org)", err, keybridge.ENotFound)
		_, err = st.Invitation(ctx, other.ID, inv.ID)
		baseCode(t, "Invitation(other org)", err, keybridge.ENotFound)
		err = st.CreateInvitation(ctx, &keybridge.Invitation{OrgID: org.ID, Email: "zed@example.com", Name: "x", Role: keybridge.RoleMember,
			TokenHash: baseHash("second"), ExpiresAt: baseTime})
		baseCode(t, "CreateInvitation(same address)", err, keybridge.EConflict)

		// Pending, it grants nothing: no membership, no org.
		_, err = st.Membership(ctx, org.ID, existing.ID)
		baseCode(t, "Membership(invited user)", err, keybridge.ENotFound)
		if oms, err := st.OrgsForUser(ctx, existing.ID); err != nil || len(oms) != 0 {
			t.Errorf("OrgsForUser(invited user) = %v, %v; want none", oms, err)
		}
		if n, err := st.CountOwners(ctx, org.ID); err != nil || n != 1 {
			t.Errorf("CountOwners = %d, %v; want 1", n, err)
		}
		// The member list shows it with the inviter's name, after the
		// members it sorts after.
		ms, _, err := st.Members(ctx, org.ID, store.Page{})
		if err != nil || len(ms) != 2 {
			t.Fatalf("Members = %+v, %v; want the owner and the invitation", ms, err)
		}
		if m := ms[1]; m.UserID != inv.ID || !m.Invited || m.Name != "Given Name" || m.Email != "zed@example.com" || m.Role != keybridge.RoleAdmin ||
			m.InviteExpiresAt == nil || !m.InviteExpiresAt.Equal(baseTime.Truncate(time.Microsecond)) {
			t.Errorf("Members[1] = %+v; want the invitation %s, invited, named Given Name, expiring %v", m, inv.ID, baseTime)
		}
		if ms[0].Invited || ms[0].InviteExpiresAt != nil {
			t.Errorf("Members[0] = %+v; want the owner, not invited", ms[0])
		}
		page1, next, err := st.Members(ctx, org.ID, store.Page{Limit: 1})
		if err != nil || len(page1) != 1 || next == "" {
			t.Fatalf("Members(limit 1) = %v, %q, %v", page1, next, err)
		}
		page2, next2, err := st.Members(ctx, org.ID, store.Page{Limit: 1, Cursor: next})
		if err != nil || len(page2) != 1 || page2[0].UserID != inv.ID || next2 != "" {
			t.Errorf("Members(page 2) = %+v, %q, %v; want the invitation alone", page2, next2, err)
		}

		// A re-invitation replaces token, name, role and expiry in place.
		inv.TokenHash, inv.Name, inv.Role, inv.ExpiresAt = baseHash("again"), "New Name", keybridge.RoleMember, baseTime.Add(time.Hour)
		if err := st.UpdateInvitation(ctx, inv); err != nil {
			t.Fatalf("UpdateInvitation = %v", err)
		}
		_, err = st.InvitationByHash(ctx, baseHash("invite"))
		baseCode(t, "InvitationByHash(replaced token)", err, keybridge.ENotFound)
		if got, err := st.Invitation(ctx, org.ID, inv.ID); err != nil || got.Name != "New Name" || got.Role != keybridge.RoleMember ||
			!slices.Equal(got.TokenHash, baseHash("again")) {
			t.Errorf("Invitation after update = %+v, %v", got, err)
		}
		baseCode(t, "UpdateInvitation(missing)", st.UpdateInvitation(ctx, &keybridge.Invitation{OrgID: org.ID, ID: "nope", TokenHash: baseHash("x")}), keybridge.ENotFound)

		// Deleting is the single-use gate.
		baseCode(t, "DeleteInvitation(other org)", st.DeleteInvitation(ctx, other.ID, inv.ID), keybridge.ENotFound)
		if err := st.DeleteInvitation(ctx, org.ID, inv.ID); err != nil {
			t.Fatalf("DeleteInvitation = %v", err)
		}
		baseCode(t, "DeleteInvitation(again)", st.DeleteInvitation(ctx, org.ID, inv.ID), keybridge.ENotFound)
		_, err = st.InvitationByHash(ctx, baseHash("again"))
		baseCode(t, "InvitationByHash(deleted)", err, keybridge.ENotFound)
		// The address may be invited again.
		if err := st.CreateInvitation(ctx, &keybridge.Invitation{OrgID: org.ID, Email: "zed@example.com", Name: "x", Role: keybridge.RoleMember,
			TokenHash: baseHash("third"), ExpiresAt: baseTime}); err != nil {
			t.Errorf("CreateInvitation after delete = %v", err)
		}
		// Deleting the org takes its invitations.
		if err := st.DeleteOrg(ctx, org.ID); err != nil {
			t.Fatal(err)
		}
		_, err = st.InvitationByHash(ctx, baseHash("third"))
		baseCode(t, "InvitationByHash(org deleted)", err, keybridge.ENotFound)
	})

	t.Run("Sessions", func(t *testing.T) {
		st := newStore(t)
		u := baseUser(t, st, "a@example.com")
		sess := &keybridge.Session{UserID: u.ID, TokenHash: baseHash("session"), CSRFToken: "csrf",
			ExpiresAt: baseTime, IP: "192.0.2.1", UserAgent: "test"}
		if err := st.CreateSession(ctx, sess); err != nil {
			t.Fatalf("CreateSession = %v", err)
		}
		got, err := st.SessionByHash(ctx, baseHash("session"))
		if err != nil {
			t.Fatalf("SessionByHash = %v", err)
		}
		want := *sess
		want.ExpiresAt = baseTime.Truncate(time.Microsecond)
		// The CSRF token is derived from the session's token, never stored.
		want.CSRFToken = ""
		if fmt.Sprint(*got) != fmt.Sprint(want) {
			t.Errorf("SessionByHash = %+v, want %+v", *got, want)
		}
		err = st.CreateSession(ctx, &keybridge.Session{UserID: u.ID, TokenHash: baseHash("session"), ExpiresAt: baseTime})
		baseCode(t, "CreateSession(used hash)", err, keybridge.EConflict)

		old := &keybridge.Session{UserID: u.ID, TokenHash: baseHash("old"), ExpiresAt: time.Now().Add(-time.Second)}
		if err := st.CreateSession(ctx, old); err != nil {
			t.Fatal(err)
		}
		_, err = st.SessionByHash(ctx, baseHash("old"))
		baseCode(t, "SessionByHash(expired)", err, keybridge.ENotFound)
		// Cleaning up removes the expired session and keeps the live one.
		if n, err := st.DeleteExpiredSessions(ctx, time.Now()); err != nil || n != 1 {
			t.Errorf("DeleteExpiredSessions = %d, %v; want 1", n, err)
		}
		if n, err := st.DeleteExpiredSessions(ctx, time.Now()); err != nil || n != 0 {
			t.Errorf("DeleteExpiredSessions(again) = %d, %v; want 0", n, err)
		}

		// Ending a user's other sessions keeps the one named, and another
		// user's.
		second := &keybridge.Session{UserID: u.ID, TokenHash: baseHash("second"), ExpiresAt: baseTime}
		third := &keybridge.Session{UserID: u.ID, TokenHash: baseHash("third"), ExpiresAt: baseTime}
		v := baseUser(t, st, "b@example.com")
		others := &keybridge.Session{UserID: v.ID, TokenHash: baseHash("others"), ExpiresAt: baseTime}
		for _, x := range []*keybridge.Session{second, third, others} {
			if err := st.CreateSession(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := st.DeleteUserSessions(ctx, u.ID, sess.ID); err != nil || n != 2 {
			t.Errorf("DeleteUserSessions = %d, %v; want 2", n, err)
		}
		for name, wantErr := range map[string]string{"session": "", "second": keybridge.ENotFound, "third": keybridge.ENotFound, "others": ""} {
			_, err := st.SessionByHash(ctx, baseHash(name))
			baseCode(t, "SessionByHash("+name+") after DeleteUserSessions", err, wantErr)
		}
		if n, err := st.DeleteUserSessions(ctx, v.ID, ""); err != nil || n != 1 {
			t.Errorf("DeleteUserSessions(keep none) = %d, %v; want 1", n, err)
		}

		if err := st.DeleteSession(ctx, sess.ID); err != nil {
			t.Fatalf("DeleteSession = %v", err)
		}
		_, err = st.SessionByHash(ctx, baseHash("session"))
		baseCode(t, "SessionByHash(deleted)", err, keybridge.ENotFound)
		baseCode(t, "DeleteSession(missing)", st.DeleteSession(ctx, sess.ID), "")
	})
}

// InvitationsCarryOver checks migration 0008 on a database as the release
// before it left it: open invitations become pending ones and their
// memberships, which granted the not-yet-accepted user the org, are taken
// back; used or voided invitations go; sessions (whose CSRF tokens were
// stored in clear) end.
func InvitationsCarryOver(t *testing.T, newStore Factory, migrate func(context.Context, *sqlstore.DB) error) {
	ctx := context.Background()
	st := newStore(t)
	org := baseOrg(t, st, "acme")
	owner := baseUser(t, st, "owner@example.com")
	owner.PasswordHash = "set"
	if err := st.UpdateUser(ctx, owner); err != nil {
		t.Fatal(err)
	}
	pending := baseUser(t, st, "pending@example.com")
	accepted := baseUser(t, st, "accepted@example.com")
	accepted.PasswordHash = "set"
	if err := st.UpdateUser(ctx, accepted); err != nil {
		t.Fatal(err)
	}
	readded := baseUser(t, st, "readded@example.com")
	for _, m := range []struct {
		u    *keybridge.User
		role keybridge.Role
	}{{owner, keybridge.RoleOwner}, {pending, keybridge.RoleAdmin}, {accepted, keybridge.RoleMember}, {readded, keybridge.RoleMember}} {
		baseMember(t, st, org.ID, m.u.ID, m.role)
	}
	if err := st.CreateSession(ctx, &keybridge.Session{UserID: owner.ID, TokenHash: baseHash("session"), ExpiresAt: baseTime}); err != nil {
		t.Fatal(err)
	}

	raw := RawOf(t, st)
	blob, ts := "BLOB", "INTEGER"
	at := func(tm time.Time) any { return tm.UTC().UnixMicro() }
	if raw.Postgres {
		blob, ts = "BYTEA", "TIMESTAMPTZ"
		at = func(tm time.Time) any { return tm.UTC() }
	}
	for _, stmt := range []string{
		`DROP TABLE member_invitations`,
		`CREATE TABLE invitations (id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
			user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, token_hash ` + blob + ` NOT NULL UNIQUE,
			expires_at ` + ts + ` NOT NULL, accepted_at ` + ts + `, created_at ` + ts + ` NOT NULL)`,
		`DELETE FROM schema_migrations WHERE version = 8`,
	} {
		if _, err := raw.DB.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	now := time.Now()
	inv := func(id string, u *keybridge.User, token string, accepted any, created time.Time) {
		raw.Exec(t, `INSERT INTO invitations (id, org_id, user_id, token_hash, expires_at, accepted_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			id, org.ID, u.ID, baseHash(token), at(now.Add(time.Hour)), accepted, at(created))
	}
	raw.Exec(t, `UPDATE sessions SET csrf_token = 'in clear' WHERE user_id = ?`, owner.ID)
	inv("inv-pending", pending, "pending", nil, now.Add(time.Minute))
	inv("inv-accepted", accepted, "accepted", at(now), now.Add(time.Minute))
	// Issued before the member was removed and added back: void.
	inv("inv-void", readded, "void", nil, now.Add(-time.Hour))

	if err := migrate(ctx, st.(*sqlstore.Store).DB()); err != nil {
		t.Fatalf("migrate = %v", err)
	}
	got, err := st.InvitationByHash(ctx, baseHash("pending"))
	if err != nil || got.ID != "inv-pending" || got.Email != pending.Email || got.Role != keybridge.RoleAdmin || got.OrgID != org.ID {
		t.Errorf("carried invitation = %+v, %v; want inv-pending for %s as admin", got, err, pending.Email)
	}
	_, err = st.Membership(ctx, org.ID, pending.ID)
	baseCode(t, "Membership(pending invitee) after migrating", err, keybridge.ENotFound)
	for _, token := range []string{"accepted", "void"} {
		_, err := st.InvitationByHash(ctx, baseHash(token))
		baseCode(t, "InvitationByHash("+token+") after migrating", err, keybridge.ENotFound)
	}
	for _, u := range []*keybridge.User{owner, accepted, readded} {
		if _, err := st.Membership(ctx, org.ID, u.ID); err != nil {
			t.Errorf("Membership(%s) after migrating = %v, want kept", u.Email, err)
		}
	}
	_, err = st.SessionByHash(ctx, baseHash("session"))
	baseCode(t, "SessionByHash after migrating", err, keybridge.ENotFound)
}

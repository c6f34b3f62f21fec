package httpapi

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/url"
	"strings"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// orgResponse is an org with the caller's role in it.
type orgResponse struct {
	keybridge.Org
	Role keybridge.Role `json:"role"`
}

// orgSlugTaken is the 409 for a slug another org has.
func orgSlugTaken(err error) error {
	return taken(err, "slug", "an org with this slug already exists")
}

func orgResource(o *keybridge.Org) keybridge.Resource {
	return keybridge.Resource{Type: "org", ID: o.ID, Name: o.Slug}
}

func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	oms, err := s.store.OrgsForUser(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	items := []orgResponse{}
	for _, om := range oms {
		// A key is bound to its org: it sees no other.
		if p.Type == keybridge.ActorAPIKey && om.Org.ID != p.OrgID {
			continue
		}
		items = append(items, orgResponse{Org: om.Org, Role: om.Role})
	}
	writeJSON(w, http.StatusOK, newList(items, ""))
	return nil
}

type createOrgRequest struct {
	Slug string `json:"slug"`
	Name string `json:"name"`
}

func (in *createOrgRequest) Validate() error {
	o := keybridge.Org{Slug: in.Slug, Name: in.Name}
	return o.Validate()
}

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := principal(r)
	in, err := decode[createOrgRequest](w, r)
	if err != nil {
		return err
	}
	if p.Type == keybridge.ActorAPIKey {
		// A key acts inside its own org; creating another is for a
		// person, or for a key that may already do everything.
		keyOrg, err := s.store.Org(ctx, p.OrgID)
		if err != nil {
			return err
		}
		if _, err := s.auth.Authorize(ctx, p, keyOrg, keybridge.AllPermissions); err != nil {
			if keybridge.IsCode(err, keybridge.EForbidden) {
				return keybridge.Errorf(keybridge.EForbidden, "creating an org with an API key needs a key with every permission")
			}
			return err
		}
	}
	org := &keybridge.Org{Slug: in.Slug, Name: strings.TrimSpace(in.Name)}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateOrg(ctx, org); err != nil {
			return orgSlugTaken(err)
		}
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: p.UserID, Role: keybridge.RoleOwner}); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "org.create", orgResource(org), map[string]keybridge.Change{
			"slug": {Old: nil, New: org.Slug}, "name": {Old: nil, New: org.Name},
		})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, orgResponse{Org: *org, Role: keybridge.RoleOwner})
	return nil
}

func (s *Server) getOrg(w http.ResponseWriter, r *http.Request) error {
	org, role, err := s.org(r, 0)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, orgResponse{Org: *org, Role: role})
	return nil
}

type updateOrgRequest struct {
	Slug *string `json:"slug"`
	Name *string `json:"name"`
}

func (s *Server) updateOrg(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, role, err := s.org(r, keybridge.PermMembersWrite)
	if err != nil {
		return err
	}
	in, err := decode[updateOrgRequest](w, r)
	if err != nil {
		return err
	}
	if in.Slug == nil && in.Name == nil {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to update: send slug or name")
	}
	next := *org
	if in.Slug != nil {
		next.Slug = *in.Slug
	}
	if in.Name != nil {
		next.Name = strings.TrimSpace(*in.Name)
	}
	if err := next.Validate(); err != nil {
		return err
	}
	changes := map[string]keybridge.Change{}
	diff(changes, "slug", org.Slug, next.Slug)
	diff(changes, "name", org.Name, next.Name)
	if len(changes) > 0 {
		err = s.store.InTx(ctx, func(tx store.Store) error {
			if err := tx.UpdateOrg(ctx, &next); err != nil {
				return orgSlugTaken(err)
			}
			return audit.Record(ctx, tx, org.ID, "org.update", orgResource(&next), changes)
		})
		if err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, orgResponse{Org: next, Role: role})
	return nil
}

func (s *Server) deleteOrg(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, role, err := s.org(r, keybridge.PermMembersWrite)
	if err != nil {
		return err
	}
	if role != keybridge.RoleOwner {
		return keybridge.Errorf(keybridge.EForbidden, "only owners may delete the org")
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		// The org's own chain goes with it, so the deletion is recorded in
		// the chain of events that belong to no org.
		if err := audit.Record(ctx, tx, "", "org.delete", orgResource(org), map[string]keybridge.Change{
			"slug": {Old: org.Slug, New: nil}, "name": {Old: org.Name, New: nil},
		}); err != nil {
			return err
		}
		return tx.DeleteOrg(ctx, org.ID)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, role, err := s.org(r, keybridge.PermMembersRead)
	if err != nil {
		return err
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	members, next, err := s.store.Members(ctx, org.ID, pg)
	if err != nil {
		return err
	}
	if role != keybridge.RoleOwner && role != keybridge.RoleAdmin {
		// Who holds a personal key is for admins to see (SPEC §6).
		writeJSON(w, http.StatusOK, newList(members, next))
		return nil
	}
	creds, err := s.store.CredentialProviders(ctx, org.ID)
	if err != nil {
		return err
	}
	for i := range members {
		// Whether a member has a personal key per provider, never the key.
		if ids := creds[members[i].UserID]; len(ids) > 0 {
			members[i].Credentials = map[string]bool{}
			for _, id := range ids {
				members[i].Credentials[id] = true
			}
		}
	}
	writeJSON(w, http.StatusOK, newList(members, next))
	return nil
}

type createMemberRequest struct {
	Email string         `json:"email"`
	Name  string         `json:"name"`
	Role  keybridge.Role `json:"role"`
}

func (in *createMemberRequest) Validate() error {
	in.Email = keybridge.NormalizeEmail(in.Email)
	in.Name = strings.TrimSpace(in.Name)
	v := keybridge.Validation{}
	if err := keybridge.ValidateEmail(in.Email); err != nil {
		v.Add("email", "must be a valid email address")
	}
	if len(in.Name) > 200 {
		v.Add("name", "must be at most 200 characters")
	}
	if !in.Role.Valid() {
		v.Add("role", "must be owner, admin or member")
	}
	return v.Err()
}

type createMemberResponse struct {
	// UserID is the pending member's ID (the invitation's, until it is
	// accepted): never the ID of an account the address may already have.
	UserID      string         `json:"user_id"`
	Email       string         `json:"email"`
	Role        keybridge.Role `json:"role"`
	InviteToken string         `json:"invite_token"`
	InviteURL   string         `json:"invite_url"`
}

func memberResource(userID, email string) keybridge.Resource {
	return keybridge.Resource{Type: "member", ID: userID, Name: email}
}

// createMember invites an address. Whether it belongs to an account or
// not, nothing differs: nothing of an account is used or shown, an
// invitation is stored (or a pending one renewed: a new token, name, role
// and seven days, the old link void) and answered with its own ID. The
// user joins only by accepting it, and only while the caller, recorded as
// the inviter, may still grant the role (see liveInvitation). Only an
// address that is already a member of this org — which the inviter sees
// in the member list anyway — is refused (409).
func (s *Server) createMember(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, role, err := s.org(r, keybridge.PermMembersWrite)
	if err != nil {
		return err
	}
	in, err := decode[createMemberRequest](w, r)
	if err != nil {
		return err
	}
	if !role.MayGrant(in.Role) {
		// role holds members:write (s.org checked it): only owner is out of reach.
		return keybridge.Errorf(keybridge.EForbidden, "only owners may grant owner")
	}
	if in.Name == "" {
		in.Name, _, _ = strings.Cut(in.Email, "@")
	}
	p := principal(r)
	out := createMemberResponse{Email: in.Email, Role: in.Role, InviteToken: randomToken()}
	h := sha256.Sum256([]byte(out.InviteToken))
	err = s.store.InTx(ctx, func(tx store.Store) error {
		member, err := s.isMember(ctx, tx, org.ID, in.Email)
		if err != nil {
			return err
		}
		if member {
			return keybridge.Errorf(keybridge.EConflict, "%s is already a member", in.Email)
		}
		inv, err := tx.InvitationByEmail(ctx, org.ID, in.Email)
		action := "member.create"
		changes := map[string]keybridge.Change{"role": {Old: nil, New: in.Role}, "name": {Old: nil, New: in.Name}}
		switch {
		case keybridge.IsCode(err, keybridge.ENotFound):
			inv = &keybridge.Invitation{OrgID: org.ID, Email: in.Email}
		case err != nil:
			return err
		default:
			action = "member.reinvite"
			changes = map[string]keybridge.Change{}
			diff(changes, "role", inv.Role, in.Role)
			diff(changes, "name", inv.Name, in.Name)
			if inv.Role == keybridge.RoleOwner && role != keybridge.RoleOwner {
				return keybridge.Errorf(keybridge.EForbidden, "only owners may change an owner invitation")
			}
		}
		inv.Name, inv.Role, inv.TokenHash, inv.InvitedBy = in.Name, in.Role, h[:], p.UserID
		inv.ExpiresAt = tx.Now().Add(keybridge.InvitationTTL)
		if inv.ID == "" {
			err = tx.CreateInvitation(ctx, inv)
		} else {
			err = tx.UpdateInvitation(ctx, inv)
		}
		if err != nil {
			return err
		}
		out.UserID = inv.ID
		return audit.Record(ctx, tx, org.ID, action, memberResource(inv.ID, inv.Email), changes)
	})
	if err != nil {
		return err
	}
	out.InviteURL = s.publicURL(r) + "/invite?token=" + url.QueryEscape(out.InviteToken)
	writeOneTime(w, http.StatusCreated, out)
	return nil
}

// isMember reports whether the address belongs to an active member of orgID.
func (s *Server) isMember(ctx context.Context, tx store.Store, orgID, email string) (bool, error) {
	u, err := tx.UserByEmail(ctx, email)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	_, err = tx.Membership(ctx, orgID, u.ID)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return false, nil
	}
	return err == nil, err
}

// publicURL is how users reach this server, for links.
func (s *Server) publicURL(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return strings.TrimRight(s.cfg.PublicURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

type updateMemberRequest struct {
	Role keybridge.Role `json:"role"`
}

func (in *updateMemberRequest) Validate() error {
	if !in.Role.Valid() {
		return keybridge.FieldError("role", "must be owner, admin or member")
	}
	return nil
}

// memberTarget resolves {org} and its {userID} member (or pending
// invitation) for a caller who needs members:write on it. Every member may
// see the org's members and invitations, so the target is looked up
// first: a user who is not in the org (another org's, or nobody's) is 404
// to every caller who can see the org, and only then does a caller without
// members:write get 403.
func (s *Server) memberTarget(r *http.Request) (*keybridge.Org, keybridge.Role, error) {
	return s.orgChild(r, keybridge.PermMembersRead, keybridge.PermMembersWrite, func(org *keybridge.Org) error {
		ctx, id := r.Context(), r.PathValue("userID")
		_, err := s.store.Member(ctx, org.ID, id)
		if keybridge.IsCode(err, keybridge.ENotFound) {
			if _, err = s.store.Invitation(ctx, org.ID, id); keybridge.IsCode(err, keybridge.ENotFound) {
				return keybridge.Errorf(keybridge.ENotFound, "member not found")
			}
		}
		return err
	})
}

func (s *Server) updateMember(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, role, err := s.memberTarget(r)
	if err != nil {
		return err
	}
	in, err := decode[updateMemberRequest](w, r)
	if err != nil {
		return err
	}
	var m *keybridge.Member
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if m, err = tx.Member(ctx, org.ID, r.PathValue("userID")); keybridge.IsCode(err, keybridge.ENotFound) {
			m, err = updateInvitationRole(ctx, tx, org.ID, r.PathValue("userID"), principal(r).UserID, role, in.Role)
			return err
		}
		if err != nil {
			return err
		}
		if (m.Role == keybridge.RoleOwner || in.Role == keybridge.RoleOwner) && role != keybridge.RoleOwner {
			return keybridge.Errorf(keybridge.EForbidden, "only owners may grant or remove owner")
		}
		if m.Role == in.Role {
			return nil
		}
		if m.Role == keybridge.RoleOwner {
			if err := lastOwnerCheck(ctx, tx, org.ID, "demote"); err != nil {
				return err
			}
		}
		old := m.Role
		m.Role = in.Role
		if err := tx.UpdateMembership(ctx, &m.Membership); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "member.update", memberResource(m.UserID, m.Email), map[string]keybridge.Change{
			"role": {Old: old, New: m.Role},
		})
	})
	if err != nil {
		return err
	}
	if !m.Invited {
		if m, err = s.store.Member(ctx, org.ID, m.UserID); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}

// updateInvitationRole changes the role a pending invitation will give.
// An invited owner is no owner yet, so no last-owner rule applies, but
// only owners may grant owner or take it from an invitation. The caller
// who changes the role becomes its inviter: the role stands on their
// authority from then on (see liveInvitation).
func updateInvitationRole(ctx context.Context, tx store.Store, orgID, id, callerID string, callerRole, next keybridge.Role) (*keybridge.Member, error) {
	inv, err := tx.Invitation(ctx, orgID, id)
	if err != nil {
		return nil, keybridge.Errorf(keybridge.ENotFound, "member not found")
	}
	if (inv.Role == keybridge.RoleOwner || next == keybridge.RoleOwner) && callerRole != keybridge.RoleOwner {
		return nil, keybridge.Errorf(keybridge.EForbidden, "only owners may grant or remove owner")
	}
	if inv.Role != next {
		old := inv.Role
		inv.Role, inv.InvitedBy = next, callerID
		if err := tx.UpdateInvitation(ctx, inv); err != nil {
			return nil, err
		}
		if err := audit.Record(ctx, tx, orgID, "member.update", memberResource(inv.ID, inv.Email), map[string]keybridge.Change{
			"role": {Old: old, New: next}, "invited": {Old: true, New: true},
		}); err != nil {
			return nil, err
		}
	}
	m := inv.Member()
	return &m, nil
}

// lastOwnerCheck refuses to take away an owner when they are the last one.
// CountOwners locks the owners' rows (PostgreSQL), so two concurrent
// demotions cannot both see two owners.
func lastOwnerCheck(ctx context.Context, tx store.Store, orgID, what string) error {
	n, err := tx.CountOwners(ctx, orgID)
	if err != nil {
		return err
	}
	if n <= 1 {
		return keybridge.Errorf(keybridge.EConflict, "cannot %s the last owner: make another member owner first", what)
	}
	return nil
}

func (s *Server) deleteMember(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, role, err := s.memberTarget(r)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		m, err := tx.Member(ctx, org.ID, r.PathValue("userID"))
		if keybridge.IsCode(err, keybridge.ENotFound) {
			return withdrawInvitation(ctx, tx, org.ID, r.PathValue("userID"), role)
		}
		if err != nil {
			return err
		}
		if m.Role == keybridge.RoleOwner {
			if role != keybridge.RoleOwner {
				return keybridge.Errorf(keybridge.EForbidden, "only owners may remove an owner")
			}
			if err := lastOwnerCheck(ctx, tx, org.ID, "remove"); err != nil {
				return err
			}
		}
		if err := tx.DeleteMembership(ctx, org.ID, m.UserID); err != nil {
			return err
		}
		if err := audit.Record(ctx, tx, org.ID, "member.delete", memberResource(m.UserID, m.Email), map[string]keybridge.Change{
			"role": {Old: m.Role, New: nil},
		}); err != nil {
			return err
		}
		return revokeMemberKeys(ctx, tx, org.ID, m.UserID)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// revokeMemberKeys revokes the platform keys a removed member holds in
// the org. Without a membership they give nothing, but they would come
// back to life, with whatever was pasted where, the day the same person
// is invited again; a removal is meant to end them.
func revokeMemberKeys(ctx context.Context, tx store.Store, orgID, userID string) error {
	pg := store.Page{Limit: store.MaxLimit}
	for {
		keys, next, err := tx.ListAPIKeys(ctx, store.APIKeyFilter{OrgID: orgID, UserID: userID}, pg)
		if err != nil {
			return err
		}
		for i := range keys {
			k := &keys[i]
			if k.Status == keybridge.KeyRevoked {
				continue
			}
			if err := revokeKey(ctx, tx, k, "api_key.revoke", map[string]keybridge.Change{
				"reason": {Old: nil, New: "member.delete"},
			}); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		pg.Cursor = next
	}
}

// withdrawInvitation deletes a pending invitation: its link stops working.
func withdrawInvitation(ctx context.Context, tx store.Store, orgID, id string, callerRole keybridge.Role) error {
	inv, err := tx.Invitation(ctx, orgID, id)
	if err != nil {
		return keybridge.Errorf(keybridge.ENotFound, "member not found")
	}
	if inv.Role == keybridge.RoleOwner && callerRole != keybridge.RoleOwner {
		return keybridge.Errorf(keybridge.EForbidden, "only owners may remove an owner")
	}
	if err := tx.DeleteInvitation(ctx, orgID, inv.ID); err != nil {
		return err
	}
	return audit.Record(ctx, tx, orgID, "member.delete", memberResource(inv.ID, inv.Email), map[string]keybridge.Change{
		"role": {Old: inv.Role, New: nil}, "invited": {Old: true, New: nil},
	})
}

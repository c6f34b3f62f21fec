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
	org, _, err := s.org(r, keybridge.PermMembersRead)
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
	UserID string         `json:"user_id"`
	Email  string         `json:"email"`
	Role   keybridge.Role `json:"role"`
	// InviteToken and InviteURL are empty for a user who already has an
	// account: they sign in as they are.
	InviteToken string `json:"invite_token"`
	InviteURL   string `json:"invite_url"`
}

func memberResource(userID, email string) keybridge.Resource {
	return keybridge.Resource{Type: "member", ID: userID, Name: email}
}

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
	if in.Role == keybridge.RoleOwner && role != keybridge.RoleOwner {
		return keybridge.Errorf(keybridge.EForbidden, "only owners may grant owner")
	}
	if in.Name == "" {
		in.Name, _, _ = strings.Cut(in.Email, "@")
	}
	out := createMemberResponse{Email: in.Email, Role: in.Role}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		u, invite, err := s.memberUser(ctx, tx, in)
		if err != nil {
			return err
		}
		out.UserID = u.ID
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: u.ID, Role: in.Role}); err != nil {
			if keybridge.IsCode(err, keybridge.EConflict) {
				return keybridge.Errorf(keybridge.EConflict, "%s is already a member", in.Email)
			}
			return err
		}
		if invite {
			out.InviteToken = randomToken()
			h := sha256.Sum256([]byte(out.InviteToken))
			if err := tx.CreateInvitation(ctx, &keybridge.Invitation{
				OrgID: org.ID, UserID: u.ID, TokenHash: h[:], ExpiresAt: tx.Now().Add(keybridge.InvitationTTL),
			}); err != nil {
				return err
			}
		}
		return audit.Record(ctx, tx, org.ID, "member.create", memberResource(u.ID, u.Email), map[string]keybridge.Change{
			"role": {Old: nil, New: in.Role}, "invited": {Old: nil, New: invite},
		})
	})
	if err != nil {
		return err
	}
	if out.InviteToken != "" {
		out.InviteURL = s.publicURL(r) + "/invite?token=" + url.QueryEscape(out.InviteToken)
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

// memberUser finds or creates the user a new membership is for, and says
// whether to invite them. An invitation sets the user's password, so it is
// issued only for a user nobody else vouches for: a new one, or one with
// no password and no other org. Otherwise an admin of one org could take
// over an account that belongs to another.
func (s *Server) memberUser(ctx context.Context, tx store.Store, in createMemberRequest) (*keybridge.User, bool, error) {
	u, err := tx.UserByEmail(ctx, in.Email)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		u = &keybridge.User{Email: in.Email, Name: in.Name}
		return u, true, tx.CreateUser(ctx, u)
	}
	if err != nil {
		return nil, false, err
	}
	if u.PasswordHash != "" {
		return u, false, nil
	}
	oms, err := tx.OrgsForUser(ctx, u.ID)
	if err != nil {
		return nil, false, err
	}
	return u, len(oms) == 0, nil
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

// memberTarget resolves {org} and its {userID} member for a caller who
// needs members:write on it. Every member may see the org's members, so
// the member is looked up first: a user who is not a member of the org
// (another org's, or nobody's) is 404 to every caller who can see the org,
// and only then does a caller without members:write get 403.
func (s *Server) memberTarget(r *http.Request) (*keybridge.Org, keybridge.Role, error) {
	ctx := r.Context()
	org, _, err := s.org(r, keybridge.PermMembersRead)
	if err != nil {
		return nil, "", err
	}
	if _, err := s.store.Member(ctx, org.ID, r.PathValue("userID")); err != nil {
		return nil, "", err
	}
	role, err := s.auth.Authorize(ctx, principal(r), org, keybridge.PermMembersWrite)
	if err != nil {
		return nil, "", err
	}
	return org, role, nil
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
		if m, err = tx.Member(ctx, org.ID, r.PathValue("userID")); err != nil {
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
	if m, err = s.store.Member(ctx, org.ID, m.UserID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, m)
	return nil
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
		return audit.Record(ctx, tx, org.ID, "member.delete", memberResource(m.UserID, m.Email), map[string]keybridge.Change{
			"role": {Old: m.Role, New: nil},
		})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

package sqlstore

import (
	"context"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// TODO(identity): stub, replaced by the real implementation.

func (s *Store) CreateOrg(ctx context.Context, o *keybridge.Org) error { return errStub }
func (s *Store) Org(ctx context.Context, idOrSlug string) (*keybridge.Org, error) {
	return nil, errStub
}
func (s *Store) UpdateOrg(ctx context.Context, o *keybridge.Org) error { return errStub }
func (s *Store) DeleteOrg(ctx context.Context, id string) error        { return errStub }
func (s *Store) CountOrgs(ctx context.Context) (int, error)            { return 0, errStub }
func (s *Store) OrgsForUser(ctx context.Context, userID string) ([]store.OrgMembership, error) {
	return nil, errStub
}
func (s *Store) CreateUser(ctx context.Context, u *keybridge.User) error      { return errStub }
func (s *Store) User(ctx context.Context, id string) (*keybridge.User, error) { return nil, errStub }
func (s *Store) UserByEmail(ctx context.Context, email string) (*keybridge.User, error) {
	return nil, errStub
}
func (s *Store) UpdateUser(ctx context.Context, u *keybridge.User) error             { return errStub }
func (s *Store) CreateMembership(ctx context.Context, m *keybridge.Membership) error { return errStub }
func (s *Store) Membership(ctx context.Context, orgID, userID string) (*keybridge.Membership, error) {
	return nil, errStub
}
func (s *Store) Members(ctx context.Context, orgID string, page store.Page) ([]keybridge.Member, string, error) {
	return nil, "", errStub
}
func (s *Store) Member(ctx context.Context, orgID, userID string) (*keybridge.Member, error) {
	return nil, errStub
}
func (s *Store) UpdateMembership(ctx context.Context, m *keybridge.Membership) error { return errStub }
func (s *Store) DeleteMembership(ctx context.Context, orgID, userID string) error    { return errStub }
func (s *Store) CountOwners(ctx context.Context, orgID string) (int, error)          { return 0, errStub }
func (s *Store) CreateInvitation(ctx context.Context, inv *keybridge.Invitation) error {
	return errStub
}
func (s *Store) InvitationByHash(ctx context.Context, hash []byte) (*keybridge.Invitation, error) {
	return nil, errStub
}
func (s *Store) AcceptInvitation(ctx context.Context, id string) error            { return errStub }
func (s *Store) CreateSession(ctx context.Context, sess *keybridge.Session) error { return errStub }
func (s *Store) SessionByHash(ctx context.Context, hash []byte) (*keybridge.Session, error) {
	return nil, errStub
}
func (s *Store) DeleteSession(ctx context.Context, id string) error { return errStub }

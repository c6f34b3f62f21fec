package httpapi

import (
	"net/http"
	"strings"
	"time"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Personal credentials (SPEC §6): a user's own key for a provider of an org
// they belong to, sealed at rest and visible to nobody else: another user's
// credential is 404, and admins see only whether a member has one (the
// member list). A platform key, bound to its org, sees only the
// credentials of that org.

// credentialView is a credential as responses show it: never the key.
type credentialView struct {
	ID         string     `json:"id"`
	OrgID      string     `json:"org_id"`
	ProviderID string     `json:"provider_id"`
	Hint       string     `json:"hint"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

func newCredentialView(c *keybridge.Credential) credentialView {
	return credentialView{ID: c.ID, OrgID: c.OrgID, ProviderID: c.ProviderID, Hint: c.Hint,
		CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, LastUsedAt: c.LastUsedAt}
}

func credentialResource(c *keybridge.Credential, providerName string) keybridge.Resource {
	return keybridge.Resource{Type: "credential", ID: c.ID, Name: providerName}
}

// credentialOwner returns the calling user; personal credentials belong to
// users, so a caller without one has none.
func credentialOwner(r *http.Request) (*keybridge.Principal, error) {
	p := principal(r)
	if p == nil || p.UserID == "" {
		return nil, keybridge.Errorf(keybridge.EForbidden, "personal credentials belong to users; authenticate as one")
	}
	return p, nil
}

// visibleTo reports whether c may be seen through p: always by its user's
// session, and only within its org through a platform key.
func visibleTo(p *keybridge.Principal, c *keybridge.Credential) bool {
	return c.UserID == p.UserID && (p.OrgID == "" || p.OrgID == c.OrgID)
}

// sealCredential seals a personal key bound to the credential's row and
// sets its fingerprint and hint.
func (s *Server) sealCredential(c *keybridge.Credential, key keybridge.Secret) error {
	secret := []byte(key.Reveal())
	sealed, err := s.ring.Seal(secret, keybridge.SealedCredential.AD(c.ID))
	if err != nil {
		return err
	}
	c.Sealed, c.Hint = sealed, keybridge.Hint(key.Reveal())
	c.Fingerprint = s.ring.Fingerprint("user_credential"+c.ProviderID, secret)
	return nil
}

func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request) error {
	p, err := credentialOwner(r)
	if err != nil {
		return err
	}
	creds, err := s.store.ListCredentials(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	views := []credentialView{}
	for i := range creds {
		if visibleTo(p, &creds[i]) {
			views = append(views, newCredentialView(&creds[i]))
		}
	}
	writeJSON(w, http.StatusOK, newList(views, ""))
	return nil
}

type createCredentialRequest struct {
	Org      string           `json:"org"`
	Provider string           `json:"provider"`
	APIKey   keybridge.Secret `json:"api_key"`
}

func (in *createCredentialRequest) Validate() error {
	v := keybridge.Validation{}
	if in.Org = strings.TrimSpace(in.Org); in.Org == "" {
		v.Add("org", "is required")
	}
	if in.Provider = strings.TrimSpace(in.Provider); in.Provider == "" {
		v.Add("provider", "is required")
	}
	in.APIKey = keybridge.NewSecret(strings.TrimSpace(in.APIKey.Reveal()))
	validateSecret(v, "api_key", in.APIKey)
	return v.Err()
}

func (s *Server) createCredential(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := credentialOwner(r)
	if err != nil {
		return err
	}
	in, err := decode[createCredentialRequest](w, r)
	if err != nil {
		return err
	}
	// The org and the provider must be ones the caller can see: anything
	// else is 404, whether it exists or not.
	org, _, err := s.orgByRef(ctx, in.Org, keybridge.PermProvidersRead)
	if err != nil {
		return err
	}
	prov, err := s.store.Provider(ctx, org.ID, in.Provider)
	if err != nil {
		return err
	}
	if prov.Type == keybridge.ProviderBedrock {
		return keybridge.FieldError("provider", "bedrock providers authenticate with their settings and take no personal keys")
	}
	c := &keybridge.Credential{ID: newRowID(), UserID: p.UserID, OrgID: org.ID, ProviderID: prov.ID}
	if err := s.sealCredential(c, in.APIKey); err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateCredential(ctx, c); err != nil {
			if keybridge.IsCode(err, keybridge.EConflict) {
				return &keybridge.Error{Code: keybridge.EConflict,
					Message: "you already have a personal key for this provider; PATCH or DELETE it",
					Fields:  map[string]string{"provider": "already has your personal key"}}
			}
			return err
		}
		return audit.Record(ctx, tx, org.ID, "credential.create", credentialResource(c, prov.Name), map[string]keybridge.Change{
			"provider_id": {New: prov.ID}, "user_id": {New: c.UserID}, "api_key": {New: keybridge.Redacted},
		})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, newCredentialView(c))
	return nil
}

type updateCredentialRequest struct {
	APIKey *keybridge.Secret `json:"api_key"`
}

func (in *updateCredentialRequest) Validate() error {
	if in.APIKey == nil {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to change: send api_key")
	}
	*in.APIKey = keybridge.NewSecret(strings.TrimSpace(in.APIKey.Reveal()))
	v := keybridge.Validation{}
	validateSecret(v, "api_key", *in.APIKey)
	return v.Err()
}

// credentialNamed loads the caller's credential {id} inside tx: 404 for
// one of another user, or of another org than the caller's key.
func credentialNamed(r *http.Request, tx store.Store, p *keybridge.Principal) (*keybridge.Credential, error) {
	c, err := tx.Credential(r.Context(), p.UserID, r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if !visibleTo(p, c) {
		return nil, keybridge.Errorf(keybridge.ENotFound, "credential not found")
	}
	return c, nil
}

// providerName names a credential's provider in its audit events.
func providerName(r *http.Request, tx store.Store, c *keybridge.Credential) (string, error) {
	prov, err := tx.Provider(r.Context(), c.OrgID, c.ProviderID)
	if err != nil {
		return "", err
	}
	return prov.Name, nil
}

func (s *Server) updateCredential(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := credentialOwner(r)
	if err != nil {
		return err
	}
	in, err := decode[updateCredentialRequest](w, r)
	if err != nil {
		return err
	}
	var c *keybridge.Credential
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		if c, err = credentialNamed(r, tx, p); err != nil {
			return err
		}
		name, err := providerName(r, tx, c)
		if err != nil {
			return err
		}
		if err := s.sealCredential(c, *in.APIKey); err != nil {
			return err
		}
		if err := tx.UpdateCredential(ctx, c); err != nil {
			return err
		}
		return audit.Record(ctx, tx, c.OrgID, "credential.update", credentialResource(c, name), map[string]keybridge.Change{
			"api_key": {Old: keybridge.Redacted, New: keybridge.Redacted},
		})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newCredentialView(c))
	return nil
}

func (s *Server) deleteCredential(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := credentialOwner(r)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		c, err := credentialNamed(r, tx, p)
		if err != nil {
			return err
		}
		name, err := providerName(r, tx, c)
		if err != nil {
			return err
		}
		if err := tx.DeleteCredential(ctx, p.UserID, c.ID); err != nil {
			return err
		}
		return audit.Record(ctx, tx, c.OrgID, "credential.delete", credentialResource(c, name), map[string]keybridge.Change{
			"provider_id": {Old: c.ProviderID}, "api_key": {Old: keybridge.Redacted},
		})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

package httpapi

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Platform API keys (SPEC §3). Who may do what:
//
//   - Everyone manages their own keys. A request made with a key (not a
//     session) needs api_keys:write to create, change, reactivate or
//     rotate keys, so a leaked key cannot mint a successor that outlives
//     its revocation; any key may suspend or revoke its owner's keys.
//   - Holders of api_keys:write in an org (admins) see every key of the
//     org and may suspend, reactivate or revoke it; they cannot change or
//     rotate another user's key (403).
//   - A key of another user that the caller cannot manage is 404.

func keyResource(k *keybridge.APIKey) keybridge.Resource {
	return keybridge.Resource{Type: "api_key", ID: k.ID, Name: k.Name}
}

// createdKey is a key in the one answer that holds its plaintext.
type createdKey struct {
	*keybridge.APIKey
	Key string `json:"key"`
}

// maxKeyTTL bounds expires_at, so a typo cannot mint a key for centuries.
const maxKeyTTL = 10 * 365 * 24 * time.Hour

type createKeyRequest struct {
	Org         string                 `json:"org"`
	Name        string                 `json:"name"`
	Description string                 `json:"description"`
	Permissions *keybridge.Permissions `json:"permissions"`
	ExpiresAt   *time.Time             `json:"expires_at"`
	keybridge.Limits
	AllowedModels keybridge.ModelAllowlist `json:"allowed_models"`
}

func (in *createKeyRequest) Validate() error {
	in.Name = strings.TrimSpace(in.Name)
	k := keybridge.APIKey{Name: in.Name, Description: in.Description, Limits: in.Limits, AllowedModels: in.AllowedModels}
	v := keybridge.Validation{}
	var e *keybridge.Error
	if err := k.Validate(); errors.As(err, &e) {
		for f, why := range e.Fields {
			v.Add(f, why)
		}
	}
	if in.Permissions == nil || *in.Permissions == 0 {
		v.Add("permissions", "must name at least one permission")
	}
	if in.ExpiresAt != nil {
		validateExpiry(v, *in.ExpiresAt)
	}
	return v.Err()
}

func validateExpiry(v keybridge.Validation, t time.Time) {
	now := time.Now()
	switch {
	case !t.After(now):
		v.Add("expires_at", "must be in the future")
	case t.After(now.Add(maxKeyTTL)):
		v.Add("expires_at", "must be at most 10 years ahead")
	}
}

// keyOrg resolves the org a new key is for: the one named, else the key's
// own org for a key, else the user's only org, and the caller's role there.
func (s *Server) keyOrg(ctx context.Context, p *keybridge.Principal, name string) (*keybridge.Org, keybridge.Role, error) {
	if name == "" {
		switch p.Type {
		case keybridge.ActorAPIKey:
			name = p.OrgID
		default:
			oms, err := s.store.OrgsForUser(ctx, p.UserID)
			if err != nil {
				return nil, "", err
			}
			if len(oms) != 1 {
				return nil, "", keybridge.FieldError("org", "is required when you belong to more than one org (or none)")
			}
			name = oms[0].Org.ID
		}
	}
	return s.orgByRef(ctx, name, 0)
}

// grantable returns what the caller may put on a key in org: its role's
// permissions, cut down to its own key's for a key.
func grantable(p *keybridge.Principal, role keybridge.Role) keybridge.Permissions {
	perms := role.Permissions()
	if p.Type != keybridge.ActorUser {
		perms &= p.Permissions
	}
	return perms
}

// needKeyWrite is the rule that a request made with a key needs
// api_keys:write to create, change, reactivate or rotate keys.
func needKeyWrite(p *keybridge.Principal, role keybridge.Role) error {
	if p.Type != keybridge.ActorUser && !grantable(p, role).Has(keybridge.PermAPIKeysWrite) {
		return keybridge.Errorf(keybridge.EForbidden, "this API key lacks api_keys:write; use a key that has it, or the web UI")
	}
	return nil
}

func errTooPowerful(extra keybridge.Permissions) error {
	return &keybridge.Error{Code: keybridge.EForbidden,
		Message: "you cannot grant permissions you do not hold: " + extra.String(),
		Fields:  map[string]string{"permissions": "more than your role holds: " + extra.String()}}
}

func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := principal(r)
	in, err := decode[createKeyRequest](w, r)
	if err != nil {
		return err
	}
	org, role, err := s.keyOrg(ctx, p, in.Org)
	if err != nil {
		return err
	}
	if err := needKeyWrite(p, role); err != nil {
		return err
	}
	if extra := *in.Permissions &^ grantable(p, role); extra != 0 {
		return errTooPowerful(extra)
	}
	k := &keybridge.APIKey{
		OrgID: org.ID, UserID: p.UserID, Name: in.Name, Description: in.Description,
		Permissions: *in.Permissions, Limits: in.Limits, ExpiresAt: utcPtr(in.ExpiresAt),
		AllowedModels: in.AllowedModels,
	}
	var token string
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if k, token, err = newAPIKey(ctx, tx, k); err != nil {
			return err
		}
		changes := map[string]keybridge.Change{
			"name": {Old: nil, New: k.Name}, "permissions": {Old: nil, New: k.Permissions},
			"owner": {Old: nil, New: k.UserID}, "expires_at": {Old: nil, New: k.ExpiresAt},
		}
		if len(k.AllowedModels) > 0 {
			changes["allowed_models"] = keybridge.Change{Old: nil, New: k.AllowedModels}
		}
		for name, n := range map[string]int64{"rate_limit_rpm": k.RateLimitRPM, "rate_limit_tpm": k.RateLimitTPM, "token_budget": k.TokenBudget} {
			if n != 0 {
				changes[name] = keybridge.Change{Old: nil, New: n}
			}
		}
		if k.BudgetPeriod != "" {
			changes["budget_period"] = keybridge.Change{Old: nil, New: string(k.BudgetPeriod)}
		}
		return audit.Record(ctx, tx, org.ID, "api_key.create", keyResource(k), changes)
	})
	if err != nil {
		return err
	}
	writeOneTime(w, http.StatusCreated, createdKey{APIKey: k, Key: token})
	return nil
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC().Truncate(time.Microsecond)
	return &u
}

func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	pg, err := page(r)
	if err != nil {
		return err
	}
	f := store.APIKeyFilter{UserID: p.UserID}
	if p.Type == keybridge.ActorAPIKey {
		f.OrgID = p.OrgID
	}
	keys, next, err := s.store.ListAPIKeys(r.Context(), f, pg)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(keys, next))
	return nil
}

func (s *Server) listOrgAPIKeys(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermAPIKeysWrite)
	if err != nil {
		return err
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	keys, next, err := s.store.ListAPIKeys(r.Context(), store.APIKeyFilter{OrgID: org.ID}, pg)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(keys, next))
	return nil
}

// keyAccess is what the caller may do with one key.
type keyAccess struct {
	key  *keybridge.APIKey
	own  bool
	role keybridge.Role // the caller's role in the key's org
}

// apiKey loads the {id} key for the caller: 404 when it does not exist,
// belongs to an org the caller's key is not bound to, or is another user's
// and the caller may not manage the org's keys.
func (s *Server) apiKey(ctx context.Context, st store.Store, r *http.Request) (keyAccess, error) {
	p := principal(r)
	notFound := keybridge.Errorf(keybridge.ENotFound, "API key not found")
	k, err := st.APIKey(ctx, r.PathValue("id"))
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return keyAccess{}, notFound
	}
	if err != nil {
		return keyAccess{}, err
	}
	if p.Type == keybridge.ActorAPIKey && k.OrgID != p.OrgID {
		return keyAccess{}, notFound
	}
	org, err := st.Org(ctx, k.OrgID)
	if err != nil {
		return keyAccess{}, err
	}
	a := keyAccess{key: k, own: k.UserID == p.UserID}
	var perm keybridge.Permission
	if !a.own {
		perm = keybridge.PermAPIKeysWrite
	}
	a.role, err = s.auth.Authorize(ctx, p, org, perm)
	if keybridge.IsCode(err, keybridge.EForbidden) || keybridge.IsCode(err, keybridge.ENotFound) {
		return keyAccess{}, notFound
	}
	return a, err
}

func (s *Server) getAPIKey(w http.ResponseWriter, r *http.Request) error {
	a, err := s.apiKey(r.Context(), s.store, r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a.key)
	return nil
}

type updateKeyRequest struct {
	Name        optional[string]                `json:"name"`
	Description optional[string]                `json:"description"`
	Permissions optional[keybridge.Permissions] `json:"permissions"`
	ExpiresAt   optional[time.Time]             `json:"expires_at"`
	limitsPatch
}

// limitsPatch is the part of a key's PATCH that sets its gateway limits
// (SPEC §7.6) and model allowlist (§7.2): the same fields, read the same
// way, for platform keys and AI keys.
type limitsPatch struct {
	RateLimitRPM optional[int64]                  `json:"rate_limit_rpm"`
	RateLimitTPM optional[int64]                  `json:"rate_limit_tpm"`
	TokenBudget  optional[int64]                  `json:"token_budget"`
	BudgetPeriod optional[keybridge.BudgetPeriod] `json:"budget_period"`
	// AllowedModels replaces the list; [] or null allows every model.
	AllowedModels optional[keybridge.ModelAllowlist] `json:"allowed_models"`
}

func (in *limitsPatch) empty() bool {
	return !in.RateLimitRPM.Set && !in.RateLimitTPM.Set && !in.TokenBudget.Set && !in.BudgetPeriod.Set &&
		!in.AllowedModels.Set
}

// apply writes the sent fields onto a key's limits and model list and
// records in changes what changed, for the audit log. null is the field's
// zero: a limit of 0 (unlimited), no budget period, every model. A key
// left without a budget keeps no period either: clearing token_budget
// clears budget_period with it, and so does any change of a key that an
// earlier version let hold a period alone. A period sent beside no budget
// is left for validation to refuse. The caller validates the result.
func (in *limitsPatch) apply(lim *keybridge.Limits, models *keybridge.ModelAllowlist, changes map[string]keybridge.Change) {
	old := *lim
	for _, l := range []struct {
		name string
		in   optional[int64]
		dst  *int64
		old  int64
	}{
		{"rate_limit_rpm", in.RateLimitRPM, &lim.RateLimitRPM, old.RateLimitRPM},
		{"rate_limit_tpm", in.RateLimitTPM, &lim.RateLimitTPM, old.RateLimitTPM},
		{"token_budget", in.TokenBudget, &lim.TokenBudget, old.TokenBudget},
	} {
		if l.in.Set {
			*l.dst = l.in.V
			diff(changes, l.name, l.old, *l.dst)
		}
	}
	if in.BudgetPeriod.Set {
		lim.BudgetPeriod = in.BudgetPeriod.V
	}
	if lim.TokenBudget == 0 && (!in.BudgetPeriod.Set || in.BudgetPeriod.Null) {
		lim.BudgetPeriod = ""
	}
	// As a string: the audit log has always recorded no period as "".
	diff(changes, "budget_period", string(old.BudgetPeriod), string(lim.BudgetPeriod))
	if in.AllowedModels.Set {
		was := *models
		*models = in.AllowedModels.V
		if !slices.Equal(was, *models) {
			changes["allowed_models"] = keybridge.Change{Old: was, New: *models}
		}
	}
}

// apply writes the sent fields onto k and returns what changed, for the
// audit log. null clears expires_at, the limits and allowed_models, and is
// refused elsewhere.
func (in *updateKeyRequest) apply(k *keybridge.APIKey) (map[string]keybridge.Change, error) {
	v := keybridge.Validation{}
	for field, o := range map[string]bool{"name": in.Name.Null, "description": in.Description.Null, "permissions": in.Permissions.Null} {
		if o {
			v.Add(field, "must not be null")
		}
	}
	if in.ExpiresAt.Set && !in.ExpiresAt.Null {
		validateExpiry(v, in.ExpiresAt.V)
	}
	if in.Permissions.Set && !in.Permissions.Null && in.Permissions.V == 0 {
		v.Add("permissions", "must name at least one permission")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	old := *k
	changes := map[string]keybridge.Change{}
	if in.Name.Set {
		k.Name = strings.TrimSpace(in.Name.V)
		diff(changes, "name", old.Name, k.Name)
	}
	if in.Description.Set {
		k.Description = in.Description.V
		diff(changes, "description", old.Description, k.Description)
	}
	if in.Permissions.Set {
		k.Permissions = in.Permissions.V
		if old.Permissions != k.Permissions {
			changes["permissions"] = keybridge.Change{Old: old.Permissions, New: k.Permissions}
		}
	}
	if in.ExpiresAt.Set {
		k.ExpiresAt = nil
		if !in.ExpiresAt.Null {
			k.ExpiresAt = utcPtr(&in.ExpiresAt.V)
		}
		if !equalTimes(old.ExpiresAt, k.ExpiresAt) {
			changes["expires_at"] = keybridge.Change{Old: old.ExpiresAt, New: k.ExpiresAt}
		}
	}
	in.limitsPatch.apply(&k.Limits, &k.AllowedModels, changes)
	if err := k.Validate(); err != nil {
		return nil, err
	}
	return changes, nil
}

func (in *updateKeyRequest) empty() bool {
	return !in.Name.Set && !in.Description.Set && !in.Permissions.Set && !in.ExpiresAt.Set && in.limitsPatch.empty()
}

func equalTimes(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

func (s *Server) updateAPIKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := principal(r)
	in, err := decode[updateKeyRequest](w, r)
	if err != nil {
		return err
	}
	if in.empty() {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to update")
	}
	var k *keybridge.APIKey
	err = s.store.InTx(ctx, func(tx store.Store) error {
		a, err := s.apiKey(ctx, tx, r)
		if err != nil {
			return err
		}
		k = a.key
		if !a.own {
			return keybridge.Errorf(keybridge.EForbidden, "only the key's owner may change it; admins may suspend or revoke it")
		}
		if err := needKeyWrite(p, a.role); err != nil {
			return err
		}
		if k.Status == keybridge.KeyRevoked {
			return keybridge.Errorf(keybridge.EConflict, "the key is revoked")
		}
		changes, err := in.apply(k)
		if err != nil {
			return err
		}
		if extra := k.Permissions &^ grantable(p, a.role); in.Permissions.Set && extra != 0 {
			return errTooPowerful(extra)
		}
		if len(changes) == 0 {
			return nil
		}
		if err := tx.UpdateAPIKey(ctx, k); err != nil {
			return err
		}
		return audit.Record(ctx, tx, k.OrgID, "api_key.update", keyResource(k), changes)
	})
	if err != nil {
		return err
	}
	return s.writeKey(w, r, k.ID)
}

// writeKey answers with the stored key, so the answer shows updated_at as
// the store wrote it.
func (s *Server) writeKey(w http.ResponseWriter, r *http.Request, id string) error {
	k, err := s.store.APIKey(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

// setKeyStatus moves the {id} key to status, with its audit event. Moving
// a key to the status it has changes nothing and answers 200; a revoked
// key stays revoked (409).
func (s *Server) setKeyStatus(w http.ResponseWriter, r *http.Request, to keybridge.KeyStatus, action string) (*keybridge.APIKey, error) {
	ctx := r.Context()
	p := principal(r)
	var k *keybridge.APIKey
	err := s.store.InTx(ctx, func(tx store.Store) error {
		a, err := s.apiKey(ctx, tx, r)
		if err != nil {
			return err
		}
		k = a.key
		if to == keybridge.KeyActive && a.own {
			if err := needKeyWrite(p, a.role); err != nil {
				return err
			}
		}
		if k.Status == to {
			return nil
		}
		if k.Status == keybridge.KeyRevoked {
			return keybridge.Errorf(keybridge.EConflict, "the key is revoked, which is final; create a new key")
		}
		old := k.Status
		k.Status = to
		if to == keybridge.KeyRevoked {
			now := tx.Now()
			k.RevokedAt = &now
		}
		if err := tx.UpdateAPIKey(ctx, k); err != nil {
			return err
		}
		return audit.Record(ctx, tx, k.OrgID, action, keyResource(k), map[string]keybridge.Change{
			"status": {Old: old, New: to},
		})
	})
	return k, err
}

func (s *Server) suspendAPIKey(w http.ResponseWriter, r *http.Request) error {
	k, err := s.setKeyStatus(w, r, keybridge.KeySuspended, "api_key.suspend")
	if err != nil {
		return err
	}
	return s.writeKey(w, r, k.ID)
}

func (s *Server) reactivateAPIKey(w http.ResponseWriter, r *http.Request) error {
	k, err := s.setKeyStatus(w, r, keybridge.KeyActive, "api_key.reactivate")
	if err != nil {
		return err
	}
	return s.writeKey(w, r, k.ID)
}

// revokeAPIKey serves POST .../revoke (200 with the key) and DELETE (204).
// The row stays, for the audit log and the owner's list.
func (s *Server) revokeAPIKey(w http.ResponseWriter, r *http.Request) error {
	k, err := s.setKeyStatus(w, r, keybridge.KeyRevoked, "api_key.revoke")
	if err != nil {
		return err
	}
	if r.Method == http.MethodDelete {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return s.writeKey(w, r, k.ID)
}

// maxGrace is the longest a rotated key keeps working (7 days).
const maxGrace = 604800

type rotateKeyRequest struct {
	GracePeriodSeconds *int64 `json:"grace_period_seconds"`
}

func (in *rotateKeyRequest) Validate() error {
	if in.GracePeriodSeconds == nil || *in.GracePeriodSeconds < 0 || *in.GracePeriodSeconds > maxGrace {
		return keybridge.FieldError("grace_period_seconds", "is required: 0 to 604800 seconds")
	}
	return nil
}

func (s *Server) rotateAPIKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := principal(r)
	in, err := decode[rotateKeyRequest](w, r)
	if err != nil {
		return err
	}
	var next *keybridge.APIKey
	var token string
	err = s.store.InTx(ctx, func(tx store.Store) error {
		a, err := s.apiKey(ctx, tx, r)
		if err != nil {
			return err
		}
		old := a.key
		if !a.own {
			return keybridge.Errorf(keybridge.EForbidden, "only the key's owner may rotate it")
		}
		if err := needKeyWrite(p, a.role); err != nil {
			return err
		}
		switch {
		case old.Status != keybridge.KeyActive:
			return keybridge.Errorf(keybridge.EConflict, "only an active key can be rotated; this one is %s", old.Status)
		case old.GraceUntil != nil:
			return keybridge.Errorf(keybridge.EConflict, "the key was already rotated; rotate its successor")
		case old.ExpiresAt != nil && !old.ExpiresAt.After(tx.Now()):
			// The successor would carry the same expiry, dead at birth.
			return keybridge.Errorf(keybridge.EConflict, "the key has expired; create a new key")
		}
		// The successor may not carry more than the caller may grant now
		// (a demoted owner's rotation must not keep the old power).
		perms := old.Permissions & grantable(p, a.role)
		if perms == 0 {
			return keybridge.Errorf(keybridge.EForbidden, "your role no longer holds any of this key's permissions")
		}
		next = &keybridge.APIKey{
			OrgID: old.OrgID, UserID: old.UserID, Name: old.Name, Description: old.Description,
			Permissions: perms, Limits: old.Limits, ExpiresAt: old.ExpiresAt, RotatedFrom: old.ID,
			AllowedModels: old.AllowedModels,
		}
		if next, token, err = newAPIKey(ctx, tx, next); err != nil {
			return err
		}
		grace := tx.Now().Add(time.Duration(*in.GracePeriodSeconds) * time.Second)
		old.GraceUntil = &grace
		if err := tx.UpdateAPIKey(ctx, old); err != nil {
			return err
		}
		return audit.Record(ctx, tx, old.OrgID, "api_key.rotate", keyResource(old), map[string]keybridge.Change{
			"grace_until": {Old: nil, New: grace}, "replaced_by": {Old: nil, New: next.ID},
		})
	})
	if err != nil {
		return err
	}
	writeOneTime(w, http.StatusCreated, createdKey{APIKey: next, Key: token})
	return nil
}

// Leaked-key reports (SPEC §3): a secret scanning service posts what it
// found in public. The endpoint needs no auth, so it gives nothing away:
// every well-formed report gets the same answer whether its tokens were
// real, and it is rate limited per client IP.
const (
	maxLeakReports       = 100
	leakReportsPerMinute = 20
)

type leakReport struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

type leakResponse struct {
	Received int `json:"received"`
}

func (s *Server) leakedKeys(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	info := keybridge.RequestInfoFromContext(ctx)
	if wait, ok := s.leakLimit.allow(info.IP, time.Now()); !ok {
		return &keybridge.Error{Code: keybridge.ERateLimited, Message: "too many leak reports; retry later",
			RetryAfterSeconds: int(wait.Seconds()) + 1}
	}
	var reports []leakReport
	if err := decodeInto(w, r, &reports); err != nil {
		return err
	}
	if reports == nil {
		return keybridge.Errorf(keybridge.EInvalid, "request body must be a JSON array of reports")
	}
	if len(reports) > maxLeakReports {
		return keybridge.Errorf(keybridge.ETooLarge, "at most %d reports per request", maxLeakReports)
	}
	for _, rep := range reports {
		if err := s.revokeLeaked(ctx, rep); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, leakResponse{Received: len(reports)})
	return nil
}

// revokeLeaked revokes the key rep names, if it is a real key that still
// works or could be made to (suspended), recording where it was found.
func (s *Server) revokeLeaked(ctx context.Context, rep leakReport) error {
	// The checksum drops noise before any lookup.
	if !apikey.Valid(rep.Token, apikey.PlatformPrefix) {
		return nil
	}
	h := apikey.Hash(rep.Token)
	return s.store.InTx(ctx, func(tx store.Store) error {
		k, err := tx.APIKeyByHash(ctx, h[:])
		if keybridge.IsCode(err, keybridge.ENotFound) {
			return nil
		}
		if err != nil || k.Status == keybridge.KeyRevoked {
			return err
		}
		return revokeKey(ctx, tx, k, "api_key.revoke_leaked", map[string]keybridge.Change{
			"leak_url":    {Old: nil, New: clip(rep.URL, 2000)},
			"leak_source": {Old: nil, New: clip(rep.Source, 200)},
			"leak_type":   {Old: nil, New: clip(rep.Type, 200)},
		})
	})
}

// revokeKey revokes k, which is not revoked yet, in tx, and records action
// with the status's change and why, the fields that say why it was
// revoked without being asked to.
func revokeKey(ctx context.Context, tx store.Store, k *keybridge.APIKey, action string, why map[string]keybridge.Change) error {
	old, now := k.Status, tx.Now()
	k.Status, k.RevokedAt = keybridge.KeyRevoked, &now
	if err := tx.UpdateAPIKey(ctx, k); err != nil {
		return err
	}
	changes := map[string]keybridge.Change{"status": {Old: old, New: keybridge.KeyRevoked}}
	maps.Copy(changes, why)
	return audit.Record(ctx, tx, k.OrgID, action, keyResource(k), changes)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// bucketLimiter is a token bucket per key (a client IP, an org): n requests
// per window, refilled evenly. It forgets idle keys, so a flood of
// addresses cannot grow it without bound. It counts in this process only.
type bucketLimiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newBucketLimiter(n int, window time.Duration) *bucketLimiter {
	return &bucketLimiter{rate: float64(n) / window.Seconds(), burst: float64(n), buckets: map[string]*bucket{}}
}

// allow takes a token for ip, or says how long until one is free.
func (l *bucketLimiter) allow(ip string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buckets) > 10000 {
		for k, b := range l.buckets {
			if now.Sub(b.last).Seconds()*l.rate >= l.burst {
				delete(l.buckets, k)
			}
		}
	}
	b, ok := l.buckets[ip]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) / l.rate * float64(time.Second)), false
	}
	b.tokens--
	return 0, true
}

package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/upstream"
)

// Providers and their upstream keys (SPEC §4). Members list and read
// providers; admins (providers:write) change them and are the only ones to
// see keys, whose hints are partial secrets. A provider of another org, or
// a key of another provider, is 404. Every secret is sealed by the key ring
// bound to its row, and leaves the server only as "<field>_set" or a hint.

// providerView is a provider as responses show it: settings hold only the
// non-secret fields and "<field>_set" for the secret ones.
type providerView struct {
	ID          string                 `json:"id"`
	OrgID       string                 `json:"org_id"`
	Name        string                 `json:"name"`
	DisplayName string                 `json:"display_name"`
	Type        keybridge.ProviderType `json:"type"`
	BaseURL     string                 `json:"base_url"`
	Enabled     bool                   `json:"enabled"`
	KeySource   keybridge.KeySource    `json:"key_source"`
	Settings    map[string]any         `json:"settings"`
	KeyCount    int                    `json:"key_count"`
	CreatedAt   time.Time              `json:"created_at"`
	UpdatedAt   time.Time              `json:"updated_at"`
}

// providerKeyView is an upstream key as responses show it: never the key,
// only its hint.
type providerKeyView struct {
	ID            string     `json:"id"`
	ProviderID    string     `json:"provider_id"`
	Name          string     `json:"name"`
	Hint          string     `json:"hint"`
	Priority      int        `json:"priority"`
	Enabled       bool       `json:"enabled"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	LastUsedAt    *time.Time `json:"last_used_at"`
	CooldownUntil *time.Time `json:"cooldown_until"`
}

func newProviderKeyView(k *keybridge.ProviderKey) providerKeyView {
	return providerKeyView{ID: k.ID, ProviderID: k.ProviderID, Name: k.Name, Hint: k.Hint, Priority: k.Priority,
		Enabled: k.Enabled, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt, LastUsedAt: k.LastUsedAt, CooldownUntil: k.CooldownUntil}
}

func providerResource(p *keybridge.Provider) keybridge.Resource {
	return keybridge.Resource{Type: "provider", ID: p.ID, Name: p.Name}
}

func providerKeyResource(k *keybridge.ProviderKey) keybridge.Resource {
	return keybridge.Resource{Type: "provider_key", ID: k.ID, Name: k.Name}
}

// newRowID returns the ID of a row whose secret is sealed before it is
// inserted: the seal is bound to the ID, so the ID comes first.
func newRowID() string { return uuid.Must(uuid.NewV7()).String() }

// sealSettings seals a provider's whole settings object, bound to its row.
func (s *Server) sealSettings(providerID string, set *keybridge.ProviderSettings) ([]byte, error) {
	return s.ring.Seal(set.MarshalSealed(), keybridge.SealedProviderSettings.AD(providerID))
}

// openSettings opens a provider's settings. Only the server ever holds
// the result; responses show set.Public.
func (s *Server) openSettings(p *keybridge.Provider) (keybridge.ProviderSettings, error) {
	var set keybridge.ProviderSettings
	if len(p.SettingsSealed) == 0 {
		return set, nil
	}
	plain, err := s.ring.Open(p.SettingsSealed, keybridge.SealedProviderSettings.AD(p.ID))
	if err != nil {
		return set, err
	}
	return set, set.UnmarshalSealed(plain)
}

func (s *Server) viewProvider(p *keybridge.Provider) (providerView, error) {
	set, err := s.openSettings(p)
	if err != nil {
		return providerView{}, err
	}
	return providerView{ID: p.ID, OrgID: p.OrgID, Name: p.Name, DisplayName: p.DisplayName, Type: p.Type, BaseURL: p.BaseURL,
		Enabled: p.Enabled, KeySource: p.KeySource, Settings: set.Public(p.Type), KeyCount: p.KeyCount,
		CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt}, nil
}

// writeProvider answers with p as responses show it.
func (s *Server) writeProvider(w http.ResponseWriter, status int, p *keybridge.Provider) error {
	v, err := s.viewProvider(p)
	if err != nil {
		return err
	}
	writeJSON(w, status, v)
	return nil
}

// providerFor resolves {org} and {provider} for a caller who needs perm on
// it: 404 when the caller cannot see the org or there is no such provider,
// and only then 403 when it can see the provider (every member can) but
// lacks perm.
func (s *Server) providerFor(r *http.Request, perm keybridge.Permission) (*keybridge.Org, *keybridge.Provider, error) {
	var p *keybridge.Provider
	org, _, err := s.orgChild(r, keybridge.PermProvidersRead, perm, func(org *keybridge.Org) (err error) {
		p, err = s.store.Provider(r.Context(), org.ID, r.PathValue("provider"))
		return err
	})
	return org, p, err
}

// providerFields is what the audit log records of a provider's own
// columns; settings are diffed field by field (ProviderSettings.Diff).
func providerFields(p *keybridge.Provider) map[string]any {
	return map[string]any{"name": p.Name, "display_name": p.DisplayName, "type": p.Type, "base_url": p.BaseURL,
		"enabled": p.Enabled, "key_source": p.KeySource}
}

// providerChanges is the audit diff between two states of a provider.
func providerChanges(before, after *keybridge.Provider, setBefore, setAfter *keybridge.ProviderSettings) map[string]keybridge.Change {
	var b, a map[string]any
	if before != nil {
		b = providerFields(before)
	}
	if after != nil {
		a = providerFields(after)
	}
	changes := audit.Diff(b, a)
	if changes == nil {
		changes = map[string]keybridge.Change{}
	}
	var zero keybridge.ProviderSettings
	if setBefore == nil {
		setBefore = &zero
	}
	if setAfter == nil {
		setAfter = &zero
	}
	for k, v := range setBefore.Diff(setAfter) {
		changes[k] = v
	}
	return changes
}

// providerNameTaken is the 409 for a name already used in the org.
func providerNameTaken(err error) error {
	return taken(err, "name", "a provider with this name already exists in the org")
}

// validateProviderName records keybridge.ValidateProviderName's verdict in v.
func validateProviderName(v keybridge.Validation, name string) {
	if name == "" {
		v.Add("name", "is required")
		return
	}
	if err := keybridge.ValidateProviderName(name); err != nil {
		var e *keybridge.Error
		if errors.As(err, &e) {
			v.Add("name", e.Fields["name"])
		}
	}
}

// maxBaseURLLen bounds a base URL: real ones are far shorter, and it is
// stored, shown and prefixed to every gateway request's path.
const maxBaseURLLen = 2048

// normalizeBaseURL checks a base URL and drops a trailing slash, so that
// the gateway's base_url + path never doubles it. A sub-path is kept.
func normalizeBaseURL(v keybridge.Validation, raw string) string {
	u := strings.TrimRight(strings.TrimSpace(raw), "/")
	if len(u) > maxBaseURLLen {
		v.Add("base_url", "must be at most 2048 characters")
		return u
	}
	if err := keybridge.ValidateBaseURL(u); err != nil {
		v.Add("base_url", "must be an absolute http or https URL")
		return u
	}
	if strings.ContainsAny(u, "?#") {
		v.Add("base_url", "must not hold a query or a fragment")
	}
	return u
}

// validateProviderType checks the type sent to create or test a provider.
func validateProviderType(v keybridge.Validation, t keybridge.ProviderType) {
	switch {
	case t == "":
		v.Add("type", "is required")
	case !t.Valid():
		v.Add("type", "must be one of openai, anthropic, bedrock, google, azure-openai, openai-compatible")
	}
}

// newSettings builds the settings of a new provider (or one under test)
// from what was sent: the patch over the type's defaults, validated, and
// the base URL sent, else the type's default (400 when it has none).
func newSettings(t keybridge.ProviderType, patch keybridge.SettingsPatch, baseURL string) (keybridge.ProviderSettings, string, error) {
	set := keybridge.ProviderSettings{}.Apply(patch)
	set.Defaults(t)
	if err := set.Validate(t); err != nil {
		return set, "", err
	}
	if baseURL == "" {
		if baseURL = keybridge.DefaultBaseURL(t, set.Region); baseURL == "" {
			return set, "", keybridge.FieldError("base_url", "is required for "+string(t)+" providers")
		}
	}
	return set, baseURL, nil
}

func validKeySource(k keybridge.KeySource) bool {
	return k == keybridge.KeySourceOrg || k == keybridge.KeySourceUser || k == keybridge.KeySourceUserOrOrg
}

func validateDisplayName(v keybridge.Validation, s string) {
	if len(s) > 200 {
		v.Add("display_name", "must be at most 200 characters")
	}
}

func (s *Server) listProviders(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermProvidersRead)
	if err != nil {
		return err
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	items, next, err := s.store.ListProviders(r.Context(), org.ID, pg)
	if err != nil {
		return err
	}
	views := make([]providerView, 0, len(items))
	for i := range items {
		v, err := s.viewProvider(&items[i])
		if err != nil {
			return err
		}
		views = append(views, v)
	}
	writeJSON(w, http.StatusOK, newList(views, next))
	return nil
}

type createProviderRequest struct {
	Name        string                            `json:"name"`
	DisplayName string                            `json:"display_name"`
	Type        keybridge.ProviderType            `json:"type"`
	BaseURL     string                            `json:"base_url"`
	Enabled     *bool                             `json:"enabled"`
	KeySource   keybridge.KeySource               `json:"key_source"`
	Settings    optional[keybridge.SettingsPatch] `json:"settings"`
	settings    keybridge.SettingsPatch           `json:"-"`
}

// Validate checks every field, reporting all that are wrong at once.
func (in *createProviderRequest) Validate() error {
	v := keybridge.Validation{}
	in.Name = strings.TrimSpace(in.Name)
	validateProviderName(v, in.Name)
	in.DisplayName = strings.TrimSpace(in.DisplayName)
	validateDisplayName(v, in.DisplayName)
	validateProviderType(v, in.Type)
	if in.KeySource != "" && !validKeySource(in.KeySource) {
		v.Add("key_source", "must be org, user or user_or_org")
	}
	in.settings = in.Settings.V
	if in.BaseURL != "" {
		in.BaseURL = normalizeBaseURL(v, in.BaseURL)
	}
	return v.Err()
}

func (s *Server) createProvider(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, _, err := s.org(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	in, err := decode[createProviderRequest](w, r)
	if err != nil {
		return err
	}
	set, baseURL, err := newSettings(in.Type, in.settings, in.BaseURL)
	if err != nil {
		return err
	}
	p := &keybridge.Provider{ID: newRowID(), OrgID: org.ID, Name: in.Name, DisplayName: in.DisplayName, Type: in.Type,
		BaseURL: baseURL, Enabled: true, KeySource: keybridge.KeySourceOrg}
	if p.DisplayName == "" {
		p.DisplayName = p.Name
	}
	if in.Enabled != nil {
		p.Enabled = *in.Enabled
	}
	if in.KeySource != "" {
		p.KeySource = in.KeySource
	}
	if p.SettingsSealed, err = s.sealSettings(p.ID, &set); err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateProvider(ctx, p); err != nil {
			return providerNameTaken(err)
		}
		return audit.Record(ctx, tx, org.ID, "provider.create", providerResource(p), providerChanges(nil, p, nil, &set))
	})
	if err != nil {
		return err
	}
	return s.writeProvider(w, http.StatusCreated, p)
}

func (s *Server) getProvider(w http.ResponseWriter, r *http.Request) error {
	_, p, err := s.providerFor(r, keybridge.PermProvidersRead)
	if err != nil {
		return err
	}
	return s.writeProvider(w, http.StatusOK, p)
}

type updateProviderRequest struct {
	Name        *string                           `json:"name"`
	DisplayName *string                           `json:"display_name"`
	Type        *keybridge.ProviderType           `json:"type"`
	BaseURL     *string                           `json:"base_url"`
	Enabled     *bool                             `json:"enabled"`
	KeySource   *keybridge.KeySource              `json:"key_source"`
	Settings    optional[keybridge.SettingsPatch] `json:"settings"`
	settings    keybridge.SettingsPatch           `json:"-"`
}

// Validate checks what can be checked without the stored provider.
func (in *updateProviderRequest) Validate() error {
	if in.Name == nil && in.DisplayName == nil && in.Type == nil && in.BaseURL == nil && in.Enabled == nil &&
		in.KeySource == nil && !in.Settings.Set {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to change: send at least one of name, display_name, base_url, enabled, key_source, settings")
	}
	v := keybridge.Validation{}
	if in.Name != nil {
		*in.Name = strings.TrimSpace(*in.Name)
		validateProviderName(v, *in.Name)
	}
	if in.DisplayName != nil {
		*in.DisplayName = strings.TrimSpace(*in.DisplayName)
		validateDisplayName(v, *in.DisplayName)
	}
	if in.KeySource != nil && !validKeySource(*in.KeySource) {
		v.Add("key_source", "must be org, user or user_or_org")
	}
	if in.BaseURL != nil && strings.TrimSpace(*in.BaseURL) != "" {
		*in.BaseURL = normalizeBaseURL(v, *in.BaseURL)
	}
	in.settings = in.Settings.V
	return v.Err()
}

func (s *Server) updateProvider(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	in, err := decode[updateProviderRequest](w, r)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		if p, err = tx.Provider(ctx, org.ID, p.ID); err != nil {
			return err
		}
		if in.Type != nil && *in.Type != p.Type {
			return keybridge.FieldError("type", "cannot change; create a new provider instead")
		}
		before := *p
		oldSet, err := s.openSettings(p)
		if err != nil {
			return err
		}
		set := oldSet.Apply(in.settings)
		set.Defaults(p.Type)
		if err := set.Validate(p.Type); err != nil {
			return err
		}
		if in.Name != nil {
			p.Name = *in.Name
		}
		if in.DisplayName != nil {
			p.DisplayName = *in.DisplayName
			if p.DisplayName == "" {
				p.DisplayName = p.Name
			}
		}
		if in.Enabled != nil {
			p.Enabled = *in.Enabled
		}
		if in.KeySource != nil {
			p.KeySource = *in.KeySource
		}
		switch {
		case in.BaseURL != nil && strings.TrimSpace(*in.BaseURL) != "":
			p.BaseURL = *in.BaseURL
		case in.BaseURL != nil:
			// Sent empty: back to the type's default.
			if p.BaseURL = keybridge.DefaultBaseURL(p.Type, set.Region); p.BaseURL == "" {
				return keybridge.FieldError("base_url", "is required for "+string(p.Type)+" providers")
			}
		case p.BaseURL == keybridge.DefaultBaseURL(p.Type, oldSet.Region):
			// A default base URL follows a region change.
			p.BaseURL = keybridge.DefaultBaseURL(p.Type, set.Region)
		}
		changes := providerChanges(&before, p, &oldSet, &set)
		if len(changes) == 0 {
			return nil // nothing changed: no write, no event
		}
		if p.SettingsSealed, err = s.sealSettings(p.ID, &set); err != nil {
			return err
		}
		if err := tx.UpdateProvider(ctx, p); err != nil {
			return providerNameTaken(err)
		}
		return audit.Record(ctx, tx, org.ID, "provider.update", providerResource(p), changes)
	})
	if err != nil {
		return err
	}
	return s.writeProvider(w, http.StatusOK, p)
}

func (s *Server) deleteProvider(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		p, err := tx.Provider(ctx, org.ID, p.ID)
		if err != nil {
			return err
		}
		// Its keys and the personal credentials for it go with it; the
		// event says how many keys.
		if err := tx.DeleteProvider(ctx, org.ID, p.ID); err != nil {
			return err
		}
		changes := providerChanges(p, nil, nil, nil)
		changes["key_count"] = keybridge.Change{Old: p.KeyCount, New: nil}
		return audit.Record(ctx, tx, org.ID, "provider.delete", providerResource(p), changes)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listProviderKeys(w http.ResponseWriter, r *http.Request) error {
	_, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	keys, err := s.store.ProviderKeys(r.Context(), p.ID)
	if err != nil {
		return err
	}
	views := make([]providerKeyView, 0, len(keys))
	for i := range keys {
		views = append(views, newProviderKeyView(&keys[i]))
	}
	writeJSON(w, http.StatusOK, newList(views, ""))
	return nil
}

// maxPriority bounds a key's priority, so the numbers stay readable.
const maxPriority = 1_000_000

type createProviderKeyRequest struct {
	APIKey   keybridge.Secret `json:"api_key"`
	Name     string           `json:"name"`
	Priority *int             `json:"priority"`
}

func (in *createProviderKeyRequest) Validate() error {
	v := keybridge.Validation{}
	in.APIKey = keybridge.NewSecret(strings.TrimSpace(in.APIKey.Reveal()))
	validateSecret(v, "api_key", in.APIKey)
	in.Name = strings.TrimSpace(in.Name)
	if len(in.Name) > 200 {
		v.Add("name", "must be at most 200 characters")
	}
	if in.Priority != nil && (*in.Priority < 0 || *in.Priority > maxPriority) {
		v.Add("priority", "must be from 0 to 1000000")
	}
	return v.Err()
}

// validateSecret checks a pasted key: present, and what
// keybridge.SecretProblem asks of every secret.
func validateSecret(v keybridge.Validation, field string, s keybridge.Secret) {
	if key := s.Reveal(); key == "" {
		v.Add(field, "is required")
	} else if problem := keybridge.SecretProblem(key); problem != "" {
		v.Add(field, problem)
	}
}

func (s *Server) createProviderKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	in, err := decode[createProviderKeyRequest](w, r)
	if err != nil {
		return err
	}
	if p.Type == keybridge.ProviderBedrock {
		return keybridge.FieldError("api_key", "bedrock providers take no keys: they authenticate with settings.access_key and settings.access_key_secret")
	}
	secret := []byte(in.APIKey.Reveal())
	k := &keybridge.ProviderKey{ID: newRowID(), ProviderID: p.ID, Name: in.Name, Hint: keybridge.Hint(in.APIKey.Reveal()), Enabled: true,
		Fingerprint: s.ring.Fingerprint("provider_key"+p.ID, secret)}
	if k.Sealed, err = s.ring.Seal(secret, keybridge.SealedProviderKey.AD(k.ID)); err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if in.Priority != nil {
			k.Priority = *in.Priority
		} else {
			// New keys go last: adding a spare never pre-empts the key
			// in use.
			keys, err := tx.ProviderKeys(ctx, p.ID)
			if err != nil {
				return err
			}
			for _, o := range keys {
				k.Priority = max(k.Priority, min(o.Priority+1, maxPriority))
			}
		}
		if err := tx.CreateProviderKey(ctx, k); err != nil {
			if keybridge.IsCode(err, keybridge.EConflict) && strings.Contains(keybridge.ErrorMessage(err), "already stored") {
				return &keybridge.Error{Code: keybridge.EConflict, Message: "this key is already stored for the provider",
					Fields: map[string]string{"api_key": "already stored for this provider"}}
			}
			return err
		}
		return audit.Record(ctx, tx, org.ID, "provider_key.create", providerKeyResource(k), map[string]keybridge.Change{
			"provider_id": {New: p.ID}, "name": {New: k.Name}, "priority": {New: k.Priority}, "enabled": {New: k.Enabled},
			"api_key": {New: keybridge.Redacted},
		})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, newProviderKeyView(k))
	return nil
}

type updateProviderKeyRequest struct {
	Name     *string `json:"name"`
	Priority *int    `json:"priority"`
	Enabled  *bool   `json:"enabled"`
}

func (in *updateProviderKeyRequest) Validate() error {
	if in.Name == nil && in.Priority == nil && in.Enabled == nil {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to change: send name, priority or enabled")
	}
	v := keybridge.Validation{}
	if in.Name != nil {
		*in.Name = strings.TrimSpace(*in.Name)
		if len(*in.Name) > 200 {
			v.Add("name", "must be at most 200 characters")
		}
	}
	if in.Priority != nil && (*in.Priority < 0 || *in.Priority > maxPriority) {
		v.Add("priority", "must be from 0 to 1000000")
	}
	return v.Err()
}

func (s *Server) updateProviderKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	in, err := decode[updateProviderKeyRequest](w, r)
	if err != nil {
		return err
	}
	var k *keybridge.ProviderKey
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		if k, err = tx.ProviderKey(ctx, p.ID, r.PathValue("keyID")); err != nil {
			return err
		}
		changes := map[string]keybridge.Change{}
		if in.Name != nil {
			diff(changes, "name", k.Name, *in.Name)
			k.Name = *in.Name
		}
		if in.Priority != nil {
			diff(changes, "priority", k.Priority, *in.Priority)
			k.Priority = *in.Priority
		}
		if in.Enabled != nil {
			diff(changes, "enabled", k.Enabled, *in.Enabled)
			k.Enabled = *in.Enabled
		}
		if len(changes) == 0 {
			return nil
		}
		if err := tx.UpdateProviderKey(ctx, k); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "provider_key.update", providerKeyResource(k), changes)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newProviderKeyView(k))
	return nil
}

func (s *Server) deleteProviderKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		k, err := tx.ProviderKey(ctx, p.ID, r.PathValue("keyID"))
		if err != nil {
			return err
		}
		if err := tx.DeleteProviderKey(ctx, p.ID, k.ID); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "provider_key.delete", providerKeyResource(k), map[string]keybridge.Change{
			"provider_id": {Old: p.ID}, "name": {Old: k.Name}, "priority": {Old: k.Priority}, "enabled": {Old: k.Enabled},
			"api_key": {Old: keybridge.Redacted},
		})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// upstreamClient is the client for provider probes: the configured one,
// or a default with the standard egress guard.
func (s *Server) upstreamClient() *upstream.Client {
	if s.cfg.Upstream != nil {
		return s.cfg.Upstream
	}
	return defaultUpstream()
}

var defaultUpstream = sync.OnceValue(func() *upstream.Client { return upstream.New(upstream.Options{}) })

type testProviderRequest struct {
	Type     keybridge.ProviderType            `json:"type"`
	BaseURL  string                            `json:"base_url"`
	APIKey   keybridge.Secret                  `json:"api_key"`
	Settings optional[keybridge.SettingsPatch] `json:"settings"`
	settings keybridge.SettingsPatch           `json:"-"`
}

func (in *testProviderRequest) Validate() error {
	v := keybridge.Validation{}
	validateProviderType(v, in.Type)
	if in.BaseURL != "" {
		in.BaseURL = normalizeBaseURL(v, in.BaseURL)
	}
	in.APIKey = keybridge.NewSecret(strings.TrimSpace(in.APIKey.Reveal()))
	// Optional here (an openai-compatible server may need none), but held
	// to the rule of stored keys: it goes into a request header.
	if problem := keybridge.SecretProblem(in.APIKey.Reveal()); problem != "" {
		v.Add("api_key", problem)
	}
	if in.Type == keybridge.ProviderBedrock && !in.APIKey.IsZero() {
		v.Add("api_key", "bedrock providers take no keys: send settings.access_key and settings.access_key_secret")
	}
	in.settings = in.Settings.V
	return v.Err()
}

// testProvider calls a provider's model list with what the caller sent,
// storing nothing. Whatever the provider does, the answer is 200 with
// reachable and a safe error; only a malformed request is an error.
func (s *Server) testProvider(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	in, err := decode[testProviderRequest](w, r)
	if err != nil {
		return err
	}
	set, base, err := newSettings(in.Type, in.settings, in.BaseURL)
	if err != nil {
		return err
	}
	if err := s.allowProbe(r.Context(), org); err != nil {
		return err
	}
	res := s.upstreamClient().Probe(r.Context(), upstream.Target{Type: in.Type, BaseURL: base, APIKey: in.APIKey, Settings: set})
	s.logProbeCause(r.Context(), res, "")
	writeJSON(w, http.StatusOK, res)
	return nil
}

// DefaultProbesPerMinute is how many provider tests and usage requests an
// org may make per minute when Config.ProbesPerMinute is zero: enough for
// an admin setting providers up, too few to scan a network with. Without
// Redis each replica counts its own: a token bucket refilled evenly. With
// Redis the count is shared, in windows of a minute from the first probe.
const DefaultProbesPerMinute = 30

// allowProbe counts one of org's probes, or answers 429 with the wait.
func (s *Server) allowProbe(ctx context.Context, org *keybridge.Org) error {
	if wait, ok := s.probeLimit.allow(ctx, org.ID); !ok {
		return &keybridge.Error{Code: keybridge.ERateLimited, Message: "too many provider tests for this org; retry later",
			RetryAfterSeconds: int(wait.Seconds()) + 1}
	}
	return nil
}

// logProbeCause logs why a probe could not reach its provider: the answer
// says only upstream.ErrUnreachable.
func (s *Server) logProbeCause(ctx context.Context, res upstream.Result, keyID string) {
	if err := res.Cause(); err != nil {
		s.log.InfoContext(ctx, "provider probe: upstream unreachable", "err", err, "key_id", keyID,
			"request_id", keybridge.RequestInfoFromContext(ctx).RequestID)
	}
}

// usageItem is one stored key's live view: the probe result with the key
// it was made with, and whether it came from the 60 s cache.
type usageItem struct {
	KeyID string `json:"key_id"`
	upstream.Result
	Cached bool `json:"cached"`
}

// usageCacheKey is the probe cache's key for a stored key of p. The
// provider's last change is in it: a new base URL or settings must not be
// answered from the old ones.
func usageCacheKey(p *keybridge.Provider, k *keybridge.ProviderKey) string {
	return p.ID + "/" + k.ID + "/" + p.UpdatedAt.Format(time.RFC3339Nano)
}

// usageConcurrency bounds the probes one usage request runs at once, so
// a provider with 16 keys answers in a few probe times, not 16.
const usageConcurrency = 4

// providerUsage probes the model list with each stored key for its rate
// limits, through the client's per-key cache unless ?refresh=true. It needs
// providers:write: it spends calls with the org's keys and names them.
func (s *Server) providerUsage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.providerFor(r, keybridge.PermProvidersWrite)
	if err != nil {
		return err
	}
	refresh := false
	switch v := r.URL.Query().Get("refresh"); v {
	case "", "false", "0":
	case "true", "1":
		refresh = true
	default:
		return keybridge.FieldError("refresh", "must be true or false")
	}
	set, err := s.openSettings(p)
	if err != nil {
		return err
	}
	keys, err := s.store.ProviderKeys(ctx, p.ID)
	if err != nil {
		return err
	}
	// Answers from the cache call no provider and cost nothing.
	for i := range keys {
		if refresh || !s.upstreamClient().Cached(usageCacheKey(p, &keys[i])) {
			if err := s.allowProbe(r.Context(), org); err != nil {
				return err
			}
			break
		}
	}
	items := make([]usageItem, len(keys))
	sem := make(chan struct{}, usageConcurrency)
	var wg sync.WaitGroup
	for i := range keys {
		k := &keys[i]
		items[i].KeyID = k.ID
		plain, err := s.ring.Open(k.Sealed, keybridge.SealedProviderKey.AD(k.ID))
		if err != nil {
			s.log.ErrorContext(ctx, "open provider key", "err", err, "key_id", k.ID,
				"request_id", keybridge.RequestInfoFromContext(ctx).RequestID)
			items[i].Result = upstream.Result{Models: []string{}, Error: "the stored key could not be decrypted; add it again"}
			continue
		}
		target := upstream.Target{Type: p.Type, BaseURL: p.BaseURL, APIKey: keybridge.NewSecret(string(plain)), Settings: set}
		cacheKey := usageCacheKey(p, k)
		wg.Add(1)
		// WithoutCancel: a client that hangs up must not leave "canceled"
		// in the cache for everyone else; Probe's own timeout still
		// bounds the call.
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			items[i].Result, items[i].Cached = s.upstreamClient().CachedProbe(context.WithoutCancel(ctx), cacheKey, refresh, target)
			if !items[i].Cached {
				s.logProbeCause(ctx, items[i].Result, k.ID)
			}
		}(i)
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, newList(items, ""))
	return nil
}

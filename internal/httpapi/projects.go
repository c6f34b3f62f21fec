package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Projects and their AI keys (SPEC §5): members read, admins write. A
// project or key of another org, or a key of another project, is 404.

func projectResource(p *keybridge.Project) keybridge.Resource {
	return keybridge.Resource{Type: "project", ID: p.ID, Name: p.Name}
}

func aiKeyResource(k *keybridge.AIKey) keybridge.Resource {
	return keybridge.Resource{Type: "ai_key", ID: k.ID, Name: k.Name}
}

// projectNameTaken is the 409 for a name already used in the org.
func projectNameTaken(err error) error {
	return taken(err, "name", "a project with this name already exists in the org")
}

func (s *Server) listProjects(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermProjectsRead)
	if err != nil {
		return err
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	items, next, err := s.store.ListProjects(r.Context(), org.ID, pg)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(items, next))
	return nil
}

type createProjectRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

func (in *createProjectRequest) Validate() error {
	p := keybridge.Project{Name: in.Name, Description: in.Description}
	return p.Validate()
}

func (s *Server) createProject(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, _, err := s.org(r, keybridge.PermProjectsWrite)
	if err != nil {
		return err
	}
	in, err := decode[createProjectRequest](w, r)
	if err != nil {
		return err
	}
	p := &keybridge.Project{OrgID: org.ID, Name: strings.TrimSpace(in.Name), Description: in.Description}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateProject(ctx, p); err != nil {
			return projectNameTaken(err)
		}
		return audit.Record(ctx, tx, org.ID, "project.create", projectResource(p),
			audit.Diff(nil, projectFields(p)))
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, p)
	return nil
}

// projectFields is what the audit log records of a project: what a caller
// sets, not the times every change moves.
func projectFields(p *keybridge.Project) map[string]any {
	return map[string]any{"name": p.Name, "description": p.Description}
}

func (s *Server) getProject(w http.ResponseWriter, r *http.Request) error {
	_, p, err := s.project(r, keybridge.PermProjectsRead)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

type updateProjectRequest struct {
	Name        *string `json:"name"`
	Description *string `json:"description"`
}

func (in *updateProjectRequest) Validate() error {
	if in.Name == nil && in.Description == nil {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to change: send name or description")
	}
	return nil
}

func (s *Server) updateProject(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.project(r, keybridge.PermProjectsWrite)
	if err != nil {
		return err
	}
	in, err := decode[updateProjectRequest](w, r)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		if p, err = tx.Project(ctx, org.ID, p.ID); err != nil {
			return err
		}
		before := projectFields(p)
		if in.Name != nil {
			p.Name = strings.TrimSpace(*in.Name)
		}
		if in.Description != nil {
			p.Description = *in.Description
		}
		if err := p.Validate(); err != nil {
			return err
		}
		changes := audit.Diff(before, projectFields(p))
		if changes == nil {
			return nil // nothing changed: no write, no event
		}
		if err := tx.UpdateProject(ctx, p); err != nil {
			return projectNameTaken(err)
		}
		return audit.Record(ctx, tx, org.ID, "project.update", projectResource(p), changes)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) deleteProject(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.project(r, keybridge.PermProjectsWrite)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		p, err := tx.Project(ctx, org.ID, p.ID)
		if err != nil {
			return err
		}
		// Each live key stops working with the project: one event per
		// key, as if each had been deleted on its own.
		keys, err := allAIKeys(ctx, tx, p.ID)
		if err != nil {
			return err
		}
		if err := tx.DeleteProject(ctx, org.ID, p.ID); err != nil {
			return err
		}
		now := tx.Now()
		for i := range keys {
			k := &keys[i]
			if err := audit.Record(ctx, tx, org.ID, "ai_key.delete", aiKeyResource(k), map[string]keybridge.Change{
				"deleted_at": {Old: nil, New: now},
			}); err != nil {
				return err
			}
		}
		return audit.Record(ctx, tx, org.ID, "project.delete", projectResource(p), audit.Diff(projectFields(p), nil))
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// allAIKeys returns every live AI key of a project, through every page.
func allAIKeys(ctx context.Context, st store.Store, projectID string) ([]keybridge.AIKey, error) {
	var all []keybridge.AIKey
	pg := store.Page{Limit: store.MaxLimit}
	for {
		keys, next, err := st.ListAIKeys(ctx, projectID, false, pg)
		if err != nil {
			return nil, err
		}
		all = append(all, keys...)
		if next == "" {
			return all, nil
		}
		pg.Cursor = next
	}
}

// project resolves the {org} and {projectID} path values for a caller who
// needs perm: 404 when the caller cannot see the org or there is no such
// project, and only then 403 when it can see the project (every member
// can) but lacks perm.
func (s *Server) project(r *http.Request, perm keybridge.Permission) (*keybridge.Org, *keybridge.Project, error) {
	var p *keybridge.Project
	org, _, err := s.orgChild(r, keybridge.PermProjectsRead, perm, func(org *keybridge.Org) (err error) {
		p, err = s.store.Project(r.Context(), org.ID, r.PathValue("projectID"))
		return err
	})
	return org, p, err
}

func (s *Server) listAIKeys(w http.ResponseWriter, r *http.Request) error {
	_, p, err := s.project(r, keybridge.PermProjectsRead)
	if err != nil {
		return err
	}
	includeDeleted := false
	if v := r.URL.Query().Get("include_deleted"); v != "" {
		if includeDeleted, err = strconv.ParseBool(v); err != nil {
			return keybridge.FieldError("include_deleted", "must be true or false")
		}
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	items, next, err := s.store.ListAIKeys(r.Context(), p.ID, includeDeleted, pg)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(items, next))
	return nil
}

type createAIKeyRequest struct {
	Name   string           `json:"name"`
	AIType keybridge.AIType `json:"ai_type"`
	keybridge.Limits
	AllowedModels keybridge.ModelAllowlist `json:"allowed_models"`
}

func (in *createAIKeyRequest) Validate() error {
	v := keybridge.Validation{}
	validateAIKeyName(v, in.Name)
	if !in.AIType.Valid() {
		v.Add("ai_type", "must be one of OPENAI, GOOGLE, ANTHROPIC, AWS, OTHER")
	}
	in.Limits.Validate(v)
	in.AllowedModels.Validate(v, "allowed_models")
	return v.Err()
}

func validateAIKeyName(v keybridge.Validation, name string) {
	if strings.TrimSpace(name) == "" {
		v.Add("name", "is required")
	} else if len(name) > 200 {
		v.Add("name", "must be at most 200 characters")
	}
}

// createAIKeyResponse is SPEC §5's answer, exactly: the only place the
// secret ever appears. The key's limits are in the list's and PATCH's
// answers.
type createAIKeyResponse struct {
	Success bool   `json:"success"`
	ID      string `json:"id"`
	Key     string `json:"key"`
	Secret  string `json:"secret"`
}

// aiKeyFields is what the audit log records of an AI key: never the
// secret, which the key struct does not even carry in JSON. No budget
// period is recorded as "", as it always has been (a key answer shows
// null).
func aiKeyFields(k *keybridge.AIKey) map[string]any {
	return map[string]any{
		"name": k.Name, "ai_type": k.AIType, "key": k.Key, "project_id": k.ProjectID,
		"rate_limit_rpm": k.RateLimitRPM, "rate_limit_tpm": k.RateLimitTPM,
		"token_budget": k.TokenBudget, "budget_period": string(k.BudgetPeriod),
		"allowed_models": k.AllowedModels,
	}
}

func (s *Server) createAIKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.project(r, keybridge.PermProjectsWrite)
	if err != nil {
		return err
	}
	in, err := decode[createAIKeyRequest](w, r)
	if err != nil {
		return err
	}
	key, err := apikey.Generate(apikey.AIKeyPrefix)
	if err != nil {
		return err
	}
	secret, err := apikey.Generate(apikey.AISecretPrefix)
	if err != nil {
		return err
	}
	hash := apikey.Hash(secret)
	k := &keybridge.AIKey{
		ID:        newRowID(),
		ProjectID: p.ID, OrgID: org.ID, Name: strings.TrimSpace(in.Name), AIType: in.AIType,
		Key: key, SecretHash: hash[:], Limits: in.Limits, CreatedBy: principal(r).UserID,
		AllowedModels: in.AllowedModels,
	}
	if k.AIType == keybridge.AIAWS {
		// A SigV4 signature is verified with the secret itself; the hash
		// stays too, for the secret used as a bearer token.
		if k.SecretSealed, err = s.ring.Seal([]byte(secret), keybridge.SealedAIKeySecret.AD(k.ID)); err != nil {
			return err
		}
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateAIKey(ctx, k); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "ai_key.create", aiKeyResource(k), audit.Diff(nil, aiKeyFields(k)))
	})
	if err != nil {
		return err
	}
	writeOneTime(w, http.StatusCreated, createAIKeyResponse{Success: true, ID: k.ID, Key: k.Key, Secret: secret})
	return nil
}

// updateAIKeyRequest is an AI key's PATCH: its name, and its limits and
// model list read exactly as a platform key's are.
type updateAIKeyRequest struct {
	Name optional[string] `json:"name"`
	limitsPatch
}

func (in *updateAIKeyRequest) Validate() error {
	if !in.Name.Set && in.limitsPatch.empty() {
		return keybridge.Errorf(keybridge.EInvalid, "nothing to change: send name, a limit or allowed_models")
	}
	if in.Name.Null {
		return keybridge.FieldError("name", "must not be null")
	}
	return nil
}

// aiKeyTarget resolves {org}, {projectID} and its live AI key {id} for a
// caller who needs projects:write on it. Every member may see a project's
// AI keys, so the key is looked up first: one of another project (or
// deleted, or unknown) is 404 to every caller who can see the project, and
// only then does a caller without projects:write get 403.
func (s *Server) aiKeyTarget(r *http.Request) (*keybridge.Org, *keybridge.Project, error) {
	var p *keybridge.Project
	org, _, err := s.orgChild(r, keybridge.PermProjectsRead, keybridge.PermProjectsWrite, func(org *keybridge.Org) (err error) {
		if p, err = s.store.Project(r.Context(), org.ID, r.PathValue("projectID")); err != nil {
			return err
		}
		_, err = liveAIKey(r.Context(), s.store, p.ID, r.PathValue("id"))
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return org, p, nil
}

func (s *Server) updateAIKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.aiKeyTarget(r)
	if err != nil {
		return err
	}
	in, err := decode[updateAIKeyRequest](w, r)
	if err != nil {
		return err
	}
	var k *keybridge.AIKey
	err = s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		if k, err = liveAIKey(ctx, tx, p.ID, r.PathValue("id")); err != nil {
			return err
		}
		changes := map[string]keybridge.Change{}
		if in.Name.Set {
			name := strings.TrimSpace(in.Name.V)
			diff(changes, "name", k.Name, name)
			k.Name = name
		}
		in.limitsPatch.apply(&k.Limits, &k.AllowedModels, changes)
		v := keybridge.Validation{}
		validateAIKeyName(v, k.Name)
		k.Limits.Validate(v)
		k.AllowedModels.Validate(v, "allowed_models")
		if err := v.Err(); err != nil {
			return err
		}
		if len(changes) == 0 {
			return nil
		}
		if err := tx.UpdateAIKey(ctx, k); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "ai_key.update", aiKeyResource(k), changes)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

// liveAIKey finds an undeleted AI key of a project: a deleted key can be
// listed but no longer changed, so it is not found.
func liveAIKey(ctx context.Context, st store.Store, projectID, id string) (*keybridge.AIKey, error) {
	k, err := st.AIKey(ctx, projectID, id)
	if err != nil {
		return nil, err
	}
	if k.DeletedAt != nil {
		return nil, keybridge.Errorf(keybridge.ENotFound, "AI key not found")
	}
	return k, nil
}

func (s *Server) deleteAIKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	org, p, err := s.aiKeyTarget(r)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		k, err := liveAIKey(ctx, tx, p.ID, r.PathValue("id"))
		if err != nil {
			return err
		}
		if err := tx.DeleteAIKey(ctx, p.ID, k.ID); err != nil {
			return err
		}
		return audit.Record(ctx, tx, org.ID, "ai_key.delete", aiKeyResource(k), map[string]keybridge.Change{
			"deleted_at": {Old: nil, New: tx.Now()},
		})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

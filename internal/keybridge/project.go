package keybridge

import (
	"slices"
	"time"
)

// Project is a repository, a service or a team's automation that holds AI keys.
type Project struct {
	ID          string    `json:"id"`
	OrgID       string    `json:"org_id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Validate checks the name and description.
func (p *Project) Validate() error {
	v := Validation{}
	validateName(v, "name", p.Name)
	if len(p.Description) > 1000 {
		v.Add("description", "must be at most 1000 characters")
	}
	return v.Err()
}

// AIType is the family of providers an AI key may reach.
type AIType string

// The AI types of SPEC §5.
const (
	AIOpenAI    AIType = "OPENAI"
	AIGoogle    AIType = "GOOGLE"
	AIAnthropic AIType = "ANTHROPIC"
	AIAWS       AIType = "AWS"
	AIOther     AIType = "OTHER"
)

// AITypes lists every AI type.
var AITypes = []AIType{AIOpenAI, AIGoogle, AIAnthropic, AIAWS, AIOther}

// Valid reports whether t is a known AI type.
func (t AIType) Valid() bool { return slices.Contains(AITypes, t) }

// Allows reports whether an AI key of type t may reach a provider of type pt.
func (t AIType) Allows(pt ProviderType) bool {
	switch t {
	case AIOpenAI:
		return pt == ProviderOpenAI || pt == ProviderAzureOpenAI
	case AIAnthropic:
		return pt == ProviderAnthropic
	case AIGoogle:
		return pt == ProviderGoogle
	case AIAWS:
		return pt == ProviderBedrock
	case AIOther:
		return pt == ProviderOpenAICompatible
	}
	return false
}

// AIKey is a project-scoped key + secret pair. Key is a public identifier;
// the SHA-256 of the secret is stored, and for AWS keys the secret itself,
// sealed by the key ring (SealedAIKeySecret), because verifying a SigV4
// signature needs it.
type AIKey struct {
	ID         string `json:"id"`
	ProjectID  string `json:"project_id"`
	OrgID      string `json:"org_id"`
	Name       string `json:"name"`
	AIType     AIType `json:"ai_type"`
	Key        string `json:"key"`
	SecretHash []byte `json:"-"`
	// SecretSealed is the sealed secret of an AWS key; empty for other
	// types and for AWS keys made before secrets were sealed.
	SecretSealed []byte `json:"-"`
	Limits

	// AllowedModels limits the models the key may call; empty: all.
	AllowedModels ModelAllowlist `json:"allowed_models"`

	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	DeletedAt  *time.Time `json:"deleted_at"`
}

package keybridge

import (
	"encoding/json"
	"strings"
	"time"
)

// KeyStatus is the life of a platform API key.
type KeyStatus string

// The statuses of SPEC §3.
const (
	KeyActive    KeyStatus = "active"
	KeySuspended KeyStatus = "suspended"
	KeyRevoked   KeyStatus = "revoked"
)

// BudgetPeriod is the window a token budget applies to.
type BudgetPeriod string

// The budget periods of SPEC §7.
const (
	BudgetDay   BudgetPeriod = "day"
	BudgetMonth BudgetPeriod = "month"
)

// MarshalJSON implements json.Marshaler. No period is null, not "", so a
// key answer shows budget_period as it shows the other things a key may
// lack (expires_at, last_used_at).
func (p BudgetPeriod) MarshalJSON() ([]byte, error) {
	if p == "" {
		return []byte("null"), nil
	}
	return json.Marshal(string(p))
}

// Limits are the optional gateway limits of a platform key or AI key.
// Zero means unlimited. Every key answer shows all of them (SPEC §3), 0
// and a null period included, so a client reads a key without limits the
// same way as one with them.
type Limits struct {
	RateLimitRPM int64        `json:"rate_limit_rpm"`
	RateLimitTPM int64        `json:"rate_limit_tpm"`
	TokenBudget  int64        `json:"token_budget"`
	BudgetPeriod BudgetPeriod `json:"budget_period"`
}

// Validate checks that limits are not negative, that a budget has a
// period and that a period has a budget: a period alone limits nothing,
// and is most likely a budget forgotten.
func (l *Limits) Validate(v Validation) {
	if l.RateLimitRPM < 0 {
		v.Add("rate_limit_rpm", "must not be negative")
	}
	if l.RateLimitTPM < 0 {
		v.Add("rate_limit_tpm", "must not be negative")
	}
	if l.TokenBudget < 0 {
		v.Add("token_budget", "must not be negative")
	}
	switch l.BudgetPeriod {
	case "":
		if l.TokenBudget > 0 {
			v.Add("budget_period", "is required with token_budget: day or month")
		}
	case BudgetDay, BudgetMonth:
		if l.TokenBudget == 0 {
			v.Add("budget_period", "needs a token_budget; leave it out (or null) when the key has no budget")
		}
	default:
		v.Add("budget_period", "must be day or month")
	}
}

// APIKey is a personal platform API key. Only the SHA-256 of its plaintext
// is stored; Prefix is its first 12 characters, for display.
type APIKey struct {
	ID          string      `json:"id"`
	OrgID       string      `json:"org_id"`
	UserID      string      `json:"user_id"`
	Name        string      `json:"name"`
	Description string      `json:"description"`
	Prefix      string      `json:"prefix"`
	Hash        []byte      `json:"-"`
	Permissions Permissions `json:"permissions"`
	Status      KeyStatus   `json:"status"`
	Limits

	// AllowedModels limits the models the key may call; empty: all.
	AllowedModels ModelAllowlist `json:"allowed_models"`

	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	// GraceUntil is set on a key replaced by rotation: it stops working then.
	GraceUntil *time.Time `json:"grace_until,omitempty"`
	// RotatedFrom names the key this one replaced, if any.
	RotatedFrom string `json:"rotated_from,omitempty"`
}

// Usable reports whether the key authenticates at time now: active, not
// expired and not past a rotation grace period.
func (k *APIKey) Usable(now time.Time) bool {
	if k.Status != KeyActive {
		return false
	}
	if k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) {
		return false
	}
	if k.GraceUntil != nil && !now.Before(*k.GraceUntil) {
		return false
	}
	return true
}

// Validate checks the fields a caller sets.
func (k *APIKey) Validate() error {
	v := Validation{}
	validateName(v, "name", k.Name)
	if len(k.Description) > 1000 {
		v.Add("description", "must be at most 1000 characters")
	}
	k.Limits.Validate(v)
	k.AllowedModels.Validate(v, "allowed_models")
	return v.Err()
}

func validateName(v Validation, field, name string) {
	if strings.TrimSpace(name) == "" {
		v.Add(field, "is required")
	} else if len(name) > 200 {
		v.Add(field, "must be at most 200 characters")
	}
}

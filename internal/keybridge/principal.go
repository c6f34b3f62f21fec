package keybridge

import (
	"context"
	"time"
)

// ActorType says what kind of caller made a change.
type ActorType string

// The actor types of SPEC §8.
const (
	ActorUser   ActorType = "user"
	ActorAPIKey ActorType = "api_key"
	ActorAIKey  ActorType = "ai_key"
	ActorSystem ActorType = "system"
)

// Principal is an authenticated caller. A session principal acts as its
// user in any org it belongs to; a key principal is bound to the key's org.
type Principal struct {
	Type   ActorType
	UserID string
	Email  string
	// KeyID is the platform key, AI key or session that authenticated.
	KeyID string
	// OrgID is set for keys; empty for sessions.
	OrgID string
	// ProjectID and AIType are set for AI keys.
	ProjectID string
	AIType    AIType
	// Permissions is what the key itself grants (all of them for a
	// session); the caller's role in the org is intersected at use.
	Permissions Permissions
	// Role is the user's current role in OrgID, for keys.
	Role Role
	Limits
	// AllowedModels is the key's model allowlist; the zero value (every
	// model) for sessions and unrestricted keys.
	AllowedModels ModelMatcher
	// SessionCSRF is the CSRF token of a cookie session, empty otherwise.
	SessionCSRF string
}

// Actor returns who to record in the audit log for this principal.
func (p *Principal) Actor() Actor {
	switch p.Type {
	case ActorUser:
		return Actor{Type: ActorUser, ID: p.UserID, Email: p.Email}
	default:
		return Actor{Type: p.Type, ID: p.KeyID, Email: p.Email}
	}
}

// AllowsModel reports whether the caller may call model through the
// gateway: always when its key names no models.
func (p *Principal) AllowsModel(model string) bool { return p.AllowedModels.Allows(model) }

// RequestInfo is what the audit log records of the request behind a change.
type RequestInfo struct {
	IP        string
	UserAgent string
	RequestID string
	// Time is when the request arrived.
	Time time.Time
}

type ctxKey int

const (
	principalKey ctxKey = iota
	requestInfoKey
)

// NewContextWithPrincipal returns ctx carrying p.
func NewContextWithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey, p)
}

// PrincipalFromContext returns the caller in ctx, or nil.
func PrincipalFromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey).(*Principal)
	return p
}

// NewContextWithRequestInfo returns ctx carrying info.
func NewContextWithRequestInfo(ctx context.Context, info RequestInfo) context.Context {
	return context.WithValue(ctx, requestInfoKey, info)
}

// RequestInfoFromContext returns the request info in ctx, or the zero value.
func RequestInfoFromContext(ctx context.Context) RequestInfo {
	info, _ := ctx.Value(requestInfoKey).(RequestInfo)
	return info
}

package keybridge

import (
	"net/url"
	"slices"
	"strings"
	"time"
)

// ProviderType is the kind of upstream a provider speaks to.
type ProviderType string

// The provider types of SPEC §4.
const (
	ProviderOpenAI           ProviderType = "openai"
	ProviderAnthropic        ProviderType = "anthropic"
	ProviderBedrock          ProviderType = "bedrock"
	ProviderGoogle           ProviderType = "google"
	ProviderAzureOpenAI      ProviderType = "azure-openai"
	ProviderOpenAICompatible ProviderType = "openai-compatible"
)

// ProviderTypes lists every provider type.
var ProviderTypes = []ProviderType{ProviderOpenAI, ProviderAnthropic, ProviderBedrock, ProviderGoogle, ProviderAzureOpenAI, ProviderOpenAICompatible}

// Valid reports whether t is a known provider type.
func (t ProviderType) Valid() bool { return slices.Contains(ProviderTypes, t) }

// KeySource says whose upstream key the gateway uses for a provider.
type KeySource string

// The key sources of SPEC §4.
const (
	KeySourceOrg       KeySource = "org"
	KeySourceUser      KeySource = "user"
	KeySourceUserOrOrg KeySource = "user_or_org"
)

// ReservedProviderNames cannot be used as provider names: they collide with
// gateway and UI paths.
var ReservedProviderNames = []string{"proxy", "interceptions", "sessions", "models", "clients", "providers", "api", "gateway", "setup", "new"}

// Provider is an upstream LLM API an org has credentials for. Its settings
// are stored encrypted as one sealed JSON object (SettingsSealed); the API
// layer opens them through the key ring.
type Provider struct {
	ID             string
	OrgID          string
	Name           string
	DisplayName    string
	Type           ProviderType
	BaseURL        string
	Enabled        bool
	KeySource      KeySource
	SettingsSealed []byte
	// KeyCount is filled on reads.
	KeyCount  int
	CreatedAt time.Time
	UpdatedAt time.Time
}

// ValidateProviderName checks a provider name against SPEC §4.
func ValidateProviderName(name string) error {
	if !SlugPattern.MatchString(name) || len(name) > 63 {
		return FieldError("name", "must match ^[a-z0-9]+(-[a-z0-9]+)*$ and be at most 63 characters")
	}
	if slices.Contains(ReservedProviderNames, name) {
		return FieldError("name", "is reserved")
	}
	if LooksLikeID(name) {
		return FieldError("name", "must not look like an ID")
	}
	return nil
}

// ValidateBaseURL checks that s is an absolute http or https URL that
// names a host: "https://:443" has a port and no host, and would dial this
// machine.
func ValidateBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil {
		return FieldError("base_url", "must be an absolute http or https URL")
	}
	return nil
}

// ProviderKey is one upstream key of a provider, tried in Priority order
// (lowest first) for failover. The key itself is sealed; Fingerprint is a
// keyed HMAC of it so duplicates are found without storing plaintext.
type ProviderKey struct {
	ID            string
	ProviderID    string
	Name          string
	Hint          string
	Priority      int
	Enabled       bool
	Sealed        []byte
	Fingerprint   []byte
	CreatedAt     time.Time
	UpdatedAt     time.Time
	LastUsedAt    *time.Time
	CooldownUntil *time.Time
}

// MaxProviderKeys is how many upstream keys one provider may hold.
const MaxProviderKeys = 16

// Hint masks a secret for display: first 4 + "..." + last 4 characters for
// 20 or more characters, "..." + last 4 for 8 to 19, "..." below that.
func Hint(secret string) string {
	s := strings.TrimSpace(secret)
	switch {
	case len(s) >= 20:
		return s[:4] + "..." + s[len(s)-4:]
	case len(s) >= 8:
		return "..." + s[len(s)-4:]
	}
	return "..."
}

// Credential is a user's personal provider key (SPEC §6), sealed at rest.
type Credential struct {
	ID          string
	UserID      string
	OrgID       string
	ProviderID  string
	Hint        string
	Sealed      []byte
	Fingerprint []byte
	CreatedAt   time.Time
	UpdatedAt   time.Time
	LastUsedAt  *time.Time
}
